//! `tandem backup`, `tandem restore` and the server's scheduled backups
//! (`up --backup-every`). The archive itself is `tandem_engine::backup`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_engine::Engine;
use tandem_engine::backup::{self, BackupError};
use tandem_store::Store;

use crate::client::Api;
use crate::exit::{CmdResult, Exit};

/// Scheduled backups of `up` and `server`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// Write a backup this often (e.g. `6h`); none by default.
    #[arg(long, env = "TANDEM_BACKUP_EVERY", value_parser = crate::dataplane::duration)]
    pub backup_every: Option<Duration>,
    /// Scheduled backups to keep; older ones are removed.
    #[arg(long, env = "TANDEM_BACKUP_KEEP", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_keep: u32,
    /// Where scheduled backups go; `<data>/backups` by default (put them on
    /// another disk).
    #[arg(long, env = "TANDEM_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
}

/// `tandem backup FILE`: the server writes a backup, which comes here.
pub async fn backup(api: &Api, file: &Path) -> CmdResult {
    if file.exists() {
        return Err(Exit::bad_input(format!(
            "{} exists; name a new file",
            file.display()
        )));
    }
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let headers = match api.download("/api/v1/backup", &partial).await {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, file)
        .map_err(|e| Exit::failure(format!("cannot name the backup {}: {e}", file.display())))?;
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned()
    };
    outln!(
        "backup {}: {} bytes; journal of {} events, head {}",
        file.display(),
        bytes,
        header("x-tandem-journal-events"),
        header("x-tandem-journal-head")
    );
    Ok(())
}

/// `tandem restore FILE --data-dir DIR`: unpacks into an empty directory and
/// checks what came out; the server started on it brings the services back.
pub async fn restore(file: &Path, dir: &Path) -> CmdResult {
    let (from, into) = (file.to_owned(), dir.to_owned());
    let manifest = tokio::task::spawn_blocking(move || backup::unpack(&from, &into))
        .await
        .map_err(|e| Exit::failure(e.to_string()))?
        .map_err(|e| match e {
            BackupError::BadInput(m) => Exit::bad_input(m),
            e => Exit::failure(e.to_string()),
        })?;
    let checked = check_restored(dir, &manifest).await;
    if let Err(e) = checked {
        // A restore that does not check out leaves no half-usable directory.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        return Err(e);
    }
    outln!(
        "restored {} (made {} by tandem {}) into {}: journal of {} events verified, head {}",
        file.display(),
        manifest.created_at,
        manifest.version,
        dir.display(),
        manifest.events,
        manifest.head
    );
    outln!("start it with: tandem up --data-dir {}", dir.display());
    Ok(())
}

async fn check_restored(dir: &Path, manifest: &backup::Manifest) -> CmdResult {
    let store = Store::open(&dir.join(backup::DATABASE))
        .await
        .map_err(|e| Exit::failure(format!("the restored database does not open: {e}")))?;
    let verified = store
        .verify()
        .await
        .map_err(|e| Exit::failure(format!("reading the restored journal: {e}")))?;
    // Opening migrated it to this version: those events are not the backup's.
    store.close().await;
    let (events, head) = verified.map_err(|broken| {
        Exit::failure(format!("the restored journal does not verify: {broken}"))
    })?;
    if events < manifest.events {
        return Err(Exit::failure(format!(
            "the restored journal has {events} events, its manifest says {}",
            manifest.events
        )));
    }
    if events == manifest.events && head != manifest.head {
        return Err(Exit::failure(format!(
            "the restored journal ends in {head}, its manifest says {}",
            manifest.head
        )));
    }
    Ok(())
}

/// Writes a backup every `args.backup_every` into the backup directory,
/// keeping the newest `args.backup_keep`.
pub async fn keep_backing_up(engine: Engine, args: BackupArgs) {
    let Some(every) = args.backup_every else {
        return;
    };
    let dir = args
        .backup_dir
        .clone()
        .unwrap_or_else(|| engine.data_dir().join("backups"));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "scheduled backup: cannot create its directory");
            continue;
        }
        let file = dir.join(backup::scheduled_name(jiff::Timestamp::now()));
        match engine.backup(&file, "system:backup").await {
            Ok(m) => tracing::info!(file = %file.display(), events = m.events, "backup written"),
            Err(e) => {
                tracing::error!(error = %e, "scheduled backup failed");
                continue;
            }
        }
        let all = backup::scheduled(&dir);
        let extra = all.len().saturating_sub(args.backup_keep as usize);
        for old in &all[..extra] {
            let _ = std::fs::remove_file(old);
        }
    }
}
