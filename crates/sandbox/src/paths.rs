//! The data directory as confined processes see it. It is searchable but
//! not listable (0711) so that a service's user can reach what is its own
//! by name: the release directories under `artifacts/` (read-only,
//! content-addressed), its private directories under `sandbox/` and a
//! build's checkout under `work/`. Everything else at the top (the
//! database, keys, logs, git mirrors, the agent's socket and state) is
//! owner-only, so nothing below it is reachable by any other user.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Top-level entries other users may pass through (never list).
pub const PASSABLE: [&str; 3] = ["artifacts", "sandbox", "work"];

/// Files at the top of the data directory that anyone who knows their name
/// may read: the journal's witness file of signed checkpoints.
pub const PUBLIC: [&str; 1] = ["checkpoints.log"];

/// An instance's private temporary directory, removed when it stops.
pub fn tmp_dir(data_dir: &Path, instance: &str) -> PathBuf {
    data_dir.join("sandbox").join("tmp").join(name(instance))
}

/// A unit's state directory (`run.state_dir`), kept across releases.
pub fn state_dir(data_dir: &Path, unit: &str) -> PathBuf {
    data_dir.join("sandbox").join("state").join(name(unit))
}

/// A service's home for its builds (caches such as `~/.cargo`).
pub fn build_home(data_dir: &Path, service: &str) -> PathBuf {
    data_dir.join("sandbox").join("home").join(name(service))
}

/// An id as one path component: no `/`, nothing hidden.
fn name(id: &str) -> String {
    crate::cgroups::sanitize(id)
}

/// Makes `dir` (and its parents, passable) owned by `uid` and private to
/// it; an existing one is given to `uid` again (not its contents).
pub fn own_dir(dir: &Path, uid: Option<u32>) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)?;
        // Explicitly: the process's mask (tandem's is 077) applied above;
        // a parent of the service's own (a build's home) stays as it is.
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(parent)?.uid() == rustix::process::geteuid().as_raw() {
            set_mode(parent, 0o711)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // Owner and mode set on the directory opened, never through a path a
    // process of `uid` could have swapped for a link meanwhile (a build's
    // home is its own).
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if let Some(uid) = uid {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(uid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    Ok(())
}

/// Gives everything under `dir` to `uid` (a checkout before its build);
/// symbolic links themselves, never what they point at. Walked by
/// descriptors, never by path: a directory swapped for a link meanwhile
/// (by a process of `uid`) leads nowhere else.
pub fn give_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    give_fd(&fd, uid)
}

fn give_fd(dir: &std::os::fd::OwnedFd, uid: u32) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};
    let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)));
    rustix::fs::fchown(dir, owner, group)?;
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        match rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(sub) => give_fd(&sub, uid)?,
            // Not a directory (a file, a link): itself.
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                rustix::fs::chownat(dir, name, owner, group, AtFlags::SYMLINK_NOFOLLOW)?
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Opens `rel` under `root` for reading without following a symbolic
/// link anywhere on the way, nor leaving `root`: what a process that can
/// change the tree meanwhile cannot redirect (`openat2`, Linux 5.6; older
/// kernels: no link as the last component only).
pub fn open_beneath(root: &Path, rel: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match rustix::fs::openat2(
        &dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(fd.into()),
        Err(rustix::io::Errno::NOSYS) => {
            Ok(rustix::fs::openat(&dir, rel, flags, Mode::empty())?.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets the data directory's modes as described above. Run at every
/// start: a directory made by an older tandem gets them too.
pub fn harden(data_dir: &Path) -> std::io::Result<()> {
    set_mode(data_dir, 0o711)?;
    for dir in PASSABLE {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(data_dir.join(dir))?;
    }
    for dir in ["tmp", "state", "home"] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(data_dir.join("sandbox").join(dir))?;
        set_mode(&data_dir.join("sandbox").join(dir), 0o711)?;
    }
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let passable = entry
            .file_name()
            .to_str()
            .is_some_and(|n| PASSABLE.contains(&n));
        let mode = meta.permissions().mode() & 0o7777;
        let public = entry
            .file_name()
            .to_str()
            .is_some_and(|n| PUBLIC.contains(&n));
        let want = if passable && meta.is_dir() {
            0o711
        } else if public && meta.is_file() {
            0o644
        } else {
            mode & 0o700
        };
        if mode != want {
            set_mode(&entry.path(), want)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// What one entry costs at least: a block and an inode, so that a tree
/// of millions of empty files is over a limit (and the walk ends) rather
/// than free and walked whole every time.
const ENTRY_AT_LEAST: u64 = 4096;

/// The disk space the files under `dirs` take (their blocks, so a sparse
/// file counts what it uses; each entry at least [`ENTRY_AT_LEAST`]),
/// counted up to a little past `enough`.
pub fn usage(dirs: &[PathBuf], enough: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut todo: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            total += (meta.blocks() * 512).max(ENTRY_AT_LEAST);
            if meta.is_dir() {
                todo.push(e.path());
            }
            if total > enough {
                return total;
            }
        }
    }
    total
}

/// Makes what tandem creates from now on owner-only (its database, keys,
/// logs), and the process undumpable: no core file of its memory, and
/// `/proc/<pid>` of it (environment, memory) root's alone even to
/// processes of the same user.
pub fn protect_self() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // SAFETY: prctl with integer arguments.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Whether other users can reach `dir` (every directory on its way is
/// searchable by them); the first one that is not, if any.
pub fn unreachable_ancestor(dir: &Path) -> Option<(PathBuf, u32)> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for a in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a).ok()?.permissions().mode();
        if mode & 0o001 == 0 {
            return Some((a.to_path_buf(), mode & 0o7777));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_passable_entries_stay_open() {
        let d = tempfile::tempdir().expect("tmp");
        let data = d.path().join("data");
        std::fs::create_dir_all(data.join("artifacts/abc")).expect("mkdir");
        std::fs::create_dir_all(data.join("git/x.git")).expect("mkdir");
        std::fs::write(data.join("tandem.db"), "db").expect("db");
        set_mode(&data.join("tandem.db"), 0o644).expect("chmod");
        set_mode(&data.join("git"), 0o755).expect("chmod");
        harden(&data).expect("harden");
        let mode = |p: &str| {
            std::fs::metadata(data.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o711);
        assert_eq!(mode("artifacts"), 0o711);
        assert_eq!(mode("tandem.db"), 0o600);
        assert_eq!(mode("git"), 0o700);
        assert_eq!(mode("sandbox/tmp"), 0o711);
    }

    #[test]
    fn a_directory_swapped_for_a_link_leads_nowhere() {
        let d = tempfile::tempdir().expect("tmp");
        let (root, outside) = (d.path().join("root"), d.path().join("outside"));
        std::fs::create_dir_all(root.join("dist")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("store.key"), "secret").expect("key");
        std::fs::write(root.join("dist/ok"), "fine").expect("ok");
        assert!(open_beneath(&root, Path::new("dist/ok")).is_ok());
        std::fs::remove_dir_all(root.join("dist")).expect("rm");
        std::os::unix::fs::symlink(&outside, root.join("dist")).expect("link");
        assert!(open_beneath(&root, Path::new("dist/store.key")).is_err());
        assert!(open_beneath(&root, Path::new("../outside/store.key")).is_err());
        if rustix::process::geteuid().is_root() {
            // Given away: the tree, not what a link in it names.
            give_tree(&root, 12345).expect("give");
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                std::fs::metadata(outside.join("store.key"))
                    .expect("m")
                    .uid(),
                0
            );
            assert_eq!(
                std::fs::symlink_metadata(root.join("dist"))
                    .expect("m")
                    .uid(),
                12345
            );
        }
    }

    #[test]
    fn many_empty_files_cost_space_and_the_count_stops_past_enough() {
        let d = tempfile::tempdir().expect("tmp");
        for i in 0..2000 {
            std::fs::write(d.path().join(i.to_string()), "").expect("file");
        }
        let all = usage(&[d.path().to_path_buf()], u64::MAX);
        assert!(all >= 2000 * ENTRY_AT_LEAST, "{all}");
        // Past `enough` the walk ends: a little over it, not the whole.
        let some = usage(&[d.path().to_path_buf()], 100 * ENTRY_AT_LEAST);
        assert!(some > 100 * ENTRY_AT_LEAST && some < all, "{some} of {all}");
    }

    #[test]
    fn own_dir_gives_the_directory_not_what_a_link_names() {
        let d = tempfile::tempdir().expect("tmp");
        let target = d.path().join("elsewhere");
        std::fs::create_dir(&target).expect("mkdir");
        std::os::unix::fs::symlink(&target, d.path().join("link")).expect("link");
        assert!(own_dir(&d.path().join("link"), None).is_err());
        let mode = std::fs::metadata(&target).expect("m").permissions().mode() & 0o777;
        assert_ne!(mode, 0o700, "the link's target was changed");
        own_dir(&d.path().join("mine"), None).expect("own");
        let mode = std::fs::metadata(d.path().join("mine"))
            .expect("m")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_private_ancestor_is_named() {
        let d = tempfile::tempdir().expect("tmp");
        let inner = d.path().join("a/b");
        std::fs::create_dir_all(&inner).expect("mkdir");
        set_mode(&d.path().join("a"), 0o700).expect("chmod");
        let (at, mode) = unreachable_ancestor(&inner).expect("found");
        assert_eq!(
            at,
            std::fs::canonicalize(d.path().join("a")).expect("canon")
        );
        assert_eq!(mode, 0o700);
    }
}
