//! The instance supervisor: groups of identical instances per release, each
//! instance a task that spawns its process, probes it, restarts it with
//! exponential backoff when it exits, and stops it (SIGTERM, `stop_timeout`,
//! SIGKILL to the process group) when asked. Every readiness change
//! republishes the proxy's route table from this state.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tandem_core::protocol::{
    AgentStatus, GroupSpec, HANDOVER_REFUSAL, InstanceState, InstanceStatus, LogCursor, LogLine,
    RequestCounts, Response, RouteSpec, ServiceStatus,
};
use tandem_proxy::metrics::Snapshot;
use tandem_proxy::{Proxy, RequestMetrics, Route, RouteTable, Target};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::handover::{Offer, Offered};
use crate::logs::{Capture, InstanceLog, read_lines};
use crate::probe::Prober;
use crate::{listening, procfs};

/// First restart delay; doubles per quick crash.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Restart delay cap.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Quick crashes in a row after which an instance counts as crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 5;
/// An instance that ran this long before exiting restarts without delay growth.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// Probe period until an instance is first ready, so deploys switch fast.
pub const STARTUP_PROBE_PERIOD: Duration = Duration::from_millis(20);
/// How often an instance's temp and state directories are measured.
pub const DISK_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a stop for disk use shows in the status (for the monitor to
/// open its incident).
pub const OVER_DISK_SHOWN: Duration = Duration::from_secs(600);

/// The supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Whether this agent is handing its instances over to a new one. A
    /// spawn holds a read borrow, so none is half done when an offer is
    /// made.
    phase: watch::Sender<Phase>,
    /// Pinged whenever an instance changes state.
    changed: Notify,
    proxy: Proxy,
    prober: Prober,
    data_dir: PathBuf,
    /// The data directory as instances are marked with it
    /// (`procfs::AGENT_DIR_VAR`): canonical, so that any agent of the same
    /// directory recognises them.
    marked_dir: PathBuf,
    /// Instances found running by their marks, without a state file to say
    /// which group they belong to: the next `StartGroup` naming their id
    /// takes them over; those still unclaimed after `UNCLAIMED_GRACE` are
    /// stopped.
    unclaimed: Mutex<BTreeMap<String, Adopted>>,
    /// One save at a time, each from a snapshot taken under it: saves that
    /// raced wrote the one temporary file together (and failed), and an
    /// older snapshot could be renamed over a newer one.
    saving: Mutex<()>,
    /// What confines instances: their users, limits and fence.
    sandbox: tandem_sandbox::Sandbox,
    /// Seals the instances' secret values in the state file (the data
    /// directory's key); `None` if the key could not be had, and then
    /// they are not saved at all.
    sealer: Option<tandem_seal::Sealer>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
}

#[derive(Default)]
struct Service {
    route: Option<RouteSpec>,
    active: Option<String>,
    groups: BTreeMap<String, Group>,
    cursor: Arc<AtomicUsize>,
    metrics: Arc<RequestMetrics>,
    /// `Retry-After` seconds while in maintenance mode.
    maintenance: Option<u32>,
}

struct Group {
    spec: GroupSpec,
    instances: Vec<Arc<Instance>>,
}

struct Instance {
    id: String,
    log: InstanceLog,
    /// Copying the running process's stdout and stderr into `log`.
    captures: Mutex<Vec<Capture>>,
    live: Mutex<Live>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// This agent's part in an upgrade of the agent in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// A new agent has been offered the instances: none is started or
    /// restarted, no request changes anything, until it says whether it
    /// took them.
    Offering,
    /// The new agent supervises the instances now; this one only finishes
    /// its client connections.
    HandedOver,
}

/// An instance a previous agent started, as it hands it over.
pub struct Adopted {
    pub pid: u32,
    pub port: u16,
    pub ready_at_ms: Option<u64>,
    pub restarts: u32,
    /// Its request counters so far.
    pub counts: Snapshot,
}

struct Live {
    pid: Option<u32>,
    port: u16,
    state: InstanceState,
    /// When the readiness probe last turned healthy; `None` while not ready.
    ready_at_ms: Option<u64>,
    restarts: u32,
    target: Option<Arc<Target>>,
    last_exit: Option<String>,
    last_probe_error: Option<String>,
    /// Consecutive exits that came soon after a start (the backoff exponent).
    quick_crashes: u32,
    /// When and why it was last stopped for its disk use.
    over_disk: Option<(Instant, String)>,
}

/// What the agent writes to its state file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedState {
    pub services: BTreeMap<String, SavedService>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedService {
    pub route: Option<RouteSpec>,
    pub active: Option<String>,
    pub groups: Vec<GroupSpec>,
    /// Running instances, for an agent started after this one died to take
    /// over.
    #[serde(default)]
    pub instances: Vec<SavedInstance>,
    /// Process groups that were running (state files written before
    /// `instances`): killed by the next agent.
    #[serde(default, skip_serializing)]
    pub pgids: Vec<u32>,
    #[serde(default)]
    pub maintenance: Option<u32>,
}

/// A running instance in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedInstance {
    pub id: String,
    pub pid: u32,
    pub port: u16,
    pub restarts: u32,
    /// When the process started (clock ticks after boot, from
    /// `/proc/<pid>/stat`): a pid reused by another process does not match.
    pub started: u64,
}

/// Why an agent that handed over answers nothing any more.
pub(crate) fn handed_over() -> String {
    format!("{HANDOVER_REFUSAL}: handed over to a new agent; ask again")
}

/// Request counters of every route (by service) and every instance (by
/// id): what an agent that handed over counted after its offer goes to the
/// new agent in this form, so that no request goes uncounted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub routes: BTreeMap<String, Snapshot>,
    pub instances: BTreeMap<String, Snapshot>,
}

/// Counters as they cross to another agent.
pub type WireCounts = BTreeMap<String, RequestCounts>;

impl Counters {
    /// The counters an offer carries.
    pub fn offered(offer: &Offer) -> Counters {
        Counters::from_wire(
            &offer.route_counts,
            &offer
                .instances
                .iter()
                .map(|o| (o.id.clone(), o.counts.clone()))
                .collect(),
        )
    }

    /// What was counted after `earlier`; a route or instance it did not
    /// have counts whole.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let since = |now: &BTreeMap<String, Snapshot>, then: &BTreeMap<String, Snapshot>| {
            now.iter()
                .map(|(key, snap)| {
                    let before = then.get(key).cloned().unwrap_or_default();
                    (key.clone(), snap.since(&before))
                })
                .filter(|(_, snap)| snap.total() > 0)
                .collect()
        };
        Counters {
            routes: since(&self.routes, &earlier.routes),
            instances: since(&self.instances, &earlier.instances),
        }
    }

    pub fn to_wire(&self) -> (WireCounts, WireCounts) {
        let wire = |m: &BTreeMap<String, Snapshot>| {
            m.iter()
                .map(|(key, snap)| (key.clone(), request_counts(snap)))
                .collect()
        };
        (wire(&self.routes), wire(&self.instances))
    }

    pub fn from_wire(routes: &WireCounts, instances: &WireCounts) -> Counters {
        let back = |m: &WireCounts| {
            m.iter()
                .map(|(key, counts)| (key.clone(), snapshot(counts)))
                .collect()
        };
        Counters {
            routes: back(routes),
            instances: back(instances),
        }
    }
}

/// Request counters as the protocol carries them.
fn request_counts(snap: &Snapshot) -> RequestCounts {
    RequestCounts {
        classes: snap.classes,
        buckets: snap.buckets.to_vec(),
        bounds_us: tandem_proxy::metrics::BUCKETS_US.to_vec(),
        sum_us: snap.sum_us,
    }
}

/// The counters `request_counts` made, back.
fn snapshot(counts: &RequestCounts) -> Snapshot {
    let mut snap = Snapshot {
        classes: counts.classes,
        sum_us: counts.sum_us,
        ..Snapshot::default()
    };
    for (slot, n) in snap.buckets.iter_mut().zip(&counts.buckets) {
        *slot = *n;
    }
    snap
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Instance {
    fn live(&self) -> MutexGuard<'_, Live> {
        lock(&self.live)
    }
}

impl Supervisor {
    pub fn new(proxy: Proxy, data_dir: PathBuf) -> Self {
        Supervisor {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                phase: watch::Sender::new(Phase::Serving),
                changed: Notify::new(),
                proxy,
                prober: Prober::default(),
                marked_dir: std::fs::canonicalize(&data_dir).unwrap_or_else(|_| data_dir.clone()),
                unclaimed: Mutex::new(BTreeMap::new()),
                saving: Mutex::new(()),
                sandbox: {
                    let sandbox = tandem_sandbox::Sandbox::detect(&data_dir, "");
                    for p in sandbox.protections() {
                        if p.on {
                            tracing::info!(protection = p.name, "{}", p.detail);
                        } else {
                            tracing::warn!(protection = p.name, "off: {}", p.detail);
                        }
                    }
                    sandbox
                },
                sealer: tandem_seal::Sealer::load_or_create(&data_dir)
                    .inspect_err(|e| {
                        tracing::error!(error = %e, "no key to seal secrets with: they are left out of the state file");
                    })
                    .ok(),
                data_dir,
            }),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.shared.data_dir.join("agent-state.json")
    }

    /// Restores services from the state file of an earlier agent that died:
    /// takes over its instances that still run (watching them through
    /// pidfds, reading their output FIFOs again), starts the rest of its
    /// groups again and restores the routes.
    ///
    /// Instances are also found by the marks in their environment
    /// (`procfs::marked_instances`), so none runs unseen: one the state
    /// file names without a pid (the agent died between the spawn and the
    /// save) is taken over by its id, one that belongs to no saved group is
    /// stopped, and a second process for one id is stopped. Without a
    /// readable state file, every instance found waits, unclaimed, for the
    /// control plane to start its group again (`restore_missing`), which
    /// takes it over instead of starting another.
    pub fn restore(&self) {
        let found = procfs::marked_instances(&self.shared.marked_dir);
        let saved = self.read_saved();
        let mut adopted = BTreeMap::new();
        if let Some(saved) = &saved {
            for svc in saved.services.values() {
                for pgid in &svc.pgids {
                    let _ = killpg(Pid::from_raw(*pgid as i32), Signal::SIGKILL);
                }
                for i in &svc.instances {
                    if started_at(i.pid) != Some(i.started) {
                        continue; // gone, or its pid is someone else's now
                    }
                    adopted.insert(
                        i.id.clone(),
                        Adopted {
                            pid: i.pid,
                            port: i.port,
                            ready_at_ms: None,
                            restarts: i.restarts,
                            counts: Snapshot::default(),
                        },
                    );
                }
            }
        }
        for f in found {
            match adopted.get(&f.id) {
                Some(a) if a.pid == f.pid => {}
                Some(a) => {
                    tracing::warn!(instance = %f.id, pid = f.pid, kept = a.pid, "a second process for one instance; stopping it");
                    let _ = killpg(Pid::from_raw(f.pid as i32), Signal::SIGKILL);
                }
                None => {
                    tracing::info!(instance = %f.id, pid = f.pid, "instance found by its marks");
                    adopted.insert(
                        f.id,
                        Adopted {
                            pid: f.pid,
                            port: f.port,
                            ready_at_ms: None,
                            restarts: 0,
                            counts: Snapshot::default(),
                        },
                    );
                }
            }
        }
        match saved {
            Some(saved) => self.take_services(saved.services, adopted, &BTreeMap::new()),
            None if adopted.is_empty() => {}
            None => {
                tracing::warn!(
                    instances = adopted.len(),
                    "instances running without a state file; they wait for their groups"
                );
                *lock(&self.shared.unclaimed) = adopted;
                let sup = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(unclaimed_grace()).await;
                    let left = std::mem::take(&mut *lock(&sup.shared.unclaimed));
                    for (id, a) in left {
                        tracing::warn!(instance = %id, pid = a.pid, "no group claimed it; stopping it");
                        let _ = killpg(Pid::from_raw(a.pid as i32), Signal::SIGTERM);
                    }
                });
            }
        }
    }

    /// Runs `services` as an earlier agent left them: their groups, with
    /// the processes in `adopted` taken over, their routes, and request
    /// counters going on from `counts`.
    fn take_services(
        &self,
        services: BTreeMap<String, SavedService>,
        mut adopted: BTreeMap<String, Adopted>,
        counts: &BTreeMap<String, RequestCounts>,
    ) {
        for (name, svc) in services {
            for group in svc.groups {
                self.start_group_adopting(group, &mut adopted);
            }
            let mut state = lock(&self.shared.state);
            if let Some(s) = state.services.get_mut(&name) {
                s.route = svc.route;
                s.active = svc.active;
                s.maintenance = svc.maintenance;
                if let Some(counts) = counts.get(&name) {
                    s.metrics.add(&snapshot(counts));
                }
            }
            self.publish(&state);
            tracing::info!(service = %name, "restored");
        }
        for (id, a) in adopted {
            tracing::warn!(instance = %id, pid = a.pid, "running without its group; stopping it");
            let _ = killpg(Pid::from_raw(a.pid as i32), Signal::SIGTERM);
        }
        self.save();
    }

    /// Where an instance's output FIFOs live.
    fn output_path(&self, id: &str, stream: &str) -> PathBuf {
        self.shared
            .data_dir
            .join("run")
            .join(format!("{id}.{stream}"))
    }

    /// What the state file holds.
    fn saved(&self) -> SavedState {
        let state = lock(&self.shared.state);
        SavedState {
            services: state
                .services
                .iter()
                .map(|(name, s)| {
                    let saved = SavedService {
                        route: s.route.clone(),
                        active: s.active.clone(),
                        groups: s
                            .groups
                            .values()
                            .map(|g| seal_secrets(self.shared.sealer.as_ref(), &g.spec))
                            .collect(),
                        instances: s
                            .groups
                            .values()
                            .flat_map(|g| &g.instances)
                            .filter_map(|i| {
                                let live = i.live();
                                let pid = live.pid?;
                                Some(SavedInstance {
                                    id: i.id.clone(),
                                    pid,
                                    port: live.port,
                                    restarts: live.restarts,
                                    started: started_at(pid)?,
                                })
                            })
                            .collect(),
                        pgids: Vec::new(),
                        maintenance: s.maintenance,
                    };
                    (name.clone(), saved)
                })
                .collect(),
        }
    }

    fn save(&self) {
        if let Err(e) = self.try_save() {
            let path = self.state_path();
            tracing::error!(error = %e, path = %path.display(), "could not write agent state");
        }
    }

    fn try_save(&self) -> std::io::Result<()> {
        if self.phase() == Phase::HandedOver {
            // The state file is the new agent's now.
            return Ok(());
        }
        let _one_at_a_time = lock(&self.shared.saving);
        let saved = serde_json::to_vec_pretty(&self.saved()).map_err(std::io::Error::other)?;
        // Instances' environments hold secrets: owner-only, like the store.
        crate::files::write_private(&self.state_path(), &saved)?;
        // A second copy, for a state file damaged from outside (routes come
        // back at once from it; instances are found by their marks anyway).
        crate::files::write_private(&self.backup_state_path(), &saved)
    }

    fn backup_state_path(&self) -> PathBuf {
        self.shared.data_dir.join("agent-state.json.bak")
    }

    /// The saved state: the state file, or its copy when the file is
    /// damaged (not when it is missing: `None` then).
    fn read_saved(&self) -> Option<SavedState> {
        let read = |path: &Path| -> Result<SavedState, String> {
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        let path = self.state_path();
        if !path.exists() {
            return None;
        }
        let opened = |mut saved: SavedState| {
            for s in saved.services.values_mut() {
                for g in &mut s.groups {
                    open_secrets(self.shared.sealer.as_ref(), g);
                }
            }
            saved
        };
        match read(&path) {
            Ok(saved) => Some(opened(saved)),
            Err(e) => match read(&self.backup_state_path()) {
                Ok(saved) => {
                    tracing::error!(error = %e, "agent state file damaged; restoring from its copy");
                    Some(opened(saved))
                }
                Err(e2) => {
                    tracing::error!(error = %e, copy = %e2, "agent state file and its copy damaged; finding instances by their marks");
                    None
                }
            },
        }
    }

    /// Builds the route table from the state and publishes it. Called with the
    /// state lock held, so publishes happen in state order.
    fn publish(&self, state: &State) {
        let routes = state.services.iter().filter_map(|(name, s)| {
            let route = s.route.as_ref()?;
            let active = s.groups.get(s.active.as_ref()?)?;
            let targets = active
                .instances
                .iter()
                .filter_map(|i| {
                    let live = i.live();
                    (live.ready_at_ms.is_some() && live.state == InstanceState::Running)
                        .then(|| live.target.clone())
                        .flatten()
                })
                .collect();
            Some(Route {
                service: name.as_str().into(),
                host: route.host.clone(),
                path_prefix: route.path_prefix.clone(),
                targets,
                cursor: Arc::clone(&s.cursor),
                metrics: Arc::clone(&s.metrics),
                maintenance: s.maintenance,
                timeout: Some(Duration::from_millis(route.timeout_ms.max(1))),
                https_only: route.https_only,
            })
        });
        self.shared.proxy.publish(RouteTable::new(routes));
    }

    fn republish(&self) {
        let state = lock(&self.shared.state);
        self.publish(&state);
    }

    /// Starts a group unless one for the same release exists; instances
    /// found running unclaimed (see [`Supervisor::restore`]) are taken over.
    pub fn start_group(&self, spec: GroupSpec) -> Vec<String> {
        let mut unclaimed = std::mem::take(&mut *lock(&self.shared.unclaimed));
        let ids = self.start_group_adopting(spec, &mut unclaimed);
        lock(&self.shared.unclaimed).extend(unclaimed);
        ids
    }

    /// Starts a group; an instance whose id is in `adopted` takes over
    /// that running process instead of starting one.
    fn start_group_adopting(
        &self,
        spec: GroupSpec,
        adopted: &mut BTreeMap<String, Adopted>,
    ) -> Vec<String> {
        let mut state = lock(&self.shared.state);
        let svc = state.services.entry(spec.service.clone()).or_default();
        if let Some(g) = svc.groups.get(&spec.release) {
            return g.instances.iter().map(|i| i.id.clone()).collect();
        }
        let mut instances = Vec::new();
        for slot in 0..spec.instances {
            let id = format!("{}-{}-{}", spec.service, spec.release, slot + 1);
            let log_path = self
                .shared
                .data_dir
                .join("logs")
                .join(&spec.service)
                .join(format!("{id}.log"));
            let secrets = spec
                .secrets
                .iter()
                .filter_map(|k| spec.env.get(k).cloned())
                .collect();
            let log = match InstanceLog::open(log_path.clone(), secrets) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, path = %log_path.display(), "cannot open instance log");
                    continue;
                }
            };
            let (stop, _) = watch::channel(false);
            let adopt = adopted.remove(&id);
            let inst = Arc::new(Instance {
                id,
                log,
                captures: Mutex::new(Vec::new()),
                live: Mutex::new(Live {
                    pid: None,
                    port: 0,
                    state: InstanceState::Starting,
                    ready_at_ms: None,
                    restarts: 0,
                    target: None,
                    last_exit: None,
                    last_probe_error: None,
                    quick_crashes: 0,
                    over_disk: None,
                }),
                stop,
                task: Mutex::new(None),
            });
            let handle = tokio::spawn(run_instance(
                self.clone(),
                Arc::clone(&inst),
                spec.clone(),
                adopt,
            ));
            *lock(&inst.task) = Some(handle);
            instances.push(inst);
        }
        let ids = instances.iter().map(|i| i.id.clone()).collect();
        tracing::info!(service = %spec.service, release = %spec.release, instances = spec.instances, "group started");
        svc.groups
            .insert(spec.release.clone(), Group { spec, instances });
        drop(state);
        self.save();
        ids
    }

    /// Waits until every instance of the group is ready; fails early when an
    /// instance exits before that.
    pub async fn wait_ready(&self, service: &str, release: &str, timeout: Duration) -> Response {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let instances = {
                let state = lock(&self.shared.state);
                let Some(group) = state
                    .services
                    .get(service)
                    .and_then(|s| s.groups.get(release))
                else {
                    return Response::Error {
                        message: format!("{service} has no release {release} running"),
                    };
                };
                group.instances.clone()
            };
            let ready_at: Option<Vec<u64>> =
                instances.iter().map(|i| i.live().ready_at_ms).collect();
            if let Some(ready_at_ms) = ready_at.and_then(|at| at.into_iter().max()) {
                return Response::Ready { ready_at_ms };
            }
            if let Some(crashed) = instances
                .iter()
                .find(|i| i.live().restarts > 0 || i.live().state == InstanceState::Backoff)
            {
                let exit = crashed
                    .live()
                    .last_exit
                    .clone()
                    .unwrap_or_else(|| "exited".into());
                return Response::NotReady {
                    reason: format!("instance {} exited while starting ({exit})", crashed.id),
                    log_tail: crashed.log.tail(10),
                };
            }
            if self.phase() == Phase::HandedOver {
                // The new agent has these instances; it answers the retry.
                return Response::Error {
                    message: handed_over(),
                };
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let waiting = instances.iter().find(|i| i.live().ready_at_ms.is_none());
                let (id, mut why, tail, at) = match waiting {
                    Some(i) => {
                        let live = i.live();
                        (
                            i.id.clone(),
                            live.last_probe_error
                                .clone()
                                .unwrap_or_else(|| "no probe answered".into()),
                            i.log.tail(10),
                            live.pid.map(|pid| (pid, live.port)),
                        )
                    }
                    None => (String::new(), String::new(), Vec::new(), None),
                };
                // Up, but not where tandem looks for it: say where it is.
                if let Some((pid, port)) = at {
                    let found =
                        tokio::task::spawn_blocking(move || listening::listening(pid)).await;
                    if let Some(hint) = found.ok().and_then(|f| listening::misplaced(port, &f)) {
                        why = format!("{why}; {hint}");
                    }
                }
                return Response::NotReady {
                    reason: format!(
                        "instance {id} not ready within {}s: {why}",
                        timeout.as_secs_f64()
                    ),
                    log_tail: tail,
                };
            }
        }
    }

    /// Points the service's route at the group, atomically.
    pub fn activate(&self, service: &str, release: &str, route: RouteSpec) -> Response {
        let mut state = lock(&self.shared.state);
        let Some(svc) = state.services.get_mut(service) else {
            return Response::Error {
                message: format!("{service} runs nothing"),
            };
        };
        let Some(group) = svc.groups.get(release) else {
            return Response::Error {
                message: format!("{service} has no release {release} running"),
            };
        };
        if !group
            .instances
            .iter()
            .any(|i| i.live().ready_at_ms.is_some())
        {
            return Response::Error {
                message: format!(
                    "{service} release {release} has no ready instance; traffic left as it was"
                ),
            };
        }
        let previous = svc
            .active
            .replace(release.to_owned())
            .filter(|p| p != release);
        svc.route = Some(route);
        self.publish(&state);
        let switched_at_ms = now_ms();
        drop(state);
        self.save();
        tracing::info!(service, release, previous = ?previous, "activated");
        Response::Activated {
            switched_at_ms,
            previous,
        }
    }

    /// Drains the group's instances, then stops them, and forgets the group.
    pub async fn stop_group(
        &self,
        service: &str,
        release: &str,
        drain_timeout: Duration,
    ) -> Response {
        let group = {
            let mut state = lock(&self.shared.state);
            let group = state.services.get_mut(service).and_then(|svc| {
                let group = svc.groups.remove(release)?;
                if svc.active.as_deref() == Some(release) {
                    svc.active = None;
                }
                Some(group)
            });
            if state
                .services
                .get(service)
                .is_some_and(|s| s.groups.is_empty() && s.active.is_none())
            {
                state.services.remove(service);
            }
            self.publish(&state);
            group
        };
        let Some(group) = group else {
            return Response::Stopped {
                instances: 0,
                drained_in_ms: 0,
                drain_timed_out: false,
            };
        };
        self.save();
        let started = Instant::now();
        let drains = group.instances.iter().map(|i| {
            let target = {
                let mut live = i.live();
                if live.state == InstanceState::Running {
                    live.state = InstanceState::Draining;
                }
                live.target.clone()
            };
            async move {
                match target {
                    Some(t) => t.drain(drain_timeout).await,
                    None => true,
                }
            }
        });
        let drained = futures_util::future::join_all(drains).await;
        let drained_in_ms = started.elapsed().as_millis() as u64;
        for i in &group.instances {
            let _ = i.stop.send(true);
        }
        for i in &group.instances {
            let handle = lock(&i.task).take();
            if let Some(h) = handle {
                let _ = h.await;
            }
        }
        self.shared.changed.notify_waiters();
        tracing::info!(service, release, drained_in_ms, "group stopped");
        Response::Stopped {
            instances: group.instances.len(),
            drained_in_ms,
            drain_timed_out: drained.iter().any(|d| !d),
        }
    }

    /// Stops every group of every service (drain bounded by `drain_timeout`).
    pub async fn stop_all(&self, drain_timeout: Duration) {
        let groups: Vec<(String, String)> = {
            let state = lock(&self.shared.state);
            state
                .services
                .iter()
                .flat_map(|(s, svc)| svc.groups.keys().map(move |r| (s.clone(), r.clone())))
                .collect()
        };
        for (service, release) in groups {
            self.stop_group(&service, &release, drain_timeout).await;
        }
        // Nothing runs any more: the instances' control groups go too.
        self.shared.sandbox.cgroups().remove_all();
    }

    pub fn status(&self, proxy_addr: &str) -> AgentStatus {
        let state = lock(&self.shared.state);
        AgentStatus {
            pid: std::process::id(),
            proxy_addr: proxy_addr.to_owned(),
            services: state
                .services
                .iter()
                .map(|(name, s)| ServiceStatus {
                    service: name.clone(),
                    route: s.route.clone(),
                    active: s.active.clone(),
                    maintenance: s.maintenance,
                    requests: request_counts(&s.metrics.snapshot()),
                    instances: s
                        .groups
                        .values()
                        .flat_map(|g| g.instances.iter().map(move |i| (g, i)))
                        .map(|(g, i)| {
                            let live = i.live();
                            InstanceStatus {
                                id: i.id.clone(),
                                release: g.spec.release.clone(),
                                pid: live.pid,
                                port: live.port,
                                state: live.state,
                                ready: live.ready_at_ms.is_some(),
                                restarts: live.restarts,
                                in_flight: live.target.as_ref().map(|t| t.in_flight()).unwrap_or(0),
                                // Until it has been ready for as long as resets the backoff.
                                crash_looping: live.quick_crashes >= CRASH_LOOP_AFTER
                                    && !live.ready_at_ms.is_some_and(|at| {
                                        now_ms().saturating_sub(at)
                                            >= BACKOFF_RESET_AFTER.as_millis() as u64
                                    }),
                                last_exit: live.last_exit.clone(),
                                last_probe_error: live.last_probe_error.clone(),
                                over_disk: live
                                    .over_disk
                                    .as_ref()
                                    .filter(|(at, _)| at.elapsed() < OVER_DISK_SHOWN)
                                    .map(|(_, why)| why.clone()),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Turns maintenance mode of a service's route on or off.
    pub fn maintenance(&self, service: &str, on: bool, retry_after_s: u32) -> Response {
        {
            let mut state = lock(&self.shared.state);
            let Some(svc) = state.services.get_mut(service) else {
                return Response::Error {
                    message: format!("the agent runs no service {service}"),
                };
            };
            svc.maintenance = on.then_some(retry_after_s);
            self.publish(&state);
        }
        self.save();
        Response::Ok
    }

    /// The last `lines` of each instance log of `service` (or of one
    /// release), or for an instance in `after`, what was written since.
    pub fn logs(
        &self,
        service: &str,
        release: Option<&str>,
        lines: usize,
        after: &BTreeMap<String, LogCursor>,
    ) -> Vec<LogLine> {
        let paths: Vec<(String, PathBuf)> = {
            let state = lock(&self.shared.state);
            state
                .services
                .get(service)
                .map(|s| {
                    s.groups
                        .iter()
                        .filter(|(r, _)| release.is_none_or(|want| want == r.as_str()))
                        .flat_map(|(_, g)| g.instances.iter().map(|i| (i.id.clone(), i.log.path())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let paths = if paths.is_empty() {
            self.logs_on_disk(service)
        } else {
            paths
        };
        paths
            .into_iter()
            .flat_map(|(id, path)| {
                read_lines(&path, lines, after.get(&id).copied())
                    .into_iter()
                    .map(move |(line, next)| LogLine {
                        instance: id.clone(),
                        line,
                        next: Some(next),
                    })
            })
            .collect()
    }

    /// Log files of a service that runs nothing now (its last instances).
    fn logs_on_disk(&self, service: &str) -> Vec<(String, PathBuf)> {
        let dir = self.shared.data_dir.join("logs").join(service);
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| {
                (
                    p.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    p,
                )
            })
            .collect();
        files.sort();
        files
    }

    /// The proxy whose routes this supervisor publishes.
    pub fn proxy(&self) -> &Proxy {
        &self.shared.proxy
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let (open, max) = self.shared.proxy.connections();
        tandem_proxy::metrics::render_gauge(
            &mut out,
            "tandem_proxy_connections",
            "Client connections open now.",
            open,
        );
        tandem_proxy::metrics::render_gauge(
            &mut out,
            "tandem_proxy_connections_max",
            "Client connections served at once; more wait in the listen backlog.",
            max,
        );
        let refused = self.shared.proxy.refused();
        tandem_proxy::metrics::render_counter(
            &mut out,
            "tandem_proxy_refused_total",
            "What the proxy turned away before any service's route, by reason.",
            &[
                (vec![("reason", "unknown_host")], refused.unrouted),
                (vec![("reason", "client_connection_limit")], refused.crowded),
                (vec![("reason", "request_head_timeout")], refused.slow_heads),
                (vec![("reason", "tls_handshake")], refused.handshakes),
                (
                    vec![("reason", "idle_at_connection_limit")],
                    refused.reclaimed,
                ),
            ],
        );
        let state = lock(&self.shared.state);
        let routes: Vec<_> = state
            .services
            .iter()
            .map(|(name, s)| (vec![("service", name.as_str())], s.metrics.snapshot()))
            .collect();
        tandem_proxy::metrics::render_families(&mut out, "tandem_route", "service route", &routes);
        let mut targets = Vec::new();
        for (name, s) in &state.services {
            for g in s.groups.values() {
                for i in &g.instances {
                    if let Some(t) = i.live().target.clone() {
                        let labels = vec![
                            ("service", name.as_str()),
                            ("release", g.spec.release.as_str()),
                            ("instance", i.id.as_str()),
                        ];
                        targets.push((labels, t.metrics.snapshot()));
                    }
                }
            }
        }
        tandem_proxy::metrics::render_families(&mut out, "tandem_target", "instance", &targets);
        out
    }

    pub fn phase(&self) -> Phase {
        *self.shared.phase.borrow()
    }

    /// The phase, as it changes.
    pub fn phases(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    /// Stops starting instances and reading their output, and describes
    /// them for a new agent: services, routes, counters, and each running
    /// instance's pid, port and readiness (the new agent opens its output
    /// FIFOs by path). The caller keeps requests that change anything out
    /// while this runs. Refused while another offer is open.
    pub async fn begin_handover(&self) -> Result<Offer, String> {
        let mut was = Phase::Serving;
        self.shared.phase.send_if_modified(|p| {
            was = *p;
            let serving = *p == Phase::Serving;
            if serving {
                *p = Phase::Offering;
            }
            serving
        });
        if was != Phase::Serving {
            return Err("this agent is handing over already".into());
        }
        // The counters as offered: the new agent goes on from them, this
        // one sends what it counts later (`Counters::since`).
        let (route_counts, mut instance_counts) = self.counters().to_wire();
        let mut offered = Vec::new();
        for (service, release, inst) in self.instances() {
            let captures = std::mem::take(&mut *lock(&inst.captures));
            for c in captures {
                c.detach().await;
            }
            let l = inst.live();
            let Some(pid) = l.pid else { continue };
            offered.push(Offered {
                service,
                release,
                id: inst.id.clone(),
                pid,
                port: l.port,
                ready_at_ms: l.ready_at_ms,
                restarts: l.restarts,
                counts: instance_counts
                    .remove(&inst.id)
                    .unwrap_or_else(|| request_counts(&Snapshot::default())),
            });
        }
        let services = self.saved().services;
        Ok(Offer {
            services,
            route_counts,
            instances: offered,
        })
    }

    /// Every route's and every instance's request counters now.
    pub fn counters(&self) -> Counters {
        let routes = lock(&self.shared.state)
            .services
            .iter()
            .map(|(name, s)| (name.clone(), s.metrics.snapshot()))
            .collect();
        let instances = self
            .instances()
            .into_iter()
            .filter_map(|(_, _, inst)| {
                let snap = inst.live().target.as_ref()?.metrics.snapshot();
                Some((inst.id.clone(), snap))
            })
            .collect();
        Counters { routes, instances }
    }

    /// Adds requests another agent counted (the one this agent took over
    /// from, for what it served after its offer). An instance that is
    /// gone by now has only its route's share kept.
    pub fn add_counters(&self, more: &Counters) {
        {
            let state = lock(&self.shared.state);
            for (name, snap) in &more.routes {
                if let Some(s) = state.services.get(name) {
                    s.metrics.add(snap);
                }
            }
        }
        for (_, _, inst) in self.instances() {
            let Some(snap) = more.instances.get(&inst.id) else {
                continue;
            };
            if let Some(target) = inst.live().target.as_ref() {
                target.metrics.add(snap);
            }
        }
    }

    /// Ends an offer: when the new agent took the instances, lets go of
    /// them (their tasks end, the processes run on, unwatched by us);
    /// otherwise reads their output again and goes on as before.
    pub fn end_handover(&self, taken: bool) {
        for (_, _, inst) in self.instances() {
            if taken {
                if let Some(task) = lock(&inst.task).take() {
                    task.abort();
                }
            } else if inst.live().pid.is_some() {
                *lock(&inst.captures) = self.capture_output(&inst);
            }
        }
        self.shared.phase.send_replace(if taken {
            Phase::HandedOver
        } else {
            Phase::Serving
        });
        // A `WaitReady` waiting here answers that it should ask the new agent.
        self.shared.changed.notify_waiters();
    }

    /// Every instance, with its service and release.
    fn instances(&self) -> Vec<(String, String, Arc<Instance>)> {
        let state = lock(&self.shared.state);
        state
            .services
            .iter()
            .flat_map(|(name, s)| {
                s.groups.values().flat_map(move |g| {
                    g.instances
                        .iter()
                        .map(move |i| (name.clone(), g.spec.release.clone(), Arc::clone(i)))
                })
            })
            .collect()
    }

    /// Copies a running instance's output FIFOs into its log again.
    fn capture_output(&self, inst: &Instance) -> Vec<Capture> {
        OUTPUTS
            .iter()
            .filter_map(|stream| {
                let path = self.output_path(&inst.id, stream);
                let read = open_fifo_reader(&path).and_then(|fd| inst.log.capture(fd));
                read.inspect_err(|e| tracing::warn!(instance = %inst.id, path = %path.display(), error = %e, "cannot read the instance's output"))
                    .ok()
            })
            .collect()
    }

    /// Takes over what an earlier agent handed over: its services and
    /// routes, and its running instances.
    pub fn adopt(&self, offer: Offer) {
        let adopted = offer
            .instances
            .into_iter()
            .map(|o| {
                let a = Adopted {
                    pid: o.pid,
                    port: o.port,
                    ready_at_ms: o.ready_at_ms,
                    restarts: o.restarts,
                    counts: snapshot(&o.counts),
                };
                (o.id, a)
            })
            .collect();
        self.take_services(offer.services, adopted, &offer.route_counts);
    }

    fn set_live(&self, inst: &Instance, f: impl FnOnce(&mut Live)) {
        f(&mut inst.live());
        self.republish();
        self.shared.changed.notify_waiters();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// One instance's life: spawn (or adopt), probe, restart on exit, stop on
/// request.
async fn run_instance(
    sup: Supervisor,
    inst: Arc<Instance>,
    spec: GroupSpec,
    mut adopted: Option<Adopted>,
) {
    let mut stop_rx = inst.stop.subscribe();
    let mut quick_crashes: u32 = 0;
    loop {
        if *stop_rx.borrow() {
            break;
        }
        let got = match adopted.take() {
            Some(a) => adopt(&sup, &inst, a),
            None => {
                let mut phase = sup.shared.phase.subscribe();
                if *phase.borrow_and_update() != Phase::Serving {
                    // Whoever takes the instances over starts this one.
                    tokio::select! {
                        _ = phase.wait_for(|p| *p == Phase::Serving) => continue,
                        _ = stop_rx.changed() => break,
                    }
                }
                // Under the borrow: an offer sees pid and captures together.
                let outputs = OUTPUTS.map(|stream| sup.output_path(&inst.id, stream));
                let spawned = {
                    let guard = phase.borrow();
                    (*guard == Phase::Serving).then(|| {
                        let (port, child, pipes) = free_port().and_then(|port| {
                            let marks = [
                                (procfs::INSTANCE_VAR, inst.id.as_str().as_ref()),
                                (procfs::AGENT_DIR_VAR, sup.shared.marked_dir.as_os_str()),
                            ];
                            spawn(&spec, port, &inst.log, &outputs, marks, &sup.shared)
                                .map(|(c, p)| (port, c, p))
                        })?;
                        *lock(&inst.captures) = pipes;
                        inst.live().pid = child.id();
                        Ok::<_, std::io::Error>((port, child))
                    })
                };
                match spawned {
                    None => continue,
                    Some(Ok((port, child))) => Some((port, Proc::Child(child), None, None)),
                    Some(Err(e)) => {
                        inst.log.write_line(&format!(
                            "[tandem] could not start `{}`: {e}",
                            spec.command
                        ));
                        sup.set_live(&inst, |l| {
                            l.state = InstanceState::Backoff;
                            l.restarts += 1;
                            l.last_exit = Some(format!("could not start: {e}"));
                        });
                        if backoff(&mut stop_rx, &mut quick_crashes).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let Some((port, mut proc, ready_at_ms, counts)) = got else {
            continue;
        };
        let pid = proc.pid();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let target = Target::new(inst.id.clone(), addr);
        if let Some(counts) = counts {
            target.metrics.add(&counts);
        }
        sup.set_live(&inst, |l| {
            l.pid = Some(pid);
            l.port = port;
            l.state = InstanceState::Running;
            l.ready_at_ms = ready_at_ms;
            l.target = Some(target);
        });
        sup.save();
        let started = Instant::now();
        let outcome = watch_instance(
            &sup,
            &inst,
            &spec,
            &mut proc,
            &mut stop_rx,
            port,
            ready_at_ms.is_some(),
        )
        .await;
        let pgid = Pid::from_raw(pid as i32);
        let over_disk = matches!(outcome, Outcome::OverDisk(_));
        match outcome {
            Outcome::Stop => {
                sup.set_live(&inst, |l| {
                    l.state = InstanceState::Stopping;
                    l.ready_at_ms = None;
                });
                terminate(&mut proc, pgid, Duration::from_millis(spec.stop_timeout_ms)).await;
                sup.set_live(&inst, |l| {
                    l.state = InstanceState::Stopped;
                    l.pid = None;
                });
                for stream in OUTPUTS {
                    let _ = std::fs::remove_file(sup.output_path(&inst.id, stream));
                }
                break;
            }
            Outcome::Exited(why) | Outcome::Unhealthy(why) | Outcome::OverDisk(why) => {
                // Leftover children of the command must not hold the port,
                // nor those that left its process group live on.
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_group(&sup, &inst.id).await;
                proc.wait().await;
                if started.elapsed() >= BACKOFF_RESET_AFTER {
                    quick_crashes = 0;
                }
                let crashes = quick_crashes + 1;
                inst.log
                    .write_line(&format!("[tandem] instance {}: {why}; restarting", inst.id));
                if over_disk {
                    // Its temp goes with it; its state stays (the service's to
                    // clean up: an incident tells its people).
                    let _ = std::fs::remove_dir_all(tandem_sandbox::paths::tmp_dir(
                        &sup.shared.data_dir,
                        &inst.id,
                    ));
                    inst.live().over_disk = Some((Instant::now(), why.clone()));
                }
                tracing::warn!(instance = %inst.id, reason = %why, "instance exited");
                sup.set_live(&inst, |l| {
                    l.state = InstanceState::Backoff;
                    l.ready_at_ms = None;
                    l.pid = None;
                    l.restarts += 1;
                    l.last_exit = Some(why);
                    l.quick_crashes = crashes;
                });
                if backoff(&mut stop_rx, &mut quick_crashes).await {
                    break;
                }
            }
        }
    }
    sup.set_live(&inst, |l| {
        l.state = InstanceState::Stopped;
        l.pid = None;
    });
    // What left its process group (a daemon) goes with it, as systemd's
    // KillMode=control-group does.
    kill_group(&sup, &inst.id).await;
    sup.shared.sandbox.remove(&inst.id);
    let _ = std::fs::remove_dir_all(tandem_sandbox::paths::tmp_dir(
        &sup.shared.data_dir,
        &inst.id,
    ));
}

/// Kills every process in instance `id`'s control groups (blocking work:
/// off the runtime's threads).
async fn kill_group(sup: &Supervisor, id: &str) {
    let (shared, id) = (sup.shared.clone(), id.to_owned());
    let _ = tokio::task::spawn_blocking(move || shared.sandbox.cgroups().kill_all(&id)).await;
}

/// Takes over a process a previous agent started: watches it through a
/// pidfd and goes on copying its output FIFOs. `None` (and a fresh start)
/// when it is gone already, or its output cannot be read.
fn adopt(
    sup: &Supervisor,
    inst: &Instance,
    a: Adopted,
) -> Option<(u16, Proc, Option<u64>, Option<Snapshot>)> {
    let proc = match Proc::adopt(a.pid) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(instance = %inst.id, pid = a.pid, error = %e, "the instance is gone; starting it again");
            return None;
        }
    };
    let captures = sup.capture_output(inst);
    if captures.len() < OUTPUTS.len() {
        tracing::warn!(instance = %inst.id, pid = a.pid, "cannot read its output; starting it again");
        let _ = killpg(Pid::from_raw(a.pid as i32), Signal::SIGKILL);
        return None;
    }
    *lock(&inst.captures) = captures;
    inst.live().restarts = a.restarts;
    tracing::info!(instance = %inst.id, pid = a.pid, port = a.port, "instance adopted");
    Some((a.port, proc, a.ready_at_ms, Some(a.counts)))
}

/// A running instance's process: a child of this agent, or one adopted
/// from the agent before it (not our child: its exit is seen through a
/// pidfd and its status is unknown).
enum Proc {
    Child(tokio::process::Child),
    Adopted { pid: u32, exited: AsyncFd<OwnedFd> },
}

impl Proc {
    #[allow(unsafe_code)]
    fn adopt(pid: u32) -> std::io::Result<Proc> {
        let raw = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| std::io::Error::other("pid 0"))?;
        let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::NONBLOCK)?;
        // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor stays
        // open, and is not replaced, for as long as it is registered.
        let exited = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Proc::Adopted { pid, exited })
    }

    fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id().unwrap_or(0),
            Proc::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits until the process has exited; says how. Cancel-safe.
    async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(s) => format!("exited with {s}"),
                Err(e) => format!("wait failed: {e}"),
            },
            Proc::Adopted { exited, .. } => {
                let _ = exited.readable().await;
                "exited (started by the previous agent: status unknown)".into()
            }
        }
    }
}

/// How long instances found without a state file wait for their group:
/// `UNCLAIMED_GRACE`, or `TANDEM_UNCLAIMED_GRACE_MS` (tests).
fn unclaimed_grace() -> Duration {
    Duration::from_millis(
        std::env::var("TANDEM_UNCLAIMED_GRACE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(UNCLAIMED_GRACE.as_millis() as u64),
    )
}

/// The backoff cap: `BACKOFF_CAP`, or `TANDEM_BACKOFF_CAP_MS` (tests).
fn backoff_cap() -> Duration {
    static CAP: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        std::env::var("TANDEM_BACKOFF_CAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(BACKOFF_CAP)
    })
}

/// Sleeps the backoff for the next restart; true when asked to stop meanwhile.
async fn backoff(stop_rx: &mut watch::Receiver<bool>, quick_crashes: &mut u32) -> bool {
    let delay = BACKOFF_START
        .saturating_mul(1 << (*quick_crashes).min(16))
        .min(backoff_cap());
    *quick_crashes += 1;
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = stop_rx.changed() => true,
    }
}

enum Outcome {
    Stop,
    Exited(String),
    Unhealthy(String),
    /// Its temp and state directories hold more than its disk limit.
    OverDisk(String),
}

async fn watch_instance(
    sup: &Supervisor,
    inst: &Instance,
    spec: &GroupSpec,
    proc: &mut Proc,
    stop_rx: &mut watch::Receiver<bool>,
    port: u16,
    was_ready: bool,
) -> Outcome {
    let prober = sup.shared.prober.clone();
    let readiness_every = Duration::from_millis(spec.readiness.interval_ms.max(10));
    let mut ever_ready = was_ready;
    let mut ready = was_ready;
    let mut next_ready = tokio::time::Instant::now()
        + if was_ready {
            readiness_every
        } else {
            STARTUP_PROBE_PERIOD
        };
    let mut ready_failures = 0;
    let liveness_every = spec
        .liveness
        .as_ref()
        .map(|l| Duration::from_millis(l.interval_ms.max(10)));
    let mut next_live =
        tokio::time::Instant::now() + liveness_every.unwrap_or(Duration::from_secs(3600));
    let mut live_failures = 0;
    // What it may write, measured now and then (blocking work, off the
    // runtime's threads).
    let mut disk_check = tokio::time::interval(DISK_CHECK_EVERY);
    disk_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirs = vec![tandem_sandbox::paths::tmp_dir(
        &sup.shared.data_dir,
        &inst.id,
    )];
    if spec.state_dir {
        dirs.push(tandem_sandbox::paths::state_dir(
            &sup.shared.data_dir,
            &spec.service,
        ));
    }
    // An exec probe runs as the instance does: its user, groups and fence.
    let confine = |cmd: &mut std::process::Command| {
        let user = sup.shared.sandbox.user_for(spec.user, &spec.service)?;
        sup.shared
            .sandbox
            .prepare(&tandem_sandbox::Confinement {
                group: &inst.id,
                user,
                limits: &spec.limits,
                read: &[PathBuf::from(&spec.dir)],
                write: &dirs,
                private_tmp: Some(&dirs[0]),
            })
            .map(|p| {
                // Its directories, as the instance has them.
                cmd.env("TMPDIR", &dirs[0])
                    .env("HOME", dirs.last().unwrap_or(&dirs[0]));
                if let Some(state) = dirs.get(1) {
                    cmd.env("STATE_DIRECTORY", state);
                }
                p.install(cmd)
            })
    };
    loop {
        tokio::select! {
            why = proc.wait() => return Outcome::Exited(why),
            _ = disk_check.tick(), if spec.limits.disk_bytes.is_some() => {
                let limit = spec.limits.disk_bytes.unwrap_or(u64::MAX);
                let dirs = dirs.clone();
                let used = tokio::task::spawn_blocking(move || tandem_sandbox::paths::usage(&dirs, limit))
                    .await
                    .unwrap_or(0);
                if used > limit {
                    return Outcome::OverDisk(format!(
                        "its temp and state directories hold more than its disk limit of {} ({:.1} MiB counted)",
                        tandem_core::units::Bytes::from_bytes(limit),
                        used as f64 / f64::from(1u32 << 20),
                    ));
                }
            }
            _ = stop_rx.changed() => return Outcome::Stop,
            () = tokio::time::sleep_until(next_ready) => {
                let result = prober.check(&spec.readiness, port, &spec.dir, &confine).await;
                match result {
                    Ok(()) => {
                        ready_failures = 0;
                        if !ready {
                            ready = true;
                            ever_ready = true;
                            sup.set_live(inst, |l| {
                                l.ready_at_ms = Some(now_ms());
                                l.last_probe_error = None;
                                if let Some(t) = &l.target { t.readmit(); }
                            });
                        }
                    }
                    Err(e) => {
                        ready_failures += 1;
                        if ready && ready_failures >= spec.readiness.failures {
                            ready = false;
                            inst.log.write_line(&format!("[tandem] readiness failing: {e}"));
                            sup.set_live(inst, |l| { l.ready_at_ms = None; l.last_probe_error = Some(e); });
                        } else {
                            inst.live().last_probe_error = Some(e);
                        }
                    }
                }
                next_ready = tokio::time::Instant::now() + if ever_ready { readiness_every } else { STARTUP_PROBE_PERIOD };
            }
            () = tokio::time::sleep_until(next_live), if liveness_every.is_some() && ever_ready => {
                if let Some(live) = &spec.liveness {
                    match prober.check(live, port, &spec.dir, &confine).await {
                        Ok(()) => live_failures = 0,
                        Err(e) => {
                            live_failures += 1;
                            if live_failures >= live.failures {
                                return Outcome::Unhealthy(format!("liveness failed {live_failures} times: {e}"));
                            }
                        }
                    }
                }
                next_live = tokio::time::Instant::now() + liveness_every.unwrap_or(Duration::from_secs(3600));
            }
        }
    }
}

/// The output streams of an instance, each through its own FIFO.
const OUTPUTS: [&str; 2] = ["out", "err"];

/// How long instances found running without a state file wait for the
/// control plane to start their group again before they are stopped.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(120);

/// Starts the command, confined (see `tandem_sandbox`); its stdout and
/// stderr go to the log through FIFOs at `outputs` (see [`output_fifo`]).
fn spawn(
    spec: &GroupSpec,
    port: u16,
    log: &InstanceLog,
    outputs: &[PathBuf; 2],
    marks: [(&str, &std::ffi::OsStr); 2],
    shared: &Shared,
) -> std::io::Result<(tokio::process::Child, Vec<Capture>)> {
    let id = marks[0].1.to_string_lossy().into_owned();
    let user = shared.sandbox.user_for(spec.user, &spec.service)?;
    // Its own temporary directory, fresh at each start, and the unit's
    // state directory if it asked for one: the only places it may write.
    let tmp = tandem_sandbox::paths::tmp_dir(&shared.data_dir, &id);
    let _ = std::fs::remove_dir_all(&tmp);
    tandem_sandbox::paths::own_dir(&tmp, user)?;
    // Its output FIFOs are its own, so that it may open them again as
    // /dev/stdout and /dev/stderr.
    let (out_reader, out_writer) = output_fifo(&outputs[0])?;
    let (err_reader, err_writer) = output_fifo(&outputs[1])?;
    if let Some(uid) = user {
        for fifo in outputs {
            std::os::unix::fs::lchown(fifo, Some(uid), Some(uid))?;
        }
    }
    let mut write = vec![tmp.clone(), outputs[0].clone(), outputs[1].clone()];
    let home = if spec.state_dir {
        let state = tandem_sandbox::paths::state_dir(&shared.data_dir, &spec.service);
        tandem_sandbox::paths::own_dir(&state, user)?;
        write.push(state.clone());
        Some(state)
    } else {
        None
    };
    let prepared = shared.sandbox.prepare(&tandem_sandbox::Confinement {
        group: &id,
        user,
        limits: &spec.limits,
        read: &[PathBuf::from(&spec.dir)],
        write: &write,
        private_tmp: Some(&tmp),
    })?;
    // Limits protect the others; an instance that cannot have them still
    // serves (the data plane does not stop for them), and says so.
    for missing in &prepared.missing {
        tracing::error!(instance = %id, "{missing}; it runs without them");
        log.write_line(&format!("[tandem] {missing}"));
    }
    // The agent's environment is the instances' (the operator's settings),
    // but for what `install` withholds (tandem's credentials).
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.dir)
        .env("TMPDIR", &tmp)
        .env("HOME", home.as_ref().unwrap_or(&tmp))
        .envs(home.as_ref().map(|s| ("STATE_DIRECTORY", s)))
        .envs(&spec.env)
        .env("PORT", port.to_string())
        .envs(marks)
        .stdin(std::process::Stdio::null())
        .stdout(out_writer)
        .stderr(err_writer)
        .kill_on_drop(false);
    for var in crate::PASSED_SOCKET_VARS {
        cmd.env_remove(var);
    }
    prepared.install(cmd.as_std_mut());
    let child = cmd.spawn()?;
    // Our copies of the instance's ends close with `cmd`.
    drop(cmd);
    let pipes = vec![log.capture(out_reader)?, log.capture(err_reader)?];
    Ok((child, pipes))
}

/// Makes a FIFO at `path` for one output stream of an instance: the read
/// end for the agent, and a read-write end for the instance. Holding both
/// ends itself, the instance never gets EPIPE when no agent reads (it
/// blocks once 1 MiB is unread), and an agent started after this one died
/// opens the FIFO again by its path.
fn output_fifo(path: &Path) -> std::io::Result<(OwnedFd, std::fs::File)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(
        path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    let reader = open_fifo_reader(path)?;
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&writer, 1 << 20);
    Ok((reader, writer))
}

/// Opens a FIFO for reading without waiting for a writer.
fn open_fifo_reader(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    if !file.metadata()?.file_type().is_fifo() {
        return Err(std::io::Error::other(format!(
            "{} is not a FIFO",
            path.display()
        )));
    }
    Ok(file.into())
}

/// When `pid` started (clock ticks after boot), if it runs and leads its
/// own process group, as every instance does.
fn started_at(pid: u32) -> Option<u64> {
    let stat = procfs::stat(pid)?;
    (stat.state != "Z" && stat.pgrp == pid).then_some(stat.start_time)
}

/// SIGTERM to the process group, up to `timeout`, then SIGKILL.
async fn terminate(proc: &mut Proc, pgid: Pid, timeout: Duration) {
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(timeout, proc.wait()).await.is_err() {
        tracing::warn!(pgid = pgid.as_raw(), "instance ignored SIGTERM; killing");
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    proc.wait().await;
}

/// A sealed value in the state file.
const SEALED: &str = "tandem-sealed:";

/// `spec` as the state file keeps it: its secret values sealed (left out
/// without a key), never in clear.
fn seal_secrets(sealer: Option<&tandem_seal::Sealer>, spec: &GroupSpec) -> GroupSpec {
    let mut spec = spec.clone();
    for key in &spec.secrets {
        let Some(value) = spec.env.remove(key) else {
            continue;
        };
        if let Some(sealer) = sealer {
            spec.env
                .insert(key.clone(), format!("{SEALED}{}", sealer.seal_text(&value)));
        }
    }
    spec
}

/// The reverse of [`seal_secrets`]: a value that does not open (another
/// key) is left out, said in the log.
fn open_secrets(sealer: Option<&tandem_seal::Sealer>, spec: &mut GroupSpec) {
    for key in spec.secrets.clone() {
        let Some(hex) = spec.env.get(&key).and_then(|v| v.strip_prefix(SEALED)) else {
            continue;
        };
        let opened = sealer.and_then(|s| s.open_text(hex).ok());
        match opened {
            Some(value) => {
                spec.env.insert(key, value);
            }
            None => {
                tracing::error!(service = %spec.service, release = %spec.release, secret = %key, "a sealed secret of the state file does not open; the instances start without it");
                spec.env.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_sealed_in_the_state_file_and_open_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let sealer = tandem_seal::Sealer::load_or_create(dir.path()).expect("key");
        let spec = GroupSpec {
            service: "shop".into(),
            release: "r1".into(),
            dir: "/tmp".into(),
            command: "true".into(),
            env: [("API_TOKEN", "t0ken-value"), ("PLAIN", "shown")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            instances: 1,
            readiness: tandem_core::protocol::ProbeSpec {
                kind: tandem_core::protocol::ProbeKind::Tcp,
                interval_ms: 100,
                timeout_ms: 100,
                failures: 1,
            },
            liveness: None,
            stop_timeout_ms: 100,
            secrets: vec!["API_TOKEN".into()],
            limits: Default::default(),
            user: None,
            state_dir: false,
        };
        let saved = seal_secrets(Some(&sealer), &spec);
        let text = serde_json::to_string(&saved).expect("json");
        assert!(!text.contains("t0ken-value"), "{text}");
        assert!(text.contains("shown"));
        let mut back: GroupSpec = serde_json::from_str(&text).expect("json");
        open_secrets(Some(&sealer), &mut back);
        assert_eq!(back, spec);
        // Without the key: left out, never kept in clear.
        let unkeyed = seal_secrets(None, &spec);
        assert!(!unkeyed.env.contains_key("API_TOKEN"));
        let other = tempfile::tempdir().expect("tmp");
        let stranger = tandem_seal::Sealer::load_or_create(other.path()).expect("key");
        let mut foreign: GroupSpec = serde_json::from_str(&text).expect("json");
        open_secrets(Some(&stranger), &mut foreign);
        assert!(!foreign.env.contains_key("API_TOKEN"));
    }

    #[tokio::test]
    async fn saves_at_once_all_succeed_and_leave_a_whole_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = Proxy::new(tandem_proxy::ProxyConfig::default());
        let sup = Supervisor::new(proxy, dir.path().to_path_buf());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let sup = sup.clone();
                std::thread::spawn(move || (0..50).filter(|_| sup.try_save().is_err()).count())
            })
            .collect();
        let failed: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(failed, 0, "saves that failed");
        let text = std::fs::read_to_string(sup.state_path()).expect("state file");
        serde_json::from_str::<SavedState>(&text).expect("a whole state file");
    }
}
