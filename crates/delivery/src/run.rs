//! One pipeline run: checkout → build → test → release, then for each
//! environment in order: (approval) → deploy → verify, and after a failed
//! verify → rollback of that environment to the release it ran before.
//! Each stage is recorded (state and journal event, with the commit) as it
//! starts and ends. A run waiting for an approval ends its task; the
//! approval queues it again and it resumes at that environment. A run can
//! be cancelled except while it deploys or rolls back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_core::journal::NewEvent;
use tandem_core::spec::Spec;
use tandem_engine::{EngineError, Placement, Progress, Reporter, now_ms, read_spec};
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

/// Where a run got to without failing.
enum Reached {
    /// Live everywhere, with this release.
    End(i64),
    /// Parked until enough approvals for the next environment.
    Waiting,
}

/// What opens the way into an environment.
#[derive(Clone, Copy)]
enum Gate {
    Open,
    Approvals(u32),
}

/// `deploy` without environments, `deploy:staging` with them.
fn stage_name(stage: &str, place: &Placement) -> String {
    match &place.env {
        Some(env) => format!("{stage}:{env}"),
        None => stage.to_owned(),
    }
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// How a run ended, short of success.
enum Stop {
    Failed {
        reason: String,
        log_tail: Vec<String>,
    },
    Cancelled(String),
    /// Not deployed: its commit is not where the branch is going (why).
    Superseded(String),
}

/// Triggers that only say "something changed on the branch": their run
/// goes ahead only for the branch head. A person's `deploy --ref` and
/// `pipelines retry` are explicit and are not held to the head.
pub fn automatic(trigger: &str) -> bool {
    matches!(trigger, "poll" | "register" | "head" | "recovery") || trigger.starts_with("webhook:")
}

/// The commit a release was built from (`<url>@<sha>`), if it came from a
/// repository.
pub fn commit_of(source: &str) -> Option<&str> {
    let (_, sha) = source.rsplit_once('@')?;
    (sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(sha)
}

/// Fetches the branch into the mirror, three tries one and two seconds
/// apart (a git server that blinks); returns the branch head.
async fn fetch_retrying(
    mirror: &Path,
    url: &str,
    branch: &str,
    credential: Option<&git::Credential>,
    reporter: &Reporter,
) -> Result<String, git::GitError> {
    let mut wait = std::time::Duration::from_secs(1);
    for attempt in 1.. {
        match git::fetch(mirror, url, branch, credential).await {
            Ok(head) => return Ok(head),
            Err(e) if attempt < 3 => {
                reporter.phase(
                    "checkout",
                    format!("fetch failed ({e}); trying again in {wait:?}"),
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
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
        // Nothing a run logs shows a secret of its service.
        let secrets = self
            .store()
            .all_secret_values(&run.service)
            .await
            .unwrap_or_default();
        // (The unmasked reporter goes out of scope here: the writer ends
        // once the last sender is gone.)
        let reporter = {
            let unmasked = reporter;
            unmasked.masking(secrets)
        };
        let releasing = Arc::new(AtomicBool::new(false));
        let stages = run.stages.clone();
        let mut ctx = Ctx {
            delivery: self,
            run,
            stages,
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
        let superseded = matches!(outcome, Err(Stop::Superseded(_)));
        if let Err(e) = ctx.finish(outcome).await {
            tracing::error!(run = id, error = %e, "cannot record the end of a run");
        }
        if superseded {
            // The head it gave way to may have no run yet.
            let this = self.clone();
            let service = ctx.run.service.clone();
            tokio::spawn(async move { this.poll_now(&service).await });
        }
        lock(&self.inner.cancels).remove(&id);
        let _ = std::fs::remove_dir_all(workspace(&self.inner.data_dir, id));
        drop(ctx);
        let _ = writer.await;
    }
}

impl Ctx<'_> {
    async fn go(&mut self) -> Result<Reached, Stop> {
        let service = self.run.service.clone();
        let (spec, release) = match self.run.release {
            None => self.build().await?,
            // Resumed after an approval: the release exists already.
            Some(number) => self.stored_release(&service, number).await?,
        };
        let engine = &self.delivery.inner.engine;
        // The gates are the control plane's policy, which this commit's
        // spec may tighten but not loosen (`policy::effective`).
        let policies = self
            .delivery
            .store()
            .policies(&service)
            .await
            .map_err(DeliveryError::from)?;
        let gates = crate::policy::effective(&spec, &policies).map_err(|reason| Stop::Failed {
            reason,
            log_tail: Vec::new(),
        })?;
        let gate_of = |env: &str| {
            gates
                .iter()
                .find(|g| g.env == env)
                .map_or(Gate::Open, |g| match g.approvals {
                    0 => Gate::Open,
                    n => Gate::Approvals(n),
                })
        };
        let places: Vec<(Placement, Gate)> = if spec.environments.is_empty() {
            vec![(Placement::production(&spec), gate_of("production"))]
        } else {
            spec.environments
                .iter()
                .map(|(name, _)| (Placement::environment(&spec, name), gate_of(name.as_str())))
                .collect()
        };
        for (i, (place, gate)) in places.iter().enumerate() {
            let deploy = stage_name("deploy", place);
            if self.stage_succeeded(&deploy) {
                continue;
            }
            let env = place.env.clone().unwrap_or_else(|| "production".into());
            if let Gate::Approvals(required) = *gate {
                let approvers = self
                    .delivery
                    .store()
                    .approvals(self.run.id, &env)
                    .await
                    .map_err(DeliveryError::from)?;
                if (approvers.len() as u32) < required {
                    return self.wait_for_approval(&env, required, approvers).await;
                }
                self.close_approval(&env);
            }
            if let Some(why) = self.moves_backward(&service, place).await? {
                return Err(Stop::Superseded(why));
            }
            if i == 0 {
                self.delivery
                    .store()
                    .supersede_waiting(&service, self.run.id, SCHEDULER_ACTOR)
                    .await
                    .map_err(DeliveryError::from)?;
            }
            // What a failed verify goes back to.
            let before = engine.running_in(&service, place).await?;
            self.roll_out(&deploy, &release, &spec, place, false)
                .await?;
            if !spec.verify.is_empty() {
                self.stage_start(&stage_name("verify", place)).await?;
                let work = self.ensure_checkout().await?;
                let (_, proxy) = engine.agent.hello().await.map_err(EngineError::from)?;
                let mut vars = self.step_env();
                vars.extend(
                    engine
                        .secret_env(&service, &spec, place.env.as_deref())
                        .await?,
                );
                vars.push(("TANDEM_ENV".into(), env.clone()));
                vars.push(("TANDEM_HOST".into(), place.route.host.clone()));
                vars.push(("TANDEM_PROXY".into(), proxy.clone()));
                vars.push((
                    "TANDEM_URL".into(),
                    format!("http://{proxy}{}", place.route.path_prefix),
                ));
                let verified = engine
                    .run_steps(
                        &service,
                        "verify",
                        &spec.verify,
                        &work,
                        &vars,
                        SCHEDULER_ACTOR,
                        &self.reporter,
                    )
                    .await;
                if let Err(e) = verified {
                    return Err(self.roll_back(e.into(), before, &release, place).await);
                }
                self.stage_end("succeeded").await?;
            }
        }
        Ok(Reached::End(release.number))
    }

    /// The stage `stage`: `release` rolled out to `place` (a rollback if
    /// `rollback`) under the service's lock. A cancel waits for its end.
    async fn roll_out(
        &mut self,
        stage: &str,
        release: &tandem_store::ReleaseRow,
        spec: &Spec,
        place: &Placement,
        rollback: bool,
    ) -> Result<(), Stop> {
        let engine = &self.delivery.inner.engine;
        self.releasing.store(true, Ordering::SeqCst);
        self.stage_start(stage).await?;
        let done = {
            let _guard = engine.lock_service(&release.service).await;
            engine
                .rollout(
                    release,
                    spec,
                    place,
                    SCHEDULER_ACTOR,
                    rollback,
                    &self.reporter,
                )
                .await
        };
        self.releasing.store(false, Ordering::SeqCst);
        done?;
        self.stage_end("succeeded").await
    }

    /// Release `number` of `service` and the spec stored with it.
    async fn stored_release(
        &self,
        service: &str,
        number: i64,
    ) -> Result<(Spec, tandem_store::ReleaseRow), Stop> {
        let store = self.delivery.store();
        let release = store
            .release(service, number)
            .await
            .map_err(DeliveryError::from)?;
        Ok((tandem_engine::stored_spec(&release)?, release))
    }

    /// After a failed verify (`failed`): `place` goes back to the release
    /// it ran before this run's deploy (`before`), a rollback of its own
    /// stage and in the journal. Returns what the run fails with: the
    /// verify's reason and what became of the environment.
    async fn roll_back(
        &mut self,
        failed: Stop,
        before: Option<i64>,
        release: &tandem_store::ReleaseRow,
        place: &Placement,
    ) -> Stop {
        let Stop::Failed { reason, log_tail } = failed else {
            return failed;
        };
        let env = place.env.as_deref().unwrap_or("production");
        let Some(number) = before.filter(|n| *n != release.number) else {
            return Stop::Failed {
                reason: format!(
                    "{reason}; {env} stays on {}: no earlier release ran there",
                    release.name()
                ),
                log_tail,
            };
        };
        let rolled = async {
            self.stage_end("failed").await?;
            let (spec, earlier) = self.stored_release(&release.service, number).await?;
            // Where the verify ran: the same unit and route, the earlier code.
            let stage = stage_name("rollback", place);
            self.roll_out(&stage, &earlier, &spec, place, true).await
        }
        .await;
        let what = match rolled {
            Ok(()) => format!("{env} rolled back to r{number}"),
            Err(Stop::Failed { reason: why, .. }) => {
                format!("rolling {env} back to r{number} failed: {why}")
            }
            Err(cancelled) => return cancelled,
        };
        Stop::Failed {
            reason: format!("{reason}; {what}"),
            log_tail,
        }
    }

    /// Why deploying this run's commit to `place` would move it back
    /// along the branch's history, if it would: what runs there was built
    /// from a commit this one does not descend from, and this one is not
    /// the branch head either (a head moved back by a force-push is
    /// deployed: it is what the branch says now, journalled
    /// `run.head_moved_back`). A person's `deploy --ref` may go anywhere.
    async fn moves_backward(
        &mut self,
        service: &str,
        place: &Placement,
    ) -> Result<Option<String>, Stop> {
        if self.run.trigger == "manual" {
            return Ok(None);
        }
        let d = self.delivery;
        let Some(number) = d.inner.engine.running_in(service, place).await? else {
            return Ok(None);
        };
        let running = d
            .store()
            .release(service, number)
            .await
            .map_err(DeliveryError::from)?;
        // Deployed from a directory: no history to compare with.
        let Some(running_sha) = commit_of(&running.source).map(str::to_owned) else {
            return Ok(None);
        };
        if running_sha == self.run.commit {
            return Ok(None);
        }
        let mirror = d.mirror(service);
        if git::is_ancestor(&mirror, &running_sha, &self.run.commit)
            .await
            .unwrap_or(false)
        {
            return Ok(None);
        }
        let repo = d.repo(service).await?;
        let credential = d.credential(service).await?;
        let head = fetch_retrying(
            &mirror,
            &repo.url,
            &repo.branch,
            credential.as_ref(),
            &self.reporter,
        )
        .await?;
        let env = place.env.clone().unwrap_or_else(|| "production".into());
        if head == self.run.commit {
            self.reporter.phase(
                "deploy",
                format!(
                    "{} moved back to {}: deploying it over {}",
                    repo.branch,
                    short(&head),
                    short(&running_sha)
                ),
            );
            let event = self.event(
                "run.head_moved_back",
                serde_json::json!({ "env": env, "from": running_sha, "to": head }),
            );
            d.store().append(event).await.map_err(DeliveryError::from)?;
            return Ok(None);
        }
        Ok(Some(format!(
            "{} does not descend from {} ({}, running in {env}) and is not the head of {}",
            short(&self.run.commit),
            short(&running_sha),
            running.name(),
            repo.branch
        )))
    }

    /// Checkout, build, test and the immutable release: everything that
    /// happens once per run, whatever the environments.
    async fn build(&mut self) -> Result<(Spec, tandem_store::ReleaseRow), Stop> {
        let d = self.delivery;
        let service = self.run.service.clone();
        let repo = d.repo(&service).await?;
        let mirror = d.mirror(&service);

        // The checkout's start event carries the commit's author and time,
        // so learn them first; the stage still counts from here.
        let checkout_started = now_ms();
        // An automatic run goes ahead only for the branch head, whatever
        // order the triggers came in: fetch to know it.
        let automatic = automatic(&self.run.trigger);
        let head = if automatic || git::resolve(&mirror, &self.run.commit).await.is_err() {
            self.reporter.phase(
                "checkout",
                format!("fetching {} from {}", repo.branch, repo.url),
            );
            let credential = d.credential(&service).await?;
            Some(
                fetch_retrying(
                    &mirror,
                    &repo.url,
                    &repo.branch,
                    credential.as_ref(),
                    &self.reporter,
                )
                .await?,
            )
        } else {
            None
        };
        let sha = git::resolve(&mirror, &self.run.commit)
            .await
            .map_err(|_| Stop::Failed {
                reason: format!("{} is not a commit of {}", self.run.commit, repo.url),
                log_tail: Vec::new(),
            })?;
        if automatic
            && let Some(head) = head
            && head != sha
        {
            return Err(Stop::Superseded(format!(
                "{} is not the head of {}: {} is",
                short(&sha),
                repo.branch,
                short(&head)
            )));
        }
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
        let work = self.ensure_checkout().await?;
        self.reporter.phase(
            "checkout",
            format!("{} by {}: {}", short(&sha), info.author, info.message),
        );
        let spec = read_spec(&work)?;
        if spec.service.name.as_str() != service {
            return Err(Stop::Failed {
                reason: format!(
                    "tandem.yaml at {} names the service {}, but this repository is registered as {service}",
                    short(&sha),
                    spec.service.name
                ),
                log_tail: Vec::new(),
            });
        }
        self.stage_end("succeeded").await?;

        let engine = &d.inner.engine;
        let mut env = self.step_env();
        // Build and test steps see the service-wide values.
        env.extend(engine.secret_env(&service, &spec, None).await?);
        for (stage, steps) in [("build", &spec.build), ("test", &spec.test)] {
            if steps.is_empty() {
                continue;
            }
            self.stage_start(stage).await?;
            engine
                .run_steps(
                    &service,
                    stage,
                    steps,
                    &work,
                    &env,
                    SCHEDULER_ACTOR,
                    &self.reporter,
                )
                .await?;
            self.stage_end("succeeded").await?;
        }

        self.stage_start("release").await?;
        let release = {
            let _guard = engine.lock_service(&service).await;
            let source = format!("{}@{sha}", repo.url);
            engine
                .register(&spec, &source, Some(&work), SCHEDULER_ACTOR)
                .await?;
            engine
                .store_release(&spec, &work, &source, SCHEDULER_ACTOR, &self.reporter)
                .await?
        };
        self.run.release = Some(release.number);
        let event = self.event(
            "run.stage.succeeded",
            serde_json::json!({ "stage": "release", "release": release.name() }),
        );
        self.end_current_stage("succeeded");
        self.update("running", None, Some(release.number), event)
            .await?;
        Ok((spec, release))
    }

    /// The run's checkout, made again if it is gone (a run resumed after an
    /// approval verifies with the same commit's files).
    /// The commit checked out, and within it the service's directory (the
    /// repository's `--path`, its top by default): where the spec is read
    /// and the steps run.
    async fn ensure_checkout(&self) -> Result<PathBuf, Stop> {
        let work = workspace(&self.delivery.inner.data_dir, self.run.id);
        if !work.join(".git").exists() {
            let _ = std::fs::remove_dir_all(&work);
            let mirror = self.delivery.mirror(&self.run.service);
            let repo = self.delivery.repo(&self.run.service).await?;
            let credential = self.delivery.credential(&self.run.service).await?;
            git::checkout(
                &mirror,
                &self.run.commit,
                &work,
                &repo.url,
                credential.as_ref(),
            )
            .await?;
            // Git LFS keeps large files outside git: what the checkout
            // brought must be the files, never their pointers (an object
            // the LFS store lacks leaves its pointer).
            let root = work.clone();
            let pointers = tokio::task::spawn_blocking(move || git::lfs_pointers(&root))
                .await
                .unwrap_or_default();
            if !pointers.is_empty() {
                return Err(Stop::Failed {
                    reason: format!(
                        "{} uses Git LFS and {} file(s) are still pointers after `git lfs pull` (e.g. {}: the LFS store lacks the object); pointers are never released in place of the files",
                        short(&self.run.commit),
                        pointers.len(),
                        pointers[0].display()
                    ),
                    log_tail: Vec::new(),
                });
            }
        }
        let repo = self.delivery.repo(&self.run.service).await?;
        if repo.path.is_empty() {
            return Ok(work);
        }
        let dir = work.join(&repo.path);
        // A link in the commit must not take the build out of the checkout.
        match dir.canonicalize() {
            Ok(real) if work.canonicalize().is_ok_and(|w| real.starts_with(w)) && real.is_dir() => {
                Ok(real)
            }
            _ => Err(Stop::Failed {
                reason: format!(
                    "{} has no directory {} (the service's --path)",
                    short(&self.run.commit),
                    repo.path
                ),
                log_tail: Vec::new(),
            }),
        }
    }

    fn step_env(&self) -> Vec<(String, String)> {
        vec![
            ("TANDEM_COMMIT".to_owned(), self.run.commit.clone()),
            ("TANDEM_BRANCH".to_owned(), self.run.branch.clone()),
            ("TANDEM_RUN".to_owned(), self.run.id.to_string()),
            ("TANDEM_SERVICE".to_owned(), self.run.service.clone()),
        ]
    }

    fn stage_succeeded(&self, name: &str) -> bool {
        self.stages
            .iter()
            .any(|s| s.name == name && s.status == "succeeded")
    }

    /// Parks the run until `tandem approve`: the run's task ends here and
    /// an approval queues it again.
    async fn wait_for_approval(
        &mut self,
        env: &str,
        required: u32,
        approvers: Vec<String>,
    ) -> Result<Reached, Stop> {
        let name = format!("approval:{env}");
        if !self.stages.iter().any(|s| s.name == name) {
            self.stages.push(StageRecord {
                name: name.clone(),
                status: "waiting".into(),
                started_ms: now_ms(),
                ended_ms: None,
            });
        }
        let event = self.event(
            "run.waiting_approval",
            serde_json::json!({ "env": env, "required": required, "approvers": approvers }),
        );
        self.update("waiting-approval", None, None, event).await?;
        self.reporter.phase(
            "approval",
            format!(
                "waiting for {required} approval(s) to promote to {env}: tandem approve {}",
                self.run.id
            ),
        );
        Ok(Reached::Waiting)
    }

    /// Marks the approval stage of `env` as done (its event is the approval).
    fn close_approval(&mut self, env: &str) {
        let name = format!("approval:{env}");
        if let Some(stage) = self.stages.iter_mut().find(|s| s.name == name) {
            stage.status = "approved".into();
            stage.ended_ms.get_or_insert_with(now_ms);
        }
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

    /// Closes the last stage in memory; returns its name and duration.
    fn end_current_stage(&mut self, status: &str) -> Option<(String, u64)> {
        let stage = self.stages.last_mut()?;
        stage.status = status.to_owned();
        let ended = now_ms();
        stage.ended_ms = Some(ended);
        Some((stage.name.clone(), ended.saturating_sub(stage.started_ms)))
    }

    async fn stage_end(&mut self, status: &str) -> Result<(), Stop> {
        let Some((name, took)) = self.end_current_stage(status) else {
            return Ok(());
        };
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
    async fn finish(&mut self, outcome: Result<Reached, Stop>) -> Result<(), DeliveryError> {
        let still_running = self
            .stages
            .last()
            .is_some_and(|s| s.ended_ms.is_none() && s.status == "running");
        let (status, reason, release) = match outcome {
            Ok(Reached::Waiting) => return Ok(()),
            Ok(Reached::End(release)) => ("succeeded", None, Some(release)),
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
            Err(Stop::Superseded(why)) => {
                self.reporter.phase("superseded", why.clone());
                ("superseded", Some(why), None)
            }
        };
        if still_running {
            let stage_status = match status {
                "cancelled" | "superseded" => status,
                _ => "failed",
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
            Err(Stop::Cancelled(_) | Stop::Superseded(_)) => {}
        }
        let line = match &reason {
            Some(r) => format!("run {} {status}: {r}", self.run.id),
            None => format!("run {} {status}", self.run.id),
        };
        self.reporter.phase("end", line);
        Ok(())
    }
}
