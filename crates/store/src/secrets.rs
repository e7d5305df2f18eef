//! Secret values of services. The journal records that a secret was set or
//! removed, by whom, never its value.

use serde::Serialize;
use tandem_core::journal::{Event, NewEvent};

use crate::{Result, Store, StoreError, append_in, now_ts};

/// A secret as listed: its name and when it last changed, not its value.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: String,
}

impl Store {
    pub async fn set_secret(
        &self,
        service: &str,
        name: &str,
        value: &str,
        actor: &str,
    ) -> Result<Event> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO secrets (service, name, value, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(service, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(service)
        .bind(name)
        .bind(value)
        .bind(now_ts())
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new(actor, "secret.set")
            .subject("service", service)
            .payload(serde_json::json!({ "name": name }));
        let e = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(e)
        })
        .await
    }

    pub async fn remove_secret(&self, service: &str, name: &str, actor: &str) -> Result<Event> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let gone = sqlx::query("DELETE FROM secrets WHERE service = ? AND name = ?")
                .bind(service)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if gone.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!(
                    "{service} has no secret {name}"
                )));
            }
            let event = NewEvent::new(actor, "secret.removed")
                .subject("service", service)
                .payload(serde_json::json!({ "name": name }));
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    pub async fn secrets(&self, service: &str) -> Result<Vec<SecretInfo>> {
        Ok(
            sqlx::query_as("SELECT name, updated_at FROM secrets WHERE service = ? ORDER BY name")
                .bind(service)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Values of the named secrets of `service`; `Err(missing names)` when
    /// any is not set.
    pub async fn secret_values(
        &self,
        service: &str,
        names: &[String],
    ) -> Result<std::result::Result<Vec<(String, String)>, Vec<String>>> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            let value: Option<String> =
                sqlx::query_scalar("SELECT value FROM secrets WHERE service = ? AND name = ?")
                    .bind(service)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
            match value {
                Some(v) => found.push((name.clone(), v)),
                None => missing.push(name.clone()),
            }
        }
        Ok(if missing.is_empty() {
            Ok(found)
        } else {
            Err(missing)
        })
    }

    /// Every secret value of `service`, for masking logs.
    pub async fn all_secret_values(&self, service: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM secrets WHERE service = ?")
                .bind(service)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
