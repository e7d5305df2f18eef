//! The typed protocol between control plane and agent (the data plane).
//!
//! Newline-delimited JSON over a unix socket in the data directory: one
//! [`Request`] line, one [`Response`] line, then the connection may carry the
//! next request. The agent owns instances and routes; the control plane only
//! asks. Every request is idempotent, so a control plane that died mid-way
//! can simply ask again after it restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Protocol version; bumped on incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first of the uids tandem gives services (one each, never reused;
/// see `tandem_sandbox`). Above the ranges distributions, systemd's dynamic
/// users and the usual subordinate-uid ranges use, below 2^31.
pub const FIRST_SERVICE_UID: u32 = 1_900_000_000;
/// How many there are.
pub const SERVICE_UIDS: u32 = 1_000_000;

/// File name of the agent's socket inside the data directory.
pub const SOCKET_FILE: &str = "agent.sock";

/// The name of the key a connection to the agent starts with, under the
/// data directory's `keys/`.
pub const AGENT_KEY: &str = "agent.key";
/// How an agent's refusal starts while it hands over to a new agent
/// (`tandem upgrade-agent`): asking again shortly reaches the one that
/// serves, and since every request but `Upgrade` is idempotent, clients do.
pub const HANDOVER_REFUSAL: &str = "agent handover in progress";

/// How long an agent asked to `Upgrade` waits for its successor to take
/// over (it first lets changes in flight, such as a drain, finish).
pub const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A group of identical instances of one release of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub service: String,
    pub release: String,
    /// Working directory of every instance (the release's files).
    pub dir: String,
    /// Run through `/bin/sh -c`, with `PORT` set.
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub readiness: ProbeSpec,
    #[serde(default)]
    pub liveness: Option<ProbeSpec>,
    pub stop_timeout_ms: u64,
    /// The keys of `env` that hold secrets: the agent seals their values
    /// in its state file and masks them in the instances' logs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// What each instance may use (`None`: no limit).
    #[serde(default)]
    pub limits: Limits,
    /// The unit's user (and group) where tandem can switch users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
    /// Whether instances get the unit's state directory (`run.state_dir`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub state_dir: bool,
}

/// An instance's limits, as the agent enforces them (cgroups, rlimits).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU (1000: one CPU).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub pids: Option<u32>,
    #[serde(default)]
    pub nofile: Option<u64>,
    /// What its temp and state directories may hold together.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

fn default_status() -> (u16, u16) {
    crate::spec::DEFAULT_PROBE_STATUS
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Http {
        path: String,
        /// Healthy statuses, inclusive.
        #[serde(default = "default_status")]
        status: (u16, u16),
    },
    Tcp,
    Exec {
        command: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failures: u32,
}

/// Where traffic for a service comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub host: String,
    pub path_prefix: String,
    /// The proxy's wait for an answer from the service (`route.timeout`).
    #[serde(default = "default_route_timeout_ms")]
    pub timeout_ms: u64,
    /// Plain HTTP is redirected to HTTPS (`route.https_only`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_only: bool,
}

fn default_route_timeout_ms() -> u64 {
    crate::spec::DEFAULT_ROUTE_TIMEOUT.as_millis()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First on every connection: the key in `keys/agent.key` of the data
    /// directory ([`AGENT_KEY`]), which only tandem's own processes can
    /// read. Without it nothing is answered: a process that can reach the
    /// socket (a service of the same user, where tandem is not root) cannot
    /// drive the agent.
    Auth {
        key: String,
    },
    Hello,
    /// Everything the agent runs and routes.
    Status,
    /// Starts the group's instances unless it already exists.
    StartGroup {
        group: Box<GroupSpec>,
    },
    /// Waits until every instance of the group is ready, or fails early when
    /// one exits, or after `timeout_ms`.
    WaitReady {
        service: String,
        release: String,
        timeout_ms: u64,
    },
    /// Points the service's route at the group's ready instances, atomically.
    /// Other groups of the service stop receiving new requests.
    Activate {
        service: String,
        release: String,
        route: RouteSpec,
    },
    /// Drains the group (new requests go elsewhere, in-flight ones finish, up to
    /// `drain_timeout_ms`), then stops its instances.
    StopGroup {
        service: String,
        release: String,
        drain_timeout_ms: u64,
    },
    /// The last lines of each instance log of a service (or of one release).
    Logs {
        service: String,
        release: Option<String>,
        lines: usize,
        /// Per instance, where a follower got to: it gets every complete
        /// line written since (up to a bound) instead of the last `lines`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        after: BTreeMap<String, LogCursor>,
    },
    /// Prometheus text exposition of the proxy's request metrics.
    Metrics,
    /// Maintenance mode of a service's route: while on, the proxy answers
    /// 503 with `Retry-After: retry_after_s` instead of forwarding.
    Maintenance {
        service: String,
        on: bool,
        retry_after_s: u32,
    },
    /// Stops every instance (when asked) and exits.
    Shutdown {
        stop_instances: bool,
    },
    /// From a new agent taking over this one's data directory. Answered,
    /// unless refused, not with a [`Response`] line but with the agent's
    /// handover offer and the data-directory lock and both listening
    /// sockets passed along (`tandem_agent::handover`).
    Handover,
    /// A copy of the proxy's listening socket, for the `tandem up` that
    /// holds it while it starts a dead agent again; answered the same way,
    /// with an empty document and the one descriptor.
    ProxyListener,
    /// Starts `exe agent --takeover` as this agent's child, so that the new
    /// agent has this one's environment, working directory, limits, output
    /// and control group (not the caller's), and answers once it took over
    /// ([`Response::Upgraded`]), or why not. Not idempotent: never asked
    /// again.
    Upgrade {
        exe: String,
    },
    /// Serves `chain_pem` and `key_pem` (PEM) for `host` over HTTPS, and
    /// keeps them in the data directory for later agents.
    SetCertificate {
        host: String,
        chain_pem: String,
        key_pem: Redacted,
    },
    /// The certificates served ([`Response::Certificates`]).
    Certificates,
    /// Answers the ACME HTTP-01 challenge `token` with `key_authorization`
    /// on plain HTTP, for any host (`None`: no longer).
    AcmeChallenge {
        token: String,
        key_authorization: Option<String>,
    },
}

/// Text that never appears in logs or debug output (a private key).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

/// A certificate the proxy serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertificateInfo {
    pub host: String,
    /// Its chain, PEM, leaf first.
    pub chain_pem: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        pid: u32,
        proxy_addr: String,
        started_at_ms: u64,
    },
    Status {
        status: AgentStatus,
    },
    Started {
        instances: Vec<String>,
    },
    Ready {
        ready_at_ms: u64,
    },
    NotReady {
        reason: String,
        log_tail: Vec<String>,
    },
    /// `switched_at_ms`: when the new route table was published.
    Activated {
        switched_at_ms: u64,
        previous: Option<String>,
    },
    Stopped {
        instances: usize,
        drained_in_ms: u64,
        drain_timed_out: bool,
    },
    Logs {
        lines: Vec<LogLine>,
    },
    Metrics {
        text: String,
    },
    /// The new agent took over: its pid.
    Upgraded {
        pid: u32,
    },
    Certificates {
        certificates: Vec<CertificateInfo>,
    },
    Ok,
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub proxy_addr: String,
    pub services: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub route: Option<RouteSpec>,
    /// The release the route points at.
    pub active: Option<String>,
    pub instances: Vec<InstanceStatus>,
    /// Requests through the proxy on this service's route since the agent
    /// started (cumulative; consumers take differences).
    #[serde(default)]
    pub requests: RequestCounts,
    /// `Retry-After` seconds while in maintenance mode.
    #[serde(default)]
    pub maintenance: Option<u32>,
}

/// Cumulative request counters of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// By status class: 1xx … 5xx.
    pub classes: [u64; 5],
    /// Latency histogram, non-cumulative, with the upper bounds (µs) of
    /// `bounds_us`; the last count is above the last bound.
    pub buckets: Vec<u64>,
    pub bounds_us: Vec<u64>,
    /// The sum of all latencies, µs.
    #[serde(default)]
    pub sum_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub release: String,
    pub pid: Option<u32>,
    pub port: u16,
    pub state: InstanceState,
    pub ready: bool,
    pub restarts: u32,
    pub in_flight: u64,
    /// Crashed again and again without staying up: backing off toward the cap.
    #[serde(default)]
    pub crash_looping: bool,
    /// Why it last exited or was restarted.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// The last failing probe's error, while it is failing.
    #[serde(default)]
    pub last_probe_error: Option<String>,
    /// Why it was last stopped for its disk use, for a while after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_disk: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Starting,
    Running,
    /// Exited; waiting for its backoff to pass before a restart.
    Backoff,
    Draining,
    Stopping,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance: String,
    pub line: String,
    /// Where the line ends in its log, to follow on from (`None` from an
    /// agent that knows no cursors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<LogCursor>,
}

/// A place in an instance's log: the file (its inode, so a rotation is
/// noticed) and the byte offset after a complete line. It holds across
/// agent restarts and upgrades, which append to the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    pub file: u64,
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        let text = serde_json::to_string(&Request::Activate {
            service: "s".into(),
            release: "r1".into(),
            route: RouteSpec {
                host: "a.test".into(),
                path_prefix: "/".into(),
                timeout_ms: 60_000,
                https_only: false,
            },
        })
        .expect("encode");
        assert!(
            text.starts_with(r#"{"op":"activate","service":"s""#),
            "{text}"
        );
        let back: Request = serde_json::from_str(&text).expect("decode");
        assert!(matches!(back, Request::Activate { .. }));
    }
}
