//! Content-addressed artifacts: a release's files are copied once into
//! `<data>/artifacts/<sha256>/` and never changed after.
//!
//! The digest covers each file's relative path, executable bit and bytes
//! (a symbolic link's target instead of bytes), in path order, so the same
//! tree always gets the same address.
//!
//! A service's tree is hostile input: a symbolic link is taken as a link,
//! never followed, and only when it points inside the tree (a link to
//! `/etc/shadow` would otherwise be copied into the release and served);
//! FIFOs, sockets and devices are refused (reading `/dev/zero` or a FIFO
//! would never end); files are opened without following links and read
//! only when they are regular files.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

/// Directories never taken into an artifact.
const SKIP_DIRS: [&str; 2] = [".git", ".tandem"];

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact path {0} does not exist in the build tree")]
    Missing(String),
    #[error("artifact path {0} leaves the build tree")]
    Escapes(String),
    #[error(
        "{path} is a symbolic link to {target}, outside the tree: an artifact takes links only to files inside it"
    )]
    LinkOutside { path: String, target: String },
    #[error(
        "{path} is a {kind}: an artifact takes regular files, directories and links inside the tree"
    )]
    Special { path: String, kind: &'static str },
    /// Whoever asked for the work has gone (a cancelled run, a server
    /// that stops).
    #[error("stopped: the work that asked for the artifact ended")]
    Abandoned,
    #[error("cannot read or copy {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Set once the caller of a piece of file work has gone: the work stops at
/// the next file or the next 64 KiB. A blocking thread cannot be
/// cancelled, so the async side sets this when it is dropped
/// ([`Abandoned::on_drop`]).
#[derive(Clone, Default)]
pub struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    fn check(&self) -> Result<(), ArtifactError> {
        if self.0.load(Ordering::Relaxed) {
            Err(ArtifactError::Abandoned)
        } else {
            Ok(())
        }
    }

    /// A guard that marks the work abandoned when dropped (keep it in the
    /// future that waits for the work).
    pub fn on_drop(&self) -> AbandonOnDrop {
        AbandonOnDrop(self.clone())
    }
}

/// See [`Abandoned::on_drop`].
pub struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Files to take from `root`: everything (`paths` empty) or the listed
/// files and directories, relative to `root`.
pub fn collect(root: &Path, paths: &[String]) -> Result<Vec<PathBuf>, ArtifactError> {
    let mut files = Vec::new();
    if paths.is_empty() {
        walk(root, Path::new(""), &mut files)?;
    } else {
        for p in paths {
            let rel = Path::new(p.trim_end_matches('/'));
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(ArtifactError::Escapes(p.clone()));
            }
            let full = root.join(rel);
            let meta =
                std::fs::symlink_metadata(&full).map_err(|_| ArtifactError::Missing(p.clone()))?;
            if meta.is_dir() {
                walk(root, rel, &mut files)?;
            } else {
                check_entry(root, rel, meta.file_type())?;
                files.push(rel.to_path_buf());
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), ArtifactError> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name();
        let child = rel.join(&name);
        let kind = entry.file_type().map_err(io(&dir))?;
        if kind.is_dir() {
            if !SKIP_DIRS.iter().any(|s| name == *s) {
                walk(root, &child, out)?;
            }
        } else {
            check_entry(root, &child, kind)?;
            out.push(child);
        }
    }
    Ok(())
}

/// Refuses what an artifact cannot take: a link that leads outside the
/// tree, and anything but regular files and links.
fn check_entry(root: &Path, rel: &Path, kind: std::fs::FileType) -> Result<(), ArtifactError> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() {
        return Ok(());
    }
    if kind.is_symlink() {
        let full = root.join(rel);
        let target = std::fs::read_link(&full).map_err(io(&full))?;
        if !stays_inside(rel, &target) {
            return Err(ArtifactError::LinkOutside {
                path: rel.display().to_string(),
                target: target.display().to_string(),
            });
        }
        return Ok(());
    }
    let kind = match () {
        () if kind.is_fifo() => "FIFO",
        () if kind.is_socket() => "socket",
        () if kind.is_block_device() || kind.is_char_device() => "device",
        () => "special file",
    };
    Err(ArtifactError::Special {
        path: rel.display().to_string(),
        kind,
    })
}

/// Whether the link at `rel` (relative to the tree's root) with `target`
/// points inside the tree, judged by its words alone: relative, and never
/// climbing above the root. (A target that is itself a link is judged when
/// it is collected.)
fn stays_inside(rel: &Path, target: &Path) -> bool {
    use std::path::Component;
    if target.is_absolute() {
        return false;
    }
    let mut depth = rel.components().count().saturating_sub(1);
    for part in target.components() {
        match part {
            Component::ParentDir if depth == 0 => return false,
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// `path` opened for reading without following a link, as a regular file.
fn open_regular(root: &Path, rel: &Path) -> Result<std::fs::File, ArtifactError> {
    let path = &root.join(rel);
    // No link anywhere on the way: the build's user may have swapped a
    // directory for one since the tree was listed.
    let file = tandem_sandbox::paths::open_beneath(root, rel).map_err(io(path))?;
    let kind = file.metadata().map_err(io(path))?.file_type();
    if !kind.is_file() {
        return Err(ArtifactError::Special {
            path: path.display().to_string(),
            kind: "special file",
        });
    }
    Ok(file)
}

/// The digest of `files` under `root`.
pub fn digest(root: &Path, files: &[PathBuf], stop: &Abandoned) -> Result<String, ArtifactError> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        stop.check()?;
        let full = root.join(rel);
        let meta = std::fs::symlink_metadata(&full).map_err(io(&full))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(io(&full))?;
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0, 2]);
            h.update(target.to_string_lossy().as_bytes());
            h.update([0]);
            continue;
        }
        let mut f = open_regular(root, rel)?;
        let meta = f.metadata().map_err(io(&full))?;
        let exec = meta.permissions().mode() & 0o111 != 0;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0, u8::from(exec)]);
        h.update(meta.len().to_be_bytes());
        loop {
            stop.check()?;
            let n = f.read(&mut buf).map_err(io(&full))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(tandem_core::journal::hex(&h.finalize()))
}

/// Copies `files` (relative to `root`) into `dest`, creating directories.
pub fn copy(
    root: &Path,
    files: &[PathBuf],
    dest: &Path,
    stop: &Abandoned,
) -> Result<(), ArtifactError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        stop.check()?;
        let from = root.join(rel);
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let meta = std::fs::symlink_metadata(&from).map_err(io(&from))?;
        if meta.file_type().is_symlink() {
            // As a link, checked again: the tree may have changed since.
            check_entry(root, rel, meta.file_type())?;
            let target = std::fs::read_link(&from).map_err(io(&from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io(&to))?;
            continue;
        }
        let mut source = open_regular(root, rel)?;
        let mut out = std::fs::File::create(&to).map_err(io(&to))?;
        loop {
            stop.check()?;
            let n = source.read(&mut buf).map_err(io(&from))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io(&to))?;
        }
        out.set_permissions(meta.permissions()).map_err(io(&to))?;
    }
    Ok(())
}

/// Makes a release's files readable (and its programs executable) by the
/// service's user, writable by no one but tandem: directories 0755, files
/// 0644 or 0755. Those users find a release by its digest; they cannot
/// list the store.
fn publish(dir: &Path) -> Result<(), ArtifactError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    let mode = if meta.is_dir() {
        0o755
    } else if meta.file_type().is_symlink() {
        return Ok(());
    } else if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            publish(&entry.map_err(io(dir))?.path())?;
        }
    }
    Ok(())
}

/// Copies `files` into the store under `digest`, unless already there.
/// Returns the artifact directory.
pub fn store(
    artifacts: &Path,
    digest: &str,
    root: &Path,
    files: &[PathBuf],
    stop: &Abandoned,
) -> Result<PathBuf, ArtifactError> {
    let dest = artifacts.join(digest);
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = artifacts.join(format!(".tmp-{digest}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = copy(root, files, &tmp, stop).and_then(|()| publish(&tmp)) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        // Someone stored the same digest meanwhile: theirs is identical.
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dest)
        }
        Err(e) => Err(ArtifactError::Io {
            path: dest.display().to_string(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tree_same_digest_and_git_is_skipped() {
        let a = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(a.path().join("static")).expect("mkdir");
        std::fs::create_dir_all(a.path().join(".git")).expect("mkdir");
        std::fs::write(a.path().join("static/index.html"), "hi").expect("write");
        std::fs::write(a.path().join(".git/HEAD"), "ref").expect("write");
        let files = collect(a.path(), &[]).expect("collect");
        assert_eq!(files, vec![PathBuf::from("static/index.html")]);
        let d1 = digest(a.path(), &files, &Abandoned::default()).expect("digest");
        std::fs::write(a.path().join(".git/HEAD"), "other").expect("write");
        assert_eq!(
            digest(
                a.path(),
                &collect(a.path(), &[]).expect("collect"),
                &Abandoned::default()
            )
            .expect("digest"),
            d1
        );
        std::fs::write(a.path().join("static/index.html"), "changed").expect("write");
        assert_ne!(
            digest(a.path(), &files, &Abandoned::default()).expect("digest"),
            d1
        );
    }

    #[test]
    fn listed_paths_must_exist_and_stay_inside() {
        let a = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            collect(a.path(), &["nope".into()]),
            Err(ArtifactError::Missing(_))
        ));
        assert!(matches!(
            collect(a.path(), &["../x".into()]),
            Err(ArtifactError::Escapes(_))
        ));
    }

    #[test]
    fn a_link_inside_the_tree_is_kept_as_a_link_and_one_outside_refused() {
        use std::os::unix::fs::symlink;
        let src = tempfile::tempdir().expect("tempdir");
        let arts = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("static/css")).expect("mkdir");
        std::fs::write(src.path().join("static/site.css"), "body{}").expect("write");
        symlink("../site.css", src.path().join("static/css/main.css")).expect("link");
        let files = collect(src.path(), &[]).expect("collect");
        let d = digest(src.path(), &files, &Abandoned::default()).expect("digest");
        let stored =
            store(arts.path(), &d, src.path(), &files, &Abandoned::default()).expect("store");
        let link = stored.join("static/css/main.css");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("there")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_link(&link).expect("link"),
            PathBuf::from("../site.css")
        );
        assert_eq!(std::fs::read_to_string(&link).expect("read"), "body{}");

        for (name, target) in [
            ("shadow-link", "/etc/shadow"),
            ("zero", "/dev/zero"),
            ("up", "../../etc/passwd"),
            ("static/up", "../../x"),
        ] {
            let evil = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(evil.path().join("static")).expect("mkdir");
            symlink(target, evil.path().join(name)).expect("link");
            let err = collect(evil.path(), &[]).expect_err(name);
            assert!(
                matches!(&err, ArtifactError::LinkOutside { path, .. } if path == name),
                "{name}: {err}"
            );
            let listed = collect(evil.path(), &[name.to_owned()]).expect_err(name);
            assert!(
                matches!(listed, ArtifactError::LinkOutside { .. }),
                "{name}: {listed}"
            );
        }
    }

    #[test]
    fn a_fifo_in_the_tree_is_refused_at_once() {
        let src = tempfile::tempdir().expect("tempdir");
        nix::unistd::mkfifo(&src.path().join("pipe"), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        let err = collect(src.path(), &[]).expect_err("a FIFO");
        assert!(err.to_string().contains("pipe is a FIFO"), "{err}");
        // Read as if listed, it does not block either.
        let err = digest(src.path(), &[PathBuf::from("pipe")], &Abandoned::default())
            .expect_err("a FIFO");
        assert!(matches!(err, ArtifactError::Special { .. }), "{err}");
    }

    #[test]
    fn abandoned_work_stops_and_leaves_no_partial_copy() {
        let src = tempfile::tempdir().expect("tempdir");
        let arts = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("big"), vec![7u8; 4 << 20]).expect("write");
        let files = collect(src.path(), &[]).expect("collect");
        let stop = Abandoned::default();
        drop(stop.on_drop());
        assert!(matches!(
            digest(src.path(), &files, &stop),
            Err(ArtifactError::Abandoned)
        ));
        assert!(matches!(
            store(arts.path(), "d", src.path(), &files, &stop),
            Err(ArtifactError::Abandoned)
        ));
        let left: Vec<_> = std::fs::read_dir(arts.path()).expect("dir").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn store_is_idempotent() {
        let src = tempfile::tempdir().expect("tempdir");
        let arts = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("app"), "bin").expect("write");
        let files = collect(src.path(), &[]).expect("collect");
        let d = digest(src.path(), &files, &Abandoned::default()).expect("digest");
        let p1 = store(arts.path(), &d, src.path(), &files, &Abandoned::default()).expect("store");
        let p2 = store(arts.path(), &d, src.path(), &files, &Abandoned::default()).expect("store");
        assert_eq!(p1, p2);
        assert_eq!(
            std::fs::read_to_string(p1.join("app")).expect("read"),
            "bin"
        );
    }
}
