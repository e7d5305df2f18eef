//! The one door (ARCHITECTURE.md, Isolation): every process tandem starts
//! for a service — its instances (the agent) and its build and test steps
//! (the server) — is confined here.
//!
//! A [`Confinement`] says who the process runs as, what it may use and
//! which paths it may read and write. [`Sandbox::prepare`] makes before the
//! fork what can be made there (the control groups, the Landlock ruleset,
//! both as open descriptors), and [`Prepared::install`] has the child apply
//! it between fork and exec with async-signal-safe calls only: join the
//! groups, set the rlimits, drop to the service's user, set
//! `no_new_privs`, restrict itself to the ruleset.
//!
//! Limits fail open (a process whose control groups cannot be made runs
//! without them and says so: the data plane does not stop for them). The
//! user and the fence fail closed: a process that cannot drop to its user
//! or enforce its ruleset never runs.

pub mod cgroups;
mod child;
mod fence;
pub mod paths;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use cgroups::Cgroups;
use tandem_core::protocol::Limits;

/// What this machine lets tandem do to confine services, found once at
/// start by the process that starts them.
#[derive(Debug)]
pub struct Sandbox {
    cgroups: Cgroups,
    /// The kernel's Landlock ABI (0: none).
    landlock: u32,
    /// Whether tandem may switch users (it runs as root).
    root: bool,
    /// Read-only for everyone: the system's paths and the operator's
    /// (`TANDEM_SANDBOX_READ`).
    read: Vec<PathBuf>,
}

/// How one process tree is to be confined.
pub struct Confinement<'a> {
    /// Its control groups' name (an instance id, `build-<run>`).
    pub group: &'a str,
    /// The service's user (and group); `None` where users are off.
    pub user: Option<u32>,
    pub limits: &'a Limits,
    /// Readable and executable beside the system's paths (its release).
    pub read: &'a [PathBuf],
    /// Readable and writable (its temp and state directories, a build's
    /// checkout).
    pub write: &'a [PathBuf],
    /// Seen as `/tmp` and `/var/tmp` by it alone (a mount namespace of its
    /// own, where tandem is root).
    pub private_tmp: Option<&'a Path>,
}

/// A confinement made ready for one process: descriptors the child uses.
#[derive(Debug)]
pub struct Prepared {
    procs: Vec<OwnedFd>,
    ruleset: Option<OwnedFd>,
    user: Option<u32>,
    nofile: Option<u64>,
    fsize: Option<u64>,
    /// The directory bound over `/tmp` and `/var/tmp` (those of them
    /// that hide none of its paths), as C strings.
    private_tmp: Option<(std::ffi::CString, [bool; 2])>,
    /// What could not be applied and is not enforced (limits fail open).
    pub missing: Vec<String>,
}

/// One protection and whether it is on, for `up` to say at start.
#[derive(Clone, Debug, PartialEq)]
pub struct Protection {
    pub name: &'static str,
    pub on: bool,
    pub detail: String,
}

/// Paths every service may read and execute, where they exist.
const SYSTEM_READ: [&str; 12] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/run/systemd/resolve",
];

/// The operator's additions to [`SYSTEM_READ`], `:`-separated (a
/// toolchain outside `/usr`, say).
pub const READ_VARIABLE: &str = "TANDEM_SANDBOX_READ";

impl Sandbox {
    /// What the process serving `data_dir` may use; `part` names its
    /// control groups apart from another process's (see [`Cgroups`]).
    pub fn detect(data_dir: &Path, part: &str) -> Sandbox {
        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        if let Some(extra) = std::env::var_os(READ_VARIABLE) {
            read.extend(std::env::split_paths(&extra).filter(|p| p.is_absolute()));
        }
        read.retain(|p| p.exists());
        Sandbox {
            cgroups: Cgroups::detect(data_dir, part),
            landlock: fence::abi(),
            root: rustix::process::geteuid().is_root(),
            read,
        }
    }

    /// Whether processes get users of their own.
    pub fn users(&self) -> bool {
        self.root
    }

    /// The user `unit`'s processes run as: `given` (the store's), which
    /// must be a service uid — never root, never tandem's; for a unit
    /// started before users existed (a state file of an older agent), one
    /// derived from its name in a range of its own. `None` where users are
    /// off.
    pub fn user_for(&self, given: Option<u32>, unit: &str) -> std::io::Result<Option<u32>> {
        use tandem_core::protocol::{FIRST_SERVICE_UID, SERVICE_UIDS};
        if !self.root {
            return Ok(None);
        }
        match given {
            Some(uid) if (FIRST_SERVICE_UID..FIRST_SERVICE_UID + SERVICE_UIDS).contains(&uid) => {
                Ok(Some(uid))
            }
            Some(uid) => Err(std::io::Error::other(format!(
                "refused: uid {uid} is not a service's (those are {FIRST_SERVICE_UID} to {})",
                FIRST_SERVICE_UID + SERVICE_UIDS - 1
            ))),
            None => {
                let h = cgroups::fnv(unit.as_bytes());
                Ok(Some(
                    FIRST_SERVICE_UID + SERVICE_UIDS + (h % u64::from(SERVICE_UIDS)) as u32,
                ))
            }
        }
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// Makes what `c` needs before the fork. `Err`: the process must not
    /// run (its ruleset could not be made).
    pub fn prepare(&self, c: &Confinement) -> std::io::Result<Prepared> {
        let mut missing = Vec::new();
        let procs = self.cgroups.prepare(c.group, c.limits).unwrap_or_else(|e| {
            missing.push(format!("limits not applied: {e}"));
            Vec::new()
        });
        let ruleset = if self.landlock > 0 {
            let mut read = self.read.clone();
            read.extend(c.read.iter().cloned());
            fence::ruleset(&read, c.write).map_err(|e| {
                std::io::Error::other(format!("cannot make the Landlock ruleset: {e}"))
            })?
        } else {
            None
        };
        // Never above what tandem may give (a higher one would make
        // `setrlimit` fail, and the process never start).
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        let nofile = c.limits.nofile.map(|n| hard.map_or(n, |h| n.min(h)));
        Ok(Prepared {
            procs,
            ruleset,
            user: c.user.filter(|_| self.root),
            nofile,
            fsize: c.limits.disk_bytes,
            private_tmp: match c.private_tmp.filter(|_| self.root) {
                Some(dir) => {
                    // A data directory under /tmp (a test's) stays visible.
                    let hides =
                        |target: &str| c.read.iter().chain(c.write).any(|p| p.starts_with(target));
                    Some((
                        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                            .map_err(std::io::Error::other)?,
                        [!hides("/tmp"), !hides("/var/tmp")],
                    ))
                }
                None => None,
            },
            missing,
        })
    }

    /// Removes `group`'s control groups once nothing runs in them.
    pub fn remove(&self, group: &str) {
        self.cgroups.remove(group);
    }

    /// Each protection, on or off and why.
    pub fn protections(&self) -> Vec<Protection> {
        let uid = rustix::process::geteuid().as_raw();
        vec![
            Protection {
                name: "users",
                on: self.root,
                detail: if self.root {
                    format!(
                        "each service runs as a user of its own (uids from {})",
                        tandem_core::protocol::FIRST_SERVICE_UID
                    )
                } else {
                    format!(
                        "tandem runs as uid {uid}, not root, and cannot switch users: \
                         services run as tandem's user (the fence still keeps them \
                         out of its files)"
                    )
                },
            },
            Protection {
                name: "limits",
                on: self.cgroups.off().is_none(),
                detail: match self.cgroups.off() {
                    Some(why) => format!("{why}: memory, cpu and pids are not limited"),
                    None => format!("memory, cpu and pids by {}", self.cgroups.kind()),
                },
            },
            Protection {
                name: "fence",
                on: self.landlock > 0,
                detail: if self.landlock > 0 {
                    format!(
                        "Landlock ABI {}: files{}",
                        self.landlock,
                        if self.landlock >= 6 {
                            ", signals and abstract sockets"
                        } else {
                            " (signals need ABI 6)"
                        }
                    )
                } else {
                    "the kernel offers no Landlock: services can read what their \
                     user may"
                        .into()
                },
            },
        ]
    }
}

/// Kills every process of `uid` (a user only one service's builds have):
/// a child that becomes `uid` sends SIGKILL to all it may signal.
pub fn kill_user(uid: u32) {
    child::kill_user(uid);
}

/// Variables of tandem's environment a confined process never gets: its
/// own credentials (the key that opens every secret, an API token) and
/// ways out of the fence to the operator's session (its bus, its agents).
pub const WITHHELD: [&str; 9] = [
    tandem_seal::KEY_VARIABLE,
    "TANDEM_TOKEN",
    "TANDEM_LOG_FILE",
    "NOTIFY_SOCKET",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "SSH_AUTH_SOCK",
    "GPG_AGENT_INFO",
    "KRB5CCNAME",
];

impl Prepared {
    /// Has `cmd`'s child apply this between fork and exec, and keeps
    /// [`WITHHELD`] out of its environment.
    pub fn install(self, cmd: &mut std::process::Command) {
        for name in WITHHELD {
            cmd.env_remove(name);
        }
        child::install(cmd, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::protocol::{FIRST_SERVICE_UID, SERVICE_UIDS};

    fn as_root() -> Sandbox {
        Sandbox {
            cgroups: Cgroups::none(),
            landlock: 0,
            root: true,
            read: Vec::new(),
        }
    }

    #[test]
    fn only_service_uids_are_taken_and_an_old_group_gets_one_of_its_own() {
        let s = as_root();
        assert_eq!(
            s.user_for(Some(FIRST_SERVICE_UID), "a").ok(),
            Some(Some(FIRST_SERVICE_UID))
        );
        for bad in [
            0,
            1000,
            FIRST_SERVICE_UID - 1,
            FIRST_SERVICE_UID + SERVICE_UIDS,
        ] {
            assert!(s.user_for(Some(bad), "a").is_err(), "uid {bad} taken");
        }
        let old = s.user_for(None, "shop").expect("derived").expect("some");
        assert!(
            (FIRST_SERVICE_UID + SERVICE_UIDS..FIRST_SERVICE_UID + 2 * SERVICE_UIDS).contains(&old)
        );
        assert_eq!(s.user_for(None, "shop").expect("again"), Some(old));
        assert_ne!(s.user_for(None, "cart").expect("other"), Some(old));
        let not_root = Sandbox {
            root: false,
            ..as_root()
        };
        assert_eq!(not_root.user_for(Some(0), "a").ok(), Some(None));
    }
}
