//! One pipeline run: checkout → build → test → release → deploy, each stage
//! recorded (state and journal event, with the commit) as it starts and
//! ends. A run can be cancelled until it starts releasing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_core::journal::NewEvent;
use tandem_engine::{EngineError, Progress, Reporter, now_ms, read_spec};
use tandem_store::{RunRow, RunUpdate, StageRecord};
use tokio::sync::watch;

use crate::log::RunLog;
use crate::{Delivery, DeliveryError, SCHEDULER_ACTOR, git, lock};

/// Where run `id` checks out its commit.
pub fn workspace(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("work").join(format!("run-{id}"))
}

/// The commit fields every run event carries, plus `extra`.
pub fn commit_payload(run: &RunRow, extra: serde_json::Value) -> serde_json::Value {
    let mut payload = serde_json::json!({
        "commit": run.commit,
        "branch": run.branch,
        "author": run.author,
        "committed_at": run.committed_at,
    });
    if let (Some(p), serde_json::Value::Object(extra)) = (payload.as_object_mut(), extra) {
        p.extend(extra);
    }
    payload
}

/// How a run ended, short of success.
enum Stop {
    Failed {
        reason: String,
        log_tail: Vec<String>,
    },
    Cancelled(String),
}

impl From<DeliveryError> for Stop {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::Engine(EngineError::Failed { reason, log_tail }) => {
                Stop::Failed { reason, log_tail }
            }
            other => Stop::Failed {
                reason: other.to_string(),
                log_tail: Vec::new(),
            },
        }
    }
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        DeliveryError::Engine(e).into()
    }
}

impl From<git::GitError> for Stop {
    fn from(e: git::GitError) -> Self {
        DeliveryError::Git(e).into()
    }
}

struct Ctx<'a> {
    delivery: &'a Delivery,
    run: RunRow,
    stages: Vec<StageRecord>,
    reporter: Reporter,
    /// Set while releasing: a cancel then waits for the end.
    releasing: Arc<AtomicBool>,
}

impl Delivery {
    /// Runs `run` to its end and records how it ended.
    pub(crate) async fn execute(&self, run: RunRow) {
        let id = run.id;
        let (cancel_tx, mut cancel_rx) = watch::channel(None::<String>);
        lock(&self.inner.cancels).insert(id, cancel_tx);
        let (reporter, writer) = RunLog::new(self.log_path(id)).start();
        let releasing = Arc::new(AtomicBool::new(false));
        let mut ctx = Ctx {
            delivery: self,
            run,
            stages: Vec::new(),
            reporter,
            releasing: Arc::clone(&releasing),
        };
        let cancelled = async {
            loop {
                if cancel_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if let Some(by) = cancel_rx.borrow().clone()
                    && !releasing.load(Ordering::SeqCst)
                {
                    return by;
                }
            }
        };
        let outcome = tokio::select! {
            outcome = ctx.go() => outcome,
            by = cancelled => Err(Stop::Cancelled(by)),
        };
        if let Err(e) = ctx.finish(outcome).await {
            tracing::error!(run = id, error = %e, "cannot record the end of a run");
        }
        lock(&self.inner.cancels).remove(&id);
        let _ = std::fs::remove_dir_all(workspace(&self.inner.data_dir, id));
        drop(ctx);
        let _ = writer.await;
    }
}

impl Ctx<'_> {
    async fn go(&mut self) -> Result<Option<i64>, Stop> {
        let d = self.delivery;
        let data_dir = d.inner.data_dir.clone();
        let service = self.run.service.clone();
        let repo = d.repo(&service).await?;
        let mirror = d.mirror(&service);

        // The checkout's start event carries the commit's author and time,
        // so learn them first; the stage still counts from here.
        let checkout_started = now_ms();
        if git::resolve(&mirror, &self.run.commit).await.is_err() {
            self.reporter.phase(
                "checkout",
                format!("fetching {} from {}", repo.branch, repo.url),
            );
            git::fetch(&mirror, &repo.url, &repo.branch).await?;
        }
        let sha = git::resolve(&mirror, &self.run.commit)
            .await
            .map_err(|_| Stop::Failed {
                reason: format!("{} is not a commit of {}", self.run.commit, repo.url),
                log_tail: Vec::new(),
            })?;
        let info = git::commit_info(&mirror, &sha).await?;
        d.store()
            .describe_run(
                self.run.id,
                &info.sha,
                &info.author,
                &info.committed_at,
                &info.message,
            )
            .await
            .map_err(DeliveryError::from)?;
        self.run.commit = info.sha.clone();
        self.run.author = Some(info.author.clone());
        self.run.committed_at = Some(info.committed_at.clone());
        self.run.message = Some(info.message.clone());
        self.stage_start_at("checkout", checkout_started).await?;
        let work = workspace(&data_dir, self.run.id);
        let _ = std::fs::remove_dir_all(&work);
        git::checkout(&mirror, &sha, &work).await?;
        self.reporter.phase(
            "checkout",
            format!(
                "{} by {}: {}",
                &sha[..12.min(sha.len())],
                info.author,
                info.message
            ),
        );
        let spec = read_spec(&work)?;
        if spec.service.name.as_str() != service {
            return Err(Stop::Failed {
                reason: format!(
                    "tandem.yaml at {} names the service {}, but this repository is registered as {service}",
                    &sha[..12.min(sha.len())],
                    spec.service.name
                ),
                log_tail: Vec::new(),
            });
        }
        self.stage_end("succeeded").await?;

        let env = vec![
            ("TANDEM_COMMIT".to_owned(), sha.clone()),
            ("TANDEM_BRANCH".to_owned(), self.run.branch.clone()),
            ("TANDEM_RUN".to_owned(), self.run.id.to_string()),
            ("TANDEM_SERVICE".to_owned(), service.clone()),
        ];
        let engine = &d.inner.engine;
        for stage in ["build", "test"] {
            let steps = if stage == "build" {
                &spec.build
            } else {
                &spec.test
            };
            if steps.is_empty() {
                continue;
            }
            self.stage_start(stage).await?;
            engine
                .run_steps(&spec, stage, &work, &env, SCHEDULER_ACTOR, &self.reporter)
                .await?;
            self.stage_end("succeeded").await?;
        }

        self.releasing.store(true, Ordering::SeqCst);
        self.stage_start("deploy").await?;
        let _guard = engine.lock_service(&service).await;
        let source = format!("{}@{sha}", repo.url);
        engine.register(&spec, &source, SCHEDULER_ACTOR).await?;
        let release = engine
            .store_release(&spec, &work, &source, SCHEDULER_ACTOR, &self.reporter)
            .await?;
        let _ = std::fs::remove_dir_all(&work);
        engine
            .rollout(&release, &spec, SCHEDULER_ACTOR, false, &self.reporter)
            .await?;
        self.stage_end("succeeded").await?;
        Ok(Some(release.number))
    }

    fn event(&self, kind: &str, extra: serde_json::Value) -> NewEvent {
        NewEvent::new(SCHEDULER_ACTOR, kind)
            .subject("service", &self.run.service)
            .subject("run", self.run.id.to_string())
            .payload(commit_payload(&self.run, extra))
    }

    async fn stage_start(&mut self, stage: &str) -> Result<(), Stop> {
        self.stage_start_at(stage, now_ms()).await
    }

    async fn stage_start_at(&mut self, stage: &str, started_ms: u64) -> Result<(), Stop> {
        self.stages.push(StageRecord {
            name: stage.to_owned(),
            status: "running".into(),
            started_ms,
            ended_ms: None,
        });
        let event = self.event("run.stage.started", serde_json::json!({ "stage": stage }));
        self.update("running", None, None, event).await
    }

    async fn stage_end(&mut self, status: &str) -> Result<(), Stop> {
        let Some(stage) = self.stages.last_mut() else {
            return Ok(());
        };
        stage.status = status.to_owned();
        let ended = now_ms();
        stage.ended_ms = Some(ended);
        let (name, took) = (stage.name.clone(), ended.saturating_sub(stage.started_ms));
        let event = self.event(
            &format!("run.stage.{status}"),
            serde_json::json!({ "stage": name, "duration_ms": took }),
        );
        self.update("running", None, None, event).await
    }

    async fn update(
        &self,
        status: &str,
        reason: Option<&str>,
        release: Option<i64>,
        event: NewEvent,
    ) -> Result<(), Stop> {
        let stage = self.stages.last().map(|s| s.name.as_str());
        let update = RunUpdate {
            status,
            stage,
            reason,
            release,
            stages: &self.stages,
        };
        self.delivery
            .store()
            .update_run(self.run.id, update, event)
            .await
            .map(drop)
            .map_err(|e| DeliveryError::from(e).into())
    }

    /// Records the end: the current stage's outcome, then the run's.
    async fn finish(&mut self, outcome: Result<Option<i64>, Stop>) -> Result<(), DeliveryError> {
        let still_running = self.stages.last().is_some_and(|s| s.ended_ms.is_none());
        let (status, reason, release) = match outcome {
            Ok(release) => ("succeeded", None, release),
            Err(Stop::Failed { reason, log_tail }) => {
                self.reporter.send(Progress::Failed {
                    message: reason.clone(),
                    log_tail,
                    kind: "failed".into(),
                });
                ("failed", Some(reason), None)
            }
            Err(Stop::Cancelled(by)) => {
                self.reporter.phase("cancel", format!("cancelled by {by}"));
                ("cancelled", Some(format!("cancelled by {by}")), None)
            }
        };
        if still_running {
            let stage_status = if status == "cancelled" {
                "cancelled"
            } else {
                "failed"
            };
            // Ignore a refusal: a run removed with its service is already ended.
            let _ = self.stage_end(stage_status).await;
        }
        let lead_time_ms = (status == "succeeded")
            .then(|| {
                let committed: jiff::Timestamp = self.run.committed_at.as_deref()?.parse().ok()?;
                let now = jiff::Timestamp::now();
                Some(
                    now.as_millisecond()
                        .saturating_sub(committed.as_millisecond()),
                )
            })
            .flatten();
        let event = self.event(
            &format!("run.{status}"),
            serde_json::json!({
                "reason": reason,
                "release": release.map(|n| format!("r{n}")),
                "lead_time_ms": lead_time_ms,
            }),
        );
        match self.update(status, reason.as_deref(), release, event).await {
            Ok(()) => {}
            Err(Stop::Failed { reason, .. }) => {
                tracing::warn!(run = self.run.id, %reason, "run end not recorded")
            }
            Err(Stop::Cancelled(_)) => {}
        }
        let line = match &reason {
            Some(r) => format!("run {} {status}: {r}", self.run.id),
            None => format!("run {} {status}", self.run.id),
        };
        self.reporter.phase("end", line);
        Ok(())
    }
}
