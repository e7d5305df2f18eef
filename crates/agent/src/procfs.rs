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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_process_reads_as_running_with_its_group_and_start() {
        let me = stat(std::process::id()).expect("own stat");
        assert_ne!(me.state, "Z");
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw() as u32);
        assert!(me.start_time > 0);
        assert!(stat(u32::MAX).is_none(), "no such process");
    }
}
