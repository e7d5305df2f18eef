//! What the store knows of the ground it stands on: whether its last write
//! failed because of the storage (full, read-only, an I/O error, damage),
//! and its WAL kept short.
//!
//! Every write method runs inside [`Store::writing`], which records a
//! storage fault when the write fails with one and clears it when a write
//! succeeds. The monitor reads [`Store::fault`] every second (an incident),
//! `/api/v1/health` reports it, and while one stands the monitor writes a
//! probe row ([`Store::probe`]) so that the store notices by itself when
//! there is room again.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::{Result, Store, StoreError};

/// A write that failed because of the storage, not the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StorageFault {
    /// `full`, `read-only`, `io`, `damaged` or `wal-missing`.
    pub kind: &'static str,
    /// What SQLite or the file system said.
    pub error: String,
    /// When it was first seen (RFC 3339).
    pub since: String,
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            "full" => "the disk holding the database is full",
            "read-only" => "the database cannot be written (read-only)",
            "io" => "the disk holding the database fails (I/O error)",
            "damaged" => "the database file is damaged",
            "wal-missing" => "the database's write-ahead log was removed while it ran",
            _ => "the database cannot be written",
        };
        write!(f, "{what}: {}", self.error)
    }
}

/// The storage fault a SQL error is, if it is one. SQLite's primary result
/// codes: 8 READONLY, 10 IOERR, 11 CORRUPT, 13 FULL, 14 CANTOPEN, 26 NOTADB.
pub(crate) fn classify(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        sqlx::Error::Database(db) => {
            let code: i64 = db.code()?.parse().ok()?;
            match code & 0xff {
                13 => Some("full"),
                8 => Some("read-only"),
                10 | 14 => Some("io"),
                11 | 26 => Some("damaged"),
                _ => None,
            }
        }
        sqlx::Error::Io(io) if io.raw_os_error() == Some(28) => Some("full"),
        sqlx::Error::Io(_) => Some("io"),
        _ => None,
    }
}

/// Free space that ends a full-disk fault.
pub const ROOM: u64 = 1 << 20;

#[derive(Default)]
pub(crate) struct Health {
    fault: Mutex<Option<StorageFault>>,
}

impl Health {
    fn set(&self, kind: &'static str, error: String) {
        let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match fault.as_mut() {
            // The first sighting's time stands; the words follow the latest.
            Some(f) if f.kind == kind => f.error = error,
            _ => {
                *fault = Some(StorageFault {
                    kind,
                    error,
                    since: crate::now_ts(),
                })
            }
        }
    }

    fn clear(&self) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn get(&self) -> Option<StorageFault> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub(crate) type SharedHealth = Arc<Health>;

impl Store {
    /// Runs one write and notes what it says about the storage.
    pub(crate) async fn writing<T>(
        &self,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let result = work.await;
        match &result {
            Ok(_) if self.writes_again() => self.health.clear(),
            // Committed into a WAL someone removed: a crash would lose it.
            // Into the database file with it before anyone is told.
            Ok(_) if self.wal_missing() => {
                let _ = self.checkpoint().await;
            }
            Ok(_) => {}
            Err(StoreError::Storage { kind, error }) => self.health.set(kind, error.clone()),
            Err(_) => {}
        }
        result
    }

    /// The storage fault the last write met, while no write has succeeded
    /// since.
    pub fn fault(&self) -> Option<StorageFault> {
        self.health.get()
    }

    /// A small write that tells whether the storage takes writes again: the
    /// monitor's, while a fault stands (a database nobody writes to would
    /// otherwise keep its fault for ever).
    pub async fn probe(&self) -> Result<()> {
        self.writing(async {
            let _w = self.writer.lock().await;
            sqlx::query("INSERT INTO storage_probe (id, at) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET at = excluded.at")
                .bind(crate::now_ts())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Whether a write that worked means the fault is over: not while the
    /// WAL is missing, and after a full disk only once there is
    /// [`ROOM`] again (a small write can succeed in the WAL's old space
    /// while the next larger one fails; the fault would flap).
    fn writes_again(&self) -> bool {
        if self.wal_missing() {
            return false;
        }
        match self.health.get() {
            Some(f) if f.kind == "full" => self.room().is_none_or(|room| room >= ROOM),
            _ => true,
        }
    }

    /// Bytes free for the database's writer on its file system (root may
    /// use the blocks reserved for it).
    fn room(&self) -> Option<u64> {
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        let s = rustix::fs::statvfs(dir.unwrap_or(std::path::Path::new("."))).ok()?;
        let blocks = if rustix::process::geteuid().is_root() {
            s.f_bfree
        } else {
            s.f_bavail
        };
        Some(blocks.saturating_mul(s.f_frsize))
    }

    fn wal_missing(&self) -> bool {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        !std::path::Path::new(&wal).exists()
    }

    /// Moves the write-ahead log into the database file and empties it, so
    /// that a lost WAL file loses nothing that was committed before. Also
    /// notices a WAL removed from under the running store (its connections
    /// write on into the unlinked file, which a crash would lose): that is
    /// a fault until a restart makes a new one, and meanwhile every call
    /// checkpoints again.
    pub async fn checkpoint(&self) -> Result<()> {
        let missing = self.wal_missing();
        let mut result: Result<bool> = Ok(true);
        // A reader in the way makes it partial ("busy"): a few tries.
        for _ in 0..5 {
            result = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from)
                .map(|(busy, _, _)| busy == 0);
            match result {
                Ok(false) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                _ => break,
            }
        }
        let result = result.map(|_| ());
        if missing {
            self.health.set(
                "wal-missing",
                format!(
                    "{}-wal is gone; committed writes were copied into the database file; restart the server to make a new log",
                    self.path.display()
                ),
            );
        } else if let Err(StoreError::Storage { kind, error }) = &result {
            self.health.set(kind, error.clone());
        }
        result
    }

    /// Checkpoints every `every` (and every second while the WAL is
    /// missing), for as long as it is awaited.
    pub async fn keep_checkpointing(self, every: std::time::Duration) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if last.elapsed() < every && !self.wal_missing() {
                continue;
            }
            last = tokio::time::Instant::now();
            // A failure is recorded as the store's fault; nothing else to do.
            let _ = self.checkpoint().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_sqlite_refuses_as_read_only_is_a_read_only_fault() {
        use sqlx::ConnectOptions;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let mut rw = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .expect("open");
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut rw)
            .await
            .expect("create");
        let mut ro = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .connect()
            .await
            .expect("open read-only");
        let e = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut ro)
            .await
            .expect_err("a read-only database takes no write");
        assert_eq!(classify(&e), Some("read-only"), "{e}");
        let e = sqlx::query("SELECT * FROM nowhere")
            .execute(&mut ro)
            .await
            .expect_err("no such table");
        assert_eq!(classify(&e), None, "a bad query is no storage fault: {e}");
    }

    #[test]
    fn an_os_error_for_no_space_is_a_full_disk() {
        let e = sqlx::Error::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(classify(&e), Some("full"));
        let e = sqlx::Error::Io(std::io::Error::from_raw_os_error(5));
        assert_eq!(classify(&e), Some("io"));
        assert_eq!(classify(&sqlx::Error::RowNotFound), None);
    }
}
