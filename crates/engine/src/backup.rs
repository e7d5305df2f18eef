//! Backups: one tar file with a consistent copy of the store and the files a
//! server needs to bring its services back.
//!
//! `make` copies the database while it is in use (`Store::backup_to`, one
//! read transaction), checks the copy's journal, and writes the tar:
//! `backup.json` (the manifest: when, which version, the journal's length
//! and head), `tandem.db`, then `artifacts/` (releases' files), `git/`
//! (delivery's mirrors), `tls/` and `acme/` (certificates and the ACME
//! account), `keys/` (the key sealing repository credentials). Symbolic links inside artifacts are kept as links. The file is
//! owner-only: the database holds secret values.
//!
//! `unpack` restores one into an empty directory, refusing any entry that
//! is not one of those parts or would land outside it, and leaves nothing
//! behind when it refuses. The server started on that directory finds its
//! services' artifacts by digest (`Engine::artifact_dir`), so a backup
//! restores anywhere.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_store::{Store, StoreError};

/// The manifest's name, first in the archive.
pub const MANIFEST: &str = "backup.json";
/// The database copy's name, in the archive and in a data directory.
pub const DATABASE: &str = "tandem.db";
/// Directories of the data directory that go into a backup.
pub const PARTS: [&str; 5] = ["artifacts", "git", "tls", "acme", "keys"];
/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The caller's to fix: a directory not empty, a file that is no backup.
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backup holds, written first into it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub created_at: String,
    pub version: String,
    /// Events in the copied journal, and the last one's hash.
    pub events: u64,
    pub head: String,
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BackupError {
    move |e| BackupError::Io(format!("{what}: {e}"))
}

/// Writes a backup of `store` and the files of `data_dir` to `dest`, which
/// must not exist. Returns its manifest.
pub async fn make(store: &Store, data_dir: &Path, dest: &Path) -> Result<Manifest, BackupError> {
    let copy = data_dir.join(format!(
        ".backup-{}-{}.db",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    let result = make_with(store, data_dir, dest, &copy).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = copy.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(path));
    }
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

async fn make_with(
    store: &Store,
    data_dir: &Path,
    dest: &Path,
    copy: &Path,
) -> Result<Manifest, BackupError> {
    store.backup_to(copy).await?;
    // The copy's own journal, checked: a backup of a broken chain says so
    // now, not on the day it is needed.
    let copied = Store::open(copy).await?;
    let verified = copied.verify().await?;
    copied.close().await;
    let (events, head) = verified.map_err(|broken| {
        BackupError::Io(format!(
            "the journal does not verify, not backed up: {broken}"
        ))
    })?;
    let manifest = Manifest {
        format: FORMAT,
        created_at: jiff::Timestamp::now().to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        events,
        head,
    };
    let (data_dir, dest, copy) = (data_dir.to_owned(), dest.to_owned(), copy.to_owned());
    let written = manifest.clone();
    tokio::task::spawn_blocking(move || write_tar(&written, &data_dir, &dest, &copy))
        .await
        .map_err(|e| BackupError::Io(format!("writing the backup: {e}")))??;
    Ok(manifest)
}

fn write_tar(
    manifest: &Manifest,
    data_dir: &Path,
    dest: &Path,
    copy: &Path,
) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io(format!("cannot create {}", dest.display())))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    tar.follow_symlinks(false);
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, json.as_slice())
        .map_err(io("writing the manifest"))?;
    tar.append_path_with_name(copy, DATABASE)
        .map_err(io("writing the database copy"))?;
    for part in PARTS {
        let dir = data_dir.join(part);
        if !dir.is_dir() {
            continue;
        }
        if part == "artifacts" {
            // Each finished artifact; one being stored (`.tmp-…`) is not.
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(io(format!("reading {}", dir.display())))?
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .collect();
            entries.sort_by_key(|e| e.file_name());
            tar.append_dir(part, &dir)
                .map_err(io("writing artifacts"))?;
            for e in entries {
                let name = Path::new(part).join(e.file_name());
                tar.append_dir_all(&name, e.path())
                    .map_err(io(format!("writing {}", name.display())))?;
            }
        } else {
            tar.append_dir_all(part, &dir)
                .map_err(io(format!("writing {part}")))?;
        }
    }
    let mut out = tar.into_inner().map_err(io("finishing the backup"))?;
    out.flush().map_err(io("finishing the backup"))?;
    out.get_ref().sync_all().map_err(io("syncing the backup"))?;
    Ok(())
}

/// Unpacks the backup `file` into `dir`, which must be empty or absent;
/// returns its manifest. On refusal `dir` is left as it was.
pub fn unpack(file: &Path, dir: &Path) -> Result<Manifest, BackupError> {
    let existed = dir.exists();
    if existed {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| BackupError::BadInput(format!("cannot read {}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(BackupError::BadInput(format!(
                "{} is not empty; restore into an empty or new directory",
                dir.display()
            )));
        }
    }
    let source = File::open(file)
        .map_err(|e| BackupError::BadInput(format!("cannot open {}: {e}", file.display())))?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| BackupError::BadInput(format!("cannot create {}: {e}", dir.display())))?;
    }
    let result = unpack_into(source, file, dir);
    if result.is_err() {
        // Leave the directory as it was: absent, or empty.
        if existed {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

fn unpack_into(source: File, file: &Path, dir: &Path) -> Result<Manifest, BackupError> {
    let not_a_backup = |why: String| {
        BackupError::BadInput(format!("{} is not a tandem backup: {why}", file.display()))
    };
    let mut archive = tar::Archive::new(std::io::BufReader::new(source));
    archive.set_preserve_permissions(true);
    // Executable bits stay (artifacts need them); set-id bits and group or
    // other write do not, whatever the file says.
    archive.set_mask(0o7022);
    let mut manifest: Option<Manifest> = None;
    let entries = archive.entries().map_err(|e| not_a_backup(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_a_backup(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| not_a_backup(e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        let mut parts = path.components();
        let first = match parts.next() {
            Some(Component::Normal(first)) => first.to_string_lossy().into_owned(),
            _ => {
                return Err(not_a_backup(format!(
                    "entry {shown:?} is not a relative path"
                )));
            }
        };
        if !parts.all(|c| matches!(c, Component::Normal(_))) {
            return Err(not_a_backup(format!(
                "entry {shown:?} leaves its directory"
            )));
        }
        let kind = entry.header().entry_type();
        let known = match first.as_str() {
            MANIFEST | DATABASE => kind.is_file() && path.components().count() == 1,
            part if PARTS.contains(&part) => kind.is_file() || kind.is_dir() || kind.is_symlink(),
            _ => false,
        };
        if !known {
            return Err(not_a_backup(format!("unexpected entry {shown:?}")));
        }
        if first == MANIFEST {
            let mut text = String::new();
            std::io::Read::take(&mut entry, 64 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| not_a_backup(e.to_string()))?;
            let m: Manifest = serde_json::from_str(&text)
                .map_err(|e| not_a_backup(format!("its manifest: {e}")))?;
            if m.format != FORMAT {
                return Err(not_a_backup(format!(
                    "manifest format {} (this tandem reads {FORMAT})",
                    m.format
                )));
            }
            manifest = Some(m);
            continue;
        }
        if manifest.is_none() {
            return Err(not_a_backup(format!("{MANIFEST} does not come first")));
        }
        let inside = entry
            .unpack_in(dir)
            .map_err(io(format!("unpacking {shown}")))?;
        if !inside {
            return Err(not_a_backup(format!(
                "entry {shown:?} leaves its directory"
            )));
        }
    }
    let manifest = manifest.ok_or_else(|| not_a_backup(format!("no {MANIFEST}")))?;
    if !dir.join(DATABASE).is_file() {
        return Err(not_a_backup(format!("no {DATABASE}")));
    }
    Ok(manifest)
}

/// Backups in `dir` named by [`scheduled_name`], oldest first.
pub fn scheduled(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("tandem-") && n.ends_with(".tar"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// `tandem-<UTC time>.tar`: names that sort by time.
pub fn scheduled_name(at: jiff::Timestamp) -> String {
    format!("tandem-{}.tar", at.strftime("%Y%m%dT%H%M%SZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp");
        let mut tar = tar::Builder::new(file.reopen().expect("reopen"));
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            // Written raw: `append_data` itself refuses `..`.
            header.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, *data).expect("append");
        }
        tar.finish().expect("finish");
        file
    }

    fn manifest() -> Vec<u8> {
        serde_json::to_vec(&Manifest {
            format: FORMAT,
            created_at: "2026-01-01T00:00:00Z".into(),
            version: "0".into(),
            events: 0,
            head: String::new(),
        })
        .expect("json")
    }

    #[test]
    fn an_entry_outside_the_backups_parts_is_refused_and_nothing_is_left() {
        let m = manifest();
        for bad in ["../escape", "etc/passwd", "artifacts/../../x", "/abs"] {
            let file = tar_with(&[(MANIFEST, &m), (DATABASE, b"db"), (bad, b"x")]);
            let root = tempfile::tempdir().expect("tempdir");
            let dir = root.path().join("restored");
            let err = unpack(file.path(), &dir).expect_err(bad).to_string();
            assert!(err.contains("is not a tandem backup"), "{bad}: {err}");
            assert!(
                !dir.exists(),
                "{bad}: a refused backup left {}",
                dir.display()
            );
            assert!(!root.path().join("escape").exists());
        }
    }

    #[test]
    fn set_id_bits_and_foreign_write_do_not_survive_a_restore() {
        let file = tempfile::NamedTempFile::new().expect("temp");
        let m = manifest();
        let mut tar = tar::Builder::new(file.reopen().expect("reopen"));
        for (name, mode, data) in [
            (MANIFEST, 0o600, m.as_slice()),
            (DATABASE, 0o600, b"db".as_slice()),
            ("artifacts/d/run", 0o6777, b"#!/bin/sh\n".as_slice()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            tar.append_data(&mut header, name, data).expect("append");
        }
        tar.finish().expect("finish");
        drop(tar);
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("restored");
        unpack(file.path(), &dir).expect("unpack");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("artifacts/d/run"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
    }

    #[test]
    fn a_directory_that_is_not_empty_is_refused() {
        let m = manifest();
        let file = tar_with(&[(MANIFEST, &m), (DATABASE, b"db")]);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mine"), "keep").expect("write");
        let err = unpack(file.path(), dir.path())
            .expect_err("not empty")
            .to_string();
        assert!(err.contains("is not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("mine")).expect("kept"),
            "keep"
        );
    }

    #[test]
    fn scheduled_names_sort_by_time() {
        let a = scheduled_name("2026-01-02T03:04:05Z".parse().expect("ts"));
        let b = scheduled_name("2026-11-02T03:04:05Z".parse().expect("ts"));
        assert_eq!(a, "tandem-20260102T030405Z.tar");
        assert!(a < b);
    }
}
