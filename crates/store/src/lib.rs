//! The store: the only crate that speaks SQL. SQLite in WAL mode with
//! `synchronous=FULL`, so a committed event is on disk before anyone is told.
//!
//! Every state change goes through a method that appends its journal event
//! and updates the read models in one transaction; writers are serialised so
//! the chain has no forks.

mod checkpoints;
mod health;
pub mod identity;
mod ops;
mod pipeline;
mod secrets;
mod slo;

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, Row, SqlitePool};
use tandem_core::journal::{self, ChainError, Event, GENESIS, NewEvent, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(sqlx::Error),
    /// The write failed because of the storage (see [`StorageFault`]).
    #[error("{}", StorageFault { kind, error: error.clone(), since: String::new() })]
    Storage { kind: &'static str, error: String },
    /// No connection came free in time: too much at once, nothing done.
    #[error("the store is busy; try again in a moment")]
    Busy,
    /// The database file is damaged; the way out is a backup.
    #[error(
        "the database {path} is damaged ({detail}); restore the latest backup with `tandem restore FILE --data-dir DIR` (scheduled backups are in <data>/backups)"
    )]
    Damaged { path: String, detail: String },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("journal encoding failed: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is not valid (a bad name, an unknown role).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl From<tandem_seal::SealError> for StoreError {
    fn from(e: tandem_seal::SealError) -> Self {
        match e {
            tandem_seal::SealError::Key(m) => StoreError::Invalid(m),
            tandem_seal::SealError::Open(m) => StoreError::Conflict(m.into()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match health::classify(&e) {
            Some(kind) => StoreError::Storage {
                kind,
                error: e.to_string(),
            },
            None if matches!(e, sqlx::Error::PoolTimedOut) => StoreError::Busy,
            None => StoreError::Sql(e),
        }
    }
}

pub use checkpoints::CheckpointRow;
pub use health::StorageFault;

pub use ops::{ChannelRow, DeliveryRow, IncidentRow, NewIncident, NewNotice, OutboxRow};
pub use pipeline::{
    DeploymentRow, NewRun, PolicyRow, RepoCredential, RepoRow, RunRow, RunUpdate, StageRecord,
};
pub use secrets::SecretInfo;
pub use slo::{MaintenanceRow, MinuteRow};

/// A service as the store knows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ServiceRow {
    pub name: String,
    pub owner: Option<String>,
    pub customer: Option<String>,
    pub tier: String,
    #[sqlx(json)]
    pub spec: serde_json::Value,
    pub source: String,
    pub live_release: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl ServiceRow {
    /// Whether the service's spec (as it stands) has environment `env`.
    pub fn declares_env(&self, env: &str) -> bool {
        self.spec
            .get("environments")
            .and_then(|e| e.get(env))
            .is_some()
    }
}

/// A release: an immutable artifact plus the spec it came with.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ReleaseRow {
    pub service: String,
    pub number: i64,
    pub digest: String,
    pub path: String,
    #[sqlx(json)]
    pub spec: serde_json::Value,
    pub source: String,
    /// created | deploying | live | retired | failed
    pub status: String,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When retention removed its files (`None`: they are kept).
    #[sqlx(default)]
    pub pruned_at: Option<String>,
}

impl ReleaseRow {
    /// `r<number>`, the name used everywhere else.
    pub fn name(&self) -> String {
        format!("r{}", self.number)
    }
}

/// Fields of a service that change with its spec.
pub struct ServiceUpsert<'a> {
    pub name: &'a str,
    pub owner: Option<&'a str>,
    pub customer: Option<&'a str>,
    pub tier: &'a str,
    pub spec: &'a serde_json::Value,
    pub source: &'a str,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    health: health::SharedHealth,
    sealer: tandem_seal::Sealer,
    tokens: identity::TokenCache,
    /// The database file.
    path: std::sync::Arc<std::path::PathBuf>,
}

/// Now, UTC, millisecond precision, as the journal writes it.
pub fn now_ts() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

/// [`now_ts`] `d` from now (for times compared with it as text).
pub fn ts_in(d: std::time::Duration) -> String {
    let d = jiff::SignedDuration::from_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    format!(
        "{:.3}",
        jiff::Timestamp::now()
            .checked_add(d)
            .unwrap_or(jiff::Timestamp::MAX)
    )
}

impl Store {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // A page a secret left is zeroed, not left for a grep to find.
            .pragma("secure_delete", "on")
            .busy_timeout(std::time::Duration::from_secs(10));
        // One connection first, alone: it turns a new file to WAL, checks
        // it and migrates it. Connections opened side by side on a file
        // being set up can get SQLITE_BUSY at once, past any busy timeout
        // (a new WAL's recovery, a change of journal mode).
        let first = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| damaged_or(path, e))?;
        // A damaged file is told at start, with the way out, rather than
        // met by whichever request reads the damaged page first.
        let check: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(5)")
            .fetch_all(&first)
            .await
            .map_err(|e| damaged_or(path, e))?;
        if check.first().map(String::as_str) != Some("ok") {
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                detail: check.join("; "),
            });
        }
        sqlx::migrate!("./migrations")
            .run(&first)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => damaged_or(path, e),
                e => StoreError::Migrate(e),
            })?;
        first.close().await;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // Connections live as long as the store: SQLite removes the WAL
            // when its last connection closes, and a WAL that is gone while
            // the store is open must mean someone removed it.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // A connection that comes back still inside a transaction (a
            // COMMIT that failed on a full disk, and the ROLLBACK after it)
            // is closed, which rolls it back, rather than pooled: pooled,
            // it held the write lock ("database is locked" for everyone
            // else) and made its next transactions savepoints inside the
            // dead one, reported committed and never written.
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options)
            .await
            .map_err(|e| damaged_or(path, e))?;
        // The database holds secret values: owner-only, with its WAL files.
        for suffix in ["", "-wal", "-shm"] {
            use std::os::unix::fs::PermissionsExt;
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
        }
        let sealer = tandem_seal::Sealer::load_or_create(path.parent().unwrap_or(Path::new(".")))?;
        let store = Store {
            pool,
            writer: Default::default(),
            health: Default::default(),
            sealer,
            tokens: Default::default(),
            path: std::sync::Arc::new(path.to_path_buf()),
        };
        store.seal_secrets().await?;
        Ok(store)
    }

    /// Closes every connection (the last one checkpoints and removes the
    /// WAL). Clones of this store cannot be used after.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent copy of the whole database, taken while it is in use
    /// (`VACUUM INTO`: one read transaction, so no write is half in it),
    /// written to `to`, which must not exist.
    pub async fn backup_to(&self, to: &Path) -> Result<()> {
        let to = to
            .to_str()
            .ok_or_else(|| StoreError::Conflict(format!("{} is not UTF-8", to.display())))?;
        sqlx::query("VACUUM INTO ?")
            .bind(to)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Appends one event on its own.
    pub async fn append(&self, event: NewEvent) -> Result<Event> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    /// Creates or updates a service; returns whether it was new.
    pub async fn upsert_service(&self, s: ServiceUpsert<'_>, actor: &str) -> Result<(bool, Event)> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let now = now_ts();
        let existed: Option<String> =
            sqlx::query_scalar("SELECT spec FROM services WHERE name = ?")
                .bind(s.name)
                .fetch_optional(&mut *tx)
                .await?;
        let spec_text = serde_json::to_string(s.spec)?;
        let (kind, changed) = match &existed {
            None => ("service.created", true),
            Some(old) => ("service.updated", *old != spec_text),
        };
        sqlx::query(
            "INSERT INTO services (name, owner, customer, tier, spec, source, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET owner = excluded.owner,
               -- A service's customer is the first it was delivered to: a
               -- later spec (a commit) cannot hand it, its history and its
               -- approvals to another.
               customer = COALESCE(services.customer, excluded.customer),
               tier = excluded.tier, spec = excluded.spec, source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(s.name)
        .bind(s.owner)
        .bind(s.customer)
        .bind(s.tier)
        .bind(&spec_text)
        .bind(s.source)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new(actor, kind)
            .subject("service", s.name)
            .payload(serde_json::json!({ "owner": s.owner, "customer": s.customer, "tier": s.tier, "source": s.source, "spec_changed": changed }));
        let e = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok((existed.is_none(), e))
        })
        .await
    }

    /// Records a new release of a service, numbered after the last one.
    pub async fn create_release(
        &self,
        service: &str,
        digest: &str,
        path: &str,
        spec: &serde_json::Value,
        source: &str,
        actor: &str,
    ) -> Result<ReleaseRow> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let number: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE service = ?",
        )
        .bind(service)
        .fetch_one(&mut *tx)
        .await?;
        let now = now_ts();
        sqlx::query(
            "INSERT INTO releases (service, number, digest, path, spec, source, status, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, 'created', ?, ?)",
        )
        .bind(service)
        .bind(number)
        .bind(digest)
        .bind(path)
        .bind(serde_json::to_string(spec)?)
        .bind(source)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        append_in(
            &mut tx,
            NewEvent::new(actor, "release.created")
                .subject("service", service)
                .subject("release", format!("r{number}"))
                .payload(serde_json::json!({ "digest": digest, "source": source })),
        )
        .await?;
        tx.commit().await?;
        drop(_w);
        self.release(service, number).await
        })
        .await
    }

    /// Moves a release to `status` and appends `event`; with `live`, makes it
    /// the service's live release and retires the one before.
    pub async fn transition(
        &self,
        service: &str,
        number: i64,
        status: &str,
        reason: Option<&str>,
        live: bool,
        event: NewEvent,
    ) -> Result<Event> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let now = now_ts();
        if live {
            sqlx::query("UPDATE releases SET status = 'retired', updated_at = ? WHERE service = ? AND status = 'live' AND number != ?")
                .bind(&now)
                .bind(service)
                .bind(number)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE services SET live_release = ?, updated_at = ? WHERE name = ?")
                .bind(number)
                .bind(&now)
                .bind(service)
                .execute(&mut *tx)
                .await?;
        }
        let updated = sqlx::query("UPDATE releases SET status = ?, reason = ?, updated_at = ? WHERE service = ? AND number = ?")
            .bind(status)
            .bind(reason)
            .bind(&now)
            .bind(service)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "{service} has no release r{number}"
            )));
        }
        let e = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(e)
        })
        .await
    }

    pub async fn services(&self) -> Result<Vec<ServiceRow>> {
        Ok(sqlx::query_as("SELECT * FROM services ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn service(&self, name: &str) -> Result<Option<ServiceRow>> {
        Ok(sqlx::query_as("SELECT * FROM services WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The uid `unit` runs as: given at its first use (the next never
    /// given before), the same ever after.
    pub async fn unit_uid(&self, unit: &str) -> Result<u32> {
        let uid: Option<i64> = sqlx::query_scalar("SELECT uid FROM unit_users WHERE unit = ?")
            .bind(unit)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(uid) = uid {
            return Ok(uid as u32);
        }
        self.writing(async move {
            let _w = self.writer.lock().await;
            let first = i64::from(tandem_core::protocol::FIRST_SERVICE_UID);
            // Under the writer's lock: no one else gives one meanwhile.
            let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(uid) + 1, ?) FROM unit_users")
                .bind(first)
                .fetch_one(&self.pool)
                .await?;
            if next >= first + i64::from(tandem_core::protocol::SERVICE_UIDS) {
                return Err(StoreError::Conflict(format!(
                    "no service uid left for {unit}: all {} are given",
                    tandem_core::protocol::SERVICE_UIDS
                )));
            }
            let uid: i64 = sqlx::query_scalar(
                "INSERT INTO unit_users (unit, uid, created_at) VALUES (?, ?, ?)
                 ON CONFLICT(unit) DO UPDATE SET unit = excluded.unit
                 RETURNING uid",
            )
            .bind(unit)
            .bind(next)
            .bind(now_ts())
            .fetch_one(&self.pool)
            .await?;
            Ok(uid as u32)
        })
        .await
    }

    pub async fn releases(&self, service: &str) -> Result<Vec<ReleaseRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM releases WHERE service = ? ORDER BY number DESC")
                .bind(service)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn release(&self, service: &str, number: i64) -> Result<ReleaseRow> {
        sqlx::query_as("SELECT * FROM releases WHERE service = ? AND number = ?")
            .bind(service)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("{service} has no release r{number}")))
    }

    /// Retention: marks the releases of `service` beyond the newest `keep`
    /// as pruned — never the live one, the one a rollback goes to (the
    /// newest retired before it), one an environment runs, or one being
    /// deployed — journalled `release.pruned`. Returns the digests no
    /// release of any service keeps any more: their files may go.
    pub async fn prune_releases(
        &self,
        service: &str,
        keep: usize,
        actor: &str,
    ) -> Result<Vec<String>> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let releases: Vec<ReleaseRow> =
                sqlx::query_as("SELECT * FROM releases WHERE service = ? ORDER BY number DESC")
                    .bind(service)
                    .fetch_all(&mut *tx)
                    .await?;
            let live: Option<i64> =
                sqlx::query_scalar("SELECT live_release FROM services WHERE name = ?")
                    .bind(service)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten();
            let deployed: Vec<i64> =
                sqlx::query_scalar("SELECT release FROM deployments WHERE service = ?")
                    .bind(service)
                    .fetch_all(&mut *tx)
                    .await?;
            let rollback_target = releases
                .iter()
                .find(|r| r.status == "retired" && live.is_some_and(|l| r.number < l))
                .map(|r| r.number);
            let pruned: Vec<&ReleaseRow> = releases
                .iter()
                .skip(keep)
                .filter(|r| r.pruned_at.is_none())
                .filter(|r| Some(r.number) != live && Some(r.number) != rollback_target)
                .filter(|r| !deployed.contains(&r.number) && r.status != "deploying")
                .collect();
            if pruned.is_empty() {
                return Ok(Vec::new());
            }
            let now = now_ts();
            for r in &pruned {
                sqlx::query("UPDATE releases SET pruned_at = ? WHERE service = ? AND number = ?")
                    .bind(&now)
                    .bind(service)
                    .bind(r.number)
                    .execute(&mut *tx)
                    .await?;
            }
            let names: Vec<String> = pruned.iter().map(|r| r.name()).collect();
            append_in(
                &mut tx,
                NewEvent::new(actor, "release.pruned")
                    .subject("service", service)
                    .payload(serde_json::json!({ "releases": names, "keep": keep })),
            )
            .await?;
            let mut unreferenced = Vec::new();
            for r in &pruned {
                let kept: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM releases WHERE digest = ? AND pruned_at IS NULL",
                )
                .bind(&r.digest)
                .fetch_one(&mut *tx)
                .await?;
                if kept == 0 && !unreferenced.contains(&r.digest) {
                    unreferenced.push(r.digest.clone());
                }
            }
            tx.commit().await?;
            Ok(unreferenced)
        })
        .await
    }

    /// Releases left in `deploying` (by a control plane that died mid-release).
    pub async fn deploying(&self) -> Result<Vec<ReleaseRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM releases WHERE status = 'deploying'")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub async fn events(&self, after: u64, limit: u32) -> Result<Vec<Event>> {
        let rows = sqlx::query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_row).collect()
    }

    /// The last event's number (0 for an empty journal).
    pub async fn last_seq(&self) -> Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Walks the whole chain; `Ok((count, head))` or the first broken link.
    pub async fn verify(&self) -> Result<std::result::Result<(u64, String), ChainError>> {
        let mut v = Verifier::default();
        let mut after = 0;
        loop {
            let batch = self.events(after, 1000).await?;
            if batch.is_empty() {
                return Ok(Ok((v.verified(), v.head().to_string())));
            }
            for e in &batch {
                if let Err(broken) = v.push(e) {
                    return Ok(Err(broken));
                }
                after = e.seq;
            }
        }
    }

    /// The raw pool, for tests that tamper with the database on purpose.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// An error met while opening: damage is [`StoreError::Damaged`].
fn damaged_or(path: &Path, e: sqlx::Error) -> StoreError {
    match StoreError::from(e) {
        StoreError::Storage {
            kind: "damaged",
            error,
        } => StoreError::Damaged {
            path: path.display().to_string(),
            detail: error,
        },
        other => other,
    }
}

tokio::task_local! {
    /// The API token of the request this work is done for.
    static TOKEN: String;
}

/// Runs `work` for a request made with token `id`: the events its user
/// journals in it carry `"via_token": id` in their payload, so the journal
/// says which of a person's tokens did what (a revoked laptop's, say).
pub async fn with_token<F: std::future::Future>(id: String, work: F) -> F::Output {
    TOKEN.scope(id, work).await
}

/// The token [`with_token`] set for the work running now, if any.
pub fn current_token() -> Option<String> {
    TOKEN.try_with(Clone::clone).ok()
}

async fn append_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    mut event: NewEvent,
) -> Result<Event> {
    if event.actor.starts_with("user:")
        && let Some(token) = current_token().filter(|t| !t.is_empty())
    {
        match &mut event.payload {
            serde_json::Value::Object(map) => {
                map.entry("via_token")
                    .or_insert(serde_json::Value::String(token));
            }
            serde_json::Value::Null => event.payload = serde_json::json!({ "via_token": token }),
            _ => {}
        }
    }
    if let Some(n) = journal::inexact_number(&event.payload) {
        return Err(StoreError::Invalid(format!(
            "{}: the number {n} is beyond what the journal's hash holds exactly (±2^53); write it as a string",
            event.kind
        )));
    }
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq as u64 + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let e = journal::seal(seq, now_ts(), event, &prev)?;
    sqlx::query("INSERT INTO events (seq, ts, actor, kind, subject, payload, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(e.seq as i64)
        .bind(&e.ts)
        .bind(&e.actor)
        .bind(&e.kind)
        .bind(serde_json::to_string(&e.subject)?)
        .bind(serde_json::to_string(&e.payload)?)
        .bind(&e.prev)
        .bind(&e.hash)
        .execute(&mut **tx)
        .await?;
    Ok(e)
}

fn event_row(row: &sqlx::sqlite::SqliteRow) -> Result<Event> {
    let subject: String = row.try_get("subject")?;
    let payload: String = row.try_get("payload")?;
    Ok(Event {
        seq: row.try_get::<i64, _>("seq")? as u64,
        ts: row.try_get("ts")?,
        actor: row.try_get("actor")?,
        kind: row.try_get("kind")?,
        subject: serde_json::from_str(&subject)?,
        // Parsed as stored text: a tampered payload must still reach the verifier.
        payload: serde_json::from_str(&payload)?,
        prev: row.try_get("prev")?,
        hash: row.try_get("hash")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_journal_refuses_a_number_its_hash_cannot_hold_and_keeps_nothing_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).await.expect("store");
        let big = NewEvent::new("user:ann", "thing.done")
            .payload(serde_json::json!({ "bytes": 9_007_199_254_740_993_u64 }));
        match store.append(big).await {
            Err(StoreError::Invalid(why)) => assert!(why.contains("9007199254740993"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.last_seq().await.expect("seq"), 0);
        let fine = NewEvent::new("user:ann", "thing.done")
            .payload(serde_json::json!({ "bytes": 9_007_199_254_740_992_u64 }));
        store.append(fine).await.expect("within 2^53");
    }

    #[test]
    fn a_service_declares_the_environments_its_spec_has() {
        let row = ServiceRow {
            name: "shop".into(),
            owner: None,
            customer: None,
            tier: "standard".into(),
            spec: serde_json::json!({ "environments": { "staging": {}, "production": {} } }),
            source: "/src".into(),
            live_release: Some(1),
            created_at: String::new(),
            updated_at: String::new(),
        };
        assert!(row.declares_env("staging") && row.declares_env("production"));
        assert!(!row.declares_env("qa"));
        let bare = ServiceRow {
            spec: serde_json::json!({}),
            ..row
        };
        assert!(!bare.declares_env("staging"));
    }
}
