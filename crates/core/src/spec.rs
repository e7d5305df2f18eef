//! The `tandem.yaml` contract, v1: typed, validated, with defaults.
//!
//! [`Spec::parse`] is the only way in. Every field is checked while it is
//! read, so each error carries the file, line and column it comes from, and an
//! unknown field comes with a "did you mean" hint. A [`Spec`] that exists is
//! valid; nothing downstream re-checks it.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::MessageFormatter as _;

use crate::units::{Duration, Percent};

/// Default for `run.instances`.
pub const DEFAULT_INSTANCES: u32 = 1;
/// Upper bound for `run.instances` on one machine.
pub const MAX_INSTANCES: u32 = 64;
/// Default for `run.stop_timeout`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `release.deploy_timeout`.
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `release.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `route.timeout`: the proxy's wait for an answer (nginx's
/// `proxy_read_timeout`).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for a build or test step's `timeout`.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Default probe interval for readiness.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(1);
/// Default probe interval for liveness.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_secs(10);
/// Default probe timeout.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default consecutive failures before a probe counts as failed.
pub const DEFAULT_PROBE_FAILURES: u32 = 3;

/// A whole, valid `tandem.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "tandem.yaml",
    description = "A tandem service, declared as code (v1)"
)]
pub struct Spec {
    pub service: ServiceMeta,
    #[serde(default)]
    pub build: Vec<Step>,
    #[serde(default)]
    pub test: Vec<Step>,
    /// Steps run after each deployment to an environment, against it
    /// (`TANDEM_ENV`, `TANDEM_HOST`, `TANDEM_PROXY` are set).
    #[serde(default)]
    pub verify: Vec<Step>,
    #[serde(default)]
    pub artifact: Artifact,
    pub run: Run,
    pub route: Route,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub release: Release,
    /// Promoted in the order written; the last one is production.
    #[serde(default)]
    #[schemars(with = "indexmap::IndexMap<EnvName, Environment>")]
    pub environments: Environments,
    #[serde(default)]
    pub slo: Vec<Slo>,
}

/// Who the service is, who owns it and whom it is delivered to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceMeta {
    pub name: ServiceName,
    #[serde(default)]
    pub description: String,
    /// The supplier team responsible for development and operation.
    #[serde(default)]
    pub owner: Option<String>,
    /// The customer the service is delivered to.
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// A service name: `[a-z0-9-]`, 1 to 63 characters, starting and ending with a
/// letter or digit (a DNS label), unique within one tandem.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        validate_label("service name", &name)?;
        Ok(ServiceName(name))
    }
}

impl std::str::FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServiceName::try_from(s.to_owned())
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment name (`staging`, `production`, …); same rules as a service name.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct EnvName(String);

impl TryFrom<String> for EnvName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        validate_label("environment name", &name)?;
        Ok(EnvName(name))
    }
}

impl From<EnvName> for String {
    fn from(name: EnvName) -> String {
        name.0
    }
}

fn validate_label(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > 63 {
        return Err(format!(
            "{what} `{name}` is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{what} `{name}` contains `{bad}`; only lowercase letters, digits and `-` are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{what} `{name}` must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// How critical a service is to its customer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Critical,
    #[default]
    Standard,
    BestEffort,
}

impl Tier {
    /// The name as written in `tandem.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Critical => "critical",
            Tier::Standard => "standard",
            Tier::BestEffort => "best-effort",
        }
    }
}

/// One build or test step, run through `/bin/sh -c` in the checkout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub run: String,
    #[serde(default = "default_step_timeout")]
    pub timeout: Duration,
}

fn default_step_timeout() -> Duration {
    DEFAULT_STEP_TIMEOUT
}

/// What of the built tree becomes the release. Empty: the whole tree.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    #[serde(default)]
    pub paths: Vec<String>,
}

/// How to run an instance of the service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// A shell command line, run in the release directory with `PORT` set.
    pub command: NonEmpty,
    #[serde(default = "default_instances")]
    pub instances: Instances,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets injected as environment variables at run time.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Duration,
    /// What each instance may use; unset fields take the defaults.
    #[serde(default, deserialize_with = "checked_limits")]
    pub limits: Limits,
    /// A writable directory of the service's own that outlives releases
    /// (`$STATE_DIRECTORY`); the release directory itself is read-only.
    #[serde(default)]
    pub state_dir: bool,
}

/// Per-instance limits, enforced by the agent with cgroups and rlimits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory (e.g. 512Mi); past it the instance is killed and restarted.
    #[serde(default = "default_memory")]
    pub memory: crate::units::Bytes,
    /// CPUs' worth of time (0.5: half of one); unset: no cap.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Processes and threads at once.
    #[serde(default = "default_pids")]
    pub pids: u32,
    /// Open files.
    #[serde(default = "default_nofile")]
    pub nofile: u32,
    /// What its temp and state directories may hold together (and the
    /// largest file it may write); past it the instance is stopped and
    /// restarted, and an incident opened.
    #[serde(default = "default_disk")]
    pub disk: crate::units::Bytes,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: default_memory(),
            cpu: None,
            pids: default_pids(),
            nofile: default_nofile(),
            disk: default_disk(),
        }
    }
}

/// Limits a process can live within: a limit below these would make the
/// kernel refuse it (and every limit fail open) or nothing start at all.
fn checked_limits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
    use serde::de::Error;
    let l = Limits::deserialize(d)?;
    let at_least = |what: &str, value: u64, min: u64, shown: &str| {
        if value < min {
            Err(D::Error::custom(format!(
                "run.limits.{what} must be at least {shown}"
            )))
        } else {
            Ok(())
        }
    };
    at_least("memory", l.memory.get(), 4 << 20, "4Mi")?;
    at_least("disk", l.disk.get(), 1 << 20, "1Mi")?;
    at_least("pids", u64::from(l.pids), 4, "4")?;
    at_least("nofile", u64::from(l.nofile), 16, "16")?;
    if let Some(cpu) = l.cpu
        && !(cpu.is_finite() && (0.01..=1024.0).contains(&cpu))
    {
        return Err(D::Error::custom(format!(
            "run.limits.cpu must be between 0.01 and 1024 CPUs, not {cpu}"
        )));
    }
    Ok(l)
}

fn default_memory() -> crate::units::Bytes {
    crate::units::Bytes::from_bytes(1 << 30)
}
fn default_pids() -> u32 {
    512
}
fn default_nofile() -> u32 {
    4096
}
fn default_disk() -> crate::units::Bytes {
    crate::units::Bytes::from_bytes(1 << 30)
}

fn default_instances() -> Instances {
    Instances(DEFAULT_INSTANCES)
}
fn default_stop_timeout() -> Duration {
    DEFAULT_STOP_TIMEOUT
}

/// A non-empty string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct NonEmpty(String);

impl NonEmpty {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NonEmpty {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(NonEmpty(s))
        }
    }
}

impl From<NonEmpty> for String {
    fn from(s: NonEmpty) -> String {
        s.0
    }
}

/// Number of instances, 1 to [`MAX_INSTANCES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u32", into = "u32")]
#[schemars(with = "u32")]
pub struct Instances(u32);

impl Instances {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Instances {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if (1..=MAX_INSTANCES).contains(&n) {
            Ok(Instances(n))
        } else {
            Err(format!(
                "instances must be between 1 and {MAX_INSTANCES}, not {n}"
            ))
        }
    }
}

impl From<Instances> for u32 {
    fn from(n: Instances) -> u32 {
        n.0
    }
}

/// Where the proxy sends traffic for this service from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: Host,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: PathPrefix,
    /// How long the service may take to start answering a request, and
    /// then stay silent in the middle of an answer, before the proxy gives
    /// up (a 504, or the response is cut off). Raise it for server-sent
    /// events, long polling or slow reports.
    #[serde(default = "default_route_timeout")]
    pub timeout: Duration,
    /// HTTPS on the proxy's TLS listener for this route's hosts (every
    /// environment's): `{ cert: PATH, key: PATH }`, PEM files beside
    /// `tandem.yaml`, or `acme` for a certificate obtained and renewed
    /// automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Plain HTTP is redirected to HTTPS (308) and HTTPS answers carry
    /// `Strict-Transport-Security`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_only: bool,
}

/// Where a route's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(untagged)]
pub enum Tls {
    /// A certificate chain and its key, PEM, from files whose paths are
    /// relative to the spec's directory and stay inside it.
    Files { cert: TlsPath, key: TlsPath },
    /// Obtained over ACME (HTTP-01) and renewed before it expires.
    #[schemars(with = "AcmeWord")]
    Acme,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
enum AcmeWord {
    #[serde(rename = "acme")]
    Acme,
}

impl Serialize for Tls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Tls::Acme => serializer.serialize_str("acme"),
            Tls::Files { cert, key } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("cert", cert)?;
                map.serialize_entry("key", key)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Tls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "`acme`, or a mapping { cert: PATH, key: PATH }";
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Tls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Tls, E> {
                match v {
                    "acme" => Ok(Tls::Acme),
                    _ => Err(E::custom(format!(
                        "`{v}` is not a TLS source; write {EXPECTED}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Tls, A::Error> {
                use serde::de::Error;
                let (mut cert, mut key) = (None, None);
                while let Some(name) = map.next_key::<String>()? {
                    match name.as_str() {
                        "cert" => cert = Some(map.next_value::<TlsPath>()?),
                        "key" => key = Some(map.next_value::<TlsPath>()?),
                        other => {
                            return Err(A::Error::unknown_field(other, &["cert", "key"]));
                        }
                    }
                }
                match (cert, key) {
                    (Some(cert), Some(key)) => Ok(Tls::Files { cert, key }),
                    (None, _) => Err(A::Error::missing_field("cert")),
                    (_, None) => Err(A::Error::missing_field("key")),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A file beside `tandem.yaml`: a relative path that does not climb out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct TlsPath(String);

impl TlsPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TlsPath {
    type Error = String;
    fn try_from(path: String) -> Result<Self, String> {
        let p = std::path::Path::new(&path);
        if path.is_empty() {
            return Err("the path is empty".into());
        }
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "`{path}` leaves the spec's directory; give a path relative to tandem.yaml, inside its directory"
            ));
        }
        Ok(TlsPath(path))
    }
}

impl From<TlsPath> for String {
    fn from(p: TlsPath) -> String {
        p.0
    }
}

fn default_route_timeout() -> Duration {
    DEFAULT_ROUTE_TIMEOUT
}

fn default_path_prefix() -> PathPrefix {
    PathPrefix("/".into())
}

/// A host name matched against the request's `Host` (port ignored), lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct Host(String);

impl Host {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Host {
    type Error = String;
    fn try_from(host: String) -> Result<Self, String> {
        let lower = host.to_ascii_lowercase();
        if lower.is_empty() || lower.len() > 253 {
            return Err("route host must be 1 to 253 characters".into());
        }
        if let Some(bad) = lower
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(format!(
                "route host `{host}` contains `{bad}`; write a bare host name such as shop.example.test"
            ));
        }
        Ok(Host(lower))
    }
}

impl From<Host> for String {
    fn from(h: Host) -> String {
        h.0
    }
}

/// A path prefix starting with `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = String;
    fn try_from(p: String) -> Result<Self, String> {
        if !p.starts_with('/') {
            return Err(format!("path_prefix `{p}` must start with `/`"));
        }
        Ok(PathPrefix(p))
    }
}

impl From<PathPrefix> for String {
    fn from(p: PathPrefix) -> String {
        p.0
    }
}

/// Readiness gates traffic; liveness restarts an instance that stops answering.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default)]
    pub readiness: Option<Probe>,
    #[serde(default)]
    pub liveness: Option<Probe>,
}

/// One probe: exactly one of `http`, `tcp` or `exec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RawProbe", into = "RawProbe")]
#[schemars(with = "RawProbe")]
pub struct Probe {
    pub check: Check,
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub failures: u32,
    /// HTTP statuses that count as healthy, inclusive (default 200–399).
    pub status: (u16, u16),
}

/// Default healthy HTTP statuses of a probe.
pub const DEFAULT_PROBE_STATUS: (u16, u16) = (200, 399);

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// GET this path on `PORT`; a status in the probe's range is healthy.
    Http(String),
    /// Connect to `PORT`.
    Tcp,
    /// Run this command; exit 0 is healthy.
    Exec(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    /// Path to GET, e.g. `/up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    /// `true` to check that `PORT` accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<bool>,
    /// A command; exit 0 is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
    /// Healthy HTTP statuses: `200` or a range such as `200-299`
    /// (default `200-399`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

/// `200` or `200-299`: an inclusive range of HTTP statuses.
fn status_range(text: &str) -> Result<(u16, u16), String> {
    let bad =
        || format!("probe status `{text}` is not a status such as 200 or a range such as 200-299");
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

impl TryFrom<RawProbe> for Probe {
    type Error = String;
    fn try_from(raw: RawProbe) -> Result<Self, String> {
        let check = match (raw.http, raw.tcp, raw.exec) {
            (Some(path), None, None) if path.starts_with('/') => Check::Http(path),
            (Some(path), None, None) => {
                return Err(format!("probe http path `{path}` must start with `/`"));
            }
            (None, Some(true), None) => Check::Tcp,
            (None, Some(false), None) => {
                return Err("probe `tcp: false` checks nothing; remove the probe instead".into());
            }
            (None, None, Some(cmd)) if !cmd.trim().is_empty() => Check::Exec(cmd),
            (None, None, Some(_)) => return Err("probe exec command must not be empty".into()),
            (None, None, None) => return Err("probe needs one of `http`, `tcp` or `exec`".into()),
            _ => return Err("probe takes only one of `http`, `tcp` or `exec`".into()),
        };
        if raw.failures == Some(0) {
            return Err("probe failures must be at least 1".into());
        }
        let status = match (&check, raw.status.as_deref()) {
            (_, None) => DEFAULT_PROBE_STATUS,
            (Check::Http(_), Some(text)) => status_range(text)?,
            (_, Some(_)) => return Err("probe `status` applies to `http` probes only".into()),
        };
        Ok(Probe {
            check,
            interval: raw.interval,
            timeout: raw.timeout.unwrap_or(DEFAULT_PROBE_TIMEOUT),
            failures: raw.failures.unwrap_or(DEFAULT_PROBE_FAILURES),
            status,
        })
    }
}

impl From<Probe> for RawProbe {
    fn from(p: Probe) -> RawProbe {
        let (http, tcp, exec) = match p.check {
            Check::Http(path) => (Some(path), None, None),
            Check::Tcp => (None, Some(true), None),
            Check::Exec(cmd) => (None, None, Some(cmd)),
        };
        RawProbe {
            http,
            tcp,
            exec,
            interval: p.interval,
            timeout: Some(p.timeout),
            failures: Some(p.failures),
            status: (p.status != DEFAULT_PROBE_STATUS)
                .then(|| format!("{}-{}", p.status.0, p.status.1)),
        }
    }
}

/// How a new release replaces the running one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RawRelease")]
pub struct Release {
    pub strategy: Strategy,
    /// Canary steps; only for `strategy: canary`.
    pub steps: Vec<ReleaseStep>,
    pub deploy_timeout: Duration,
    pub drain_timeout: Duration,
}

/// `release` as written; [`Release`] once its fields agree with each other.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    steps: Vec<ReleaseStep>,
    #[serde(default = "default_deploy_timeout")]
    deploy_timeout: Duration,
    #[serde(default = "default_drain_timeout")]
    drain_timeout: Duration,
}

impl TryFrom<RawRelease> for Release {
    type Error = String;
    fn try_from(raw: RawRelease) -> Result<Self, String> {
        if raw.strategy != Strategy::Canary && !raw.steps.is_empty() {
            return Err("release steps apply only to `strategy: canary`".into());
        }
        Ok(Release {
            strategy: raw.strategy,
            steps: raw.steps,
            deploy_timeout: raw.deploy_timeout,
            drain_timeout: raw.drain_timeout,
        })
    }
}

impl Default for Release {
    fn default() -> Self {
        Release {
            strategy: Strategy::default(),
            steps: Vec::new(),
            deploy_timeout: DEFAULT_DEPLOY_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

fn default_deploy_timeout() -> Duration {
    DEFAULT_DEPLOY_TIMEOUT
}
fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Bluegreen,
    Canary,
    Rolling,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Bluegreen => "bluegreen",
            Strategy::Canary => "canary",
            Strategy::Rolling => "rolling",
        }
    }
}

impl Spec {
    /// What of this spec tandem accepts but does not do yet, for a warning
    /// wherever it is read: a declared behaviour must not be ignored
    /// silently.
    pub fn not_built_yet(&self) -> Option<String> {
        let strategy = self.release.strategy;
        (strategy != Strategy::Bluegreen).then(|| {
            format!(
                "release.strategy {} is not built yet: releases go blue/green",
                strategy.as_str()
            )
        })
    }
}

/// One canary step: exactly one of `weight`, `pause` or `analysis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RawReleaseStep", into = "RawReleaseStep")]
#[schemars(with = "RawReleaseStep")]
pub enum ReleaseStep {
    Weight(u8),
    Pause(Duration),
    Analysis(Analysis),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawReleaseStep {
    /// Percent of traffic to the new release, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pause: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    analysis: Option<Analysis>,
}

impl TryFrom<RawReleaseStep> for ReleaseStep {
    type Error = String;
    fn try_from(raw: RawReleaseStep) -> Result<Self, String> {
        match (raw.weight, raw.pause, raw.analysis) {
            (Some(w), None, None) if w <= 100 => Ok(ReleaseStep::Weight(w as u8)),
            (Some(w), None, None) => Err(format!("weight must be between 0 and 100, not {w}")),
            (None, Some(p), None) => Ok(ReleaseStep::Pause(p)),
            (None, None, Some(a)) => Ok(ReleaseStep::Analysis(a)),
            (None, None, None) => {
                Err("release step needs one of `weight`, `pause` or `analysis`".into())
            }
            _ => Err("release step takes only one of `weight`, `pause` or `analysis`".into()),
        }
    }
}

impl From<ReleaseStep> for RawReleaseStep {
    fn from(step: ReleaseStep) -> Self {
        let mut raw = RawReleaseStep {
            weight: None,
            pause: None,
            analysis: None,
        };
        match step {
            ReleaseStep::Weight(w) => raw.weight = Some(u32::from(w)),
            ReleaseStep::Pause(p) => raw.pause = Some(p),
            ReleaseStep::Analysis(a) => raw.analysis = Some(a),
        }
        raw
    }
}

/// Limits a canary must stay within to be promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    #[serde(default)]
    pub max_error_rate: Option<Percent>,
    #[serde(default)]
    pub max_p99_latency: Option<Duration>,
    #[serde(default)]
    pub min_requests: u64,
}

/// The environments a release is promoted through, in order. Every one but
/// the last (production) needs its own `route.host`; one named `production`
/// must be the last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    try_from = "indexmap::IndexMap<EnvName, Environment>",
    into = "indexmap::IndexMap<EnvName, Environment>"
)]
pub struct Environments(indexmap::IndexMap<EnvName, Environment>);

impl TryFrom<indexmap::IndexMap<EnvName, Environment>> for Environments {
    type Error = String;
    fn try_from(envs: indexmap::IndexMap<EnvName, Environment>) -> Result<Self, String> {
        let last = envs.len().saturating_sub(1);
        for (i, (name, env)) in envs.iter().enumerate() {
            if name.0 == "production" && i != last {
                return Err("`production` must be the last environment: environments are promoted in the order written".into());
            }
            if i != last && env.route.as_ref().and_then(|r| r.host.as_ref()).is_none() {
                return Err(format!(
                    "environment `{}` needs its own `route: {{ host: … }}`; only the last environment ({}) serves on the service's route",
                    name.0,
                    envs.keys().last().map(|k| k.0.as_str()).unwrap_or_default()
                ));
            }
        }
        Ok(Environments(envs))
    }
}

impl From<Environments> for indexmap::IndexMap<EnvName, Environment> {
    fn from(e: Environments) -> Self {
        e.0
    }
}

impl Environments {
    /// The environment named `name`.
    pub fn get(&self, name: &str) -> Option<&Environment> {
        self.0.iter().find(|(n, _)| n.0 == name).map(|(_, e)| e)
    }

    /// In promotion order; production last.
    pub fn iter(&self) -> impl Iterator<Item = (&EnvName, &Environment)> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl EnvName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One environment on the way to production.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// For the first environment: `false` makes every deployment into it
    /// wait for an approval. Later environments follow `promote`.
    #[serde(default)]
    pub auto_deploy: Option<bool>,
    #[serde(default)]
    pub promote: Promote,
    #[serde(default)]
    pub approvals: u32,
    /// Whose approvals count: the supplier's people (default), the
    /// service's customer's, or both (at least one of each).
    #[serde(default)]
    pub approvers: Approvers,
    /// Whether the commit's author may approve its promotion (matched by
    /// e-mail); four eyes by default.
    #[serde(default)]
    pub author_may_approve: bool,
    #[serde(default)]
    pub route: Option<RouteOverride>,
    /// Added to `run.env` (or replacing its values) in this environment:
    /// staging's own database, say. Secrets have `--env` for theirs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Whose approvals an environment's gate counts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Approvers {
    #[default]
    Supplier,
    Customer,
    Both,
}

impl Approvers {
    pub fn as_str(self) -> &'static str {
        match self {
            Approvers::Supplier => "supplier",
            Approvers::Customer => "customer",
            Approvers::Both => "both",
        }
    }

    /// The stricter of two: the same, or both.
    pub fn and(self, other: Approvers) -> Approvers {
        if self == other { self } else { Approvers::Both }
    }
}

impl std::str::FromStr for Approvers {
    type Err = String;
    fn from_str(s: &str) -> Result<Approvers, String> {
        match s {
            "supplier" => Ok(Approvers::Supplier),
            "customer" => Ok(Approvers::Customer),
            "both" => Ok(Approvers::Both),
            _ => Err(format!("{s:?}: one of supplier, customer, both")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Promote {
    #[default]
    Auto,
    Manual,
}

/// Route fields an environment overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteOverride {
    #[serde(default)]
    pub host: Option<Host>,
    #[serde(default)]
    pub path_prefix: Option<PathPrefix>,
}

/// A service level objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub name: String,
    pub objective: Percent,
    /// Latency threshold; makes this a latency SLO.
    #[serde(default)]
    pub threshold: Option<Duration>,
    #[serde(default)]
    pub window: SloWindow,
}

/// `calendar-month`, or a rolling window such as `30d`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum SloWindow {
    #[default]
    CalendarMonth,
    Rolling(Duration),
}

impl TryFrom<String> for SloWindow {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "calendar-month" {
            return Ok(SloWindow::CalendarMonth);
        }
        s.parse::<Duration>().map(SloWindow::Rolling).map_err(|e| {
            format!("window must be `calendar-month` or a rolling duration such as `30d`: {e}")
        })
    }
}

impl From<SloWindow> for String {
    fn from(w: SloWindow) -> String {
        match w {
            SloWindow::CalendarMonth => "calendar-month".into(),
            SloWindow::Rolling(d) => d.to_string(),
        }
    }
}

/// A spec error, located in its file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
pub struct SpecError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
    /// The offending lines with a caret, for terminals.
    pub snippet: String,
}

/// The largest `tandem.yaml` taken, in bytes: a spec is a page or two,
/// and every release stores its spec (a 30 MB `run.env` value grew the
/// database by as much per deploy). Readers read at most one byte more.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

impl Spec {
    /// Parses and validates `text`, read from `file` (used in errors only).
    pub fn parse(file: &str, text: &str) -> Result<Spec, Box<SpecError>> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(Box::new(SpecError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: format!(
                    "the spec is larger than {} KiB; a tandem.yaml is at most that (keep data in files beside it)",
                    MAX_SPEC_BYTES / 1024
                ),
                hint: None,
                snippet: String::new(),
            }));
        }
        serde_saphyr::from_str(text).map_err(|e| Box::new(locate(file, &e)))
    }

    /// The JSON Schema of `tandem.yaml`, for editors.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Spec)).unwrap_or_default()
    }

    /// The readiness probe, defaulting to a TCP connect to `PORT`.
    pub fn readiness(&self) -> Probe {
        self.health.readiness.clone().unwrap_or(Probe {
            check: Check::Tcp,
            interval: None,
            timeout: DEFAULT_PROBE_TIMEOUT,
            failures: DEFAULT_PROBE_FAILURES,
            status: DEFAULT_PROBE_STATUS,
        })
    }
}

pub(crate) fn locate(file: &str, e: &serde_saphyr::Error) -> SpecError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    // The message alone (no location: ours leads the line), on one line.
    let message = SpecMessages
        .format_message(e)
        .escape_debug()
        .to_string()
        .trim_end_matches(&format!(" at line {line}, column {column}"))
        .to_string();
    let hint = did_you_mean(&message);
    let snippet = e.render_with_options(serde_saphyr::render_options! {
        source_name: Some(file),
        formatter: &SpecMessages,
    });
    let snippet = snippet
        .split_once('\n')
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    SpecError {
        file: file.into(),
        line,
        column,
        message,
        hint,
        snippet,
    }
}

/// serde-saphyr's user-facing messages, with the parser's words for a
/// shape or a number type ("expected sequence start", "invalid u32") put in
/// a spec author's.
struct SpecMessages;

impl serde_saphyr::MessageFormatter for SpecMessages {
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        use serde_saphyr::Error;
        match err {
            Error::WithSnippet { error, .. } => self.format_message(error),
            Error::Unexpected {
                expected: "mapping start",
                ..
            } => "expected a mapping here (`key: value` lines, or `{ key: value }`)".into(),
            Error::Unexpected {
                expected: "sequence start",
                ..
            } => "expected a list here (`- item` lines, or `[item, item]`)".into(),
            Error::InvalidScalar { ty, .. } => match *ty {
                "u8" => "expected a whole number from 0 to 255".into(),
                "u16" => "expected a whole number from 0 to 65535".into(),
                "u32" => "expected a whole number from 0 to 4294967295".into(),
                "u64" | "u128" | "usize" => "expected a whole number, 0 or more".into(),
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "expected a whole number".into(),
                "f32" | "f64" => "expected a number".into(),
                "bool" => "expected true or false".into(),
                _ => serde_saphyr::UserMessageFormatter.format_message(err),
            },
            _ => serde_saphyr::UserMessageFormatter.format_message(err),
        }
    }
}

/// For serde's "unknown field `x`, expected one of a, b" (or "unknown
/// variant"), suggests the closest expected name.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (given, expected) = rest.split_once('`')?;
    let expected = expected.split_once("expected").map(|(_, e)| e)?;
    let expected = expected.trim_start_matches(" one of").trim();
    expected
        .split(',')
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty())
        .map(|c| (strsim::jaro_winkler(given, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "service:\n  name: shop-api\nrun:\n  command: python3 -m http.server $PORT\nroute:\n  host: shop.example.test\n";

    fn err(text: &str) -> SpecError {
        *Spec::parse("tandem.yaml", text).expect_err("spec should be rejected")
    }

    #[test]
    fn limits_nothing_can_live_within_are_refused_saying_which() {
        for (limits, said) in [
            (
                "{ cpu: 0.001 }",
                "run.limits.cpu must be between 0.01 and 1024",
            ),
            ("{ cpu: .nan }", "run.limits.cpu must be between"),
            ("{ memory: 1Ki }", "run.limits.memory must be at least 4Mi"),
            ("{ pids: 1 }", "run.limits.pids must be at least 4"),
            ("{ nofile: 3 }", "run.limits.nofile must be at least 16"),
            ("{ disk: 10 }", "run.limits.disk must be at least 1Mi"),
        ] {
            let text = MINIMAL.replace(
                "  command: python3 -m http.server $PORT\n",
                &format!("  command: python3 -m http.server $PORT\n  limits: {limits}\n"),
            );
            let e = err(&text);
            assert!(e.to_string().contains(said), "{limits}: {e}");
        }
        let text = MINIMAL.replace(
            "  command: python3 -m http.server $PORT\n",
            "  command: python3 -m http.server $PORT\n  limits: { cpu: 0.5, memory: 64Mi, disk: 2Mi }\n",
        );
        let spec = Spec::parse("tandem.yaml", &text).expect("fine limits");
        assert_eq!(spec.run.limits.cpu, Some(0.5));
    }

    #[test]
    fn minimal_spec_gets_every_default() {
        let spec = Spec::parse("tandem.yaml", MINIMAL).expect("minimal spec parses");
        assert_eq!(spec.service.name.as_str(), "shop-api");
        assert_eq!(spec.run.instances.get(), 1);
        assert_eq!(spec.run.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert_eq!(spec.route.path_prefix.as_str(), "/");
        assert_eq!(spec.route.timeout, DEFAULT_ROUTE_TIMEOUT);
        assert_eq!(spec.release.strategy, Strategy::Bluegreen);
        assert_eq!(spec.release.deploy_timeout, DEFAULT_DEPLOY_TIMEOUT);
        assert_eq!(spec.readiness().check, Check::Tcp);
        assert!(spec.build.is_empty() && spec.test.is_empty());
    }

    #[test]
    fn a_route_takes_its_own_timeout_and_a_bad_one_is_located() {
        let text = MINIMAL.replace(
            "  host: shop.example.test\n",
            "  host: shop.example.test\n  timeout: 5m\n",
        );
        let spec = Spec::parse("tandem.yaml", &text).expect("parses");
        assert_eq!(spec.route.timeout, Duration::from_secs(300));
        let text = MINIMAL.replace(
            "  host: shop.example.test\n",
            "  host: shop.example.test\n  timeout: soon\n",
        );
        let e = err(&text);
        assert_eq!((e.line, e.column), (7, 12), "{e}");
    }

    #[test]
    fn http_probes_take_a_status_range() {
        let text = format!("{MINIMAL}health:\n  readiness: {{ http: /up, status: 200-204 }}\n");
        let spec = Spec::parse("tandem.yaml", &text).expect("parses");
        assert_eq!(spec.readiness().status, (200, 204));
        let text = format!("{MINIMAL}health:\n  liveness: {{ http: /up, status: 299-200 }}\n");
        let e = err(&text);
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("`299-200`"), "{e}");
        let text = format!("{MINIMAL}health:\n  readiness: {{ tcp: true, status: 200 }}\n");
        assert!(err(&text).message.contains("`http` probes only"));
    }

    #[test]
    fn environments_keep_their_order_and_production_comes_last() {
        let text = format!(
            "{MINIMAL}environments:\n  staging: {{ auto_deploy: true, route: {{ host: s.test }} }}\n  production: {{ promote: manual, approvals: 2 }}\n"
        );
        let spec = Spec::parse("tandem.yaml", &text).expect("parses");
        let names: Vec<&str> = spec.environments.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["staging", "production"],
            "written order, not sorted"
        );
        let prod = spec.environments.iter().last().expect("production").1;
        assert_eq!((prod.promote, prod.approvals), (Promote::Manual, 2));

        let text = format!(
            "{MINIMAL}environments:\n  production: {{ promote: manual }}\n  staging: {{ route: {{ host: s.test }} }}\n"
        );
        let e = err(&text);
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("`production` must be the last"), "{e}");

        let text = format!(
            "{MINIMAL}environments:\n  staging: {{ auto_deploy: true }}\n  production: {{}}\n"
        );
        let e = err(&text);
        assert!(e.message.contains("`staging` needs its own `route"), "{e}");
    }

    #[test]
    fn the_briefs_full_example_parses() {
        let text = include_str!("../../../examples/shop-api/tandem.yaml");
        let spec = Spec::parse("tandem.yaml", text).expect("brief example parses");
        assert_eq!(spec.run.instances.get(), 2);
        assert_eq!(spec.release.strategy, Strategy::Canary);
        assert_eq!(
            spec.release.steps[2],
            ReleaseStep::Analysis(Analysis {
                max_error_rate: Percent::new(1.0),
                max_p99_latency: Some(Duration::from_millis(500)),
                min_requests: 100,
            })
        );
        assert_eq!(spec.slo[0].objective.value(), 99.95);
        assert_eq!(
            spec.slo[1].window,
            SloWindow::Rolling(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(spec.health.liveness.as_ref().map(|p| p.failures), Some(3));
    }

    #[test]
    fn unknown_field_is_located_with_a_hint() {
        let e = err(&MINIMAL.replace("  command:", "  instnces: 2\n  command:"));
        assert_eq!((e.line, e.column), (4, 3));
        assert!(
            e.message.contains("unknown field `instnces`"),
            "{}",
            e.message
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean `instances`?"));
        assert!(e.to_string().starts_with("tandem.yaml:4:3: unknown field"));
    }

    #[test]
    fn a_wrong_shape_or_number_is_told_in_a_spec_authors_words() {
        // A step given as a mapping where `build` takes a list of them.
        let e = err(&format!("{MINIMAL}build: {{ name: b, run: make }}\n"));
        assert_eq!((e.line, e.column), (7, 8));
        assert!(
            e.message.starts_with("expected a list here"),
            "{}",
            e.message
        );
        assert!(e.snippet.contains("expected a list here"), "{}", e.snippet);
        let e = err(&MINIMAL.replace(
            "run:\n  command: python3 -m http.server $PORT",
            "run: \"x\"",
        ));
        assert_eq!(e.line, 3);
        assert!(
            e.message.starts_with("expected a mapping here"),
            "{}",
            e.message
        );
        let e = err(&MINIMAL.replace("  command:", "  instances: two\n  command:"));
        assert_eq!((e.line, e.column), (4, 14));
        assert_eq!(e.message, "expected a whole number from 0 to 4294967295");
        let e = err(&MINIMAL.replace("  command:", "  instances: -1\n  command:"));
        assert_eq!(e.message, "expected a whole number from 0 to 4294967295");
    }

    #[test]
    fn bad_duration_is_located_at_its_value() {
        let e = err(&format!("{MINIMAL}release:\n  deploy_timeout: 60\n"));
        assert_eq!((e.line, e.column), (8, 19));
        assert!(e.message.contains("has no unit"), "{}", e.message);
    }

    #[test]
    fn bad_name_is_located_at_its_value() {
        let e = err(&MINIMAL.replace("shop-api", "Shop_API"));
        assert_eq!((e.line, e.column), (2, 9));
        assert!(
            e.message.contains("only lowercase letters"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_required_field_is_named() {
        let e = err("service:\n  name: a\nroute:\n  host: a.test\n");
        assert!(e.message.contains("missing field `run`"), "{}", e.message);
        assert!(e.line >= 1);
    }

    #[test]
    fn syntax_error_is_located() {
        // Indentation that breaks the block mapping: a YAML syntax error.
        let e = err("service:\n  name: web\n run: x\n");
        assert_eq!((e.line, e.column), (3, 2), "{e}");
        assert!(
            e.message.contains("did not find expected key"),
            "{}",
            e.message
        );
    }

    #[test]
    fn probe_needs_exactly_one_check() {
        let e = err(&format!(
            "{MINIMAL}health:\n  readiness: {{ http: /up, tcp: true }}\n"
        ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("only one of"), "{}", e.message);
    }

    #[test]
    fn steps_without_canary_are_rejected_at_the_key() {
        let e = err(&format!("{MINIMAL}release:\n  steps:\n    - weight: 10\n"));
        assert_eq!((e.line, e.column), (8, 3));
        assert!(
            e.message.contains("only to `strategy: canary`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn tier_names_match_the_spec() {
        for tier in [Tier::Critical, Tier::Standard, Tier::BestEffort] {
            assert_eq!(
                serde_json::to_value(tier).ok(),
                Some(serde_json::json!(tier.as_str()))
            );
        }
    }

    #[test]
    fn schema_names_the_top_level_fields() {
        let schema = Spec::json_schema();
        let props = schema["properties"].as_object().expect("properties");
        for key in [
            "service",
            "build",
            "test",
            "artifact",
            "run",
            "route",
            "health",
            "release",
            "environments",
            "slo",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
    }

    /// Properties over mangled copies of the brief's full example: the
    /// parser never panics, every error is located inside the file, and a
    /// spec that parses comes back equal from the JSON a release stores.
    mod properties {
        use super::*;
        use proptest::prelude::{
            ProptestConfig, prop_assert, prop_assert_eq, prop_oneof, proptest,
        };
        use proptest::strategy::Strategy as _;

        const FULL: &str = include_str!("../../../examples/shop-api/tandem.yaml");

        /// FULL with one of: a line dropped, a line doubled, a byte
        /// replaced by one that matters to YAML.
        fn mangled() -> impl proptest::strategy::Strategy<Value = String> {
            let lines = FULL.lines().count();
            let bytes = FULL.len();
            prop_oneof![
                (0..lines).prop_map(|drop| {
                    FULL.lines()
                        .enumerate()
                        .filter(|(i, _)| *i != drop)
                        .map(|(_, l)| format!("{l}\n"))
                        .collect()
                }),
                (0..lines).prop_map(|twice| {
                    FULL.lines()
                        .enumerate()
                        .flat_map(|(i, l)| {
                            let n = if i == twice { 2 } else { 1 };
                            std::iter::repeat_n(format!("{l}\n"), n)
                        })
                        .collect()
                }),
                (
                    0..bytes,
                    proptest::sample::select(vec![
                        ':', ' ', '-', '{', '}', '[', '"', '\t', '#', '0', 'x', '%', '\n', '&',
                        '*',
                    ]),
                )
                    .prop_map(|(at, c)| {
                        let mut text = FULL.as_bytes().to_vec();
                        text[at] = c as u8;
                        String::from_utf8_lossy(&text).into_owned()
                    }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            #[test]
            fn a_mangled_spec_is_refused_at_a_place_in_it_or_survives_storage(text in mangled()) {
                match Spec::parse("tandem.yaml", &text) {
                    Err(e) => {
                        let lines = text.lines().count() as u64 + 1;
                        prop_assert!((1..=lines).contains(&e.line), "line {} of {lines}: {e}", e.line);
                        prop_assert!(e.column >= 1, "{e}");
                        prop_assert!(!e.message.is_empty());
                        let located = format!("tandem.yaml:{}:{}: ", e.line, e.column);
                        prop_assert!(e.to_string().starts_with(&located), "{e}");
                    }
                    Ok(spec) => {
                        let stored = serde_json::to_value(&spec).expect("to JSON");
                        let back: Spec = serde_json::from_value(stored).expect("from JSON");
                        prop_assert_eq!(back, spec);
                    }
                }
            }
        }
    }
}
