//! Continuous delivery: services that come from a git repository, the
//! triggers that notice new commits (polling, push webhooks, by hand) and
//! the pipeline runs that take a commit to production.
//!
//! The store's `runs` table is the queue: a trigger inserts a `queued` run,
//! the scheduler starts the oldest queued run of every service that has
//! none running, up to a limit across services, and each run records every
//! stage in the journal with its commit. The branch head is the goal:
//! automatic runs of other commits are superseded at checkout, no run moves
//! an environment back along the branch's history (unless the branch itself
//! moved back), and [`Delivery::converge`] queues the head again when it
//! has no run that settled it. The engine does the building and releasing;
//! this crate decides what to build and when.

pub mod git;
pub mod hooks;
mod log;
pub mod policy;
mod run;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy::Gate;
use tandem_core::spec::{Approvers, Spec};
use tandem_engine::{Engine, EngineError};
use tandem_store::{NewRun, RepoRow, RunRow, StoreError};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

pub use log::RunLog;

/// Actor of what the pipeline machinery does on its own.
pub const POLLER_ACTOR: &str = "system:poller";
pub const SCHEDULER_ACTOR: &str = "system:pipeline";
/// Default for `--poll-interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the run's state.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not decide this (four eyes, the wrong side).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registration request.
#[derive(Clone, Debug)]
pub struct AddService {
    pub url: String,
    pub branch: String,
    pub webhook_secret: Option<String>,
    pub poll_interval: Duration,
    /// The directory of the repository holding the service (monorepos).
    pub path: String,
    /// A token (HTTPS) or deploy key (SSH) for the repository, kept sealed.
    pub credential: Option<git::Credential>,
}

/// `path` as a directory inside a repository: relative, plain names only,
/// without a trailing slash (`""`: the top).
pub fn repo_path(path: &str) -> Result<String, DeliveryError> {
    let trimmed = path.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let plain = std::path::Path::new(trimmed)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || trimmed.len() > 512 || trimmed.contains('\0') {
        return Err(DeliveryError::BadInput(format!(
            "--path {path}: a directory inside the repository, such as services/shop"
        )));
    }
    Ok(trimmed.to_owned())
}

/// `file` under the repository directory `path`.
pub fn in_repo(path: &str, file: &str) -> String {
    if path.is_empty() {
        file.to_owned()
    } else {
        format!("{path}/{file}")
    }
}

/// The continuous delivery service of one control plane; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    data_dir: PathBuf,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Services with a run in progress.
    busy: Mutex<HashSet<String>>,
    /// Cancel switches of the runs in progress, by run id: the canceller's
    /// actor is sent through.
    cancels: Mutex<HashMap<i64, watch::Sender<Option<String>>>>,
    pollers: Mutex<HashMap<String, JoinHandle<()>>>,
    /// How each service's last poll went.
    polls: Mutex<HashMap<String, PollState>>,
    /// Services with an out-of-interval poll under way (`poll_now`).
    polling_now: Mutex<HashSet<String>>,
}

/// A service's last poll: when, and its error if it failed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PollState {
    pub at: String,
    pub error: Option<String>,
}

impl Delivery {
    /// Settles runs a previous control plane left behind (`interrupted`,
    /// then queued again), then starts the scheduler and the pollers.
    pub async fn start(
        engine: Engine,
        data_dir: &Path,
        parallel: usize,
    ) -> Result<Delivery, DeliveryError> {
        let delivery = Delivery {
            inner: Arc::new(Inner {
                engine,
                data_dir: data_dir.to_path_buf(),
                wake: Notify::new(),
                slots: Arc::new(Semaphore::new(parallel.max(1))),
                busy: Mutex::default(),
                cancels: Mutex::default(),
                pollers: Mutex::default(),
                polls: Mutex::default(),
                polling_now: Mutex::default(),
            }),
        };
        // What an earlier server left behind: steps still running in
        // their own process groups, scratch mirrors of a `services add` cut
        // short, a deploy key's file of a git command killed with it.
        tandem_engine::steps::kill_leftovers(data_dir);
        if let Ok(entries) = std::fs::read_dir(data_dir.join("git")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".new-") || name.starts_with(".key-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        delivery.recover().await?;
        let scheduler = delivery.clone();
        tokio::spawn(async move { scheduler.schedule().await });
        for repo in delivery.store().repos().await? {
            delivery.start_poller(&repo);
        }
        Ok(delivery)
    }

    fn store(&self) -> &tandem_store::Store {
        &self.inner.engine.store
    }

    fn mirror(&self, service: &str) -> PathBuf {
        self.inner
            .data_dir
            .join("git")
            .join(format!("{service}.git"))
    }

    pub fn log_path(&self, run: i64) -> PathBuf {
        self.inner.data_dir.join("runs").join(format!("{run}.log"))
    }

    /// Registers the service whose `tandem.yaml` is at the head of `branch`
    /// of `url`, and queues a run for that head.
    pub async fn add_service(
        &self,
        req: AddService,
        actor: &str,
    ) -> Result<(String, Option<RunRow>), DeliveryError> {
        let url = normalize_url(&req.url)?;
        let credential = req.credential.as_ref();
        let head = git::remote_head(&url, &req.branch, credential)
            .await
            .map_err(|e| DeliveryError::BadInput(format!("cannot read {url}: {}", e.message)))?
            .ok_or_else(|| {
                DeliveryError::BadInput(format!("{url} has no branch {}", req.branch))
            })?;
        // The service's name is in its spec, so fetch into a scratch mirror first.
        let scratch = self
            .inner
            .data_dir
            .join("git")
            .join(format!(".new-{}", tandem_engine::now_ms()));
        let result = self.register_from(&scratch, &url, &req, &head, actor).await;
        let _ = std::fs::remove_dir_all(&scratch);
        let name = result?;
        let run = self
            .enqueue(&name, &head, &req.branch, "register", false, None, actor)
            .await?;
        if let Some(repo) = self.store().repo(&name).await? {
            self.start_poller(&repo);
        }
        Ok((name, run))
    }

    async fn register_from(
        &self,
        scratch: &Path,
        url: &str,
        req: &AddService,
        head: &str,
        actor: &str,
    ) -> Result<String, DeliveryError> {
        git::fetch(scratch, url, &req.branch, req.credential.as_ref()).await?;
        let max = tandem_core::spec::MAX_SPEC_BYTES;
        let spec_file = in_repo(&req.path, "tandem.yaml");
        let text = git::show_file(scratch, head, &spec_file, max)
            .await
            .map_err(|_| {
                DeliveryError::BadInput(format!(
                    "{url} has no {spec_file} at the head of {}",
                    req.branch
                ))
            })?
            .ok_or_else(|| {
                DeliveryError::BadInput(format!(
                    "{spec_file} at the head of {} of {url} is larger than {} KiB; a spec is at most that",
                    req.branch,
                    max / 1024
                ))
            })?;
        let file = format!("{url}@{}:{spec_file}", req.branch);
        let spec = Spec::parse(&file, &text).map_err(EngineError::Spec)?;
        let name = spec.service.name.to_string();
        if let Some(existing) = self.store().repo(&name).await?
            && (existing.url != url || existing.branch != req.branch)
        {
            return Err(DeliveryError::BadInput(format!(
                "service {name} is already registered from {}#{}",
                existing.url, existing.branch
            )));
        }
        let mirror = self.mirror(&name);
        if !mirror.exists() {
            std::fs::create_dir_all(mirror.parent().unwrap_or(scratch))
                .and_then(|()| std::fs::rename(scratch, &mirror))
                .map_err(|e| {
                    DeliveryError::BadInput(format!("cannot keep {}: {e}", mirror.display()))
                })?;
        }
        self.inner
            .engine
            .register(&spec, &format!("{url}#{}", req.branch), None, actor)
            .await?;
        let repo = RepoRow {
            service: name.clone(),
            url: url.to_owned(),
            branch: req.branch.clone(),
            webhook_secret: req.webhook_secret.clone(),
            poll_interval_ms: req.poll_interval.as_millis() as i64,
            created_at: String::new(),
            poll_error: None,
            poll_failing_since: None,
            path: req.path.clone(),
        };
        self.store().add_repo(&repo, actor).await?;
        if let Some(c) = &req.credential {
            let kept = match c {
                git::Credential::Token { username, token } => tandem_store::RepoCredential {
                    kind: "token".into(),
                    username: username.clone(),
                    secret: token.clone(),
                },
                git::Credential::SshKey { key, .. } => tandem_store::RepoCredential {
                    kind: "ssh-key".into(),
                    username: String::new(),
                    secret: key.clone(),
                },
            };
            self.store()
                .set_repo_credential(&name, &kept, actor)
                .await?;
        }
        // The gates it was registered with become the control plane's
        // policy: later commits may tighten them, not loosen them.
        if self.store().policies(&name).await?.is_empty() {
            for asked in policy::of_spec(&spec) {
                let row = tandem_store::PolicyRow {
                    service: name.clone(),
                    env: asked.env,
                    approvals: i64::from(asked.approvals),
                    approvers: Vec::new(),
                    required: true,
                    approvers_from: asked.from.as_str().into(),
                    author_may_approve: asked.author_may_approve,
                    updated_at: String::new(),
                    updated_by: String::new(),
                };
                self.store().set_policy(&row, actor).await?;
            }
        }
        Ok(name)
    }

    /// Stops the service's instances, its poller and its queued runs, and
    /// forgets it (its history stays in the journal).
    pub async fn remove_service(&self, service: &str, actor: &str) -> Result<(), DeliveryError> {
        if self.store().service(service).await?.is_none() {
            return Err(DeliveryError::NotFound(format!(
                "no service named {service}"
            )));
        }
        if let Some(poller) = lock(&self.inner.pollers).remove(service) {
            poller.abort();
        }
        let ids: Vec<i64> = self
            .store()
            .runs_in("running")
            .await?
            .into_iter()
            .filter(|r| r.service == service)
            .map(|r| r.id)
            .collect();
        for id in ids {
            if let Some(cancel) = lock(&self.inner.cancels).get(&id) {
                let _ = cancel.send(Some(actor.to_owned()));
            }
        }
        let _guard = self.inner.engine.lock_service(service).await;
        self.inner.engine.stop_service(service).await?;
        self.store().remove_service(service, actor).await?;
        let _ = std::fs::remove_dir_all(self.mirror(service));
        Ok(())
    }

    /// Queues a run of `rev` (default: the branch head) by hand; builds it
    /// again even when that commit was built before.
    pub async fn deploy_ref(
        &self,
        service: &str,
        rev: Option<&str>,
        actor: &str,
    ) -> Result<RunRow, DeliveryError> {
        let repo = self.repo(service).await?;
        let mirror = self.mirror(service);
        let credential = self.credential(service).await?;
        git::fetch(&mirror, &repo.url, &repo.branch, credential.as_ref()).await?;
        let rev = rev.unwrap_or(&repo.branch);
        let sha = match git::resolve(&mirror, rev).await {
            Ok(sha) => sha,
            Err(_) => git::fetch_ref(&mirror, &repo.url, rev, credential.as_ref())
                .await
                .map_err(|_| {
                    DeliveryError::BadInput(format!("{rev} is not a commit of {}", repo.url))
                })?,
        };
        let run = self
            .enqueue(service, &sha, &repo.branch, "manual", true, None, actor)
            .await?;
        run.ok_or_else(|| DeliveryError::Conflict("the run was not queued".into()))
    }

    /// Takes a push webhook: checks its signature, then queues its commit
    /// unless it is for another branch or was seen before.
    pub async fn hook<'a>(
        &self,
        service: &str,
        provider: hooks::Provider,
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> Result<HookOutcome, DeliveryError> {
        let repo = self.repo(service).await?;
        if let Err(e) = hooks::verify(provider, repo.webhook_secret.as_deref(), &header, body) {
            return Ok(HookOutcome::Refused(e.to_string()));
        }
        let push = match hooks::parse(provider, &header, body) {
            Ok(p) => p,
            Err(e) => return Ok(HookOutcome::Ignored(e.to_string())),
        };
        if push.branch != repo.branch {
            return Ok(HookOutcome::Ignored(format!(
                "push to {}, {service} follows {}",
                push.branch, repo.branch
            )));
        }
        let actor = format!("webhook:{}", provider.as_str());
        match self
            .enqueue(
                service,
                &push.after,
                &repo.branch,
                &actor,
                false,
                None,
                &actor,
            )
            .await?
        {
            Some(run) => Ok(HookOutcome::Queued(Box::new(run))),
            None => {
                // Seen before: perhaps the branch moved back to it. What the
                // branch says decides, so look now rather than at the next poll.
                let this = self.clone();
                let service = service.to_owned();
                tokio::spawn(async move { this.poll_now(&service).await });
                Ok(HookOutcome::Ignored(format!(
                    "commit {} already has a run",
                    &push.after
                )))
            }
        }
    }

    /// Cancels a queued run, or a running one before it starts releasing.
    pub async fn cancel(&self, id: i64, actor: &str) -> Result<RunRow, DeliveryError> {
        let run = self.run(id).await?;
        match run.status.as_str() {
            "queued" | "waiting-approval" => {
                let event = tandem_core::journal::NewEvent::new(actor, "run.cancelled")
                    .subject("service", &run.service)
                    .subject("run", id.to_string())
                    .payload(serde_json::json!({ "commit": run.commit }));
                let update = tandem_store::RunUpdate {
                    status: "cancelled",
                    stage: run.stage.as_deref(),
                    reason: Some(&format!("cancelled by {actor}")),
                    release: None,
                    stages: &run.stages,
                };
                self.store().update_run(id, update, event).await?;
            }
            "running" => {
                if run
                    .stage
                    .as_deref()
                    .is_some_and(|s| s.starts_with("deploy"))
                {
                    return Err(DeliveryError::Conflict(format!(
                        "run {id} is releasing; it ends on its own (roll back afterwards if needed)"
                    )));
                }
                let sent = lock(&self.inner.cancels)
                    .get(&id)
                    .map(|c| c.send(Some(actor.to_owned())).is_ok());
                if sent != Some(true) {
                    return Err(DeliveryError::Conflict(format!("run {id} is finishing")));
                }
                // The run notices at once; let it record the end first.
                for _ in 0..50 {
                    if self.run(id).await?.is_finished() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            other => {
                return Err(DeliveryError::Conflict(format!(
                    "run {id} has ended ({other}): there is nothing to cancel"
                )));
            }
        }
        self.run(id).await
    }

    /// The environment run `id` waits to be promoted into, and its gate.
    pub async fn waiting_gate(&self, id: i64) -> Result<(RunRow, i64, Gate), DeliveryError> {
        let run = self.run(id).await?;
        let env = match (run.status.as_str(), run.stage.as_deref()) {
            ("waiting-approval", Some(stage)) => stage.strip_prefix("approval:").unwrap_or(stage),
            (status, _) => {
                return Err(DeliveryError::Conflict(format!(
                    "run {id} is {status}; only a run waiting for approval can be approved or rejected"
                )));
            }
        }
        .to_owned();
        let number = run.release.ok_or_else(|| {
            DeliveryError::Conflict(format!("run {id} has no release to promote"))
        })?;
        let release = self.store().release(&run.service, number).await?;
        let spec = tandem_engine::stored_spec(&release)
            .map_err(|e| DeliveryError::Conflict(e.to_string()))?;
        let policies = self.store().policies(&run.service).await?;
        let gate = policy::effective(&spec, &policies)
            .map_err(DeliveryError::Conflict)?
            .into_iter()
            .find(|g| g.env == env)
            .unwrap_or(Gate {
                env,
                approvals: 1,
                approvers: Vec::new(),
                from: Approvers::Supplier,
                author_may_approve: false,
            });
        Ok((run, number, gate))
    }

    /// Whether `who` may decide on `gate` for `run` (approve or reject):
    /// their side counts there, they are not the commit's author (unless
    /// the gate allows it), and they are among its named approvers if it
    /// names any.
    fn may_decide(run: &RunRow, gate: &Gate, who: &Approver) -> Result<(), DeliveryError> {
        let env = &gate.env;
        match (gate.from, &who.customer) {
            (Approvers::Supplier, Some(c)) => {
                return Err(DeliveryError::Forbidden(format!(
                    "{env} of {} asks the supplier's approval; {} of customer {c} cannot give it",
                    run.service, who.actor
                )));
            }
            (Approvers::Customer, None) => {
                return Err(DeliveryError::Forbidden(format!(
                    "{env} of {} asks its customer's approval (approvers: customer); {} is the supplier's",
                    run.service, who.actor
                )));
            }
            _ => {}
        }
        if !gate.author_may_approve
            && let (Some(mine), Some(author)) = (&who.email, run.author.as_deref())
            && author_email(author).is_some_and(|a| a.eq_ignore_ascii_case(mine))
        {
            return Err(DeliveryError::Forbidden(format!(
                "{} wrote {} ({author}); four eyes: someone else approves it (an environment may allow it with author_may_approve: true)",
                who.actor,
                &run.commit[..run.commit.len().min(12)]
            )));
        }
        if !gate.approvers.is_empty() && !gate.approvers.contains(&who.actor) {
            return Err(DeliveryError::Forbidden(format!(
                "{} may not approve {env} of {}: its approvers are {}",
                who.actor,
                run.service,
                gate.approvers.join(", ")
            )));
        }
        Ok(())
    }

    /// Records `who`'s approval of the environment a run waits for; with
    /// enough approvals (distinct people, of the sides the gate asks) the
    /// run is queued again and promotes itself.
    pub async fn approve(&self, id: i64, who: &Approver) -> Result<RunRow, DeliveryError> {
        let (run, number, gate) = self.waiting_gate(id).await?;
        Self::may_decide(&run, &gate, who)?;
        let env = gate.env.clone();
        let org = who.customer.as_deref().unwrap_or("supplier");
        let actor = who.actor.as_str();
        let event = tandem_core::journal::NewEvent::new(actor, "run.approved")
            .subject("service", &run.service)
            .subject("run", id.to_string())
            .subject("env", &env)
            .payload(run::commit_payload(
                &run,
                serde_json::json!({ "env": env, "approver": actor, "organisation": org, "release": format!("r{number}") }),
            ));
        let approvals = self.store().approve(id, &env, actor, org, event).await?;
        let supplier = approvals.iter().filter(|(_, o)| o == "supplier").count();
        let customer = approvals.len() - supplier;
        let (required, sides_met) = match gate.from {
            Approvers::Both => (gate.approvals.max(2), supplier >= 1 && customer >= 1),
            _ => (gate.approvals.max(1), true),
        };
        if approvals.len() as u32 >= required && sides_met {
            let approvers: Vec<serde_json::Value> = approvals
                .iter()
                .map(|(a, o)| serde_json::json!({ "approver": a, "organisation": o }))
                .collect();
            let event = tandem_core::journal::NewEvent::new(SCHEDULER_ACTOR, "run.promoting")
                .subject("service", &run.service)
                .subject("run", id.to_string())
                .subject("env", &env)
                .payload(run::commit_payload(
                    &run,
                    serde_json::json!({ "env": env, "approvals": approvals.len(), "required": required, "approvers": approvers }),
                ));
            let update = tandem_store::RunUpdate {
                status: "queued",
                stage: run.stage.as_deref(),
                reason: None,
                release: None,
                stages: &run.stages,
            };
            self.store().update_run(id, update, event).await?;
            self.inner.wake.notify_one();
        }
        self.run(id).await
    }

    /// Changes the gate policy of one environment of a service (an admin's
    /// act, journalled `policy.set`); unset fields keep their value.
    pub async fn set_policy(
        &self,
        service: &str,
        change: PolicyChange,
        actor: &str,
    ) -> Result<tandem_store::PolicyRow, DeliveryError> {
        if self.store().service(service).await?.is_none() {
            return Err(DeliveryError::NotFound(format!(
                "no service named {service}"
            )));
        }
        if let Err(e) = tandem_core::spec::EnvName::try_from(change.env.clone()) {
            return Err(DeliveryError::BadInput(format!(
                "--env {}: {e}",
                change.env
            )));
        }
        if let Some(bad) = change
            .approvers
            .iter()
            .flatten()
            .find(|a| !a.starts_with("user:") || a.len() > 128)
        {
            return Err(DeliveryError::BadInput(format!(
                "approver {bad:?} is not user:NAME"
            )));
        }
        let current = self
            .store()
            .policies(service)
            .await?
            .into_iter()
            .find(|p| p.env == change.env);
        let row = tandem_store::PolicyRow {
            service: service.to_owned(),
            env: change.env.clone(),
            approvals: change
                .approvals
                .map(i64::from)
                .or(current.as_ref().map(|c| c.approvals))
                .unwrap_or(0),
            approvers: change
                .approvers
                .or(current.as_ref().map(|c| c.approvers.clone()))
                .unwrap_or_default(),
            required: change
                .required
                .or(current.as_ref().map(|c| c.required))
                .unwrap_or(true),
            approvers_from: change
                .approvers_from
                .map(|a| a.as_str().to_owned())
                .or(current.as_ref().map(|c| c.approvers_from.clone()))
                .unwrap_or_else(|| "supplier".into()),
            author_may_approve: change
                .author_may_approve
                .or(current.as_ref().map(|c| c.author_may_approve))
                .unwrap_or(false),
            updated_at: String::new(),
            updated_by: String::new(),
        };
        self.store().set_policy(&row, actor).await?;
        Ok(self
            .store()
            .policies(service)
            .await?
            .into_iter()
            .find(|p| p.env == change.env)
            .unwrap_or(row))
    }

    /// Refuses the promotion a run waits for: the run ends `rejected`,
    /// journalled with who and why. A reason is required.
    pub async fn reject(
        &self,
        id: i64,
        who: &Approver,
        reason: &str,
    ) -> Result<RunRow, DeliveryError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 1000 {
            return Err(DeliveryError::BadInput(
                "a rejection needs a reason of 1 to 1000 bytes (--reason)".into(),
            ));
        }
        let (run, _, gate) = self.waiting_gate(id).await?;
        // Whose approval counts may refuse; the author may too (refusing
        // one's own commit needs no second pair of eyes).
        let mut gate = gate;
        gate.author_may_approve = true;
        Self::may_decide(&run, &gate, who)?;
        let env = gate.env;
        let actor = who.actor.as_str();
        let event = tandem_core::journal::NewEvent::new(actor, "run.rejected")
            .subject("service", &run.service)
            .subject("run", id.to_string())
            .subject("env", &env)
            .payload(run::commit_payload(
                &run,
                serde_json::json!({ "env": env, "by": actor, "reason": reason }),
            ));
        let why = format!("rejected by {actor}: {reason}");
        let update = tandem_store::RunUpdate {
            status: "rejected",
            stage: run.stage.as_deref(),
            reason: Some(&why),
            release: None,
            stages: &run.stages,
        };
        self.store().update_run(id, update, event).await?;
        self.run(id).await
    }

    /// Queues the same commit again as a new run.
    pub async fn retry(&self, id: i64, actor: &str) -> Result<RunRow, DeliveryError> {
        let run = self.run(id).await?;
        if !run.is_finished() {
            return Err(DeliveryError::Conflict(format!(
                "run {id} is {}; only a finished run can be retried",
                run.status
            )));
        }
        self.repo(&run.service).await?;
        self.enqueue(
            &run.service,
            &run.commit,
            &run.branch,
            "retry",
            true,
            Some(id),
            actor,
        )
        .await?
        .ok_or_else(|| DeliveryError::Conflict("the run was not queued".into()))
    }

    pub async fn run(&self, id: i64) -> Result<RunRow, DeliveryError> {
        self.store()
            .run(id)
            .await?
            .ok_or_else(|| DeliveryError::NotFound(format!("no run {id}")))
    }

    async fn repo(&self, service: &str) -> Result<RepoRow, DeliveryError> {
        self.store().repo(service).await?.ok_or_else(|| {
            DeliveryError::NotFound(format!("no service named {service} from a repository"))
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &self,
        service: &str,
        commit: &str,
        branch: &str,
        trigger: &str,
        force: bool,
        retry_of: Option<i64>,
        actor: &str,
    ) -> Result<Option<RunRow>, DeliveryError> {
        let new = NewRun {
            service: service.into(),
            commit: commit.into(),
            branch: branch.into(),
            trigger: trigger.into(),
            retry_of,
            ..NewRun::default()
        };
        let run = self.store().enqueue_run(new, force, actor).await?;
        if run.is_some() {
            self.inner.wake.notify_one();
        }
        Ok(run)
    }

    /// Runs a previous control plane left `running` did not finish: they are
    /// marked `interrupted` and their commits queued again.
    async fn recover(&self) -> Result<(), DeliveryError> {
        for r in self.store().runs_in("running").await? {
            let event = tandem_core::journal::NewEvent::new(SCHEDULER_ACTOR, "run.interrupted")
                .subject("service", &r.service)
                .subject("run", r.id.to_string())
                .payload(run::commit_payload(
                    &r,
                    serde_json::json!({
                        "stage": r.stage,
                        "reason": "control plane restarted during the run",
                    }),
                ));
            let update = tandem_store::RunUpdate {
                status: "interrupted",
                stage: r.stage.as_deref(),
                reason: Some("control plane restarted during the run"),
                release: None,
                stages: &r.stages,
            };
            self.store().update_run(r.id, update, event).await?;
            let _ = std::fs::remove_dir_all(run::workspace(&self.inner.data_dir, r.id));
            let again = self
                .enqueue(
                    &r.service,
                    &r.commit,
                    &r.branch,
                    "recovery",
                    true,
                    Some(r.id),
                    SCHEDULER_ACTOR,
                )
                .await?;
            if let Some(again) = &again {
                let event =
                    tandem_core::journal::NewEvent::new(SCHEDULER_ACTOR, "run.approvals_carried")
                        .subject("service", &r.service)
                        .subject("run", again.id.to_string())
                        .payload(serde_json::json!({ "from_run": r.id, "commit": r.commit }));
                self.store().carry_approvals(r.id, again.id, event).await?;
            }
            tracing::info!(run = r.id, service = %r.service, requeued = ?again.as_ref().map(|a| a.id), "interrupted run queued again");
        }
        Ok(())
    }

    /// Starts queued runs: the oldest of each idle service, within the limit.
    async fn schedule(&self) {
        loop {
            let wake = self.inner.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            match self.store().runs_in("queued").await {
                Ok(queued) => {
                    for r in queued {
                        let Ok(permit) = Arc::clone(&self.inner.slots).try_acquire_owned() else {
                            break;
                        };
                        if !lock(&self.inner.busy).insert(r.service.clone()) {
                            continue;
                        }
                        let this = self.clone();
                        tokio::spawn(async move {
                            let service = r.service.clone();
                            this.execute(r).await;
                            lock(&this.inner.busy).remove(&service);
                            drop(permit);
                            this.inner.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the run queue"),
            }
            // The timeout is a safety net; triggers and finished runs wake us.
            let _ = tokio::time::timeout(Duration::from_secs(5), wake).await;
        }
    }

    fn start_poller(&self, repo: &RepoRow) {
        let this = self.clone();
        let repo = repo.clone();
        let service = repo.service.clone();
        let handle = tokio::spawn(async move { this.poll(repo).await });
        if let Some(old) = lock(&self.inner.pollers).insert(service, handle) {
            old.abort();
        }
    }

    /// Every interval: the branch head (`git ls-remote`: refs only, no
    /// objects), then [`Delivery::converge`] on it.
    async fn poll(&self, repo: RepoRow) {
        let every = Duration::from_millis(repo.poll_interval_ms.max(100) as u64);
        loop {
            tokio::time::sleep(every).await;
            self.poll_repo(&repo).await;
        }
    }

    async fn poll_repo(&self, repo: &RepoRow) {
        let credential = match self.credential(&repo.service).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(service = %repo.service, error = %e, "cannot read the repository's credential");
                None
            }
        };
        let polled = git::remote_head(&repo.url, &repo.branch, credential.as_ref()).await;
        let error = match &polled {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!("{} has no branch {}", repo.url, repo.branch)),
            Err(e) => Some(e.message.clone()),
        };
        lock(&self.inner.polls).insert(
            repo.service.clone(),
            PollState {
                at: tandem_store::now_ts(),
                error: error.clone(),
            },
        );
        // Failures are seen: `tandem services`, the API, and after a while
        // an incident (the monitor reads them from the store).
        if let Err(e) = self
            .store()
            .set_repo_poll(&repo.service, error.as_deref())
            .await
        {
            tracing::warn!(service = %repo.service, error = %e, "cannot record the poll");
        }
        let head = match polled {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(service = %repo.service, error = %e, "polling failed");
                return;
            }
        };
        if let Err(e) = self.converge(repo, &head).await {
            tracing::warn!(service = %repo.service, error = %e, "cannot converge on the branch head");
        }
    }

    /// The credential of the service's repository, if it has one.
    pub(crate) async fn credential(
        &self,
        service: &str,
    ) -> Result<Option<git::Credential>, DeliveryError> {
        let Some(kept) = self.store().repo_credential(service).await? else {
            return Ok(None);
        };
        Ok(Some(match kept.kind.as_str() {
            "ssh-key" => git::Credential::SshKey {
                key: kept.secret,
                known_hosts: self.known_hosts(),
            },
            _ => git::Credential::Token {
                username: kept.username,
                token: kept.secret,
            },
        }))
    }

    /// The SSH host keys of repositories reached with a deploy key, learnt
    /// on first use (an operator may write them in beforehand).
    pub fn known_hosts(&self) -> PathBuf {
        self.inner.data_dir.join("git").join("known_hosts")
    }

    /// How the service's last poll went, if it was polled since start.
    pub fn last_poll(&self, service: &str) -> Option<PollState> {
        lock(&self.inner.polls).get(service).cloned()
    }

    /// Polls the service's repository now, outside its interval — at most
    /// one such poll per service at a time: a burst of webhooks (or one
    /// signed webhook replayed a thousand times) is one `git ls-remote`,
    /// not a thousand.
    pub(crate) async fn poll_now(&self, service: &str) {
        if !lock(&self.inner.polling_now).insert(service.to_owned()) {
            return;
        }
        if let Ok(Some(repo)) = self.store().repo(service).await {
            self.poll_repo(&repo).await;
        }
        lock(&self.inner.polling_now).remove(service);
    }

    /// The branch head is the goal. Queues a run of `head` unless one is
    /// under way or production runs it already:
    ///
    /// - a head that never had a run gets one;
    /// - a head that ran before while the newest automatic run (past its
    ///   checkout) was for another commit has moved back (a force-push)
    ///   or aside: it runs again, since it is what the branch says now;
    /// - a head whose last run ended before its build for reasons that
    ///   pass (the git server was down: failed in its fetch, before the
    ///   checkout stage; interrupted; superseded) runs again, waiting the
    ///   poll interval doubled for each such end in a row, up to 10
    ///   minutes;
    /// - otherwise (it succeeded, or failed in a build, test or deploy, or
    ///   a person rolled production back, or cancelled it) nothing: that
    ///   is a person's to act on.
    pub async fn converge(&self, repo: &RepoRow, head: &str) -> Result<(), DeliveryError> {
        let store = self.store();
        let service = repo.service.as_str();
        let runs = store.runs_of_commit(service, head).await?;
        if runs.iter().any(|r| !r.is_finished()) {
            return Ok(());
        }
        if let Some(live) = store.service(service).await?.and_then(|s| s.live_release)
            && let Ok(release) = store.release(service, live).await
            && run::commit_of(&release.source) == Some(head)
        {
            return Ok(());
        }
        let Some(last) = runs.first() else {
            self.enqueue(
                service,
                head,
                &repo.branch,
                "poll",
                false,
                None,
                POLLER_ACTOR,
            )
            .await?;
            return Ok(());
        };
        let recent = store.runs(Some(service), 200).await?;
        let moved = recent
            .iter()
            .find(|r| run::automatic(&r.trigger) && r.status != "superseded")
            .is_some_and(|r| r.commit != head);
        let passing = |r: &RunRow| match r.status.as_str() {
            // Failed before its checkout began: the fetch (a checkout that
            // fails on what the commit holds fails the same way again).
            "failed" => r.stage.is_none(),
            "interrupted" | "superseded" => true,
            _ => false,
        };
        let again = if moved {
            true
        } else if passing(last) {
            let in_a_row = runs.iter().take_while(|r| passing(r)).count() as u32;
            let every = Duration::from_millis(repo.poll_interval_ms.max(100) as u64);
            let wait = (every * 2u32.pow(in_a_row.min(12) - 1)).min(Duration::from_secs(600));
            let since = last
                .updated_at
                .parse::<jiff::Timestamp>()
                .map(|t| jiff::Timestamp::now().duration_since(t))
                .ok()
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(Duration::MAX);
            since >= wait
        } else {
            false
        };
        if again {
            tracing::info!(service, head, moved, "the branch head runs again");
            self.enqueue(
                service,
                head,
                &repo.branch,
                "head",
                true,
                None,
                POLLER_ACTOR,
            )
            .await?;
        }
        Ok(())
    }
}

/// A change to one environment's gate policy.
#[derive(Clone, Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct PolicyChange {
    pub env: String,
    pub approvals: Option<u32>,
    pub approvers: Option<Vec<String>>,
    pub required: Option<bool>,
    /// Whose approvals count: supplier, customer or both.
    pub approvers_from: Option<tandem_core::spec::Approvers>,
    pub author_may_approve: Option<bool>,
}

/// Someone deciding on a promotion.
#[derive(Clone, Debug)]
pub struct Approver {
    /// `user:<name>`.
    pub actor: String,
    /// Matched against the commit's author.
    pub email: Option<String>,
    /// The customer they belong to; `None`: the supplier.
    pub customer: Option<String>,
}

/// The e-mail of `Name <email>`.
fn author_email(author: &str) -> Option<&str> {
    let (_, rest) = author.rsplit_once('<')?;
    rest.strip_suffix('>').map(str::trim)
}

/// What became of a webhook delivery.
#[derive(Debug)]
pub enum HookOutcome {
    /// 401: not authentic; nothing started.
    Refused(String),
    /// 202: authentic, but nothing to do.
    Ignored(String),
    /// 202: a run was queued.
    Queued(Box<RunRow>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A local path becomes an absolute path (git takes it as is); URLs pass.
fn normalize_url(url: &str) -> Result<String, DeliveryError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(DeliveryError::BadInput(
            "the repository URL is empty".into(),
        ));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        // `https://user:token@host/…`: the secret would be in the journal,
        // the API, the database and every git command line.
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(DeliveryError::BadInput(format!(
                "the URL holds a password or token ({scheme}://{}:***@…); register the URL without it: a credential in a URL is shown wherever the URL is (journal, API, process list)",
                userinfo.split(':').next().unwrap_or_default()
            )));
        }
        return Ok(url.to_owned());
    }
    if url.contains('@') {
        return Ok(url.to_owned());
    }
    let path = Path::new(url);
    let abs = path
        .canonicalize()
        .map_err(|e| DeliveryError::BadInput(format!("{url}: {e}")))?;
    Ok(abs.display().to_string())
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_without_echoing_it() {
        let err = normalize_url("https://ann:ghp_s3cr3t@git.example.test/acme/shop.git")
            .expect_err("a token in the URL")
            .to_string();
        assert!(err.contains("holds a password"), "{err}");
        assert!(!err.contains("ghp_s3cr3t"), "{err}");
        for fine in [
            "https://git.example.test/acme/shop.git",
            "https://ann@git.example.test/acme/shop.git",
            "ssh://git@git.example.test:22/acme/shop.git",
            "git@git.example.test:acme/shop.git",
        ] {
            assert_eq!(normalize_url(fine).expect(fine), fine);
        }
    }
}
