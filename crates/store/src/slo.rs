//! Per-minute availability rollups and maintenance windows.

use serde::Serialize;
use tandem_core::journal::{Event, NewEvent};

use crate::{Result, Store, StoreError, append_in, now_ts};

/// One stored minute of one service environment (`env` empty: production).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct MinuteRow {
    pub service: String,
    pub env: String,
    pub minute: i64,
    pub total: i64,
    pub errors: i64,
    #[sqlx(json)]
    pub buckets: Vec<u64>,
    /// A ready instance at every look.
    pub ready: bool,
    /// Looks the monitor took during the minute (0 in rows from before it
    /// counted them: judge those by `ready`).
    pub looks: i64,
    /// Looks at which no instance was ready.
    pub unready_looks: i64,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct MaintenanceRow {
    pub id: i64,
    pub service: String,
    pub starts_at: String,
    pub ends_at: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
}

impl MinuteRow {
    /// (looks, unready looks) as the SLO arithmetic counts them: rows from
    /// before looks were counted (0) are a whole minute, judged by `ready`.
    pub fn looks(&self) -> (u32, u32) {
        let whole = tandem_core::slo::LOOKS_PER_MINUTE;
        match self.looks {
            n if n <= 0 => (whole, if self.ready { 0 } else { whole }),
            n => (
                u32::try_from(n).unwrap_or(u32::MAX),
                u32::try_from(self.unready_looks.clamp(0, n)).unwrap_or(u32::MAX),
            ),
        }
    }
}

impl Store {
    /// Stores a minute (replacing one measured before, after a restart).
    pub async fn record_minute(&self, m: &MinuteRow) -> Result<()> {
        let buckets = serde_json::to_string(&m.buckets)?;
        // Under the writer lock like every write: a write outside it can
        // make another's transaction fail to upgrade (SQLITE_BUSY).
        self.writing(async {
            let _w = self.writer.lock().await;
            sqlx::query(
                "INSERT INTO minutes (service, env, minute, total, errors, buckets, ready, looks, unready_looks)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(service, env, minute) DO UPDATE SET total = excluded.total, errors = excluded.errors,
                   buckets = excluded.buckets, ready = excluded.ready, looks = excluded.looks,
                   unready_looks = excluded.unready_looks",
            )
            .bind(&m.service)
            .bind(&m.env)
            .bind(m.minute)
            .bind(m.total)
            .bind(m.errors)
            .bind(&buckets)
            .bind(m.ready)
            .bind(m.looks)
            .bind(m.unready_looks)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Minutes of a service environment with `from <= minute < to`.
    pub async fn minutes(
        &self,
        service: &str,
        env: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<MinuteRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM minutes WHERE service = ? AND env = ? AND minute >= ? AND minute < ? ORDER BY minute",
        )
        .bind(service)
        .bind(env)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Hours (service, first minute) of production minutes with `from <=
    /// minute < to` not yet journaled as measurements.
    pub async fn unmeasured_hours(&self, from: i64, to: i64) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT m.service, (m.minute / 60) * 60 AS hour FROM minutes m
             WHERE m.env = '' AND m.minute >= ? AND m.minute < ?
               AND NOT EXISTS (SELECT 1 FROM measured d WHERE d.service = m.service AND d.env = ''
                               AND d.hour = (m.minute / 60) * 60)
             ORDER BY hour, m.service",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Commits an hour of `service`'s minutes to the journal
    /// (`measurements.recorded`), once: `None` if that hour was journaled
    /// before.
    pub async fn journal_measurements(
        &self,
        service: &str,
        m: &tandem_core::slo::Measurements,
        actor: &str,
    ) -> Result<Option<Event>> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO measured (service, env, hour) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(service)
            .bind(&m.env)
            .bind(m.hour)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(None);
            }
            let event = NewEvent::new(actor, "measurements.recorded")
                .subject("service", service)
                .payload(serde_json::to_value(m)?);
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(Some(e))
        })
        .await
    }

    /// Drops minutes older than `before` (retention: 13 months and more).
    pub async fn prune_minutes(&self, before: i64) -> Result<u64> {
        self.writing(async {
            let _w = self.writer.lock().await;
            Ok(sqlx::query("DELETE FROM minutes WHERE minute < ?")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected())
        })
        .await
    }

    pub async fn add_maintenance(
        &self,
        service: &str,
        starts_at: &str,
        ends_at: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(MaintenanceRow, Event)> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
            "INSERT INTO maintenance (service, starts_at, ends_at, reason, created_by, created_at)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(service)
        .bind(starts_at)
        .bind(ends_at)
        .bind(reason)
        .bind(actor)
        .bind(now_ts())
        .fetch_one(&mut *tx)
        .await?;
            let event = NewEvent::new(actor, "maintenance.scheduled")
            .subject("service", service)
            .subject("maintenance", id.to_string())
            .payload(
                serde_json::json!({ "starts_at": starts_at, "ends_at": ends_at, "reason": reason }),
            );
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            drop(_w);
            let row = sqlx::query_as("SELECT * FROM maintenance WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
            Ok((row, e))
        })
        .await
    }

    pub async fn maintenance(&self, service: Option<&str>) -> Result<Vec<MaintenanceRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM maintenance WHERE (?1 IS NULL OR service = ?1) ORDER BY starts_at",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A service's maintenance windows that end after `after` (an RFC 3339
    /// time; compared as text, so pass one a minute early and filter: a
    /// status call reads what is current, not the service's whole history).
    pub async fn maintenance_ending_after(
        &self,
        service: &str,
        after: &str,
    ) -> Result<Vec<MaintenanceRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM maintenance WHERE service = ? AND ends_at >= ? ORDER BY starts_at",
        )
        .bind(service)
        .bind(after)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn remove_maintenance(&self, id: i64, actor: &str) -> Result<()> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let service: Option<String> =
                sqlx::query_scalar("SELECT service FROM maintenance WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(service) = service else {
                return Err(StoreError::NotFound(format!("no maintenance window {id}")));
            };
            sqlx::query("DELETE FROM maintenance WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let event = NewEvent::new(actor, "maintenance.cancelled")
                .subject("service", &service)
                .subject("maintenance", id.to_string());
            append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
