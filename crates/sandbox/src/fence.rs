//! The Landlock ruleset of a confined process: the system's paths and its
//! release read-only, its own directories read-write, `/dev`'s devices
//! usable; from ABI 6 on, no signals to and no abstract sockets of
//! processes outside it (the agent, the server, other services).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};

/// The newest ABI this code was written and tested against; a newer
/// kernel enforces this much, an older one what it has (best effort).
const TARGET: ABI = ABI::V6;

/// Devices a confined process may open.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The kernel's Landlock ABI version (0: none).
pub(crate) fn abi() -> u32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only answers the
    // version.
    #[allow(unsafe_code)]
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// A ruleset allowing `read` (read, list, execute) and `write` (all),
/// as a descriptor for the child's `landlock_restrict_self`.
pub(crate) fn ruleset(
    read: &[PathBuf],
    write: &[PathBuf],
) -> Result<Option<OwnedFd>, landlock::RulesetError> {
    let mut rs = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))?
        .scope(Scope::from_all(TARGET))?
        .create()?;
    // The harmless devices only: no terminals, disks or shared memory.
    let dev = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let devices: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    let rules = read
        .iter()
        .map(|p| (p, AccessFs::from_read(TARGET)))
        .chain(devices.iter().map(|p| (p, dev)))
        .chain(write.iter().map(|p| (p, AccessFs::from_all(TARGET))));
    for (path, access) in rules {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        // A file takes only the rights a file can have.
        let access = if meta.is_dir() {
            access
        } else {
            access & AccessFs::from_file(TARGET)
        };
        let Ok(fd) = PathFd::new(path) else {
            continue;
        };
        rs = rs.add_rule(PathBeneath::new(fd, access))?;
    }
    Ok(rs.into())
}
