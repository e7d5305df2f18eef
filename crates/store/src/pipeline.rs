//! Read models of continuous delivery: repositories services come from, and
//! pipeline runs. As everywhere in the store, a change and its journal event
//! commit together.

use serde::{Deserialize, Serialize};
use tandem_core::journal::{Event, NewEvent};

use crate::{Result, Store, StoreError, append_in, now_ts};

/// Where a service's code comes from.
/// A repository's credential as kept: `kind` is `token` (HTTPS, with a user
/// name) or `ssh-key` (a deploy key); `secret` is sealed at rest.
#[derive(Clone, PartialEq)]
pub struct RepoCredential {
    pub kind: String,
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for RepoCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoCredential({}, {}, ***)", self.kind, self.username)
    }
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RepoRow {
    pub service: String,
    pub url: String,
    pub branch: String,
    /// Never serialised: the API must not hand it out.
    #[serde(skip)]
    pub webhook_secret: Option<String>,
    pub poll_interval_ms: i64,
    pub created_at: String,
    /// The directory holding the service's `tandem.yaml`, its build root
    /// (`""`: the repository's top).
    #[sqlx(default)]
    pub path: String,
    /// The last poll's error while polls fail.
    #[sqlx(default)]
    pub poll_error: Option<String>,
    /// Since when polls have failed (RFC 3339); `None` while they work.
    #[sqlx(default)]
    pub poll_failing_since: Option<String>,
}

/// The gate policy of one environment of a service.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct PolicyRow {
    pub service: String,
    pub env: String,
    /// Approvals a promotion into `env` needs at least (0: none).
    pub approvals: i64,
    /// Who may approve (`user:NAME`); empty: anyone.
    #[sqlx(json)]
    pub approvers: Vec<String>,
    /// A commit whose spec lacks `env` is not released.
    pub required: bool,
    /// Whose approvals count: `supplier`, `customer` or `both`.
    pub approvers_from: String,
    /// Whether a commit's author may approve it.
    pub author_may_approve: bool,
    pub updated_at: String,
    pub updated_by: String,
}

/// One stage of a run and its timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    /// running | succeeded | failed | skipped
    pub status: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
}

/// A pipeline run: one commit of one service on its way to production.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub service: String,
    #[sqlx(rename = "commit_sha")]
    #[serde(rename = "commit")]
    pub commit: String,
    pub branch: String,
    pub trigger: String,
    pub author: Option<String>,
    pub committed_at: Option<String>,
    pub message: Option<String>,
    pub status: String,
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub release: Option<i64>,
    pub retry_of: Option<i64>,
    #[sqlx(json)]
    pub stages: Vec<StageRecord>,
    pub created_at: String,
    pub updated_at: String,
}

impl RunRow {
    /// Whether the run has reached an end state.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "failed" | "superseded" | "cancelled" | "interrupted" | "rejected"
        )
    }
}

/// What a new run is for.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    pub service: String,
    pub commit: String,
    pub branch: String,
    /// poll | webhook:<provider> | manual | retry | register | recovery
    pub trigger: String,
    pub author: Option<String>,
    pub committed_at: Option<String>,
    pub message: Option<String>,
    pub retry_of: Option<i64>,
}

/// A change of a run's state, applied with its event.
#[derive(Clone, Debug, Default)]
pub struct RunUpdate<'a> {
    pub status: &'a str,
    pub stage: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub release: Option<i64>,
    pub stages: &'a [StageRecord],
}

impl Store {
    /// Registers the repository of an existing service.
    pub async fn add_repo(&self, repo: &RepoRow, actor: &str) -> Result<Event> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO repos (service, url, branch, webhook_secret, poll_interval_ms, created_at, path)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(service) DO UPDATE SET url = excluded.url, branch = excluded.branch,
               webhook_secret = excluded.webhook_secret, poll_interval_ms = excluded.poll_interval_ms,
               path = excluded.path",
        )
        .bind(&repo.service)
        .bind(&repo.url)
        .bind(&repo.branch)
        .bind(&repo.webhook_secret)
        .bind(repo.poll_interval_ms)
        .bind(now_ts())
        .bind(&repo.path)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new(actor, "repo.added")
            .subject("service", &repo.service)
            .payload(serde_json::json!({
                "url": repo.url,
                "branch": repo.branch,
                "poll_interval_ms": repo.poll_interval_ms,
                "webhook": repo.webhook_secret.is_some(),
                "path": repo.path,
            }));
        let e = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(e)
        })
        .await
    }

    pub async fn repos(&self) -> Result<Vec<RepoRow>> {
        Ok(sqlx::query_as("SELECT * FROM repos ORDER BY service")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn repo(&self, service: &str) -> Result<Option<RepoRow>> {
        Ok(sqlx::query_as("SELECT * FROM repos WHERE service = ?")
            .bind(service)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Removes a service and its repository from the read models; its
    /// history stays in the journal and in the runs.
    pub async fn remove_service(&self, service: &str, actor: &str) -> Result<Event> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM repos WHERE service = ?")
                .bind(service)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM releases WHERE service = ?")
                .bind(service)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM policies WHERE service = ?")
                .bind(service)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM repo_credentials WHERE service = ?")
                .bind(service)
                .execute(&mut *tx)
                .await?;
            let gone = sqlx::query("DELETE FROM services WHERE name = ?")
                .bind(service)
                .execute(&mut *tx)
                .await?;
            if gone.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("no service named {service}")));
            }
            sqlx::query(
                "UPDATE runs SET status = 'cancelled', reason = 'service removed', updated_at = ?
             WHERE service = ? AND status IN ('queued', 'waiting-approval')",
            )
            .bind(now_ts())
            .bind(service)
            .execute(&mut *tx)
            .await?;
            let e = append_in(
                &mut tx,
                NewEvent::new(actor, "service.removed").subject("service", service),
            )
            .await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    /// Queues a run. Without `force`, a commit that already has a run is not
    /// queued again (`None`). Older queued runs of the service are superseded.
    pub async fn enqueue_run(
        &self,
        run: NewRun,
        force: bool,
        actor: &str,
    ) -> Result<Option<RunRow>> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            if !force {
                let seen: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM runs WHERE service = ? AND commit_sha = ? LIMIT 1",
                )
                .bind(&run.service)
                .bind(&run.commit)
                .fetch_optional(&mut *tx)
                .await?;
                if seen.is_some() {
                    return Ok(None);
                }
            }
            let now = now_ts();
            let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (service, commit_sha, branch, trigger, author, committed_at, message,
               status, retry_of, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) RETURNING id",
        )
        .bind(&run.service)
        .bind(&run.commit)
        .bind(&run.branch)
        .bind(&run.trigger)
        .bind(&run.author)
        .bind(&run.committed_at)
        .bind(&run.message)
        .bind(run.retry_of)
        .bind(&now)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
            let event = NewEvent::new(actor, "run.queued")
                .subject("service", &run.service)
                .subject("run", id.to_string())
                .payload(serde_json::json!({
                    "commit": run.commit,
                    "branch": run.branch,
                    "trigger": run.trigger,
                    "author": run.author,
                    "committed_at": run.committed_at,
                    "message": run.message,
                    "retry_of": run.retry_of,
                }));
            append_in(&mut tx, event).await?;
            tx.commit().await?;
            drop(_w);
            self.run(id).await
        })
        .await
    }

    /// Applies `update` to run `id` and appends `event` with it. Refused
    /// (`NotFound`) when the run has already finished: a cancel or a
    /// supersede wins over a late update.
    pub async fn update_run(
        &self,
        id: i64,
        update: RunUpdate<'_>,
        event: NewEvent,
    ) -> Result<Event> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET status = ?, stage = ?, reason = COALESCE(?, reason),
               release = COALESCE(?, release), stages = ?, updated_at = ?
             WHERE id = ? AND status NOT IN ('succeeded', 'failed', 'superseded', 'cancelled', 'interrupted')",
        )
        .bind(update.status)
        .bind(update.stage)
        .bind(update.reason)
        .bind(update.release)
        .bind(serde_json::to_string(update.stages)?)
        .bind(now_ts())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("run {id} is not active")));
        }
        let e = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(e)
        })
        .await
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        Ok(sqlx::query_as("SELECT * FROM runs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Runs, newest first; of one service when given.
    pub async fn runs(&self, service: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM runs WHERE (?1 IS NULL OR service = ?1) ORDER BY id DESC LIMIT ?2",
        )
        .bind(service)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Runs in a given state, oldest first.
    pub async fn runs_in(&self, status: &str) -> Result<Vec<RunRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM runs WHERE status = ? ORDER BY id")
                .bind(status)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

impl Store {
    /// Keeps `service`'s repository credential, its secret sealed;
    /// journalled `repo.credential_set` with its kind and user name only.
    pub async fn set_repo_credential(
        &self,
        service: &str,
        credential: &RepoCredential,
        actor: &str,
    ) -> Result<Event> {
        let sealed = self.sealer.seal(credential.secret.as_bytes());
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO repo_credentials (service, kind, username, sealed) VALUES (?, ?, ?, ?)
                 ON CONFLICT(service) DO UPDATE SET kind = excluded.kind,
                   username = excluded.username, sealed = excluded.sealed",
            )
            .bind(service)
            .bind(&credential.kind)
            .bind(&credential.username)
            .bind(&sealed)
            .execute(&mut *tx)
            .await?;
            let event = NewEvent::new(actor, "repo.credential_set")
                .subject("service", service)
                .payload(serde_json::json!({
                    "kind": credential.kind,
                    "username": credential.username,
                }));
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    /// `service`'s repository credential, opened.
    pub async fn repo_credential(&self, service: &str) -> Result<Option<RepoCredential>> {
        let row: Option<(String, String, Vec<u8>)> =
            sqlx::query_as("SELECT kind, username, sealed FROM repo_credentials WHERE service = ?")
                .bind(service)
                .fetch_optional(&self.pool)
                .await?;
        let Some((kind, username, sealed)) = row else {
            return Ok(None);
        };
        let secret = String::from_utf8(self.sealer.open(&sealed)?)
            .map_err(|_| StoreError::Conflict("a sealed credential is not text".into()))?;
        Ok(Some(RepoCredential {
            kind,
            username,
            secret,
        }))
    }

    /// Sets the gate policy of `policy.service`'s `policy.env`, journalled
    /// `policy.set` with what it was before.
    pub async fn set_policy(&self, policy: &PolicyRow, actor: &str) -> Result<Event> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let before: Option<PolicyRow> =
                sqlx::query_as("SELECT * FROM policies WHERE service = ? AND env = ?")
                    .bind(&policy.service)
                    .bind(&policy.env)
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query(
                "INSERT INTO policies (service, env, approvals, approvers, required, approvers_from, author_may_approve, updated_at, updated_by)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(service, env) DO UPDATE SET approvals = excluded.approvals,
                   approvers = excluded.approvers, required = excluded.required,
                   approvers_from = excluded.approvers_from,
                   author_may_approve = excluded.author_may_approve,
                   updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            )
            .bind(&policy.service)
            .bind(&policy.env)
            .bind(policy.approvals)
            .bind(serde_json::to_string(&policy.approvers)?)
            .bind(policy.required)
            .bind(&policy.approvers_from)
            .bind(policy.author_may_approve)
            .bind(now_ts())
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let event = NewEvent::new(actor, "policy.set")
                .subject("service", &policy.service)
                .subject("env", &policy.env)
                .payload(serde_json::json!({
                    "approvals": policy.approvals,
                    "approvers": policy.approvers,
                    "required": policy.required,
                    "approvers_from": policy.approvers_from,
                    "author_may_approve": policy.author_may_approve,
                    "before": before.map(|b| serde_json::json!({
                        "approvals": b.approvals, "approvers": b.approvers, "required": b.required,
                        "approvers_from": b.approvers_from, "author_may_approve": b.author_may_approve,
                    })),
                }));
            let e = append_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    /// The gate policies of `service`, by environment name.
    pub async fn policies(&self, service: &str) -> Result<Vec<PolicyRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM policies WHERE service = ? ORDER BY env")
                .bind(service)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records how the service's last poll went: an error (kept with when
    /// polls began to fail) or success (clearing it). Writes only when
    /// that changes.
    pub async fn set_repo_poll(&self, service: &str, error: Option<&str>) -> Result<()> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            match error {
                Some(error) => {
                    sqlx::query(
                        "UPDATE repos SET poll_error = ?1, poll_failing_since = COALESCE(poll_failing_since, ?2)
                         WHERE service = ?3 AND poll_error IS NOT ?1",
                    )
                    .bind(error)
                    .bind(now_ts())
                    .bind(service)
                    .execute(&self.pool)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "UPDATE repos SET poll_error = NULL, poll_failing_since = NULL
                         WHERE service = ? AND poll_failing_since IS NOT NULL",
                    )
                    .bind(service)
                    .execute(&self.pool)
                    .await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The runs of `commit` of `service`, newest first.
    pub async fn runs_of_commit(&self, service: &str, commit: &str) -> Result<Vec<RunRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM runs WHERE service = ? AND commit_sha = ? ORDER BY id DESC",
        )
        .bind(service)
        .bind(commit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether `commit` of `service` has had a run already.
    pub async fn has_run(&self, service: &str, commit: &str) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE service = ? AND commit_sha = ?")
                .bind(service)
                .bind(commit)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    /// Fills in what the checkout learned about the run's commit.
    pub async fn describe_run(
        &self,
        id: i64,
        commit: &str,
        author: &str,
        committed_at: &str,
        message: &str,
    ) -> Result<()> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        sqlx::query(
            "UPDATE runs SET commit_sha = ?, author = ?, committed_at = ?, message = ? WHERE id = ?",
        )
        .bind(commit)
        .bind(author)
        .bind(committed_at)
        .bind(message)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
        })
        .await
    }
}

/// Which release an environment before production runs.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DeploymentRow {
    pub service: String,
    pub env: String,
    pub release: i64,
    pub updated_at: String,
}

impl Store {
    /// Records that `env` of `service` now runs release `number`, with the
    /// event that says so.
    pub async fn record_deployment(
        &self,
        service: &str,
        env: &str,
        number: i64,
        event: NewEvent,
    ) -> Result<Event> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deployments (service, env, release, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(service, env) DO UPDATE SET release = excluded.release, updated_at = excluded.updated_at",
        )
        .bind(service)
        .bind(env)
        .bind(number)
        .bind(now_ts())
        .execute(&mut *tx)
        .await?;
        let e = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(e)
        })
        .await
    }

    /// Every service's environments but production, and what they run.
    pub async fn all_deployments(&self) -> Result<Vec<DeploymentRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM deployments ORDER BY service, env")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn deployments(&self, service: &str) -> Result<Vec<DeploymentRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM deployments WHERE service = ? ORDER BY env")
                .bind(service)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records `approver`'s approval of run `id` into `env` with its event;
    /// returns how many distinct approvers that environment now has. A
    /// second approval by the same approver counts once.
    /// Records `approver`'s approval (of organisation `org`: `supplier`
    /// or a customer's id) of run `id` into `env`, once per person;
    /// returns every approval so far as (approver, org).
    pub async fn approve(
        &self,
        id: i64,
        env: &str,
        approver: &str,
        org: &str,
        event: NewEvent,
    ) -> Result<Vec<(String, String)>> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let added = sqlx::query(
                "INSERT INTO approvals (run, env, approver, org, at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(env)
            .bind(approver)
            .bind(org)
            .bind(now_ts())
            .execute(&mut *tx)
            .await?;
            if added.rows_affected() == 1 {
                append_in(&mut tx, event).await?;
            }
            let all: Vec<(String, String)> = sqlx::query_as(
                "SELECT approver, org FROM approvals WHERE run = ? AND env = ? ORDER BY at",
            )
            .bind(id)
            .bind(env)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(all)
        })
        .await
    }

    /// Gives run `to` the approvals run `from` had (a run interrupted by a
    /// restart, queued again: people approved that commit, and need not
    /// again), journalled with `event` when there were any. Returns how many.
    pub async fn carry_approvals(&self, from: i64, to: i64, event: NewEvent) -> Result<u64> {
        self.writing(async move {
            let _w = self.writer.lock().await;
            let mut tx = self.pool.begin().await?;
            let carried = sqlx::query(
                "INSERT INTO approvals (run, env, approver, org, at)
                 SELECT ?, env, approver, org, at FROM approvals WHERE run = ? ON CONFLICT DO NOTHING",
            )
            .bind(to)
            .bind(from)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if carried > 0 {
                append_in(&mut tx, event).await?;
            }
            tx.commit().await?;
            Ok(carried)
        })
        .await
    }

    /// Approvers of run `id` into `env`.
    pub async fn approvals(&self, id: i64, env: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT approver FROM approvals WHERE run = ? AND env = ? ORDER BY at",
        )
        .bind(id)
        .bind(env)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Supersedes the service's runs that wait for an approval, when a newer
    /// run (`by`) starts deploying; returns their ids.
    pub async fn supersede_waiting(&self, service: &str, by: i64, actor: &str) -> Result<Vec<i64>> {
        self.writing(async move {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let waiting: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, commit_sha FROM runs WHERE service = ? AND id < ? AND (status = 'waiting-approval'
               OR (status = 'queued' AND release IS NOT NULL)) ORDER BY id",
        )
        .bind(service)
        .bind(by)
        .fetch_all(&mut *tx)
        .await?;
        for (id, commit) in &waiting {
            sqlx::query(
                "UPDATE runs SET status = 'superseded', reason = ?, updated_at = ? WHERE id = ?",
            )
            .bind(format!("superseded by run {by}"))
            .bind(now_ts())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let event = NewEvent::new(actor, "run.superseded")
                .subject("service", service)
                .subject("run", id.to_string())
                .payload(serde_json::json!({ "commit": commit, "by_run": by }));
            append_in(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(waiting.into_iter().map(|(id, _)| id).collect())
        })
        .await
    }
}
