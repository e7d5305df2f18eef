//! What confines an instance (see ARCHITECTURE.md, Isolation): for now
//! its limits. Each instance gets a control group of its own under
//! `tandem/<data dir hash>/` for memory, pids and cpu —
//! cgroup v2 where the kernel offers it whole, else v1 (one hierarchy per
//! controller), found once at agent start; and its open-files limit as an
//! rlimit. The process joins its groups between fork and exec, before
//! running anything of the service, so all it ever starts is counted.
//!
//! Without cgroups (not root, nothing delegated) only the rlimit applies;
//! the agent says so at start.

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
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Cgroups {
    /// What this machine offers the agent of `data_dir`, and whether it
    /// may use it; groups a killed agent left empty are removed.
    pub fn detect(data_dir: &Path) -> Cgroups {
        let cgroups = Cgroups {
            layout: Layout::detect_at(Path::new(ROOT)),
            parent: format!("tandem/{}", dir_key(data_dir)),
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
        let writable = |dir: &Path| std::fs::create_dir_all(dir.join("tandem")).is_ok();
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
            let _ = std::fs::remove_dir(dir.join(&name));
            // The agent's own parent too, once its last group is gone (it
            // is made again at the next start).
            let _ = std::fs::remove_dir(&dir);
        }
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
fn sanitize(id: &str) -> String {
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

/// Run in the child between fork and exec: joins the groups whose
/// `cgroup.procs` are open in `procs` and lowers the open-files limit.
/// Only async-signal-safe calls: `getpid`, `write`, `setrlimit`.
pub fn confine_self(procs: &[OwnedFd], nofile: Option<u64>) -> std::io::Result<()> {
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    // The pid in decimal, without allocating.
    let mut buf = [0u8; 12];
    let mut at = buf.len();
    let mut n = pid;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for fd in procs {
        // A group gone since it was made (removed by hand): the instance
        // runs unlimited rather than not at all.
        let _ = rustix::io::write(fd, &buf[at..]);
    }
    if let Some(n) = nofile {
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )?;
    }
    Ok(())
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
