//! Build and test steps: `/bin/sh -c` in the build tree, in a clean
//! environment, in their own process group, output streamed line by line,
//! killed as a group on timeout.

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tandem_core::spec::Step;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::progress::{Progress, Reporter};

/// Variables a step inherits from the control plane; everything else is
/// cleared, so a build does not depend on how the server was started.
const INHERITED: [&str; 6] = ["PATH", "HOME", "LANG", "TMPDIR", "USER", "CARGO_HOME"];

/// Lines of a failing step kept for the error message.
const TAIL: usize = 20;

/// Runs `step` in `dir` with `CI=true` and `env` added; `Err` carries the
/// reason and the last output lines.
pub async fn run(
    step: &Step,
    dir: &Path,
    env: &[(String, String)],
    reporter: &Reporter,
) -> Result<(), (String, Vec<String>)> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&step.run)
        .current_dir(dir)
        .env_clear()
        .envs(
            INHERITED
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .env("CI", "true")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            (
                format!("step {} could not start: {e}", step.name),
                Vec::new(),
            )
        })?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    // Dropping this future (a cancelled run) must not leave the step's
    // children behind: the guard kills the whole group unless disarmed.
    let mut guard = GroupGuard(pgid);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
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
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    let collect = async {
        while let Some(line) = rx.recv().await {
            reporter.send(Progress::Log {
                step: step.name.clone(),
                line: line.clone(),
            });
            if tail.len() == TAIL {
                tail.remove(0);
            }
            tail.push(line);
        }
        child.wait().await
    };
    let status = tokio::time::timeout(step.timeout.to_std(), collect).await;
    if matches!(status, Ok(Ok(_))) {
        guard.0 = None;
    }
    drop(guard);
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

/// Kills a step's process group when dropped, unless disarmed (`None`).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}
