//! Control groups: each confined process tree (an instance, a build)
//! gets a group of its own under `tandem/<data dir hash>/` for memory,
//! pids and cpu — cgroup v2 where the kernel offers it whole, else v1 (one
//! hierarchy per controller), found once at start. The process joins its
//! groups between fork and exec (see `child`), before running anything of
//! the service, so all it ever starts is counted.
//!
//! Without cgroups (not root, nothing delegated) limits other than the
//! rlimits do not apply; `Sandbox::protections` says so.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tandem_core::protocol::Limits;

/// The cgroup layout of this machine, and where this agent's groups are
/// in it: `tandem/<data directory's hash>/<instance>`, so that agents of
/// other data directories never touch them.
#[derive(Clone, Debug, PartialEq)]
pub struct Cgroups {
    layout: Layout,
    parent: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Layout {
    /// One unified hierarchy (`cgroup.controllers` at its root).
    V2(PathBuf),
    /// A hierarchy per controller: `<root>/<controller>`.
    V1(PathBuf),
    /// None usable: limits other than open files are not enforced.
    None(String),
}

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// FNV-1a of the data directory: a short, stable name for its groups.
fn dir_key(dir: &Path) -> String {
    format!("{:016x}", fnv(dir.as_os_str().as_encoded_bytes()))
}

/// FNV-1a of `bytes`.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Cgroups {
    /// What this machine offers the agent of `data_dir`, and whether it
    /// may use it; groups a killed agent left empty are removed.
    /// `part` keeps the groups of different processes apart (the agent's
    /// instances: empty; the server's builds: `builds`), so one cleaning
    /// up never races the other making a group.
    pub fn detect(data_dir: &Path, part: &str) -> Cgroups {
        // The same directory however it was named.
        let key = dir_key(&std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.into()));
        let cgroups = Cgroups {
            layout: Layout::detect_at(Path::new(ROOT)),
            parent: if part.is_empty() {
                format!("tandem/{key}")
            } else {
                format!("tandem/{key}-{part}")
            },
        };
        for dir in cgroups.dirs() {
            let _ = std::fs::create_dir_all(&dir);
            if let Layout::V2(_) = cgroups.layout {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    // Fails, harmlessly, for a group with a process in it.
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        cgroups
    }

    /// No control groups (for tests of what does not need them).
    #[cfg(test)]
    pub(crate) fn none() -> Cgroups {
        Cgroups {
            layout: Layout::None("none in this test".into()),
            parent: String::new(),
        }
    }

    /// This agent's parent group in each hierarchy.
    fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::None(_) => Vec::new(),
            Layout::V2(root) => vec![root.join(&self.parent)],
            Layout::V1(root) => CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(&self.parent))
                .collect(),
        }
    }
}

impl Layout {
    fn detect_at(root: &Path) -> Layout {
        // Made (by root, once) and ours to make groups in.
        let writable = |dir: &Path| {
            std::fs::create_dir_all(dir.join("tandem")).is_ok()
                && rustix::fs::access(dir.join("tandem"), rustix::fs::Access::WRITE_OK).is_ok()
        };
        if root.join("cgroup.controllers").exists() {
            let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if CONTROLLERS
                .iter()
                .all(|c| have.split_whitespace().any(|h| h == *c))
                && writable(root)
            {
                // The controllers for the groups under ours.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let _ = std::fs::write(
                    root.join("tandem").join("cgroup.subtree_control"),
                    "+memory +pids +cpu",
                );
                return Layout::V2(root.to_path_buf());
            }
            return Layout::None(format!(
                "cgroup v2 at {} lacks memory, pids or cpu, or is not ours to write",
                root.display()
            ));
        }
        let v1 = CONTROLLERS
            .iter()
            .all(|c| root.join(c).join("cgroup.procs").exists() && writable(&root.join(c)));
        if v1 {
            Layout::V1(root.to_path_buf())
        } else {
            Layout::None(format!(
                "no writable memory, pids and cpu cgroups under {} (not root?)",
                root.display()
            ))
        }
    }
}

impl Cgroups {
    /// Makes instance `id`'s groups with `limits` and opens the files the
    /// process writes itself into (`cgroup.procs`), one per hierarchy.
    pub fn prepare(&self, id: &str, limits: &Limits) -> std::io::Result<Vec<OwnedFd>> {
        let name = sanitize(id);
        let mut procs = Vec::new();
        match &self.layout {
            Layout::None(_) => {}
            Layout::V2(root) => {
                let parent = root.join(&self.parent);
                std::fs::create_dir_all(&parent)?;
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let dir = parent.join(&name);
                std::fs::create_dir_all(&dir)?;
                let set = |file: &str, value: String| std::fs::write(dir.join(file), value);
                set(
                    "memory.max",
                    limits.memory_bytes.map_or("max".into(), |b| b.to_string()),
                )?;
                // Past its memory, the group is killed whole, not a part of it.
                let _ = set("memory.swap.max", "0".into());
                let _ = set("memory.oom.group", "1".into());
                set(
                    "pids.max",
                    limits.pids.map_or("max".into(), |n| n.to_string()),
                )?;
                set(
                    "cpu.max",
                    limits.cpu_millis.map_or("max 100000".into(), |m| {
                        format!("{} 100000", u64::from(m) * 100)
                    }),
                )?;
                procs.push(open_procs(&dir)?);
            }
            Layout::V1(root) => {
                for controller in CONTROLLERS {
                    let dir = root.join(controller).join(&self.parent).join(&name);
                    std::fs::create_dir_all(&dir)?;
                    let set = |file: &str, value: String| std::fs::write(dir.join(file), value);
                    match controller {
                        "memory" => {
                            // -1: no limit.
                            set(
                                "memory.limit_in_bytes",
                                limits.memory_bytes.map_or("-1".into(), |b| b.to_string()),
                            )?;
                            let _ = set("memory.swappiness", "0".into());
                        }
                        "pids" => set(
                            "pids.max",
                            limits.pids.map_or("max".into(), |n| n.to_string()),
                        )?,
                        _ => {
                            let _ = set("cpu.cfs_period_us", "100000".into());
                            set(
                                "cpu.cfs_quota_us",
                                limits
                                    .cpu_millis
                                    .map_or("-1".into(), |m| (u64::from(m) * 100).to_string()),
                            )?;
                        }
                    }
                    procs.push(open_procs(&dir)?);
                }
            }
        }
        Ok(procs)
    }

    /// Removes instance `id`'s groups once nothing runs in them (a group
    /// with a process in it is left; the next start finds it again).
    pub fn remove(&self, id: &str) {
        let name = sanitize(id);
        for dir in self.dirs() {
            // The parent stays: another group may be being made in it.
            let _ = std::fs::remove_dir(dir.join(&name));
        }
    }

    /// Kills every process in `id`'s groups, those that left their
    /// process group too, and none can fork meanwhile (`cgroup.kill`
    /// where the kernel has it, else its pids limit set to 0 first).
    /// Whether the groups are empty now (true without control groups).
    pub fn kill_all(&self, id: &str) -> bool {
        let dir = match &self.layout {
            Layout::None(_) => return true,
            Layout::V2(root) => root.join(&self.parent).join(sanitize(id)),
            Layout::V1(root) => root.join("pids").join(&self.parent).join(sanitize(id)),
        };
        if !dir.exists() {
            return true;
        }
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            let _ = std::fs::write(dir.join("pids.max"), "0");
        }
        for _ in 0..200 {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                return true;
            };
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return true;
            }
            for pid in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    /// Removes every group of this agent that nothing runs in, and its
    /// parent (when everything has stopped).
    pub fn remove_all(&self) {
        for dir in self.dirs() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Which kind of control groups, for the start report.
    pub fn kind(&self) -> &'static str {
        match &self.layout {
            Layout::V2(_) => "cgroup v2",
            Layout::V1(_) => "cgroup v1",
            Layout::None(_) => "nothing",
        }
    }

    /// What is off, for the agent to say at start.
    pub fn off(&self) -> Option<&str> {
        match &self.layout {
            Layout::None(why) => Some(why),
            _ => None,
        }
    }
}

fn open_procs(dir: &Path) -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?
        .into())
}

/// An instance id as a group name: no `/`, nothing hidden.
pub(crate) fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_@.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_plain_group_names() {
        assert_eq!(sanitize("shop@staging-r3-1"), "shop@staging-r3-1");
        assert_eq!(sanitize("../x/y"), "_x_y");
    }

    #[test]
    fn a_machine_without_cgroups_says_why() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(matches!(Layout::detect_at(dir.path()), Layout::None(_)));
    }

    #[test]
    fn each_data_directory_has_groups_of_its_own() {
        assert_ne!(dir_key(Path::new("/a/data")), dir_key(Path::new("/b/data")));
        assert_eq!(dir_key(Path::new("/a/data")).len(), 16);
    }
}
