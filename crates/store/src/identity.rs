//! Customers, users and API tokens, and the check of a token on each
//! request.
//!
//! A token is `tdm_<id>_<secret>`: `id` (8 hex digits) names it in lists
//! and revocations, `secret` is 32 random bytes (64 hex digits). Only the
//! SHA-256 of the whole token is stored. Checks run against an in-memory
//! copy of the tokens, made again after every change here, so a check
//! costs a hash and a map lookup, and a revocation counts from the next
//! request.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tandem_core::access::Role;
use tandem_core::journal::{Event, NewEvent, hex};

use crate::{Result, Store, StoreError, append_in, now_ts};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct UserRow {
    pub name: String,
    pub role: String,
    pub customer: Option<String>,
    pub email: Option<String>,
    pub created_at: String,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// Who a valid token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
    /// The customer of a customer's person.
    pub customer: Option<String>,
    pub email: Option<String>,
    /// The token used.
    pub token: String,
}

impl Identity {
    /// The journal's actor for what this person does.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user)
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token of this server (or revoked).
    Unknown,
    Expired,
    /// The tokens could not be read (the store is busy or broken).
    Unavailable,
}

/// A token as a check needs it.
struct Entry {
    hash: [u8; 32],
    expires_at: Option<jiff::Timestamp>,
    identity: Identity,
}

/// The tokens by id.
type Tokens = Arc<HashMap<String, Entry>>;

#[derive(Clone, Default)]
pub(crate) struct TokenCache(Arc<std::sync::RwLock<Cached>>);

/// The copy of the tokens, and how many changes it has seen: a copy read
/// before a change (a revocation) committed is never installed after it.
#[derive(Default)]
struct Cached {
    tokens: Option<Tokens>,
    generation: u64,
}

/// A customer id or user name: 1–64 of `a-z 0-9 - _ .`, starting with a
/// letter or digit.
pub fn valid_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{kind} {name:?} is not a name: 1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        )))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Store {
    /// Sets `customer`'s contract, journaled whole (`customer.contract_set`)
    /// so that a report can be recomputed from the log.
    pub async fn set_contract(
        &self,
        customer: &str,
        contract: &tandem_core::contract::Contract,
        actor: &str,
    ) -> Result<Event> {
        let payload = serde_json::json!({ "contract": contract });
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let known: Option<String> = sqlx::query_scalar("SELECT id FROM customers WHERE id = ?")
                .bind(customer)
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_none() {
                return Err(StoreError::NotFound(format!("no customer {customer}")));
            }
            let event = NewEvent::new(actor, "customer.contract_set")
                .subject("customer", customer)
                .payload(payload);
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    /// `customer`'s contract as last set, if any.
    pub async fn contract(
        &self,
        customer: &str,
    ) -> Result<Option<tandem_core::contract::Contract>> {
        let payload: Option<String> = sqlx::query_scalar(
            "SELECT payload FROM events WHERE kind = 'customer.contract_set'
               AND json_extract(subject, '$.customer') = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(customer)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match payload {
            Some(p) => {
                let v: serde_json::Value = serde_json::from_str(&p)?;
                serde_json::from_value(v["contract"].clone()).ok()
            }
            None => None,
        })
    }

    pub async fn add_customer(&self, id: &str, name: &str, actor: &str) -> Result<Event> {
        valid_name("customer", id)?;
        if name.trim().is_empty() || name.len() > 200 {
            return Err(StoreError::Invalid(
                "a customer's --name is 1 to 200 characters".into(),
            ));
        }
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let added = sqlx::query(
                "INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(now_ts())
            .execute(&mut *tx)
            .await?;
            if added.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("customer {id} exists")));
            }
            let event = NewEvent::new(actor, "customer.added")
                .subject("customer", id)
                .payload(serde_json::json!({ "name": name }));
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    pub async fn customers(&self) -> Result<Vec<CustomerRow>> {
        Ok(sqlx::query_as("SELECT * FROM customers ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Adds a person. A customer's role needs a known customer, and only
    /// those roles take one.
    pub async fn add_user(&self, user: &UserRow, actor: &str) -> Result<Event> {
        valid_name("user", &user.name)?;
        let role: Role = user.role.parse().map_err(StoreError::Invalid)?;
        match (&user.customer, role.is_customer()) {
            (None, true) => {
                return Err(StoreError::Invalid(format!("a {role} needs --customer")));
            }
            (Some(c), false) => {
                return Err(StoreError::Invalid(format!(
                    "--customer {c} is for customer-viewer and customer-approver; {role} belongs to the supplier"
                )));
            }
            _ => {}
        }
        if let Some(email) = &user.email
            && (email.len() > 254 || !email.contains('@') || email.contains(char::is_whitespace))
        {
            return Err(StoreError::Invalid(format!(
                "{email:?} is not an e-mail address"
            )));
        }
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            if let Some(c) = &user.customer {
                let known: Option<String> =
                    sqlx::query_scalar("SELECT id FROM customers WHERE id = ?")
                        .bind(c)
                        .fetch_optional(&mut *tx)
                        .await?;
                if known.is_none() {
                    return Err(StoreError::Invalid(format!(
                        "no customer {c}; add it first: tandem customers add {c} --name …"
                    )));
                }
            }
            let added = sqlx::query(
                "INSERT INTO users (name, role, customer, email, created_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&user.name)
            .bind(role.as_str())
            .bind(&user.customer)
            .bind(&user.email)
            .bind(now_ts())
            .execute(&mut *tx)
            .await?;
            if added.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("user {} exists", user.name)));
            }
            let event = NewEvent::new(actor, "user.added")
                .subject("user", &user.name)
                .payload(serde_json::json!({
                    "role": role.as_str(),
                    "customer": user.customer,
                    "email": user.email,
                }));
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Removes a person and their tokens. The last admin stays: without
    /// one, nobody could add people again.
    pub async fn remove_user(&self, name: &str, actor: &str) -> Result<Event> {
        let event = self
            .writing(async move {
                let _w = self.writer.lock().await;
                let mut tx = self.pool.begin().await?;
                let role: Option<String> =
                    sqlx::query_scalar("SELECT role FROM users WHERE name = ?")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(role) = role else {
                    return Err(StoreError::NotFound(format!("no user {name}")));
                };
                if role == "admin" {
                    let admins: i64 =
                        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
                            .fetch_one(&mut *tx)
                            .await?;
                    if admins <= 1 {
                        return Err(StoreError::Conflict(format!(
                            "{name} is the last admin; add another admin first"
                        )));
                    }
                }
                sqlx::query("DELETE FROM users WHERE name = ?")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                let event = NewEvent::new(actor, "user.removed").subject("user", name);
                let e = append_in(&mut tx, event).await?;
                tx.commit().await?;
                Ok(e)
            })
            .await?;
        self.tokens_changed();
        Ok(event)
    }

    /// Makes a token for `user`; returns it (the only time it is seen) and
    /// its row.
    pub async fn create_token(
        &self,
        user: &str,
        name: &str,
        expires_at: Option<jiff::Timestamp>,
        actor: &str,
    ) -> Result<(String, TokenRow)> {
        if name.is_empty() || name.len() > 64 || name.contains(char::is_control) {
            return Err(StoreError::Invalid(
                "a token's --name is 1 to 64 characters".into(),
            ));
        }
        let mut id = [0u8; 4];
        let mut secret = [0u8; 32];
        tandem_seal::random_bytes(&mut id);
        tandem_seal::random_bytes(&mut secret);
        let id = hex(&id);
        let token = format!("tdm_{id}_{}", hex(&secret));
        let row = TokenRow {
            id: id.clone(),
            user: user.to_owned(),
            name: name.to_owned(),
            created_at: now_ts(),
            expires_at: expires_at.map(|t| format!("{t:.0}")),
        };
        let hash = digest(&token);
        let row = self
            .writing(async move {
                let _w = self.writer.lock().await;
                let mut tx = self.pool.begin().await?;
                let known: Option<String> =
                    sqlx::query_scalar("SELECT name FROM users WHERE name = ?")
                        .bind(user)
                        .fetch_optional(&mut *tx)
                        .await?;
                if known.is_none() {
                    return Err(StoreError::NotFound(format!("no user {user}")));
                }
                sqlx::query(
                    "INSERT INTO tokens (id, user, name, hash, created_at, expires_at)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&row.id)
                .bind(&row.user)
                .bind(&row.name)
                .bind(&hash[..])
                .bind(&row.created_at)
                .bind(&row.expires_at)
                .execute(&mut *tx)
                .await?;
                let event = NewEvent::new(actor, "token.created")
                    .subject("user", user)
                    .payload(serde_json::json!({
                        "token": row.id,
                        "name": row.name,
                        "expires_at": row.expires_at,
                    }));
                append_in(&mut tx, event).await?;
                tx.commit().await?;
                Ok(row)
            })
            .await?;
        self.tokens_changed();
        Ok((token, row))
    }

    /// Tokens, of one user or all.
    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRow>> {
        Ok(sqlx::query_as(
            "SELECT id, user, name, created_at, expires_at FROM tokens
             WHERE ?1 IS NULL OR user = ?1 ORDER BY user, created_at",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a token: refused from the next request on.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<Event> {
        let event = self
            .writing(async move {
                let _w = self.writer.lock().await;
                let mut tx = self.pool.begin().await?;
                let user: Option<String> =
                    sqlx::query_scalar("DELETE FROM tokens WHERE id = ? RETURNING user")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(user) = user else {
                    return Err(StoreError::NotFound(format!("no token {id}")));
                };
                let event = NewEvent::new(actor, "token.revoked")
                    .subject("user", &user)
                    .payload(serde_json::json!({ "token": id }));
                let e = append_in(&mut tx, event).await?;
                tx.commit().await?;
                Ok(e)
            })
            .await?;
        self.tokens_changed();
        Ok(event)
    }

    /// Who `token` belongs to, if it is valid now.
    pub async fn authenticate(&self, token: &str) -> std::result::Result<Identity, Refusal> {
        let id = token
            .strip_prefix("tdm_")
            .and_then(|t| t.split_once('_'))
            .map(|(id, _)| id)
            .ok_or(Refusal::Unknown)?;
        let tokens = match self.tokens_cache() {
            Some(t) => t,
            None => self.load_tokens().await.map_err(|_| Refusal::Unavailable)?,
        };
        let entry = tokens.get(id).ok_or(Refusal::Unknown)?;
        let hash = digest(token);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&hash[..], &entry.hash[..])) {
            return Err(Refusal::Unknown);
        }
        if entry
            .expires_at
            .is_some_and(|at| at <= jiff::Timestamp::now())
        {
            return Err(Refusal::Expired);
        }
        Ok(entry.identity.clone())
    }

    fn tokens_cache(&self) -> Option<Tokens> {
        self.tokens
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .clone()
    }

    /// Forgets the copy of the tokens: the next check reads them again.
    fn tokens_changed(&self) {
        let mut cached = self.tokens.0.write().unwrap_or_else(|e| e.into_inner());
        cached.tokens = None;
        cached.generation += 1;
    }

    async fn load_tokens(&self) -> Result<Tokens> {
        type Row = (
            String,
            Vec<u8>,
            Option<String>,
            String,
            String,
            Option<String>,
            Option<String>,
        );
        let generation = self
            .tokens
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.id, t.hash, t.expires_at, u.name, u.role, u.customer, u.email
             FROM tokens t JOIN users u ON u.name = t.user",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut map = HashMap::new();
        for (id, hash, expires_at, user, role, customer, email) in rows {
            let (Ok(hash), Ok(role)) = (<[u8; 32]>::try_from(hash), role.parse::<Role>()) else {
                continue;
            };
            // An expiry that cannot be read is in the past.
            let expires_at = expires_at.map(|t| t.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH));
            let identity = Identity {
                user,
                role,
                customer,
                email,
                token: id.clone(),
            };
            map.insert(
                id,
                Entry {
                    hash,
                    expires_at,
                    identity,
                },
            );
        }
        let map = Arc::new(map);
        let mut cached = self.tokens.0.write().unwrap_or_else(|e| e.into_inner());
        // Read before a change committed: used for this check only.
        if cached.generation == generation {
            cached.tokens = Some(map.clone());
        }
        Ok(map)
    }

    /// On a data directory's first start: user `admin` and a token for it,
    /// returned to be written where the local CLI finds it. `None` when
    /// there are users already.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        if !self.users().await?.is_empty() {
            return Ok(None);
        }
        let admin = UserRow {
            name: "admin".into(),
            role: "admin".into(),
            customer: None,
            email: None,
            created_at: String::new(),
        };
        self.add_user(&admin, "system:bootstrap").await?;
        let (token, _) = self
            .create_token("admin", "bootstrap", None, "system:bootstrap")
            .await?;
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("t.db")).await.expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn a_token_works_until_revoked_or_expired_and_only_its_hash_is_kept() {
        let (dir, store) = store().await;
        let admin = store.bootstrap_admin().await.expect("boot").expect("token");
        assert_eq!(store.bootstrap_admin().await.expect("again"), None);
        let who = store.authenticate(&admin).await.expect("valid");
        assert_eq!((who.user.as_str(), who.role), ("admin", Role::Admin));

        let alice = UserRow {
            name: "alice".into(),
            role: "viewer".into(),
            customer: None,
            email: Some("alice@example.test".into()),
            created_at: String::new(),
        };
        store.add_user(&alice, "user:admin").await.expect("alice");
        let (token, row) = store
            .create_token("alice", "laptop", None, "user:admin")
            .await
            .expect("token");
        assert_eq!(store.authenticate(&token).await.expect("ok").user, "alice");
        // One character off, or another's id with this secret: refused.
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(store.authenticate(&wrong).await, Err(Refusal::Unknown));
        store
            .revoke_token(&row.id, "user:admin")
            .await
            .expect("revoke");
        assert_eq!(store.authenticate(&token).await, Err(Refusal::Unknown));

        let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        let (old, _) = store
            .create_token("alice", "old", Some(past), "user:admin")
            .await
            .expect("token");
        assert_eq!(store.authenticate(&old).await, Err(Refusal::Expired));

        store.close().await;
        for entry in std::fs::read_dir(dir.path()).expect("dir").flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            for t in [&admin, &token, &old] {
                let secret = t.rsplit('_').next().expect("secret");
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a token",
                    entry.path().display()
                );
            }
        }
    }

    #[tokio::test]
    async fn people_are_checked_and_the_last_admin_stays() {
        let (_dir, store) = store().await;
        store.bootstrap_admin().await.expect("boot");
        let mut bob = UserRow {
            name: "bob".into(),
            role: "customer-viewer".into(),
            customer: None,
            email: None,
            created_at: String::new(),
        };
        let err = store.add_user(&bob, "t").await.expect_err("no customer");
        assert!(err.to_string().contains("needs --customer"), "{err}");
        bob.customer = Some("acme".into());
        let err = store
            .add_user(&bob, "t")
            .await
            .expect_err("unknown customer");
        assert!(err.to_string().contains("no customer acme"), "{err}");
        store
            .add_customer("acme", "ACME AG", "t")
            .await
            .expect("acme");
        store.add_user(&bob, "t").await.expect("bob");
        bob.role = "root".into();
        bob.name = "eve".into();
        assert!(matches!(
            store.add_user(&bob, "t").await,
            Err(StoreError::Invalid(_))
        ));
        let err = store
            .remove_user("admin", "t")
            .await
            .expect_err("last admin");
        assert!(err.to_string().contains("last admin"), "{err}");
        assert!(valid_name("user", "../x").is_err());
    }
}
