//! Signed checkpoints as they were made, and the journal's hashes that the
//! Merkle tree is built from (see `tandem_proof`).

use serde::Serialize;

use tandem_core::journal::Event;

use crate::{Result, Store, now_ts};

/// A signed checkpoint of the journal's tree.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CheckpointRow {
    /// Events in the tree.
    pub size: i64,
    /// The root, lowercase hex.
    pub root: String,
    /// The signed note, as published.
    pub note: String,
    pub created_at: String,
}

impl Store {
    /// The hashes (lowercase hex) of events `after + 1 ..= upto`, in order.
    pub async fn event_hashes(&self, after: u64, upto: u64) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq")
                .bind(after as i64)
                .bind(upto as i64)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records a checkpoint made just now (one of that size made before
    /// is kept: the first signature of a size stands).
    pub async fn record_checkpoint(
        &self,
        size: u64,
        root: &str,
        note: &str,
    ) -> Result<CheckpointRow> {
        self.writing(async {
            let _w = self.writer.lock().await;
            sqlx::query(
                "INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?) ON CONFLICT(size) DO NOTHING",
            )
            .bind(size as i64)
            .bind(root)
            .bind(note)
            .bind(now_ts())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await?;
        Ok(sqlx::query_as("SELECT * FROM checkpoints WHERE size = ?")
            .bind(size as i64)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The checkpoint of the tree of `size` events, if one was made.
    pub async fn checkpoint_at(&self, size: u64) -> Result<Option<CheckpointRow>> {
        Ok(sqlx::query_as("SELECT * FROM checkpoints WHERE size = ?")
            .bind(size as i64)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The largest checkpoint of fewer than `size` events, if any.
    pub async fn checkpoint_before(&self, size: u64) -> Result<Option<CheckpointRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM checkpoints WHERE size < ? ORDER BY size DESC LIMIT 1")
                .bind(size as i64)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Events up to `upto` that name `customer`, or a service ever
    /// delivered to them, in order: a superset of what concerns them (the
    /// report crate's `select` narrows it by the log's own rules).
    pub async fn events_for_customer(&self, customer: &str, upto: u64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE seq <= ?1 AND (
                json_extract(subject, '$.customer') = ?2
                OR json_extract(subject, '$.service') IN (
                    SELECT json_extract(subject, '$.service') FROM events
                    WHERE kind IN ('service.created', 'service.updated')
                      AND json_extract(payload, '$.customer') = ?2))
             ORDER BY seq",
        )
        .bind(upto as i64)
        .bind(customer)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::event_row).collect()
    }

    /// Events about any of `services` and, with `users`, every
    /// `user.added` (who was added with which e-mail), in order.
    pub async fn events_about(&self, services: &[String], users: bool) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE json_extract(subject, '$.service') IN (SELECT value FROM json_each(?1))
               OR (?2 AND kind = 'user.added')
             ORDER BY seq",
        )
        .bind(serde_json::to_string(services)?)
        .bind(users)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::event_row).collect()
    }

    /// The services that had a run of a commit starting with `prefix`
    /// (hex digits only).
    pub async fn services_with_commit(&self, prefix: &str) -> Result<Vec<String>> {
        if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT json_extract(subject, '$.service') FROM events
             WHERE kind = 'run.queued' AND json_extract(payload, '$.commit') LIKE ? || '%'",
        )
        .bind(prefix.to_lowercase())
        .fetch_all(&self.pool)
        .await?)
    }

    /// The checkpoint of the largest tree, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
