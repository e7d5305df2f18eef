//! Read models of operations: incidents, notification channels and the
//! delivery attempts to them.

use serde::Serialize;
use tandem_core::journal::NewEvent;

use crate::{Result, Store, StoreError, append_in, now_ts};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct IncidentRow {
    pub id: i64,
    pub service: String,
    /// `None`: production.
    pub env: Option<String>,
    /// no-ready-instance | crash-loop | error-ratio | burn-rate
    pub kind: String,
    /// page | ticket
    pub severity: String,
    /// open | acknowledged | resolved
    pub status: String,
    pub summary: String,
    /// The release live when it opened.
    pub release: Option<String>,
    /// A deployment shortly before it opened, suspected as its cause.
    pub suspect_release: Option<String>,
    pub opened_at: String,
    pub acknowledged_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<String>,
    pub resolved_by: Option<String>,
    pub note: Option<String>,
}

/// What opens an incident.
#[derive(Clone, Debug)]
pub struct NewIncident {
    pub service: String,
    pub env: Option<String>,
    pub kind: String,
    pub severity: String,
    pub summary: String,
    pub release: Option<String>,
    pub suspect_release: Option<String>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: i64,
    /// webhook | slack | email
    pub kind: String,
    /// URL, or e-mail address.
    pub target: String,
    #[serde(skip)]
    pub secret: Option<String>,
    /// `host:port` of the SMTP server, for e-mail.
    pub smtp: Option<String>,
    /// Only incidents of this service, or of services of this tier.
    pub service: Option<String>,
    pub tier: Option<String>,
    pub created_at: String,
    /// Seconds between repeats of an unacknowledged page (`None`: once).
    pub repeat_s: Option<i64>,
    /// Seconds after an unacknowledged page opened that it is escalated
    /// to channel `escalate_to`.
    pub escalate_after_s: Option<i64>,
    pub escalate_to: Option<i64>,
    /// E-mail: `none`, `starttls` or `tls` (implicit); `None`: `none`.
    pub smtp_tls: Option<String>,
    /// E-mail: the relay's login (its password is `secret`).
    pub smtp_user: Option<String>,
}

/// One notification to one channel, as queued (see `0018_outbox.sql`).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub webhook_id: String,
    pub channel: i64,
    pub incident: i64,
    pub event: String,
    pub notice: String,
    pub status: String,
    pub attempts: i64,
    pub next_at: String,
    pub last_detail: Option<String>,
    pub created_at: String,
    pub done_at: Option<String>,
}

/// A notification to queue.
pub struct NewNotice<'a> {
    pub webhook_id: &'a str,
    pub channel: i64,
    pub incident: i64,
    pub event: &'a str,
    pub notice: &'a str,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub channel: i64,
    pub incident: i64,
    pub event: String,
    pub attempt: i64,
    pub ok: bool,
    pub detail: Option<String>,
    pub at: String,
}

impl Store {
    /// Opens an incident with its `incident.opened` event.
    pub async fn open_incident(&self, new: &NewIncident, actor: &str) -> Result<IncidentRow> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let now = now_ts();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO incidents (service, env, kind, severity, status, summary, release, suspect_release, opened_at)
             VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.service)
        .bind(&new.env)
        .bind(&new.kind)
        .bind(&new.severity)
        .bind(&new.summary)
        .bind(&new.release)
        .bind(&new.suspect_release)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        let mut event = NewEvent::new(actor, "incident.opened")
            .subject("service", &new.service)
            .subject("incident", id.to_string())
            .payload(serde_json::json!({
                "kind": new.kind,
                "severity": new.severity,
                "summary": new.summary,
                "release": new.release,
                "suspect_release": new.suspect_release,
                "env": new.env,
            }));
        if let Some(r) = &new.release {
            event = event.subject("release", r);
        }
        append_in(&mut tx, event).await?;
        tx.commit().await?;
        drop(_w);
        self.incident(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no incident {id}")))
        })
        .await
    }

    /// Acknowledges or resolves an incident, with its event. Refused when it
    /// is already resolved (or already acknowledged, for an acknowledge).
    pub async fn incident_transition(
        &self,
        id: i64,
        status: &str,
        by: &str,
        note: Option<&str>,
    ) -> Result<IncidentRow> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let now = now_ts();
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT service, status FROM incidents WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((service, current)) = row else {
            return Err(StoreError::NotFound(format!("no incident {id}")));
        };
        let allowed = match status {
            "acknowledged" => current == "open",
            "resolved" => current != "resolved",
            _ => false,
        };
        if !allowed {
            return Err(StoreError::Conflict(format!(
                "incident {id} is {current}; it cannot become {status}"
            )));
        }
        let sql = if status == "acknowledged" {
            "UPDATE incidents SET status = ?, acknowledged_at = ?, acknowledged_by = ?, note = COALESCE(?, note) WHERE id = ?"
        } else {
            "UPDATE incidents SET status = ?, resolved_at = ?, resolved_by = ?, note = COALESCE(?, note) WHERE id = ?"
        };
        sqlx::query(sql)
            .bind(status)
            .bind(&now)
            .bind(by)
            .bind(note)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let kind = if status == "acknowledged" {
            "incident.acknowledged"
        } else {
            "incident.resolved"
        };
        let event = NewEvent::new(by, kind)
            .subject("service", &service)
            .subject("incident", id.to_string())
            .payload(serde_json::json!({ "note": note }));
        append_in(&mut tx, event).await?;
        tx.commit().await?;
        drop(_w);
        self.incident(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no incident {id}")))
        })
        .await
    }

    pub async fn incident(&self, id: i64) -> Result<Option<IncidentRow>> {
        Ok(sqlx::query_as("SELECT * FROM incidents WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Incidents, newest first; only unresolved ones with `open_only`.
    pub async fn incidents(&self, open_only: bool, limit: u32) -> Result<Vec<IncidentRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM incidents WHERE (?1 = 0 OR status != 'resolved') ORDER BY id DESC LIMIT ?2",
        )
        .bind(open_only)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn add_channel(&self, c: &ChannelRow, actor: &str) -> Result<ChannelRow> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO channels (kind, target, secret, smtp, service, tier, created_at,
                   repeat_s, escalate_after_s, escalate_to, smtp_tls, smtp_user)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&c.kind)
            .bind(&c.target)
            .bind(&c.secret)
            .bind(&c.smtp)
            .bind(&c.service)
            .bind(&c.tier)
            .bind(now_ts())
            .bind(c.repeat_s)
            .bind(c.escalate_after_s)
            .bind(c.escalate_to)
            .bind(&c.smtp_tls)
            .bind(&c.smtp_user)
            .fetch_one(&mut *tx)
            .await?;
            let event = NewEvent::new(actor, "channel.added")
                .subject("channel", id.to_string())
                .payload(serde_json::json!({
                    "kind": c.kind, "target": c.target, "service": c.service, "tier": c.tier,
                    "signed": c.secret.is_some(), "repeat_s": c.repeat_s,
                    "escalate_after_s": c.escalate_after_s, "escalate_to": c.escalate_to,
                    "smtp_tls": c.smtp_tls, "smtp_user": c.smtp_user,
                }));
            append_in(&mut tx, event).await?;
            tx.commit().await?;
            drop(_w);
            sqlx::query_as("SELECT * FROM channels WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .map_err(Into::into)
        })
        .await
    }

    pub async fn channels(&self) -> Result<Vec<ChannelRow>> {
        Ok(sqlx::query_as("SELECT * FROM channels ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn remove_channel(&self, id: i64, actor: &str) -> Result<()> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let gone = sqlx::query("DELETE FROM channels WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if gone.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("no channel {id}")));
            }
            append_in(
                &mut tx,
                NewEvent::new(actor, "channel.removed").subject("channel", id.to_string()),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Queues notifications, all or none, due at once.
    pub async fn enqueue(&self, notices: &[NewNotice<'_>]) -> Result<()> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let now = now_ts();
            for n in notices {
                sqlx::query(
                    "INSERT INTO outbox (webhook_id, channel, incident, event, notice, status, next_at, created_at)
                     VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                )
                .bind(n.webhook_id)
                .bind(n.channel)
                .bind(n.incident)
                .bind(n.event)
                .bind(n.notice)
                .bind(&now)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` pending notifications due by now, each leased until
    /// `lease` (RFC 3339) so that no other pass takes it meanwhile; one
    /// whose sender died with it is due again when its lease ends.
    pub async fn take_due(&self, lease: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            Ok(sqlx::query_as(
                "UPDATE outbox SET next_at = ?
                 WHERE id IN (SELECT id FROM outbox WHERE status = 'pending' AND next_at <= ?
                              ORDER BY next_at, id LIMIT ?)
                 RETURNING *",
            )
            .bind(lease)
            .bind(now_ts())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Records an attempt at `row`: delivered, failed for good, or due
    /// again at `next_at`; and the attempt among the incident's deliveries.
    pub async fn attempted(
        &self,
        row: &OutboxRow,
        ok: bool,
        detail: &str,
        next_at: Option<&str>,
    ) -> Result<()> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let now = now_ts();
            let status = match (ok, next_at) {
                (true, _) => "delivered",
                (false, None) => "failed",
                (false, Some(_)) => "pending",
            };
            sqlx::query(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, next_at = COALESCE(?, next_at),
                   last_detail = ?, done_at = CASE WHEN ? = 'pending' THEN NULL ELSE ? END
                 WHERE id = ?",
            )
            .bind(status)
            .bind(next_at)
            .bind(detail)
            .bind(status)
            .bind(&now)
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO deliveries (channel, incident, event, attempt, ok, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(row.channel)
            .bind(row.incident)
            .bind(&row.event)
            .bind(row.attempts + 1)
            .bind(ok)
            .bind(detail)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The notifications about `incident`, oldest first.
    pub async fn outbox_of(&self, incident: i64) -> Result<Vec<OutboxRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM outbox WHERE incident = ? ORDER BY id")
                .bind(incident)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn deliveries(&self, incident: i64) -> Result<Vec<DeliveryRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM deliveries WHERE incident = ? ORDER BY id")
                .bind(incident)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
