//! The control plane's HTTP API under `/api/v1`, plus `/metrics`.
//!
//! Handlers are thin: they read the actor, call the engine or the store, and
//! let [`error::ApiError`] decide the status. Long work (deploy, rollback)
//! answers with a stream of newline-delimited JSON progress events and goes on
//! even when the client disconnects.

mod audit;
pub mod auth;
pub mod error;
pub mod openapi;
mod ops;
mod people;
mod pipelines;
mod reports;
pub mod serve;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;

use tandem_core::protocol::LogCursor;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use axum::{Json, Router};
use serde::Deserialize;
use tandem_engine::{Engine, EngineError, Reporter};

pub use auth::Caller;
pub use error::ApiError;

/// What every handler reaches, shared: cloned per request by axum's
/// extractors and middleware, so a clone is one reference count.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

pub struct Shared {
    pub engine: Engine,
    pub delivery: tandem_delivery::Delivery,
    pub ops: tandem_ops::Ops,
    pub agent_status: RecentStatus,
    /// Requests refused by [`auth::check`], for `/metrics`.
    pub refused: auth::Refused,
    /// Host names the API answers to besides IP addresses and localhost.
    pub allowed_hosts: auth::AllowedHosts,
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The agent's status for API calls, asked once for all the calls that
/// wait at the same time: a caller takes an answer the agent gave to a
/// question asked after it came (so never an older state than its own
/// call), else asks itself while the others wait. A thousand `/status`
/// calls at once are a couple of questions to the agent, not a thousand
/// answers in memory.
type StatusAt = (
    std::time::Instant,
    Option<std::sync::Arc<tandem_core::protocol::AgentStatus>>,
);

#[derive(Clone, Default)]
pub struct RecentStatus(std::sync::Arc<tokio::sync::Mutex<Option<StatusAt>>>);

impl RecentStatus {
    /// The agent's status (`None`: it did not answer), asked no earlier
    /// than this call.
    pub async fn recent(
        &self,
        agent: &tandem_engine::AgentClient,
    ) -> Option<std::sync::Arc<tandem_core::protocol::AgentStatus>> {
        let came = std::time::Instant::now();
        let mut cached = self.0.lock().await;
        if let Some((asked, status)) = cached.as_ref()
            && *asked >= came
        {
            return status.clone();
        }
        let asked = std::time::Instant::now();
        let status = agent.status().await.ok().map(std::sync::Arc::new);
        *cached = Some((asked, status.clone()));
        status
    }
}

/// The API's routes, built and recorded in one place: the router serves
/// exactly what [`route_table`] lists, and a test holds that table equal to
/// [`openapi::PATHS`] (documented, with who may call it).
#[derive(Default)]
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let (filter, name) = match method {
            Method::Get => (MethodFilter::GET, "GET"),
            Method::Post => (MethodFilter::POST, "POST"),
            Method::Put => (MethodFilter::PUT, "PUT"),
            Method::Delete => (MethodFilter::DELETE, "DELETE"),
        };
        self.router = self.router.route(path, axum::routing::on(filter, handler));
        self.table.push((name, path));
        self
    }
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}
use Method::{Delete as DELETE, Get as GET, Post as POST, Put as PUT};

fn routes() -> Routes {
    Routes::default()
        .add(GET, "/api/v1/health", health)
        .add(GET, "/api/v1/openapi.json", openapi::document)
        .add(GET, "/api/v1/services", services)
        .add(POST, "/api/v1/services", pipelines::add_service)
        .add(GET, "/api/v1/services/{name}", service)
        .add(DELETE, "/api/v1/services/{name}", pipelines::remove_service)
        .add(
            POST,
            "/api/v1/services/{name}/hooks/{provider}",
            pipelines::hook,
        )
        .add(POST, "/api/v1/services/{name}/runs", pipelines::start_run)
        .add(GET, "/api/v1/services/{name}/secrets", pipelines::secrets)
        .add(
            PUT,
            "/api/v1/services/{name}/secrets/{secret}",
            pipelines::set_secret,
        )
        .add(
            DELETE,
            "/api/v1/services/{name}/secrets/{secret}",
            pipelines::remove_secret,
        )
        .add(GET, "/api/v1/runs", pipelines::runs)
        .add(GET, "/api/v1/runs/{id}", pipelines::run)
        .add(GET, "/api/v1/runs/{id}/logs", pipelines::logs)
        .add(POST, "/api/v1/runs/{id}/cancel", pipelines::cancel)
        .add(POST, "/api/v1/runs/{id}/retry", pipelines::retry)
        .add(POST, "/api/v1/runs/{id}/approve", pipelines::approve)
        .add(POST, "/api/v1/runs/{id}/reject", pipelines::reject)
        .add(GET, "/api/v1/services/{name}/policy", pipelines::policy)
        .add(PUT, "/api/v1/services/{name}/policy", pipelines::set_policy)
        .add(GET, "/api/v1/services/{name}/releases", releases)
        .add(POST, "/api/v1/services/{name}/rollback", rollback)
        .add(GET, "/api/v1/services/{name}/logs", logs)
        .add(POST, "/api/v1/deploys", deploy)
        .add(GET, "/api/v1/status", status)
        .add(GET, "/api/v1/incidents", ops::incidents)
        .add(GET, "/api/v1/incidents/{id}", ops::incident)
        .add(POST, "/api/v1/incidents/{id}/ack", ops::acknowledge)
        .add(POST, "/api/v1/incidents/{id}/resolve", ops::resolve)
        .add(
            POST,
            "/api/v1/services/{name}/maintenance",
            ops::schedule_maintenance,
        )
        .add(
            POST,
            "/api/v1/services/{name}/maintenance-mode",
            ops::maintenance_mode,
        )
        .add(GET, "/api/v1/maintenance", ops::maintenance)
        .add(DELETE, "/api/v1/maintenance/{id}", ops::remove_maintenance)
        .add(GET, "/api/v1/channels", ops::channels)
        .add(POST, "/api/v1/channels", ops::add_channel)
        .add(DELETE, "/api/v1/channels/{id}", ops::remove_channel)
        .add(GET, "/api/v1/events", events)
        .add(GET, "/api/v1/audit/verify", audit_verify)
        .add(GET, "/api/v1/audit/key", audit::key)
        .add(GET, "/api/v1/audit/checkpoint", audit::checkpoint)
        .add(GET, "/api/v1/audit/consistency", audit::consistency)
        .add(GET, "/api/v1/audit/export", reports::export)
        .add(GET, "/api/v1/reports/sla", reports::sla)
        .add(GET, "/api/v1/reports/dora", reports::dora)
        .add(GET, "/api/v1/reports/changes", reports::changes)
        .add(GET, "/api/v1/trace", reports::trace)
        .add(GET, "/api/v1/customers/{name}/contract", reports::contract)
        .add(
            PUT,
            "/api/v1/customers/{name}/contract",
            reports::set_contract,
        )
        .add(GET, "/api/v1/backup", backup)
        .add(GET, "/metrics", metrics)
        .add(GET, "/api/v1/whoami", people::whoami)
        .add(GET, "/api/v1/users", people::users)
        .add(POST, "/api/v1/users", people::add_user)
        .add(DELETE, "/api/v1/users/{name}", people::remove_user)
        .add(GET, "/api/v1/tokens", people::tokens)
        .add(POST, "/api/v1/tokens", people::create_token)
        .add(DELETE, "/api/v1/tokens/{id}", people::revoke_token)
        .add(GET, "/api/v1/customers", people::customers)
        .add(POST, "/api/v1/customers", people::add_customer)
}

/// Every (method, path) the router serves, as the router spells the path.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    routes().table
}

pub fn router(state: AppState) -> Router {
    routes()
        .router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::same_site,
        ))
        .with_state(state)
}

/// A backup (a tar: see `tandem_engine::backup`), written to a file of the
/// data directory, which is unlinked once open and streamed from there.
async fn backup(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let dir = s.engine.data_dir().join("backups");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!(
        ".download-{}-{}.tar",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    let manifest = s
        .engine
        .backup(&path, &caller.actor())
        .await
        .map_err(|e| match e {
            tandem_engine::backup::BackupError::Store(e) => ApiError::from(e),
            e => ApiError::Internal(e.to_string()),
        })?;
    let file = tokio::fs::File::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = file.map_err(|e| ApiError::Internal(format!("reopening the backup: {e}")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_LENGTH, len)
        .header("x-tandem-journal-events", manifest.events)
        .header("x-tandem-journal-head", &manifest.head)
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Whether the control plane can do its work: 503 while the store cannot
/// write (a full disk, say), with the fault and since when.
async fn health(State(s): State<AppState>) -> Response {
    let fault = s.engine.store.fault();
    let status = if fault.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let storage = match &fault {
        None => serde_json::json!({ "ok": true }),
        Some(f) => serde_json::json!({
            "ok": false, "kind": f.kind, "since": f.since, "error": f.to_string(),
        }),
    };
    let body = serde_json::json!({
        "ok": fault.is_none(),
        "version": env!("CARGO_PKG_VERSION"),
        "storage": storage,
    });
    (status, Json(body)).into_response()
}

/// Every service, and for one from a repository how its polling goes
/// (`repo.polled_at`, `repo.poll_error`, `repo.failing_since`).
async fn services(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let repos = s.engine.store.repos().await?;
    let seen = caller.services(&s.engine.store).await?;
    let out: Vec<serde_json::Value> = s
        .engine
        .store
        .services()
        .await?
        .into_iter()
        .filter(|svc| auth::visible(&seen, &svc.name))
        .map(|svc| {
            let mut v = serde_json::to_value(&svc).unwrap_or_default();
            if let Some(repo) = repos.iter().find(|r| r.service == svc.name) {
                let last = s.delivery.last_poll(&svc.name);
                v["repo"] = serde_json::json!({
                    "url": repo.url,
                    "branch": repo.branch,
                    "poll_interval_ms": repo.poll_interval_ms,
                    "polled_at": last.as_ref().map(|p| p.at.clone()),
                    "poll_error": repo.poll_error,
                    "failing_since": repo.poll_failing_since,
                });
            }
            v
        })
        .collect();
    Ok(Json(serde_json::Value::Array(out)))
}

async fn service(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let svc = s
        .engine
        .store
        .service(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no service named {name}")))?;
    Ok(Json(serde_json::to_value(svc).unwrap_or_default()))
}

async fn releases(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.engine.store.service(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    Ok(Json(
        serde_json::to_value(s.engine.store.releases(&name).await?).unwrap_or_default(),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct DeployBody {
    dir: PathBuf,
    /// Deploy over a service registered from a repository, past its
    /// pipeline and gates (admins only; journalled `deploy.forced`).
    #[serde(default)]
    force: bool,
}

async fn deploy(
    State(s): State<AppState>,
    caller: Caller,
    Json(body): Json<DeployBody>,
) -> Response {
    // A service registered from a repository is released by its pipeline,
    // with its approvals: a directory naming it does not get around them.
    if let Ok(spec) = tandem_engine::read_spec(&body.dir) {
        let name = spec.service.name.to_string();
        match s.engine.store.repo(&name).await {
            Ok(Some(repo)) if !body.force => {
                return ApiError::Forbidden(format!(
                    "{name} is delivered from {}#{} by its pipeline and gates; deploy it with `tandem deploy {name} [--ref R]` (an admin may force a directory with --force)",
                    repo.url, repo.branch
                ))
                .into_response();
            }
            Ok(Some(_)) if caller.identity.role != tandem_core::access::Role::Admin => {
                return ApiError::Forbidden(format!(
                    "only an admin may force a directory over {name}, which is delivered from a repository"
                ))
                .into_response();
            }
            Ok(Some(_)) => {
                let event = tandem_core::journal::NewEvent::new(caller.actor(), "deploy.forced")
                    .subject("service", &name)
                    .payload(serde_json::json!({ "dir": body.dir }));
                if let Err(e) = s.engine.store.append(event).await {
                    return ApiError::from(e).into_response();
                }
            }
            Ok(None) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let actor = caller.actor();
    stream_progress(move |reporter| async move {
        s.engine.deploy_dir(&body.dir, &actor, &reporter).await
    })
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
pub(crate) struct RollbackBody {
    to: Option<String>,
    /// Release `to` even if it never went live.
    #[serde(default)]
    force: bool,
}

async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    body: Option<Json<RollbackBody>>,
) -> Response {
    let actor = caller.actor();
    let body = body.map(|b| b.0).unwrap_or_default();
    let force = body.force;
    let to = body.to;
    let to = match to
        .as_deref()
        .map(|t| t.trim_start_matches('r').parse::<i64>())
    {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return ApiError::BadInput(format!(
                "--to {} is not a release such as r3",
                to.unwrap_or_default()
            ))
            .into_response();
        }
    };
    stream_progress(move |reporter| async move {
        s.engine.rollback(&name, to, force, &actor, &reporter).await
    })
}

/// Runs `work` on its own task and streams its progress as NDJSON; the last
/// line is always a `done` event.
fn stream_progress<F, Fut>(work: F) -> Response
where
    F: FnOnce(Reporter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<tandem_store::ReleaseRow, EngineError>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = Reporter::new(tx);
    // The work goes on in a task of its own: it keeps the request's token.
    let token = tandem_store::current_token().unwrap_or_default();
    tokio::spawn(tandem_store::with_token(token, async move {
        if let Err(e) = work(reporter.clone()).await {
            reporter.send(ApiError::from(e).into_progress());
        }
    }));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let p = rx.recv().await?;
        let mut line = serde_json::to_vec(&p).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(bytes::Bytes::from(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct StatusQuery {
    service: Option<String>,
}

async fn status(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<StatusQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let seen = caller.services(&s.engine.store).await?;
    let mut services = s.engine.store.services().await?;
    services.retain(|svc| auth::visible(&seen, &svc.name));
    if let Some(name) = &q.service
        && !services.iter().any(|x| &x.name == name)
    {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    let agent = s.agent_status.recent(&s.engine.agent).await;
    let a_minute_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let unit = |name: &str| {
        agent
            .as_ref()
            .and_then(|a| a.services.iter().find(|x| x.service == name))
    };
    let mut out = Vec::new();
    for svc in services
        .iter()
        .filter(|svc| q.service.as_ref().is_none_or(|n| *n == svc.name))
    {
        let running = unit(&svc.name);
        // Environments before production run as `<service>@<env>`.
        let environments: Vec<serde_json::Value> = s
            .engine
            .store
            .deployments(&svc.name)
            .await?
            .into_iter()
            .map(|d| {
                let running = unit(&format!("{}@{}", d.service, d.env));
                serde_json::json!({
                    "env": d.env,
                    "release": format!("r{}", d.release),
                    "route": running.and_then(|r| r.route.clone()),
                    "serving": running.and_then(|r| r.active.clone()),
                    "instances": running.map(|r| r.instances.clone()).unwrap_or_default(),
                })
            })
            .collect();
        // SLOs only for one service: reading a month of minutes each is not free.
        let slos = match (
            &q.service,
            serde_json::from_value::<tandem_core::Spec>(svc.spec.clone()),
        ) {
            (Some(_), Ok(spec)) => {
                tandem_ops::slo::report(&s.engine.store, &spec, tandem_ops::slo::now_minute())
                    .await?
            }
            _ => Vec::new(),
        };
        let maintenance: Vec<_> = s
            .engine
            .store
            .maintenance_ending_after(&svc.name, &a_minute_ago)
            .await?
            .into_iter()
            .filter(|w| {
                w.ends_at
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|end| end > jiff::Timestamp::now())
            })
            .collect();
        out.push(serde_json::json!({
                "service": svc.name,
                "slo": slos,
                "maintenance": maintenance,
                "maintenance_mode": running.and_then(|r| r.maintenance),
                "owner": svc.owner,
                "customer": svc.customer,
                "tier": svc.tier,
                "live_release": svc.live_release.map(|n| format!("r{n}")),
                "route": running.and_then(|r| r.route.clone()),
                "serving": running.and_then(|r| r.active.clone()),
                "instances": running.map(|r| r.instances.clone()).unwrap_or_default(),
                "environments": environments,
        }));
    }
    Ok(Json(serde_json::json!({
        "agent": agent.as_ref().map(|a| serde_json::json!({ "pid": a.pid, "proxy_addr": a.proxy_addr })),
        "services": out,
    })))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct LogsQuery {
    lines: Option<usize>,
    release: Option<String>,
    /// Where a follower got to: `INSTANCE:FILE:OFFSET`, comma-separated
    /// (the `next` of the last line it has of each instance).
    after: Option<String>,
}

/// Parses `LogsQuery::after`.
fn log_cursors(text: &str) -> Result<BTreeMap<String, LogCursor>, ApiError> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let bad = || {
                ApiError::BadInput(format!(
                    "after: `{part}` is not INSTANCE:FILE:OFFSET (numbers for FILE and OFFSET)"
                ))
            };
            let mut fields = part.rsplitn(3, ':');
            let offset = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            let file = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            let instance = fields.next().filter(|i| !i.is_empty()).ok_or_else(bad)?;
            Ok((instance.to_owned(), LogCursor { file, offset }))
        })
        .collect()
}

async fn logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.engine.store.service(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    let lines = q.lines.unwrap_or(100).min(10_000);
    let after = log_cursors(q.after.as_deref().unwrap_or_default())?;
    let mut lines = s
        .engine
        .agent
        .logs(&name, q.release, lines, after)
        .await
        .map_err(EngineError::from)?;
    // What the instance printed of its secrets (a log written before the
    // agent masked, or a value set since), masked like run logs.
    let secrets = tandem_core::masking::Masker::new(s.engine.store.all_secret_values(&name).await?);
    if !secrets.is_empty() {
        for l in &mut lines {
            l.line = secrets.mask(&l.line);
        }
    }
    Ok(Json(serde_json::to_value(lines).unwrap_or_default()))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

/// Journal events after a sequence number. A customer's people get the
/// events about their customer's services only, a page as full as for
/// anyone (a short page means the end).
async fn events(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let mut after = q.after.unwrap_or(0);
    let seen = caller.services(&s.engine.store).await?;
    let Some(seen) = seen else {
        let events = s.engine.store.events(after, limit).await?;
        return Ok(Json(serde_json::to_value(events).unwrap_or_default()));
    };
    let mut out = Vec::new();
    loop {
        // Read in big pages whatever the caller's page: a customer asking
        // a page of one would otherwise cost a query per event journalled.
        let read = limit.max(1000);
        let page = s.engine.store.events(after, read).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() as u32 == read;
        out.extend(
            page.into_iter()
                .filter(|e| e.subject.get("service").is_some_and(|n| seen.contains(n))),
        );
        if out.len() >= limit as usize || !full {
            break;
        }
    }
    out.truncate(limit as usize);
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

async fn audit_verify(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(match s.engine.store.verify().await? {
        Ok((events, head)) => serde_json::json!({ "ok": true, "events": events, "head": head }),
        Err(broken) => serde_json::json!({ "ok": false, "error": broken.to_string() }),
    }))
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let mut text = s.engine.agent.metrics().await.map_err(EngineError::from)?;
    text.push_str(&s.refused.metrics());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
