//! Secret values of services, sealed with the store's key (see
//! `sealed.rs`): never in clear in the database or its WAL (the store runs
//! with `secure_delete`, so a page that held a value is zeroed when the
//! value goes). A value is service-wide (`env` empty) or for one
//! environment, which an environment takes before the service-wide one.
//! The journal records that a secret was set or removed, by whom and for
//! which environment, never its value.

use serde::Serialize;
use tandem_core::journal::{Event, NewEvent};

use crate::{Result, Store, StoreError, append_in, now_ts};

/// A secret as listed: its name, environment and when it last changed,
/// not its value.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct SecretInfo {
    pub name: String,
    /// `None`: service-wide.
    pub env: Option<String>,
    pub updated_at: String,
}

impl Store {
    /// Sets `name` of `service`, for environment `env` or (`None`)
    /// service-wide.
    pub async fn set_secret(
        &self,
        service: &str,
        env: Option<&str>,
        name: &str,
        value: &str,
        actor: &str,
    ) -> Result<Event> {
        let sealed = self.sealer.seal(value.as_bytes());
        let env = env.unwrap_or_default();
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO secrets (service, env, name, value, sealed, updated_at) VALUES (?, ?, ?, '', ?, ?)
                 ON CONFLICT(service, env, name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(service)
            .bind(env)
            .bind(name)
            .bind(&sealed)
            .bind(now_ts())
            .execute(&mut *tx)
            .await?;
            let event = NewEvent::new(actor, "secret.set")
                .subject("service", service)
                .payload(serde_json::json!({ "name": name, "env": (!env.is_empty()).then_some(env) }));
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    pub async fn remove_secret(
        &self,
        service: &str,
        env: Option<&str>,
        name: &str,
        actor: &str,
    ) -> Result<Event> {
        let env = env.unwrap_or_default();
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let gone =
                sqlx::query("DELETE FROM secrets WHERE service = ? AND env = ? AND name = ?")
                    .bind(service)
                    .bind(env)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            if gone.rows_affected() == 0 {
                let what = if env.is_empty() {
                    String::new()
                } else {
                    format!(" for {env}")
                };
                return Err(StoreError::NotFound(format!(
                    "{service} has no secret {name}{what}"
                )));
            }
            let event = NewEvent::new(actor, "secret.removed")
                .subject("service", service)
                .payload(
                    serde_json::json!({ "name": name, "env": (!env.is_empty()).then_some(env) }),
                );
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    pub async fn secrets(&self, service: &str) -> Result<Vec<SecretInfo>> {
        Ok(sqlx::query_as(
            "SELECT name, NULLIF(env, '') AS env, updated_at FROM secrets WHERE service = ?
             ORDER BY name, env",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Values of the named secrets of `service` as environment `env` (or,
    /// `None`, the service itself) sees them: its own, else the
    /// service-wide one. `Err(missing names)` when any is not set.
    pub async fn secret_values(
        &self,
        service: &str,
        env: Option<&str>,
        names: &[String],
    ) -> Result<std::result::Result<Vec<(String, String)>, Vec<String>>> {
        let env = env.unwrap_or_default();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            // The environment's own first ('' sorts last).
            let sealed: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT sealed FROM secrets WHERE service = ? AND name = ? AND env IN (?, '')
                 ORDER BY env DESC LIMIT 1",
            )
            .bind(service)
            .bind(name)
            .bind(env)
            .fetch_optional(&self.pool)
            .await?;
            match sealed {
                Some(s) => found.push((name.clone(), self.open_text(&s)?)),
                None => missing.push(name.clone()),
            }
        }
        Ok(if missing.is_empty() {
            Ok(found)
        } else {
            Err(missing)
        })
    }

    /// Every secret value of `service`, of every environment, for masking.
    pub async fn all_secret_values(&self, service: &str) -> Result<Vec<String>> {
        let sealed: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT sealed FROM secrets WHERE service = ?")
                .bind(service)
                .fetch_all(&self.pool)
                .await?;
        sealed.iter().map(|s| self.open_text(s)).collect()
    }

    fn open_text(&self, sealed: &[u8]) -> Result<String> {
        String::from_utf8(self.sealer.open(sealed)?)
            .map_err(|_| StoreError::Conflict("a sealed secret is not text".into()))
    }

    /// Seals the values an older store kept in clear and blanks them (at
    /// open; `secure_delete` zeroes the pages they were on).
    pub(crate) async fn seal_secrets(&self) -> Result<()> {
        let clear: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT service, env, name, value FROM secrets WHERE sealed IS NULL")
                .fetch_all(&self.pool)
                .await?;
        if clear.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (service, env, name, value) in &clear {
            sqlx::query(
                "UPDATE secrets SET sealed = ?, value = '' WHERE service = ? AND env = ? AND name = ?",
            )
            .bind(self.sealer.seal(value.as_bytes()))
            .bind(service)
            .bind(env)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // The WAL still holds the pages as they were: fold it in and empty it.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter(|e| {
                std::fs::read(e.path()).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn values_are_sealed_an_environment_takes_its_own_and_clear_ones_are_sealed_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("t.db");
        let store = Store::open(&path).await.expect("open");
        store
            .set_secret("shop", None, "DB", "wide-value-1", "t")
            .await
            .expect("set");
        store
            .set_secret("shop", Some("staging"), "DB", "staging-value-2", "t")
            .await
            .expect("set");
        let names = ["DB".to_owned()];
        let of = |env: Option<&'static str>| {
            let store = store.clone();
            let names = names.clone();
            async move {
                store
                    .secret_values("shop", env, &names)
                    .await
                    .expect("read")
                    .expect("set")
            }
        };
        assert_eq!(of(Some("staging")).await[0].1, "staging-value-2");
        assert_eq!(of(Some("production")).await[0].1, "wide-value-1");
        assert_eq!(of(None).await[0].1, "wide-value-1");
        // A value an older store kept in clear.
        sqlx::query("UPDATE secrets SET value = 'old-clear-value-3', sealed = NULL WHERE env = ''")
            .execute(&store.pool)
            .await
            .expect("update");
        store.close().await;
        let store = Store::open(&path).await.expect("open again");
        assert_eq!(
            store
                .secret_values("shop", None, &names)
                .await
                .expect("read")
                .expect("set")[0]
                .1,
            "old-clear-value-3"
        );
        store.close().await;
        for value in ["wide-value-1", "staging-value-2", "old-clear-value-3"] {
            assert_eq!(
                files_holding(dir.path(), value.as_bytes()),
                Vec::<String>::new(),
                "{value}"
            );
        }
    }
}
