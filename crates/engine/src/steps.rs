//! Build and test steps: `/bin/sh -c` in the build tree, in a clean
//! environment, in their own process group, output streamed line by line,
//! killed as a group on timeout.
//!
//! Output is read in bounded pieces whatever it holds: a line longer than
//! [`MAX_LINE`] is cut into lines of that length, at most [`REPORTED`]
//! bytes of a step's output are passed on (the rest is read and dropped,
//! its last lines kept for the error message), and the channel between
//! the readers and the reporter is bounded, so a step that prints 300 MB
//! without a newline costs the server kilobytes, not 300 MB. When the
//! step's shell exits, what it left running in its process group (`x &`)
//! is killed, and its output read for at most a second more: a background
//! child that holds the step's stdout cannot make a finished step time out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tandem_core::spec::Step;
use tokio::io::AsyncReadExt;

use crate::progress::{Progress, Reporter};

/// Variables a step inherits from the control plane; everything else is
/// cleared, so a build does not depend on how the server was started.
const INHERITED: [&str; 6] = ["PATH", "HOME", "LANG", "TMPDIR", "USER", "CARGO_HOME"];

/// Lines of a failing step kept for the error message.
const TAIL: usize = 20;
/// Longest line passed on; a longer one is cut into several.
pub const MAX_LINE: usize = 8 * 1024;
/// Bytes of one step's output passed on to its reporter.
pub const REPORTED: usize = 16 * 1024 * 1024;

/// How a service's steps are confined: as its user (where tandem can
/// switch users), in the sandbox (its checkout and `home` writable, the
/// network open: builds fetch dependencies), with [`BUILD_LIMITS`].
pub struct Confined {
    pub sandbox: Arc<tandem_sandbox::Sandbox>,
    pub user: Option<u32>,
    /// `HOME` (caches kept between builds), with `TMPDIR` in it.
    pub home: PathBuf,
}

/// What one step may use: more than an instance's defaults (compilers
/// fork and take memory), still not the machine.
pub const BUILD_LIMITS: tandem_core::protocol::Limits = tandem_core::protocol::Limits {
    memory_bytes: Some(4 << 30),
    cpu_millis: None,
    pids: Some(2048),
    nofile: Some(8192),
    // The largest file a step may write (RLIMIT_FSIZE).
    disk_bytes: Some(4 << 30),
};

/// Runs `step` in `dir` with `CI=true` and `env` added, confined as
/// `confined` says; `Err` carries the reason and the last output lines.
pub async fn run(
    step: &Step,
    dir: &Path,
    env: &[(String, String)],
    confined: &Confined,
    reporter: &Reporter,
) -> Result<(), (String, Vec<String>)> {
    let cannot = |e: std::io::Error| {
        (
            format!("step {} could not start: {e}", step.name),
            Vec::new(),
        )
    };
    static STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let group = format!(
        "step-{}-{}",
        std::process::id(),
        STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    // Its temp named on its own too: seen as /tmp, it is beneath no
    // other rule (Landlock follows the mount, not the directory).
    let tmp = confined.home.join("tmp");
    let write = [dir.to_path_buf(), confined.home.clone(), tmp.clone()];
    let prepared = confined
        .sandbox
        .prepare(&tandem_sandbox::Confinement {
            group: &group,
            user: confined.user,
            limits: &BUILD_LIMITS,
            read: &[],
            write: &write,
            private_tmp: Some(&tmp),
        })
        .map_err(cannot)?;
    for missing in &prepared.missing {
        tracing::warn!(step = %step.name, "{missing}");
    }
    // Whatever happens, nothing of the step outlives it (a daemon that left
    // its process group is still in its control group).
    let _group = GroupRemover(&confined.sandbox, &group);
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&step.run)
        .current_dir(dir)
        .env_clear()
        .envs(
            INHERITED
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .env("HOME", &confined.home)
        .env("TMPDIR", confined.home.join("tmp"))
        .env("CI", "true")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if confined.user.is_some() {
        // Tandem's own toolchain settings point into its home, not the
        // service's.
        cmd.env_remove("CARGO_HOME");
        cmd.env_remove("USER");
    }
    prepared.install(cmd.as_std_mut());
    let mut child = cmd.spawn().map_err(cannot)?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    // Dropping this future (a cancelled run) must not leave the step's
    // children behind: the guard kills the whole group unless disarmed.
    let mut guard = GroupGuard(pgid);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(read_lines(stream, tx));
    }
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    let mut reported = 0usize;
    let mut keep = |line: String| {
        if reported < REPORTED {
            reported += line.len() + 1;
            let line = if reported >= REPORTED {
                format!(
                    "{line}\n[tandem] step {} printed more than {} MiB; the rest is not shown",
                    step.name,
                    REPORTED >> 20
                )
            } else {
                line.clone()
            };
            reporter.send(Progress::Log {
                step: step.name.clone(),
                line,
            });
        }
        if tail.len() == TAIL {
            tail.remove(0);
        }
        tail.push(line);
    };
    let collect = async {
        // Output until the shell exits...
        let exit = loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => keep(line),
                    None => break child.wait().await,
                },
                exit = child.wait() => break exit,
            }
        };
        // ...then what it left behind in its group goes, and what is still
        // in the pipes is read for a moment.
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while let Some(line) = rx.recv().await {
                keep(line);
            }
        })
        .await;
        exit
    };
    let status = tokio::time::timeout(step.timeout.to_std(), collect).await;
    if matches!(status, Ok(Ok(_))) {
        guard.0 = None;
    }
    drop(guard);
    // Nothing of it may live on to touch its checkout while tandem reads
    // it: its control groups emptied (and, with no groups, its user's
    // every process, a user only its builds have).
    let sandbox = confined.sandbox.clone();
    let (user, group2) = (confined.user, group.clone());
    let emptied = tokio::task::spawn_blocking(move || {
        let emptied = sandbox.cgroups().kill_all(&group2);
        if let (Some(uid), Some(_)) = (user, sandbox.cgroups().off()) {
            tandem_sandbox::kill_user(uid);
        }
        emptied
    })
    .await
    .unwrap_or(false);
    if !emptied {
        return Err((
            format!(
                "step {} left processes that could not be stopped",
                step.name
            ),
            tail,
        ));
    }
    match status {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err((format!("step {} failed: {s}", step.name), tail)),
        Ok(Err(e)) => Err((
            format!("step {} could not be waited for: {e}", step.name),
            tail,
        )),
        Err(_) => Err((
            format!("step {} timed out after {}", step.name, step.timeout),
            tail,
        )),
    }
}

/// Kills what is left in a step's control groups and removes them.
struct GroupRemover<'a>(&'a tandem_sandbox::Sandbox, &'a str);

impl Drop for GroupRemover<'_> {
    fn drop(&mut self) {
        self.0.cgroups().kill_all(self.1);
        self.0.remove(self.1);
    }
}

/// Names, in a step's environment, the data directory of the server that
/// ran it.
pub const MARK: &str = "TANDEM_STEP_OF";

/// The value of [`MARK`] for `data_dir`: its canonical path.
pub fn mark_of(data_dir: &Path) -> String {
    std::fs::canonicalize(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// Kills the process group of every step a server of `data_dir` left
/// running (it was killed mid-step: its steps, in groups of their own, live
/// on). Called at start, before any step runs; returns how many groups.
pub fn kill_leftovers(data_dir: &Path) -> usize {
    let mark = format!("{MARK}={}", mark_of(data_dir));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut groups = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes())
            && let Ok(pgid) = nix::unistd::getpgid(Some(Pid::from_raw(pid)))
        {
            groups.insert(pgid);
        }
    }
    for pgid in &groups {
        tracing::warn!(
            pgid = pgid.as_raw(),
            "a step left running by an earlier server; killing it"
        );
        let _ = killpg(*pgid, Signal::SIGKILL);
    }
    groups.len()
}

/// Reads `stream` into lines of at most [`MAX_LINE`] bytes (lossy UTF-8)
/// and sends them, waiting while the channel is full.
async fn read_lines(
    mut stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' || line.len() == MAX_LINE {
                if b == b'\n' && line.last() == Some(&b'\r') {
                    line.pop();
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                if tx.send(text).await.is_err() {
                    return;
                }
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned()).await;
    }
}

/// Kills a step's process group when dropped, unless disarmed (`None`).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: &str) -> Step {
        Step {
            name: "s".into(),
            run: run.into(),
            timeout: "20s".parse().expect("duration"),
        }
    }

    /// Confined as this machine allows, as no service's user.
    fn confined(dir: &Path) -> Confined {
        let home = dir.join("home");
        std::fs::create_dir_all(home.join("tmp")).expect("home");
        Confined {
            sandbox: Arc::new(tandem_sandbox::Sandbox::detect(dir, "test")),
            user: None,
            home,
        }
    }

    #[tokio::test]
    async fn a_daemon_that_left_its_process_group_does_not_outlive_its_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let confined = confined(dir.path());
        if !confined.sandbox.protections()[1].on {
            eprintln!("skipped: needs cgroups (CI runs as root)");
            return;
        }
        run(
            &step("setsid sleep 3003 > /dev/null 2>&1 < /dev/null & echo started"),
            dir.path(),
            &[],
            &confined,
            &Reporter::silent(),
        )
        .await
        .expect("the step succeeds");
        let left = std::process::Command::new("pgrep")
            .args(["-f", "sleep 3003"])
            .output()
            .expect("pgrep");
        assert!(left.stdout.is_empty(), "the daemon lives on");
    }

    #[tokio::test]
    async fn a_background_child_holding_the_output_neither_holds_the_step_nor_outlives_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = std::time::Instant::now();
        run(
            &step("sleep 3001 & echo started"),
            dir.path(),
            &[],
            &confined(dir.path()),
            &Reporter::silent(),
        )
        .await
        .expect("the step succeeds");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the step took {:?}",
            started.elapsed()
        );
        let left = std::process::Command::new("pgrep")
            .args(["-f", "sleep 3001"])
            .output()
            .expect("pgrep");
        assert!(left.stdout.is_empty(), "the background child lives on");
    }

    #[tokio::test]
    async fn output_without_newlines_is_cut_into_lines_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = Reporter::new(tx);
        run(
            &step("head -c 20000000 /dev/zero | tr '\\0' x; echo; echo last words"),
            dir.path(),
            &[],
            &confined(dir.path()),
            &reporter,
        )
        .await
        .expect("the step succeeds");
        drop(reporter);
        let mut lines = Vec::new();
        while let Some(p) = rx.recv().await {
            if let Progress::Log { line, .. } = p {
                lines.push(line);
            }
        }
        let longest = lines.iter().map(String::len).max().unwrap_or(0);
        let total: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(longest <= MAX_LINE + 200, "a line of {longest} bytes");
        assert!(total <= REPORTED + 2 * MAX_LINE, "{total} bytes passed on");
        assert!(
            lines
                .last()
                .is_some_and(|l| l.contains("the rest is not shown")),
            "{:?}",
            lines.last()
        );
    }

    #[tokio::test]
    async fn a_failing_step_keeps_its_last_lines_even_past_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run(
            &step("head -c 20000000 /dev/zero | tr '\\0' x; echo; echo the reason; exit 3"),
            dir.path(),
            &[],
            &confined(dir.path()),
            &Reporter::silent(),
        )
        .await
        .expect_err("the step fails");
        assert!(
            err.1.last().is_some_and(|l| l == "the reason"),
            "{:?}",
            err.1.last()
        );
    }
}
