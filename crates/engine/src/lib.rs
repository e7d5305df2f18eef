//! The control plane's engine: turns a directory with a `tandem.yaml` into
//! an immutable release and rolls it out blue/green through the agent;
//! rolls back; and reconciles with the agent after a restart.
//!
//! The engine never touches traffic itself: it only asks the agent, and it
//! records every step in the journal through the store.

pub mod acme;
pub mod agent_client;
pub mod artifact;
pub mod backup;
mod certs;
pub mod checkpoints;
mod faults;
mod placement;
pub mod progress;
pub mod steps;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tandem_core::journal::NewEvent;
use tandem_core::protocol::{GroupSpec, ProbeKind, ProbeSpec};
use tandem_core::spec::{
    Check, DEFAULT_LIVENESS_INTERVAL, DEFAULT_READINESS_INTERVAL, Probe, Spec, SpecError, Tls,
};
use tandem_store::{ReleaseRow, ServiceUpsert, Store, StoreError};

pub use agent_client::{AgentClient, AgentClientError, Readiness};
pub use placement::Placement;
pub use progress::{Progress, Reporter, Timings};

/// Actor of what the engine does on its own.
pub const SYSTEM_ACTOR: &str = "system:engine";
/// Drain bound for groups found orphaned after a control-plane restart.
const RECONCILE_DRAIN_MS: u64 = 1_000;
/// How long a failed release's `StopGroup` is asked again while the agent
/// does not answer.
const STOP_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input: the caller's to fix.
    #[error("{0}")]
    Spec(Box<SpecError>),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    /// The work ran and did not succeed; the journal says so too.
    #[error("{reason}")]
    Failed {
        reason: String,
        log_tail: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    /// Local I/O or encoding on the control plane's side.
    #[error("{0}")]
    Io(String),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub agent: AgentClient,
    data_dir: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Releases kept per service (with their files) besides the live one,
    /// its rollback target and those environments run.
    keep_releases: usize,
    /// What confines build and test steps.
    pub sandbox: Arc<tandem_sandbox::Sandbox>,
    /// Signed checkpoints of the journal.
    pub checkpoints: Arc<checkpoints::Checkpoints>,
}

/// Default of [`Engine::keeping`].
pub const KEEP_RELEASES: usize = 20;

impl Engine {
    /// Where a release's files are: by its digest under this data
    /// directory (not the path recorded when it was made, which names the
    /// data directory of then: a restored backup lives elsewhere).
    pub fn artifact_dir(&self, release: &ReleaseRow) -> PathBuf {
        self.data_dir.join("artifacts").join(&release.digest)
    }

    /// Writes a backup to `dest` (see [`backup`]) and journals it.
    pub async fn backup(
        &self,
        dest: &Path,
        actor: &str,
    ) -> Result<backup::Manifest, backup::BackupError> {
        let manifest = backup::make(&self.store, &self.data_dir, dest).await?;
        let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        let event = tandem_core::journal::NewEvent::new(actor, "backup.created").payload(
            serde_json::json!({
                "file": dest.file_name().map(|n| n.to_string_lossy().into_owned()),
                "bytes": bytes,
                "events": manifest.events,
                "head": manifest.head,
            }),
        );
        self.store.append(event).await?;
        Ok(manifest)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn new(store: Store, data_dir: &Path) -> Self {
        Engine {
            store,
            agent: AgentClient::for_data_dir(data_dir),
            data_dir: data_dir.to_path_buf(),
            locks: Arc::default(),
            keep_releases: KEEP_RELEASES,
            sandbox: Arc::new(tandem_sandbox::Sandbox::detect(data_dir, "builds")),
            checkpoints: Arc::new(checkpoints::Checkpoints::new(data_dir)),
        }
    }

    /// Keeps `n` releases per service (at least 1) besides the live one,
    /// its rollback target and those environments run; older ones lose
    /// their files after each release.
    pub fn keeping(mut self, n: usize) -> Self {
        self.keep_releases = n.max(1);
        self
    }

    /// Retention after a release of `service`: see
    /// `Store::prune_releases`; the files no release keeps are removed.
    async fn prune(&self, service: &str, actor: &str) {
        let digests = match self
            .store
            .prune_releases(service, self.keep_releases, actor)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(service, error = %e, "could not prune old releases");
                return;
            }
        };
        let artifacts = self.data_dir.join("artifacts");
        let _ = tokio::task::spawn_blocking(move || {
            for digest in digests {
                let dir = artifacts.join(&digest);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a pruned artifact");
                }
            }
        })
        .await;
    }

    /// One release at a time per service.
    fn service_lock(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(service.to_owned()).or_default())
    }

    /// One release at a time per service: held across build, store and rollout.
    pub async fn lock_service(&self, service: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.service_lock(service).lock_owned().await
    }

    /// [`Engine::lock_service`], saying so on `reporter` when another
    /// release of the service holds it (a person waits, not in silence).
    async fn lock_service_telling(
        &self,
        service: &str,
        reporter: &Reporter,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.service_lock(service);
        match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                reporter.phase(
                    "waiting",
                    format!("another release of {service} is in progress; waiting for it to end"),
                );
                lock.lock_owned().await
            }
        }
    }

    /// Reads `dir/tandem.yaml`, builds, tests, stores the release and rolls it out.
    pub async fn deploy_dir(
        &self,
        dir: &Path,
        actor: &str,
        reporter: &Reporter,
    ) -> Result<ReleaseRow, EngineError> {
        let dir = dir
            .canonicalize()
            .map_err(|e| EngineError::BadInput(format!("{}: {e}", dir.display())))?;
        let spec = read_spec(&dir)?;
        let name = spec.service.name.to_string();
        let _guard = self.lock_service_telling(&name, reporter).await;
        let source = dir.display().to_string();
        self.register(&spec, &source, Some(&dir), actor).await?;
        // Build and test steps see the service-wide values.
        let secrets = self.secret_env(&name, &spec, None).await?;
        let reporter = &reporter.masking(self.store.all_secret_values(&name).await?);

        let build_root = if spec.build.is_empty() && spec.test.is_empty() {
            dir.clone()
        } else {
            let work = self
                .data_dir
                .join("work")
                .join(format!("{name}-{}", now_ms()));
            let (from, to) = (dir.clone(), work.clone());
            let stop = artifact::Abandoned::default();
            let _stop_when_dropped = stop.on_drop();
            tokio::task::spawn_blocking(move || {
                artifact::copy(&from, &artifact::collect(&from, &[])?, &to, &stop)
            })
            .await
            .map_err(|e| EngineError::Io(format!("copying the tree: {e}")))??;
            let built = self
                .run_steps(
                    &name,
                    "build",
                    &spec.build,
                    &work,
                    &secrets,
                    actor,
                    reporter,
                )
                .await;
            let tested = match built {
                Ok(()) => {
                    self.run_steps(&name, "test", &spec.test, &work, &secrets, actor, reporter)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = tested {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
            work
        };
        let release = self
            .store_release(&spec, &build_root, &source, actor, reporter)
            .await;
        if build_root != dir {
            let _ = std::fs::remove_dir_all(&build_root);
        }
        let to = Placement::production(&spec);
        self.rollout(&release?, &spec, &to, actor, false, reporter)
            .await
    }

    /// Creates or updates the service from its spec, with the certificate
    /// its `route.tls` names in files of `tree` (the spec's directory, when
    /// there is one to read). Refused, with nothing changed, when one of
    /// its routes (host and path prefix, in any environment) is another
    /// service's — the proxy could send that traffic to only one of them —
    /// or when it sets a certificate for a host another service serves on
    /// any path: a certificate is per host, and one service must not choose
    /// what another's clients are shown.
    pub async fn register(
        &self,
        spec: &Spec,
        source: &str,
        tree: Option<&Path>,
        actor: &str,
    ) -> Result<(), EngineError> {
        let name = spec.service.name.as_str();
        let mine = Placement::all(spec);
        for other in self.store.services().await? {
            if other.name == name {
                continue;
            }
            let Ok(theirs) = serde_json::from_value::<Spec>(other.spec) else {
                continue;
            };
            for held in Placement::all(&theirs) {
                let same_host =
                    |p: &&Placement| p.route.host.eq_ignore_ascii_case(&held.route.host);
                let clash = mine
                    .iter()
                    .filter(same_host)
                    .find(|p| p.route.path_prefix == held.route.path_prefix);
                if let Some(p) = clash {
                    return Err(EngineError::BadInput(format!(
                        "route {}{} of {name}{} is {}'s already{}; give {name} another host or path_prefix",
                        p.route.host,
                        p.route.path_prefix,
                        p.suffix(),
                        other.name,
                        held.suffix(),
                    )));
                }
                if spec.route.tls.is_some() && mine.iter().any(|p| same_host(&p)) {
                    return Err(EngineError::BadInput(format!(
                        "route.tls: {} serves {} too; only the one service on a host may set its certificate",
                        other.name, held.route.host
                    )));
                }
            }
        }
        if let Some(tree) = tree {
            self.install_certificate_files(spec, tree, actor).await?;
        }
        let spec_json = serde_json::to_value(spec).map_err(|e| EngineError::Io(e.to_string()))?;
        self.store
            .upsert_service(
                ServiceUpsert {
                    name: spec.service.name.as_str(),
                    owner: spec.service.owner.as_deref(),
                    customer: spec.service.customer.as_deref(),
                    tier: spec.service.tier.as_str(),
                    spec: &spec_json,
                    source,
                },
                actor,
            )
            .await?;
        Ok(())
    }

    /// Collects the artifact from the built tree `root` and records it as a
    /// new, immutable release.
    pub async fn store_release(
        &self,
        spec: &Spec,
        root: &Path,
        source: &str,
        actor: &str,
        reporter: &Reporter,
    ) -> Result<ReleaseRow, EngineError> {
        reporter.phase("artifact", "storing the release");
        // A route's private key is the proxy's alone (installed from the
        // tree at registration): no copy of it in the release, where the
        // service could read or even serve it.
        let key = match &spec.route.tls {
            Some(Tls::Files { key, .. }) => Some(PathBuf::from(key.as_str())),
            _ => None,
        };
        let (root_dir, paths) = (root.to_path_buf(), spec.artifact.paths.clone());
        let artifacts = self.data_dir.join("artifacts");
        // File work (a tree of any size) off the threads that serve the API,
        // stopped when this future is dropped (a cancelled run, a server
        // that stops): a blocking thread cannot be cancelled otherwise.
        let stop = artifact::Abandoned::default();
        let _stop_when_dropped = stop.on_drop();
        let stored = tokio::task::spawn_blocking(move || {
            let mut files = artifact::collect(&root_dir, &paths)?;
            files.retain(|f| Some(f) != key.as_ref());
            let digest = artifact::digest(&root_dir, &files, &stop)?;
            let path = artifact::store(&artifacts, &digest, &root_dir, &files, &stop)?;
            Ok::<_, artifact::ArtifactError>((digest, path))
        });
        let (digest, path) = stored
            .await
            .map_err(|e| EngineError::Io(format!("storing the artifact: {e}")))??;
        let spec_json = serde_json::to_value(spec).map_err(|e| EngineError::Io(e.to_string()))?;
        let release = self
            .store
            .create_release(
                spec.service.name.as_str(),
                &digest,
                &path.display().to_string(),
                &spec_json,
                source,
                actor,
            )
            .await?;
        reporter.phase(
            "artifact",
            format!("release {} is {}", release.name(), &digest[..12]),
        );
        Ok(release)
    }

    /// Runs `steps` of the `stage` (`build`, `test`, `verify`) of
    /// `name` in `work`, with `env` added to each step's environment.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_steps(
        &self,
        name: &str,
        stage: &str,
        steps: &[tandem_core::spec::Step],
        work: &Path,
        env: &[(String, String)],
        actor: &str,
        reporter: &Reporter,
    ) -> Result<(), EngineError> {
        // Marked as this data directory's, so that a server started after
        // this one died finds what it left running (`steps::kill_leftovers`).
        let mut env = env.to_vec();
        env.push((steps::MARK.into(), steps::mark_of(&self.data_dir)));
        // Steps run as the service's user, confined like its instances (see
        // `steps::Confined`), with the checkout and a home of its own.
        let confined = self.confine_steps(name, work).await?;
        for step in steps {
            reporter.phase(stage, format!("{stage} step {}: {}", step.name, step.run));
            let started = Instant::now();
            if let Err((reason, log_tail)) = steps::run(step, work, &env, &confined, reporter).await
            {
                let payload = serde_json::json!({
                    "step": step.name,
                    "reason": reason,
                    "duration_ms": started.elapsed().as_millis() as u64,
                });
                let event = NewEvent::new(actor, format!("{stage}.failed"))
                    .subject("service", name)
                    .payload(payload);
                self.store.append(event).await?;
                return Err(EngineError::Failed { reason, log_tail });
            }
        }
        Ok(())
    }

    /// The user, home and sandbox `name`'s steps in `work` run with; the
    /// checkout becomes the user's.
    async fn confine_steps(&self, name: &str, work: &Path) -> Result<steps::Confined, EngineError> {
        // A user of the builds' own, not the instances': a build cannot
        // touch what runs, nor what runs what builds.
        let user = if self.sandbox.users() {
            Some(self.store.unit_uid(&format!("{name}#build")).await?)
        } else {
            None
        };
        let home = tandem_sandbox::paths::build_home(&self.data_dir, name);
        let (work, home2) = (work.to_path_buf(), home.clone());
        tokio::task::spawn_blocking(move || {
            tandem_sandbox::paths::own_dir(&home2, user)?;
            // Its temp afresh; its checkout its own.
            let _ = std::fs::remove_dir_all(home2.join("tmp"));
            tandem_sandbox::paths::own_dir(&home2.join("tmp"), user)?;
            if let Some(uid) = user {
                tandem_sandbox::paths::give_tree(&work, uid)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| EngineError::Io(e.to_string()))?
        .map_err(|e| EngineError::Io(format!("cannot give the build its directories: {e}")))?;
        Ok(steps::Confined {
            sandbox: self.sandbox.clone(),
            user,
            home,
        })
    }

    /// Re-releases an earlier release without rebuilding: `to`, or the one
    /// that was live before the current one.
    /// Rolls `service` back to release `to` (default: the one live before).
    /// A release that never went live (it failed, or never finished) is
    /// refused unless `force`: it was never tried with traffic.
    pub async fn rollback(
        &self,
        service: &str,
        to: Option<i64>,
        force: bool,
        actor: &str,
        reporter: &Reporter,
    ) -> Result<ReleaseRow, EngineError> {
        let _guard = self.lock_service_telling(service, reporter).await;
        let svc = self
            .store
            .service(service)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no service named {service}")))?;
        let releases = self.store.releases(service).await?;
        let target = match to {
            Some(n) => releases
                .into_iter()
                .find(|r| r.number == n)
                .ok_or_else(|| EngineError::NotFound(format!("{service} has no release r{n}")))?,
            None => {
                let live = svc.live_release.unwrap_or(i64::MAX);
                releases
                    .into_iter()
                    .find(|r| r.number < live && r.status == "retired")
                    .ok_or_else(|| {
                        EngineError::NotFound(format!(
                            "{service} has no earlier release that was live"
                        ))
                    })?
            }
        };
        if svc.live_release == Some(target.number) {
            return Err(EngineError::BadInput(format!(
                "{service} {} is already live",
                target.name()
            )));
        }
        if target.pruned_at.is_some() {
            return Err(EngineError::BadInput(format!(
                "{service} {}'s files were removed by retention (--keep-releases); deploy its commit again instead",
                target.name()
            )));
        }
        if target.status != "retired" {
            if !force {
                return Err(EngineError::BadInput(format!(
                    "{service} {} never went live ({}): a rollback goes back to a release that served; \
                     `tandem rollback {service} --to {} --force` releases it anyway",
                    target.name(),
                    target.status,
                    target.name()
                )));
            }
            let event = NewEvent::new(actor, "rollback.forced")
                .subject("service", service)
                .subject("release", target.name())
                .payload(serde_json::json!({ "status": target.status }));
            self.store.append(event).await?;
        }
        let spec = stored_spec(&target)?;
        let to = Placement::production(&spec);
        self.rollout(&target, &spec, &to, actor, true, reporter)
            .await
    }

    /// The release `place` of `service` runs now, as the store knows it:
    /// production's live release, another environment's last deployment.
    pub async fn running_in(
        &self,
        service: &str,
        place: &Placement,
    ) -> Result<Option<i64>, EngineError> {
        if place.production {
            let svc = self.store.service(service).await?;
            return Ok(svc.and_then(|s| s.live_release));
        }
        let env = place.env.as_deref().unwrap_or_default();
        let deployments = self.store.deployments(service).await?;
        Ok(deployments
            .into_iter()
            .find(|d| d.env == env)
            .map(|d| d.release))
    }

    /// Blue/green: start the new group, wait until ready, switch, drain and
    /// stop the old one. On failure, the old release keeps serving and the new
    /// group is stopped.
    pub async fn rollout(
        &self,
        release: &ReleaseRow,
        spec: &Spec,
        to: &Placement,
        actor: &str,
        rollback: bool,
        reporter: &Reporter,
    ) -> Result<ReleaseRow, EngineError> {
        let began = Instant::now();
        let service = release.service.as_str();
        let unit = to.unit.as_str();
        let name = release.name();
        let secrets = self.secret_env(service, spec, to.env.as_deref()).await?;
        let reporter = &reporter.masking(secrets.iter().map(|(_, v)| v.clone()).collect());
        let kind = |outcome: &str| {
            format!(
                "{}.{outcome}",
                if rollback { "rollback" } else { "release" }
            )
        };
        let payload = serde_json::json!({
            "digest": release.digest,
            "strategy": "bluegreen",
            "asked_strategy": spec.release.strategy.as_str(),
            "instances": spec.run.instances.get(),
            "env": to.env,
        });
        if let Some(note) = spec.not_built_yet() {
            reporter.phase("start", format!("note: {note}"));
        }
        let started = to.event(release_event(actor, kind("started"), release, payload));
        self.record(to, release, "deploying", None, started).await?;
        let instances = spec.run.instances.get();
        reporter.phase(
            "start",
            format!("starting {instances} instance(s) of {name}"),
        );
        let started_at = now_ms();
        match self.switch(release, spec, to, &secrets, reporter).await {
            Ok((ready_at_ms, switched_at_ms, previous)) => {
                let payload = serde_json::json!({
                    "previous": previous,
                    "ready_at_ms": ready_at_ms,
                    "switched_at_ms": switched_at_ms,
                    "env": to.env,
                });
                let succeeded = to.event(release_event(actor, kind("succeeded"), release, payload));
                self.record(to, release, "live", None, succeeded).await?;
                reporter.phase(
                    "switch",
                    format!("traffic switched to {name}{}", to.suffix()),
                );
                faults::pause("before-stop").await;
                let drain_started = Instant::now();
                self.stop_others(
                    unit,
                    &name,
                    spec.release.drain_timeout.as_millis(),
                    reporter,
                )
                .await;
                let timings = Timings {
                    start_to_ready_ms: ready_at_ms.saturating_sub(started_at),
                    ready_to_switch_ms: switched_at_ms.saturating_sub(ready_at_ms),
                    drain_ms: drain_started.elapsed().as_millis() as u64,
                    total_ms: began.elapsed().as_millis() as u64,
                };
                let message = format!("{service} {name} is live{}", to.suffix());
                reporter.send(Progress::Done {
                    service: service.into(),
                    release: name,
                    message,
                    timings,
                });
                self.prune(service, actor).await;
                Ok(self.store.release(service, release.number).await?)
            }
            Err((reason, log_tail)) => {
                let log_tail: Vec<String> = log_tail.iter().map(|l| reporter.mask(l)).collect();
                self.stop_failed(unit, &name).await;
                let payload =
                    serde_json::json!({ "reason": reason, "log_tail": log_tail, "env": to.env });
                let failed = to.event(release_event(actor, kind("failed"), release, payload));
                self.record(to, release, "failed", Some(&reason), failed)
                    .await?;
                Err(EngineError::Failed { reason, log_tail })
            }
        }
    }

    /// Records a step of a rollout: production moves the release's status
    /// (and the service's live release); another environment records which
    /// release it runs.
    async fn record(
        &self,
        to: &Placement,
        release: &ReleaseRow,
        status: &str,
        reason: Option<&str>,
        event: NewEvent,
    ) -> Result<(), EngineError> {
        let (service, number) = (release.service.as_str(), release.number);
        match (&to.env, to.production) {
            (_, true) => {
                let live = status == "live";
                self.store
                    .transition(service, number, status, reason, live, event)
                    .await?;
            }
            (Some(env), false) if status == "live" => {
                self.store
                    .record_deployment(service, env, number, event)
                    .await?;
            }
            _ => {
                self.store.append(event).await?;
            }
        }
        Ok(())
    }

    /// Start, wait ready, activate. Returns (ready_at, switched_at, previous).
    async fn switch(
        &self,
        release: &ReleaseRow,
        spec: &Spec,
        to: &Placement,
        secrets: &[(String, String)],
        reporter: &Reporter,
    ) -> Result<(u64, u64, Option<String>), (String, Vec<String>)> {
        let agent_err = |e: AgentClientError| (e.to_string(), Vec::new());
        let (service, name) = (to.unit.as_str(), release.name());
        let mut group = group_spec(release, spec, &to.unit, &self.artifact_dir(release));
        // The environment's own settings over the service's.
        if let Some(env) = to.env.as_deref().and_then(|e| spec.environments.get(e)) {
            group
                .env
                .extend(env.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        group.env.insert(
            "TANDEM_ENV".into(),
            to.env.clone().unwrap_or_else(|| "production".into()),
        );
        // Named as secrets: the agent seals them in its state file and
        // masks them in the instances' logs.
        group.secrets = secrets.iter().map(|(k, _)| k.clone()).collect();
        group.env.extend(secrets.iter().cloned());
        // Its own user (the agent uses it where it can switch users).
        group.user = Some(
            self.store
                .unit_uid(&to.unit)
                .await
                .map_err(|e| (e.to_string(), Vec::new()))?,
        );
        self.agent.start_group(group).await.map_err(agent_err)?;
        reporter.phase(
            "ready",
            format!(
                "waiting up to {} for readiness",
                spec.release.deploy_timeout
            ),
        );
        let timeout_ms = spec.release.deploy_timeout.as_millis();
        let ready_at_ms = match self
            .agent
            .wait_ready(service, &name, timeout_ms)
            .await
            .map_err(agent_err)?
        {
            Readiness::Ready { at_ms } => at_ms,
            Readiness::NotReady { reason, log_tail } => {
                return Err((format!("{name} did not become ready: {reason}"), log_tail));
            }
        };
        faults::pause("before-switch").await;
        let (switched_at_ms, previous) = self
            .agent
            .activate(service, &name, to.route.clone())
            .await
            .map_err(agent_err)?;
        Ok((ready_at_ms, switched_at_ms, previous))
    }

    /// Stops the group of a release that failed, asking again while the
    /// agent does not answer (for up to `STOP_RETRY_FOR`): an agent killed
    /// mid-release is started again by `up` within seconds, from a state
    /// file that still has the failed group, which must not go on running.
    async fn stop_failed(&self, unit: &str, release: &str) {
        let deadline = tokio::time::Instant::now() + STOP_RETRY_FOR;
        loop {
            match self.agent.stop_group(unit, release, 0).await {
                Ok(_) => return,
                Err(AgentClientError::Unreachable { .. } | AgentClientError::NoAnswer)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::warn!(unit, release, error = %e, "could not stop the failed release");
                    return;
                }
            }
        }
    }

    /// The drain a service's spec asks for (its `release.drain_timeout`),
    /// for stopping its old groups outside a release: requests in flight
    /// on them get as long as in a release. `RECONCILE_DRAIN_MS` for a
    /// service the store does not know.
    async fn drain_ms(&self, service: &str) -> u64 {
        match self.store.service(service).await {
            Ok(Some(row)) => serde_json::from_value::<Spec>(row.spec)
                .map(|spec| spec.release.drain_timeout.as_millis())
                .unwrap_or(RECONCILE_DRAIN_MS),
            _ => RECONCILE_DRAIN_MS,
        }
    }

    /// Stops every group the agent runs that is not its unit's active one,
    /// for units no release is under way for (their service lock is free):
    /// after the agent was started again, say, from a state file with a
    /// group whose release had failed meanwhile. Returns how many it
    /// stopped.
    pub async fn stop_strays(&self) -> Result<usize, EngineError> {
        let status = self.agent.status().await?;
        let mut stopped = 0;
        for s in &status.services {
            let (service, _) = Placement::split_unit(&s.service);
            let lock = self.service_lock(service);
            let Ok(_held) = lock.try_lock() else {
                continue; // a release is under way; it stops what it leaves
            };
            let keep = s.active.as_deref().unwrap_or_default();
            let strays: BTreeSet<&str> = s
                .instances
                .iter()
                .map(|i| i.release.as_str())
                .filter(|r| *r != keep)
                .collect();
            for release in strays {
                tracing::warn!(unit = %s.service, release, "a group that is neither serving nor being released; stopping it");
                self.agent
                    .stop_group(&s.service, release, self.drain_ms(service).await)
                    .await?;
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Drains and stops every group of `service` the agent runs but `keep`.
    async fn stop_others(
        &self,
        service: &str,
        keep: &str,
        drain_timeout_ms: u64,
        reporter: &Reporter,
    ) {
        let status = match self.agent.status().await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(service, error = %e, "could not list old releases to stop");
                return;
            }
        };
        let others: BTreeSet<String> = status
            .services
            .into_iter()
            .filter(|s| s.service == service)
            .flat_map(|s| s.instances)
            .map(|i| i.release)
            .filter(|r| r != keep)
            .collect();
        for release in others {
            reporter.phase("drain", format!("draining and stopping {release}"));
            if let Err(e) = self
                .agent
                .stop_group(service, &release, drain_timeout_ms)
                .await
            {
                tracing::warn!(service, release, error = %e, "could not stop old release");
            }
        }
    }

    /// The values of the spec's `run.secrets` as environment `env` sees
    /// them (its own, else the service-wide ones; `None`: the service-wide
    /// ones), for instances and steps. A secret that is not set is the
    /// operator's to fix.
    pub async fn secret_env(
        &self,
        service: &str,
        spec: &Spec,
        env: Option<&str>,
    ) -> Result<Vec<(String, String)>, EngineError> {
        match self
            .store
            .secret_values(service, env, &spec.run.secrets)
            .await?
        {
            Ok(values) => Ok(values),
            Err(missing) => Err(EngineError::BadInput(format!(
                "run.secrets of {service} names {}, not set; set it with `tandem secrets set {service} {}`",
                missing.join(", "),
                missing[0]
            ))),
        }
    }

    /// Drains and stops every instance of `service` (its route goes with
    /// its last group). For removing a service.
    pub async fn stop_service(&self, service: &str) -> Result<(), EngineError> {
        let status = self.agent.status().await?;
        let env_prefix = format!("{service}@");
        let groups: BTreeSet<(String, String)> = status
            .services
            .into_iter()
            .filter(|s| s.service == service || s.service.starts_with(&env_prefix))
            .flat_map(|s| {
                let unit = s.service;
                s.instances
                    .into_iter()
                    .map(move |i| (unit.clone(), i.release))
            })
            .collect();
        for (unit, release) in groups {
            self.agent
                .stop_group(&unit, &release, RECONCILE_DRAIN_MS)
                .await?;
        }
        Ok(())
    }

    /// After a control-plane restart: settles releases left `deploying`
    /// against what the agent actually serves, and stops orphaned groups.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        let status = self.agent.status().await?;
        let active: BTreeMap<&str, &str> = status
            .services
            .iter()
            .filter_map(|s| Some((s.service.as_str(), s.active.as_deref()?)))
            .collect();
        for r in self.store.deploying().await? {
            let name = r.name();
            let serving = active.get(r.service.as_str()) == Some(&name.as_str());
            let payload = serde_json::json!({
                "reconciled": true,
                "reason": "control plane restarted during the release",
            });
            let kind = if serving {
                "release.succeeded"
            } else {
                "release.failed"
            };
            let event = release_event(SYSTEM_ACTOR, kind.into(), &r, payload);
            let (status, reason) = if serving {
                ("live", None)
            } else {
                ("failed", Some("interrupted: control plane restarted"))
            };
            self.store
                .transition(&r.service, r.number, status, reason, serving, event)
                .await?;
            tracing::info!(service = %r.service, release = %name, serving, "settled interrupted release");
        }
        for s in &status.services {
            let keep = s.active.as_deref().unwrap_or_default();
            let (service, _) = Placement::split_unit(&s.service);
            let drain = self.drain_ms(service).await;
            self.stop_others(&s.service, keep, drain, &Reporter::silent())
                .await;
        }
        let payload =
            serde_json::json!({ "agent_pid": status.pid, "services": status.services.len() });
        self.store
            .append(NewEvent::new(SYSTEM_ACTOR, "controlplane.reattached").payload(payload))
            .await?;
        Ok(())
    }

    /// Starts again what the store says serves but the agent runs nothing
    /// of: each service's live release and each environment's deployed
    /// one — after `tandem down` and a later `up`, say, or an agent whose
    /// state file is gone. Each is started, waited for and given its
    /// route as in a release, journalled as `restore.started` and
    /// `restore.succeeded|failed` (release statuses stay as they are: the
    /// release was and is the one that should serve). Returns how many it
    /// restored.
    pub async fn restore_missing(&self) -> Result<usize, EngineError> {
        let status = self.agent.status().await?;
        let running: BTreeSet<String> = status
            .services
            .iter()
            .filter(|s| s.active.is_some() || !s.instances.is_empty())
            .map(|s| s.service.clone())
            .collect();
        let mut restored = 0;
        for meant in self.meant_to_serve().await? {
            if running.contains(&meant.unit()) {
                continue;
            }
            let release = self.store.release(&meant.service, meant.release).await?;
            let spec = stored_spec(&release)?;
            let place = match &meant.env {
                None => Placement::production(&spec),
                Some(env) => match spec.environments.iter().find(|(n, _)| n.as_str() == env) {
                    Some((name, _)) => Placement::environment(&spec, name),
                    None => continue,
                },
            };
            // An environment that was production in that release's spec
            // is the service's own unit: its live release goes there.
            if meant.env.is_some() && place.production {
                continue;
            }
            let _guard = self.lock_service(&meant.service).await;
            if self.restore(&release, &spec, &place).await? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// What the store says serves: each service's live release, and each
    /// environment's deployed one (of environments its spec still has).
    pub async fn meant_to_serve(&self) -> Result<Vec<MeantToServe>, StoreError> {
        let services = self.store.services().await?;
        let mut meant: Vec<MeantToServe> = services
            .iter()
            .filter_map(|s| {
                Some(MeantToServe {
                    service: s.name.clone(),
                    env: None,
                    release: s.live_release?,
                })
            })
            .collect();
        for d in self.store.all_deployments().await? {
            let declared = services
                .iter()
                .any(|s| s.name == d.service && s.declares_env(&d.env));
            if declared {
                meant.push(MeantToServe {
                    service: d.service,
                    env: Some(d.env),
                    release: d.release,
                });
            }
        }
        Ok(meant)
    }

    /// Starts `release` where `to` says and routes to it; whether it
    /// serves.
    async fn restore(
        &self,
        release: &ReleaseRow,
        spec: &Spec,
        to: &Placement,
    ) -> Result<bool, EngineError> {
        let name = release.name();
        tracing::info!(unit = %to.unit, release = %name, "the agent runs nothing of it; starting it again");
        let secrets = self
            .secret_env(&release.service, spec, to.env.as_deref())
            .await?;
        let why = "the agent ran nothing of it";
        let payload = serde_json::json!({ "env": to.env, "reason": why });
        let started = release_event(SYSTEM_ACTOR, "restore.started".into(), release, payload);
        self.store.append(to.event(started)).await?;
        let (kind, payload, serves) = match self
            .switch(release, spec, to, &secrets, &Reporter::silent())
            .await
        {
            Ok((ready_at_ms, switched_at_ms, _)) => (
                "restore.succeeded",
                serde_json::json!({
                    "env": to.env,
                    "ready_at_ms": ready_at_ms,
                    "switched_at_ms": switched_at_ms,
                }),
                true,
            ),
            Err((reason, log_tail)) => {
                self.stop_failed(&to.unit, &name).await;
                (
                    "restore.failed",
                    serde_json::json!({ "env": to.env, "reason": reason, "log_tail": log_tail }),
                    false,
                )
            }
        };
        let ended = release_event(SYSTEM_ACTOR, kind.into(), release, payload);
        self.store.append(to.event(ended)).await?;
        Ok(serves)
    }
}

/// A release the store says serves somewhere (`Engine::meant_to_serve`).
#[derive(Clone, Debug, PartialEq)]
pub struct MeantToServe {
    pub service: String,
    /// `None`: production.
    pub env: Option<String>,
    pub release: i64,
}

impl MeantToServe {
    /// The agent unit it runs in.
    pub fn unit(&self) -> String {
        Placement::unit_name(&self.service, self.env.as_deref())
    }
}

/// The spec a release was made with, as the store keeps it.
pub fn stored_spec(release: &ReleaseRow) -> Result<Spec, EngineError> {
    serde_json::from_value(release.spec.clone())
        .map_err(|e| EngineError::Io(format!("stored spec of {}: {e}", release.name())))
}

/// Reads and checks `dir/tandem.yaml`.
pub fn read_spec(dir: &Path) -> Result<Spec, EngineError> {
    let spec_path = dir.join("tandem.yaml");
    let text = read_bounded(&spec_path)
        .map_err(|e| EngineError::BadInput(format!("{}: {e}", spec_path.display())))?;
    Spec::parse(&spec_path.display().to_string(), &text).map_err(EngineError::Spec)
}

/// A spec file's text, at most one byte past `MAX_SPEC_BYTES` (which
/// `Spec::parse` then refuses): a huge file is never read whole.
pub fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(tandem_core::spec::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > tandem_core::spec::MAX_SPEC_BYTES {
        // Refused for its size; where it was cut does not matter.
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// A journal event about one release of one service.
fn release_event(
    actor: &str,
    kind: String,
    release: &ReleaseRow,
    payload: serde_json::Value,
) -> NewEvent {
    NewEvent::new(actor, kind)
        .subject("service", &release.service)
        .subject("release", release.name())
        .payload(payload)
}

fn probe_spec(p: &Probe, default_interval: tandem_core::Duration) -> ProbeSpec {
    ProbeSpec {
        kind: match &p.check {
            Check::Http(path) => ProbeKind::Http {
                path: path.clone(),
                status: p.status,
            },
            Check::Tcp => ProbeKind::Tcp,
            Check::Exec(command) => ProbeKind::Exec {
                command: command.clone(),
            },
        },
        interval_ms: p.interval.unwrap_or(default_interval).as_millis(),
        timeout_ms: p.timeout.as_millis(),
        failures: p.failures,
    }
}

/// What the agent needs to run a release whose files are in `dir`.
pub fn group_spec(release: &ReleaseRow, spec: &Spec, unit: &str, dir: &Path) -> GroupSpec {
    GroupSpec {
        service: unit.to_owned(),
        release: release.name(),
        dir: dir.to_string_lossy().into_owned(),
        command: spec.run.command.as_str().into(),
        env: spec.run.env.clone(),
        instances: spec.run.instances.get(),
        readiness: probe_spec(&spec.readiness(), DEFAULT_READINESS_INTERVAL),
        liveness: spec
            .health
            .liveness
            .as_ref()
            .map(|p| probe_spec(p, DEFAULT_LIVENESS_INTERVAL)),
        stop_timeout_ms: spec.run.stop_timeout.as_millis(),
        secrets: Vec::new(),
        limits: tandem_core::protocol::Limits {
            memory_bytes: Some(spec.run.limits.memory.get()),
            cpu_millis: spec
                .run
                .limits
                .cpu
                .filter(|c| c.is_finite() && *c > 0.0)
                .map(|c| (c * 1000.0).round().min(f64::from(u32::MAX)) as u32),
            pids: Some(spec.run.limits.pids.max(1)),
            nofile: Some(u64::from(spec.run.limits.nofile.max(16))),
            disk_bytes: Some(spec.run.limits.disk.get().max(1 << 20)),
        },
        user: None,
        state_dir: spec.run.state_dir,
    }
}
