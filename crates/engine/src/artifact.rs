//! Content-addressed artifacts: a release's files are copied once into
//! `<data>/artifacts/<sha256>/` and never changed after.
//!
//! The digest covers each file's relative path, executable bit and bytes, in
//! path order, so the same tree always gets the same address.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Directories never taken into an artifact.
const SKIP_DIRS: [&str; 2] = [".git", ".tandem"];

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact path {0} does not exist in the build tree")]
    Missing(String),
    #[error("artifact path {0} leaves the build tree")]
    Escapes(String),
    #[error("cannot read or copy {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
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
            let meta = std::fs::metadata(&full).map_err(|_| ArtifactError::Missing(p.clone()))?;
            if meta.is_dir() {
                walk(root, rel, &mut files)?;
            } else {
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
        } else if kind.is_file() || kind.is_symlink() {
            out.push(child);
        }
    }
    Ok(())
}

/// The digest of `files` under `root`.
pub fn digest(root: &Path, files: &[PathBuf]) -> Result<String, ArtifactError> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        let full = root.join(rel);
        let meta = std::fs::metadata(&full).map_err(io(&full))?;
        let exec = meta.permissions().mode() & 0o111 != 0;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0, u8::from(exec)]);
        h.update(meta.len().to_be_bytes());
        let mut f = std::fs::File::open(&full).map_err(io(&full))?;
        loop {
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
pub fn copy(root: &Path, files: &[PathBuf], dest: &Path) -> Result<(), ArtifactError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    for rel in files {
        let from = root.join(rel);
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::copy(&from, &to).map_err(io(&from))?;
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
) -> Result<PathBuf, ArtifactError> {
    let dest = artifacts.join(digest);
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = artifacts.join(format!(".tmp-{digest}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy(root, files, &tmp)?;
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
        let d1 = digest(a.path(), &files).expect("digest");
        std::fs::write(a.path().join(".git/HEAD"), "other").expect("write");
        assert_eq!(
            digest(a.path(), &collect(a.path(), &[]).expect("collect")).expect("digest"),
            d1
        );
        std::fs::write(a.path().join("static/index.html"), "changed").expect("write");
        assert_ne!(digest(a.path(), &files).expect("digest"), d1);
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
    fn store_is_idempotent() {
        let src = tempfile::tempdir().expect("tempdir");
        let arts = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("app"), "bin").expect("write");
        let files = collect(src.path(), &[]).expect("collect");
        let d = digest(src.path(), &files).expect("digest");
        let p1 = store(arts.path(), &d, src.path(), &files).expect("store");
        let p2 = store(arts.path(), &d, src.path(), &files).expect("store");
        assert_eq!(p1, p2);
        assert_eq!(
            std::fs::read_to_string(p1.join("app")).expect("read"),
            "bin"
        );
    }
}
