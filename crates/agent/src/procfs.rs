//! `/proc/<pid>/stat`, read once for the agent: what restore (pid reuse)
//! and the readiness hint (a process group's sockets) need of it.

/// The fields of `/proc/<pid>/stat` the agent goes by.
pub struct Stat {
    /// `R`, `S`, … `Z` for a zombie.
    pub state: String,
    pub pgrp: u32,
    /// When it started, in clock ticks after boot.
    pub start_time: u64,
}

/// `pid`'s stat, if it runs. The command name, in parentheses, may hold
/// spaces and parentheses itself: the fields follow the last `)`.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // state, ppid, pgrp, … starttime (field 22 of the whole line).
    Some(Stat {
        state: (*fields.first()?).to_owned(),
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every process id in `/proc` (those this agent may look at).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Names the instance in its environment (set by the agent at spawn).
pub const INSTANCE_VAR: &str = "TANDEM_INSTANCE";
/// Names the data directory of the agent that started it.
pub const AGENT_DIR_VAR: &str = "TANDEM_AGENT_DIR";

/// An instance found running by the marks in its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub id: String,
    pub port: u16,
    pub start_time: u64,
}

/// Every running process that leads its process group and whose
/// environment marks it as an instance of the agent of `data_dir`: what
/// an agent started, found without its state file. (Environments of other
/// users' processes cannot be read; an agent finds its own.)
pub fn marked_instances(data_dir: &std::path::Path) -> Vec<Found> {
    let dir = data_dir.to_string_lossy();
    let mut found = Vec::new();
    for pid in pids() {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut id, mut port, mut ours) = (None, None, false);
        for var in environ.split(|b| *b == 0) {
            let Ok(var) = std::str::from_utf8(var) else {
                continue;
            };
            match var.split_once('=') {
                Some((INSTANCE_VAR, v)) => id = Some(v.to_owned()),
                Some((AGENT_DIR_VAR, v)) => ours = v == dir,
                Some(("PORT", v)) => port = v.parse().ok(),
                _ => {}
            }
        }
        let (Some(id), Some(port), true) = (id, port, ours) else {
            continue;
        };
        // A child of an instance inherits its marks; the instance is the
        // leader of its process group.
        if let Some(st) = stat(pid)
            && st.state != "Z"
            && st.pgrp == pid
        {
            found.push(Found {
                pid,
                id,
                port,
                start_time: st.start_time,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_process_group_leader_is_found_and_its_children_and_others_are_not() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let spawn = |data: &std::path::Path, id: &str| {
            std::process::Command::new("/bin/sh")
                .args(["-c", "sleep 30 & wait"])
                .env(INSTANCE_VAR, id)
                .env(AGENT_DIR_VAR, data)
                .env("PORT", "4321")
                .process_group(0)
                .spawn()
                .expect("spawn")
        };
        let mut mine = spawn(dir.path(), "web-r1-1");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let mut theirs = spawn(other_dir.path(), "web-r1-1");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let found = marked_instances(dir.path());
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(mine.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(theirs.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = (mine.wait(), theirs.wait());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, mine.id());
        assert_eq!(found[0].id, "web-r1-1");
        assert_eq!(found[0].port, 4321);
    }

    #[test]
    fn the_own_process_reads_as_running_with_its_group_and_start() {
        let me = stat(std::process::id()).expect("own stat");
        assert_ne!(me.state, "Z");
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw() as u32);
        assert!(me.start_time > 0);
        assert!(stat(u32::MAX).is_none(), "no such process");
    }
}
