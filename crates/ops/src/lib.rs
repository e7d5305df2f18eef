//! Operations around the clock: a monitor that watches what the agent runs
//! every second, opens an incident when a service has no ready instance,
//! crash-loops or answers with too many errors, resolves it on recovery, and
//! tells the channels. People acknowledge and resolve through [`Ops`] too.
//!
//! The monitor only reads: the agent's status (instances, readiness,
//! crash loops, cumulative request counters per route) and the store. It
//! never acts on the data plane; the supervisor heals, the monitor reports.

mod checkpoints;
pub mod notify;
pub mod slo;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tandem_core::protocol::{AgentStatus, RequestCounts, ServiceStatus};
use tandem_engine::{Engine, Placement};
use tandem_store::{IncidentRow, MinuteRow, NewIncident, StoreError};

pub use notify::Notifier;

/// Actor of what the monitor does.
pub const MONITOR_ACTOR: &str = "system:monitor";
/// How often the monitor looks.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A condition must be gone this long before its incident resolves.
pub const RESOLVE_AFTER: Duration = Duration::from_secs(3);
/// Error-ratio incidents: over this window, at least this many requests,
/// at least this share of them 5xx.
pub const ERROR_WINDOW: Duration = Duration::from_secs(60);
pub const ERROR_MIN_REQUESTS: u64 = 20;
pub const ERROR_RATIO: f64 = 0.05;
/// Whether `errors` of `total` requests in [`ERROR_WINDOW`] open an
/// `error-ratio` incident: enough requests to judge, and enough of them 5xx.
pub fn error_ratio_breached(total: u64, errors: u64) -> bool {
    total >= ERROR_MIN_REQUESTS && errors as f64 / total as f64 >= ERROR_RATIO
}

/// A release that went live this recently is suspected when an incident opens.
pub const SUSPECT_WITHIN: Duration = Duration::from_secs(15 * 60);

/// A unit that should serve (the store says so) but has no route in the
/// agent this long counts as not ready: a restore that failed, say.
pub const MISSING_AFTER: Duration = Duration::from_secs(10);
/// The agent must be unreachable this long before it is an incident.
pub const AGENT_DOWN_AFTER: Duration = Duration::from_secs(5);
/// Incidents about the data plane itself are filed under this name.
pub const AGENT_SERVICE: &str = "tandem-agent";
const AGENT_DOWN_KIND: &str = "agent-unreachable";
/// Incidents about the store itself (full disk, I/O errors) are filed
/// under this name.
pub const STORE_SERVICE: &str = "tandem-store";
const STORAGE_KIND: &str = "storage-fault";
/// A service's repository that has not answered its poller this long is an
/// incident (`TANDEM_REPO_DOWN_AFTER`, a duration in seconds, for tests).
pub const REPO_DOWN_AFTER: Duration = Duration::from_secs(10 * 60);
const REPO_KIND: &str = "repo-unreachable";

fn repo_down_after() -> Duration {
    std::env::var("TANDEM_REPO_DOWN_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(REPO_DOWN_AFTER)
}

/// Finished hours of minutes are journaled this far back (a server that
/// was down catches up on its return).
pub const MEASURE_BACK_MINUTES: i64 = 7 * 24 * 60;

/// Minutes are kept this long (13 months and some).
pub const KEEP_MINUTES: i64 = 400 * 24 * 60;

/// The kinds of incident the monitor opens by itself.
pub const KINDS: [&str; 5] = [
    "no-ready-instance",
    "crash-loop",
    "error-ratio",
    "burn-rate",
    "disk-limit",
];

#[derive(Clone)]
pub struct Ops {
    engine: Engine,
    notifier: Notifier,
}

impl Ops {
    pub fn new(engine: Engine) -> Self {
        let notifier = Notifier::new(engine.store.clone());
        Ops { engine, notifier }
    }

    /// Starts the monitor on its own task.
    pub fn start(&self) {
        let monitor = Monitor {
            ops: self.clone(),
            pending_clear: HashMap::new(),
            samples: HashMap::new(),
            rollups: HashMap::new(),
            burning: HashMap::new(),
            pruned_at: None,
            instances: None,
            missing_since: HashMap::new(),
            storage: None,
            storage_leftovers: true,
            journal_seen: None,
            measured_minute: 0,
        };
        tokio::spawn(monitor.run());
        tokio::spawn(checkpoints::run(self.clone()));
        // The outbox is sent from here on: what a server before this one
        // queued and did not deliver goes first.
        tokio::spawn(self.notifier.clone().dispatch());
    }

    pub async fn acknowledge(&self, id: i64, by: &str) -> Result<IncidentRow, StoreError> {
        let row = self
            .engine
            .store
            .incident_transition(id, "acknowledged", by, None)
            .await?;
        self.notifier.notify(&row, "incident.acknowledged").await;
        Ok(row)
    }

    pub async fn resolve(
        &self,
        id: i64,
        by: &str,
        note: Option<&str>,
    ) -> Result<IncidentRow, StoreError> {
        let row = self
            .engine
            .store
            .incident_transition(id, "resolved", by, note)
            .await?;
        self.notifier.notify(&row, "incident.resolved").await;
        Ok(row)
    }
}

impl Ops {
    /// Schedules a maintenance window and announces it to the channels.
    pub async fn schedule_maintenance(
        &self,
        service: &str,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        reason: &str,
        actor: &str,
    ) -> Result<tandem_store::MaintenanceRow, StoreError> {
        let (row, _) = self
            .engine
            .store
            .add_maintenance(service, &from.to_string(), &to.to_string(), reason, actor)
            .await?;
        self.notifier.announce(&row).await;
        Ok(row)
    }

    /// Turns the proxy's maintenance page for a service on or off.
    pub async fn maintenance_mode(
        &self,
        service: &str,
        on: bool,
        retry_after_s: u32,
        actor: &str,
    ) -> Result<(), tandem_engine::EngineError> {
        self.engine
            .agent
            .maintenance(service, on, retry_after_s)
            .await?;
        let kind = if on {
            "maintenance.mode_on"
        } else {
            "maintenance.mode_off"
        };
        let event = tandem_core::journal::NewEvent::new(actor, kind)
            .subject("service", service)
            .payload(serde_json::json!({ "retry_after_s": on.then_some(retry_after_s) }));
        self.engine.store.append(event).await?;
        Ok(())
    }
}

/// Request counters of one route at one moment.
struct Sample {
    at: Instant,
    total: u64,
    errors: u64,
}

struct Monitor {
    ops: Ops,
    /// When each (unit, kind) was first seen clear while its incident is open.
    pending_clear: HashMap<(String, &'static str), Instant>,
    /// Recent counters per unit, for error ratios.
    samples: HashMap<String, VecDeque<Sample>>,
    /// The minute being measured, per unit.
    rollups: HashMap<String, Rollup>,
    /// Services whose SLO burns at an alerting rate: how loudly, and why.
    burning: HashMap<String, (tandem_core::slo::Alert, String)>,
    pruned_at: Option<Instant>,
    /// What each instance looked like at the last look (`None` before the
    /// first look: a restarted monitor does not repeat old changes).
    instances: Option<HashMap<String, InstanceLook>>,
    /// Since when each unit that should serve has had no route.
    missing_since: HashMap<String, Instant>,
    /// The storage fault under way, if one is.
    storage: Option<StorageEpisode>,
    /// A storage incident a previous server left open may still need
    /// resolving (checked at the first look at a store that writes).
    storage_leftovers: bool,
    /// The journal read so far, for failed runs to tell (`None` before the
    /// first look: a restarted monitor does not tell old ones again).
    journal_seen: Option<u64>,
    /// The minute finished hours were last looked for.
    measured_minute: i64,
}

/// A storage fault from its first sighting to the first write that works.
struct StorageEpisode {
    fault: tandem_store::StorageFault,
    /// Its incident, once it could be recorded (not while the disk is full).
    incident: Option<IncidentRow>,
    /// Whether the channels were told it opened.
    told: bool,
}

/// The parts of an instance's state whose changes are journaled.
#[derive(Clone, PartialEq)]
struct InstanceLook {
    ready: bool,
    crash_looping: bool,
    restarts: u32,
}

/// The minute being measured for one unit.
struct Rollup {
    minute: i64,
    /// Counters when the minute began.
    base: RequestCounts,
    /// Looks taken during the minute, and those that found no instance
    /// ready (how a minute without requests is judged).
    looks: u32,
    unready_looks: u32,
}

impl Monitor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unreachable_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            self.watch_storage().await;
            if let Err(e) = self.watch_delivery().await {
                tracing::debug!(error = %e, "monitor: delivery look failed");
            }
            if let Err(e) = self.journal_hours().await {
                tracing::debug!(error = %e, "monitor: measurements not journaled");
            }
            let asked = Instant::now();
            let status = match self.ops.engine.agent.status().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "monitor: agent not reachable");
                    // Since it was asked: a hung agent fails by timing out.
                    let since = *unreachable_since.get_or_insert(asked);
                    if since.elapsed() >= AGENT_DOWN_AFTER
                        && let Err(e) = self.agent_down(&e.to_string()).await
                    {
                        tracing::warn!(error = %e, "cannot record that the agent is down");
                    }
                    continue;
                }
            };
            if unreachable_since.take().is_some()
                && let Err(e) = self.agent_back().await
            {
                tracing::warn!(error = %e, "cannot record that the agent is back");
            }
            match self.check(&status).await {
                Ok(()) => {}
                // Reported once, as the storage incident, not every second.
                Err(e @ StoreError::Storage { .. }) => {
                    tracing::debug!(error = %e, "monitor check failed")
                }
                Err(e) => tracing::warn!(error = %e, "monitor check failed"),
            }
        }
    }

    /// A store that cannot write is an incident: opened when it can be
    /// recorded, and the channels are told at once even when it cannot
    /// (the disk is full: the notice then carries incident number 0 and
    /// its deliveries go unrecorded). While the fault stands, a probe write
    /// each second finds out when there is room again; then the incident
    /// is recorded if it was not and resolved.
    async fn watch_storage(&mut self) {
        let store = self.ops.engine.store.clone();
        if store.fault().is_some() {
            let _ = store.probe().await;
        }
        let fault = store.fault();
        if fault.is_none() && self.storage.is_none() && self.storage_leftovers {
            self.storage_leftovers = false;
            let open = store.incidents(true, 10_000).await.unwrap_or_default();
            for i in open.into_iter().filter(|i| i.kind == STORAGE_KIND) {
                let note = "the store writes (found open at the server's start)";
                if let Err(e) = self.ops.resolve(i.id, MONITOR_ACTOR, Some(note)).await {
                    tracing::warn!(error = %e, "cannot resolve an old storage incident");
                }
            }
        }
        if self.storage.is_none()
            && let Some(fault) = &fault
        {
            tracing::error!(%fault, "the store cannot write");
            self.storage = Some(StorageEpisode {
                fault: fault.clone(),
                incident: None,
                told: false,
            });
        }
        let Some(episode) = self.storage.as_mut() else {
            return;
        };
        if let Some(f) = &fault {
            episode.fault = f.clone();
        }
        if episode.incident.is_none() {
            let new = NewIncident {
                service: STORE_SERVICE.into(),
                env: None,
                kind: STORAGE_KIND.into(),
                severity: "page".into(),
                summary: format!(
                    "{} (since {}); writes fail with 503 and change nothing until this is fixed",
                    episode.fault, episode.fault.since
                ),
                release: None,
                suspect_release: None,
            };
            match store.open_incident(&new, MONITOR_ACTOR).await {
                Ok(row) => {
                    if !episode.told {
                        self.ops.notifier.notify(&row, "incident.opened").await;
                        episode.told = true;
                    }
                    episode.incident = Some(row);
                }
                Err(e) if !episode.told => {
                    tracing::warn!(error = %e, "cannot record the storage incident; telling the channels anyway");
                    let row = IncidentRow {
                        id: 0,
                        service: new.service,
                        env: None,
                        kind: new.kind,
                        severity: new.severity,
                        status: "open".into(),
                        summary: new.summary,
                        release: None,
                        suspect_release: None,
                        opened_at: episode.fault.since.clone(),
                        acknowledged_at: None,
                        acknowledged_by: None,
                        resolved_at: None,
                        resolved_by: None,
                        note: None,
                    };
                    self.ops.notifier.notify(&row, "incident.opened").await;
                    episode.told = true;
                }
                Err(_) => {}
            }
        }
        if fault.is_none()
            && let Some(row) = &episode.incident
        {
            let note = format!(
                "the store writes again (fault since {})",
                episode.fault.since
            );
            match self.ops.resolve(row.id, MONITOR_ACTOR, Some(&note)).await {
                Ok(_) => self.storage = None,
                Err(e) => tracing::warn!(error = %e, "cannot resolve the storage incident"),
            }
        }
    }

    /// Delivery's failures, told: each `run.failed` in the journal goes to
    /// the service's channels, and a repository that has not answered its
    /// poller for `REPO_DOWN_AFTER` is a ticket incident of its service
    /// (pushes are not deployed meanwhile), resolved when it answers.
    async fn watch_delivery(&mut self) -> Result<(), StoreError> {
        let store = self.ops.engine.store.clone();
        match self.journal_seen {
            None => self.journal_seen = Some(store.last_seq().await?),
            Some(mut seen) => {
                loop {
                    let batch = store.events(seen, 500).await?;
                    for e in &batch {
                        if e.kind == "run.failed" {
                            self.ops.notifier.run_failed(e).await;
                        }
                        seen = e.seq;
                    }
                    if batch.len() < 500 {
                        break;
                    }
                }
                self.journal_seen = Some(seen);
            }
        }
        let repos = store.repos().await?;
        if repos.is_empty() {
            return Ok(());
        }
        let open = store.incidents(true, 10_000).await?;
        let now = jiff::Timestamp::now();
        for repo in repos {
            let since = repo
                .poll_failing_since
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let down = since.is_some_and(|t| {
                now.duration_since(t).as_secs() >= repo_down_after().as_secs() as i64
            });
            let incident = open
                .iter()
                .find(|i| i.service == repo.service && i.kind == REPO_KIND);
            match (down, incident) {
                (true, None) => {
                    let new = NewIncident {
                        service: repo.service.clone(),
                        env: None,
                        kind: REPO_KIND.into(),
                        severity: "ticket".into(),
                        summary: format!(
                            "{} has not answered since {}: {}; pushes are not deployed until it does",
                            repo.url,
                            repo.poll_failing_since.as_deref().unwrap_or("?"),
                            repo.poll_error.as_deref().unwrap_or("?")
                        ),
                        release: None,
                        suspect_release: None,
                    };
                    let row = store.open_incident(&new, MONITOR_ACTOR).await?;
                    self.ops.notifier.notify(&row, "incident.opened").await;
                }
                (false, Some(i)) if since.is_none() => {
                    self.ops
                        .resolve(i.id, MONITOR_ACTOR, Some("the repository answers again"))
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The data plane does not answer: one incident for it, opened once.
    async fn agent_down(&mut self, why: &str) -> Result<(), StoreError> {
        let store = self.ops.engine.store.clone();
        let open = store.incidents(true, 10_000).await?;
        if open.iter().any(|i| i.kind == AGENT_DOWN_KIND) {
            return Ok(());
        }
        let new = NewIncident {
            service: AGENT_SERVICE.into(),
            env: None,
            kind: AGENT_DOWN_KIND.into(),
            severity: "page".into(),
            summary: format!(
                "the agent (proxy and supervisor) does not answer: {why}; start it with `tandem agent` or `tandem up`"
            ),
            release: None,
            suspect_release: None,
        };
        let row = store.open_incident(&new, MONITOR_ACTOR).await?;
        tracing::error!(incident = row.id, "agent unreachable");
        self.ops.notifier.notify(&row, "incident.opened").await;
        Ok(())
    }

    async fn agent_back(&mut self) -> Result<(), StoreError> {
        let open = self.ops.engine.store.incidents(true, 10_000).await?;
        for i in open.into_iter().filter(|i| i.kind == AGENT_DOWN_KIND) {
            self.ops
                .resolve(i.id, MONITOR_ACTOR, Some("the agent answers again"))
                .await?;
        }
        // Counters restart with a new agent; start measuring afresh.
        self.samples.clear();
        self.rollups.clear();
        Ok(())
    }

    /// Journals instance state changes: probe results stay in memory, only
    /// a change of readiness, a restart or a crash loop is an event.
    async fn journal_changes(&mut self, status: &AgentStatus) -> Result<(), StoreError> {
        let now: HashMap<String, (InstanceLook, &str, &str, Option<&str>)> = status
            .services
            .iter()
            .flat_map(|s| {
                s.instances.iter().map(move |i| {
                    let look = InstanceLook {
                        ready: i.ready,
                        crash_looping: i.crash_looping,
                        restarts: i.restarts,
                    };
                    let why = i.last_probe_error.as_deref().or(i.last_exit.as_deref());
                    (
                        i.id.clone(),
                        (look, s.service.as_str(), i.release.as_str(), why),
                    )
                })
            })
            .collect();
        if let Some(before) = &self.instances {
            let store = &self.ops.engine.store;
            for (id, (look, unit, release, why)) in &now {
                let Some(old) = before.get(id) else { continue };
                let mut kinds = Vec::new();
                if look.restarts > old.restarts {
                    kinds.push("instance.restarted");
                }
                if look.ready != old.ready {
                    kinds.push(if look.ready {
                        "instance.ready"
                    } else {
                        "instance.unready"
                    });
                }
                if look.crash_looping && !old.crash_looping {
                    kinds.push("instance.crash_looping");
                }
                let (service, _) = Placement::split_unit(unit);
                for kind in kinds {
                    let event = tandem_core::journal::NewEvent::new(MONITOR_ACTOR, kind)
                        .subject("service", service)
                        .subject("release", *release)
                        .subject("instance", id.as_str())
                        .payload(serde_json::json!({
                            "unit": unit,
                            "restarts": look.restarts,
                            "reason": why,
                        }));
                    store.append(event).await?;
                }
            }
        }
        self.instances = Some(now.into_iter().map(|(id, (look, ..))| (id, look)).collect());
        Ok(())
    }

    async fn check(&mut self, status: &AgentStatus) -> Result<(), StoreError> {
        // On the monitor's first look, counters have no known start; a unit
        // that appears later counted from zero since the look before.
        let first_look = self.instances.is_none();
        self.journal_changes(status).await?;
        let store = self.ops.engine.store.clone();
        let open: HashMap<(String, Option<String>, String), IncidentRow> = store
            .incidents(true, 10_000)
            .await?
            .into_iter()
            .map(|i| ((i.service.clone(), i.env.clone(), i.kind.clone()), i))
            .collect();
        // Unacknowledged pages: told again, and escalated, as channels ask.
        let unresolved: Vec<IncidentRow> = open.values().cloned().collect();
        self.ops.notifier.follow_up(&unresolved).await;
        let maintenance = store.maintenance(None).await?;
        let now = jiff::Timestamp::now();
        let missing = self.missing_units(status).await?;
        for svc in status.services.iter().chain(&missing) {
            let Some(active) = svc.active.as_deref() else {
                continue;
            };
            let (service, env) = Placement::split_unit(&svc.service);
            let (service, env) = (service.to_owned(), env.map(str::to_owned));
            let windows: Vec<_> = maintenance
                .iter()
                .filter(|w| w.service == service)
                .cloned()
                .collect();
            let muted = slo::in_maintenance(&windows, now);
            self.roll(svc, active, &service, env.as_deref(), first_look)
                .await?;
            let mut found = self.conditions(svc, active, first_look);
            let mut burn_severity = "page";
            if env.is_none()
                && let Some((alert, why)) = self.burning.get(&service)
            {
                found.push(("burn-rate", why.clone()));
                if *alert == tandem_core::slo::Alert::Ticket {
                    burn_severity = "ticket";
                }
            }
            if muted {
                // Alerts are muted in maintenance; open incidents still resolve.
                found.retain(|(kind, _)| {
                    open.contains_key(&(service.clone(), env.clone(), kind.to_string()))
                });
            }
            for kind in KINDS {
                let key = (service.clone(), env.clone(), kind.to_owned());
                let clear_key = (svc.service.clone(), kind);
                match (found.iter().find(|(k, _)| *k == kind), open.get(&key)) {
                    (Some((_, summary)), None) => {
                        self.pending_clear.remove(&clear_key);
                        let new = NewIncident {
                            service: service.clone(),
                            env: env.clone(),
                            kind: kind.to_owned(),
                            severity: match (kind, &env) {
                                ("burn-rate", _) => burn_severity,
                                (_, None) => "page",
                                (_, Some(_)) => "ticket",
                            }
                            .into(),
                            summary: summary.clone(),
                            release: Some(active.to_owned()),
                            suspect_release: self.suspect(&service, env.as_deref(), active).await,
                        };
                        let row = store.open_incident(&new, MONITOR_ACTOR).await?;
                        tracing::warn!(incident = row.id, service = %service, kind, summary = %row.summary, "incident opened");
                        self.ops.notifier.notify(&row, "incident.opened").await;
                    }
                    (Some(_), Some(_)) => {
                        self.pending_clear.remove(&clear_key);
                    }
                    (None, Some(incident)) => {
                        let since = *self
                            .pending_clear
                            .entry(clear_key.clone())
                            .or_insert_with(Instant::now);
                        if since.elapsed() >= RESOLVE_AFTER {
                            self.pending_clear.remove(&clear_key);
                            let row = self
                                .ops
                                .resolve(incident.id, MONITOR_ACTOR, Some("recovered"))
                                .await?;
                            tracing::info!(incident = row.id, service = %service, kind, "incident resolved");
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        Ok(())
    }

    /// Units the store says serve — a service's live release, an
    /// environment's deployed one — that have had no route in the agent
    /// for [`MISSING_AFTER`] (a restore that failed, an agent that lost
    /// its state): as units with that release active and no instance, so
    /// that they are not ready like any other unit that serves nothing,
    /// count against the SLO and open `no-ready-instance`.
    async fn missing_units(
        &mut self,
        status: &AgentStatus,
    ) -> Result<Vec<ServiceStatus>, StoreError> {
        let routed: HashSet<&str> = status
            .services
            .iter()
            .filter(|s| s.active.is_some())
            .map(|s| s.service.as_str())
            .collect();
        let expected: Vec<(String, String)> = self
            .ops
            .engine
            .meant_to_serve()
            .await?
            .into_iter()
            .map(|m| (m.unit(), format!("r{}", m.release)))
            .collect();
        let now = Instant::now();
        self.missing_since.retain(|unit, _| {
            !routed.contains(unit.as_str()) && expected.iter().any(|(u, _)| u == unit)
        });
        let mut missing = Vec::new();
        for (unit, release) in expected {
            if routed.contains(unit.as_str()) {
                continue;
            }
            let since = *self.missing_since.entry(unit.clone()).or_insert(now);
            if now.duration_since(since) >= MISSING_AFTER {
                missing.push(ServiceStatus {
                    service: unit,
                    route: None,
                    active: Some(release),
                    instances: Vec::new(),
                    requests: RequestCounts::default(),
                    maintenance: None,
                });
            }
        }
        Ok(missing)
    }

    /// Measures the current minute of `svc`; when a minute ends, stores it
    /// and, in production, re-evaluates the service's SLO burn rates.
    async fn roll(
        &mut self,
        svc: &ServiceStatus,
        active: &str,
        service: &str,
        env: Option<&str>,
        first_look: bool,
    ) -> Result<(), StoreError> {
        let minute = slo::now_minute();
        let ready = svc.instances.iter().any(|i| i.release == active && i.ready);
        let entry = self
            .rollups
            .entry(svc.service.clone())
            .or_insert_with(|| Rollup {
                minute,
                // A unit that appeared since the last look counted from zero.
                base: if first_look {
                    svc.requests.clone()
                } else {
                    RequestCounts::default()
                },
                looks: 0,
                unready_looks: 0,
            });
        if entry.minute == minute {
            entry.looks += 1;
            entry.unready_looks += u32::from(!ready);
            return Ok(());
        }
        let now = &svc.requests;
        // A restarted agent starts again from zero: then all it counted is new.
        let restarted = now.classes.iter().sum::<u64>() < entry.base.classes.iter().sum::<u64>();
        let delta = |a: u64, b: u64| if restarted { a } else { a.saturating_sub(b) };
        let total: u64 = (0..5)
            .map(|i| delta(now.classes[i], entry.base.classes[i]))
            .sum();
        let row = MinuteRow {
            service: service.to_owned(),
            env: env.unwrap_or_default().to_owned(),
            minute: entry.minute,
            total: total as i64,
            errors: delta(now.classes[4], entry.base.classes[4]) as i64,
            buckets: now
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| delta(*n, entry.base.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
            ready: entry.unready_looks == 0,
            looks: i64::from(entry.looks),
            unready_looks: i64::from(entry.unready_looks),
        };
        // This look belongs to the new minute.
        *entry = Rollup {
            minute,
            base: now.clone(),
            looks: 1,
            unready_looks: u32::from(!ready),
        };
        let store = self.ops.engine.store.clone();
        store.record_minute(&row).await?;
        if env.is_none() {
            self.evaluate_slos(service, minute).await?;
        }
        if self
            .pruned_at
            .is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
        {
            self.pruned_at = Some(Instant::now());
            store.prune_minutes(minute - KEEP_MINUTES).await?;
        }
        Ok(())
    }

    /// Commits each finished hour of production minutes (of the last
    /// [`MEASURE_BACK_MINUTES`]) to the journal once, as
    /// `measurements.recorded`: the record an SLA report is computed from.
    /// An hour is finished once its last minute was stored (at the first
    /// look of the minute after it), so it is looked for a minute later.
    async fn journal_hours(&mut self) -> Result<(), StoreError> {
        let now = slo::now_minute();
        if self.measured_minute == now {
            return Ok(());
        }
        self.measured_minute = now;
        let store = &self.ops.engine.store;
        let end = (now - 1).div_euclid(60) * 60;
        for (service, hour) in store
            .unmeasured_hours(end - MEASURE_BACK_MINUTES, end)
            .await?
        {
            let rows = store.minutes(&service, "", hour, hour + 60).await?;
            let m = tandem_core::slo::Measurements {
                env: String::new(),
                hour,
                minutes: rows
                    .iter()
                    .map(|r| {
                        let (looks, unready) = r.looks();
                        (
                            (r.minute - hour) as u32,
                            r.total.max(0) as u64,
                            r.errors.max(0) as u64,
                            looks,
                            unready,
                        )
                    })
                    .collect(),
            };
            store
                .journal_measurements(&service, &m, MONITOR_ACTOR)
                .await?;
        }
        Ok(())
    }

    async fn evaluate_slos(&mut self, service: &str, now: i64) -> Result<(), StoreError> {
        let store = &self.ops.engine.store;
        let Some(row) = store.service(service).await? else {
            return Ok(());
        };
        let Ok(spec) = serde_json::from_value::<tandem_core::Spec>(row.spec) else {
            return Ok(());
        };
        let reports = slo::report(store, &spec, now).await?;
        let Some(loudest) = reports.iter().filter_map(|r| r.alert).max() else {
            self.burning.remove(service);
            return Ok(());
        };
        let why: Vec<String> = reports
            .into_iter()
            .filter(|r| r.alert == Some(loudest))
            .map(|r| {
                let rate = |w: &str| r.burn_rates.iter().find(|(n, _)| n == w).map(|(_, v)| *v).unwrap_or(0.0);
                format!(
                    "SLO {} burns its error budget at {:.1}× over 1h, {:.1}× over 5m, {:.1}× over 1d ({:.1}% of the budget left)",
                    r.name,
                    rate("1h"),
                    rate("5m"),
                    rate("1d"),
                    r.budget_remaining * 100.0
                )
            })
            .collect();
        self.burning
            .insert(service.to_owned(), (loudest, why.join("; ")));
        Ok(())
    }

    /// The incident conditions `svc` is in now, with a summary each.
    fn conditions(
        &mut self,
        svc: &ServiceStatus,
        active: &str,
        first_look: bool,
    ) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        let serving: Vec<_> = svc
            .instances
            .iter()
            .filter(|i| i.release == active)
            .collect();
        if !serving.iter().any(|i| i.ready) {
            let why = serving
                .iter()
                .find_map(|i| i.last_probe_error.clone().or_else(|| i.last_exit.clone()))
                .unwrap_or_else(|| match serving.is_empty() {
                    true => "no instance of it runs".into(),
                    false => "not ready".into(),
                });
            found.push((
                "no-ready-instance",
                format!("{} has no ready instance of {active}: {why}", svc.service),
            ));
        }
        if let Some((i, why)) = svc
            .instances
            .iter()
            .find_map(|i| Some((i, i.over_disk.as_deref()?)))
        {
            found.push((
                "disk-limit",
                format!("{} instance {} was stopped: {why}", svc.service, i.id),
            ));
        }
        if let Some(i) = svc.instances.iter().find(|i| i.crash_looping) {
            found.push((
                "crash-loop",
                format!(
                    "{} instance {} is crash-looping ({} restarts; last: {})",
                    svc.service,
                    i.id,
                    i.restarts,
                    i.last_exit.as_deref().unwrap_or("?")
                ),
            ));
        }
        let total: u64 = svc.requests.classes.iter().sum();
        let errors = svc.requests.classes[4];
        let samples = self.samples.entry(svc.service.clone()).or_insert_with(|| {
            let mut fresh = VecDeque::new();
            if !first_look {
                fresh.push_back(Sample {
                    at: Instant::now() - CHECK_EVERY,
                    total: 0,
                    errors: 0,
                });
            }
            fresh
        });
        samples.push_back(Sample {
            at: Instant::now(),
            total,
            errors,
        });
        while samples.len() > 2
            && samples
                .front()
                .is_some_and(|s| s.at.elapsed() > ERROR_WINDOW)
        {
            samples.pop_front();
        }
        if let (Some(first), Some(last)) = (samples.front(), samples.back()) {
            // A restarted agent starts its counters at zero again.
            let (t, e) = if last.total >= first.total {
                (
                    last.total - first.total,
                    last.errors.saturating_sub(first.errors),
                )
            } else {
                (last.total, last.errors)
            };
            if error_ratio_breached(t, e) {
                found.push((
                    "error-ratio",
                    format!(
                        "{} answered {e} of {t} requests with 5xx in the last {}s",
                        svc.service,
                        ERROR_WINDOW.as_secs()
                    ),
                ));
            }
        }
        found
    }

    /// The release that went live shortly before, if any.
    async fn suspect(&self, service: &str, env: Option<&str>, active: &str) -> Option<String> {
        let store = &self.ops.engine.store;
        let updated_at = match env {
            None => {
                let number: i64 = active.trim_start_matches('r').parse().ok()?;
                store.release(service, number).await.ok()?.updated_at
            }
            Some(env) => {
                store
                    .deployments(service)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|d| d.env == env)?
                    .updated_at
            }
        };
        let at: jiff::Timestamp = updated_at.parse().ok()?;
        let age = jiff::Timestamp::now().duration_since(at);
        (age.as_secs() >= 0 && (age.as_secs() as u64) < SUSPECT_WITHIN.as_secs())
            .then(|| active.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_ratio_needs_twenty_requests_and_five_percent_of_them_5xx() {
        assert!(!error_ratio_breached(19, 19), "too few to judge");
        assert!(error_ratio_breached(20, 1), "5% of 20");
        assert!(!error_ratio_breached(20, 0));
        assert!(!error_ratio_breached(100, 4), "4%");
        assert!(error_ratio_breached(100, 5), "5%");
        assert!(!error_ratio_breached(0, 0));
    }
}
