//! Continuous delivery over HTTP: registering services from repositories,
//! push webhooks, runs, and run logs as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tandem_delivery::hooks::Provider;
use tandem_delivery::{AddService, DEFAULT_POLL_INTERVAL, HookOutcome};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{ApiError, AppState, Caller};

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct AddBody {
    url: String,
    branch: Option<String>,
    webhook_secret: Option<String>,
    /// A duration such as `30s`.
    poll_interval: Option<String>,
    #[serde(default)]
    path: Option<String>,
    /// A token for the repository over HTTPS, kept sealed, never shown.
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_username: Option<String>,
    /// A deploy key for the repository over SSH (an OpenSSH private key),
    /// kept sealed, never shown.
    #[serde(default)]
    ssh_key: Option<String>,
}

pub(crate) async fn add_service(
    State(s): State<AppState>,
    caller: Caller,
    Json(body): Json<AddBody>,
) -> Result<Response, ApiError> {
    let poll_interval = match body.poll_interval.as_deref() {
        None => DEFAULT_POLL_INTERVAL,
        Some(text) => text
            .parse::<tandem_core::Duration>()
            .map_err(|e| ApiError::BadInput(format!("poll interval {text:?}: {e}")))?
            .to_std(),
    };
    if poll_interval < Duration::from_millis(100) {
        return Err(ApiError::BadInput(
            "poll interval must be at least 100ms".into(),
        ));
    }
    let path = tandem_delivery::repo_path(body.path.as_deref().unwrap_or(""))?;
    let credential = match (body.token, body.ssh_key) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadInput(
                "give a token or a deploy key, not both".into(),
            ));
        }
        (Some(token), None) => {
            if token.is_empty()
                || token.len() > 4096
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ApiError::BadInput(
                    "the token must be 1 to 4096 bytes without spaces or control characters".into(),
                ));
            }
            let username = body.token_username.unwrap_or_else(|| "tandem".into());
            if username.is_empty() || username.len() > 256 || username.contains(['\n', '\0', ':']) {
                return Err(ApiError::BadInput("--token-user is not a user name".into()));
            }
            Some(tandem_delivery::git::Credential::Token { username, token })
        }
        (None, Some(key)) => {
            let key = key.trim().to_owned();
            if key.len() > 16 * 1024
                || !key.starts_with("-----BEGIN ")
                || !key.ends_with("PRIVATE KEY-----")
            {
                return Err(ApiError::BadInput(
                    "the deploy key is not a private key in OpenSSH or PEM form (-----BEGIN … PRIVATE KEY-----, at most 16 KiB)".into(),
                ));
            }
            if body.url.starts_with("http://") || body.url.starts_with("https://") {
                return Err(ApiError::BadInput(format!(
                    "a deploy key is for SSH, and {} is an HTTP URL (use --token-from-stdin)",
                    body.url
                )));
            }
            Some(tandem_delivery::git::Credential::SshKey {
                key,
                known_hosts: s.delivery.known_hosts(),
            })
        }
    };
    let req = AddService {
        credential,
        path,
        url: body.url,
        branch: body.branch.unwrap_or_else(|| "main".into()),
        webhook_secret: body.webhook_secret.filter(|s| !s.is_empty()),
        poll_interval,
    };
    let (service, run) = s.delivery.add_service(req, &caller.actor()).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "service": service, "run": run })),
    )
        .into_response())
}

pub(crate) async fn remove_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.delivery.remove_service(&name, &caller.actor()).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

pub(crate) async fn hook(
    State(s): State<AppState>,
    Path((name, provider)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = Provider::from_path(&provider).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no webhook provider {provider}; use github, gitlab or gitea"
        ))
    })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let outcome = s.delivery.hook(&name, provider, header, &body).await?;
    let (status, body) = match outcome {
        HookOutcome::Refused(why) => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": why }),
        ),
        HookOutcome::Ignored(why) => (StatusCode::ACCEPTED, serde_json::json!({ "ignored": why })),
        HookOutcome::Queued(run) => (StatusCode::ACCEPTED, serde_json::json!({ "run": run })),
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
pub(crate) struct RunBody {
    #[serde(rename = "ref")]
    rev: Option<String>,
}

pub(crate) async fn start_run(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    body: Option<Json<RunBody>>,
) -> Result<Response, ApiError> {
    let rev = body.and_then(|b| b.0.rev);
    let run = s
        .delivery
        .deploy_ref(&name, rev.as_deref(), &caller.actor())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!(run))).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct RunsQuery {
    service: Option<String>,
    limit: Option<u32>,
}

pub(crate) async fn runs(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let seen = caller.services(&s.engine.store).await?;
    if let Some(name) = &q.service
        && (s.engine.store.service(name).await?.is_none() || !crate::auth::visible(&seen, name))
    {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    let limit = q.limit.unwrap_or(50).min(1000);
    let mut runs = match &seen {
        // The newest of the customer's: read them service by service.
        Some(names) if q.service.is_none() => {
            let mut all = Vec::new();
            for name in names {
                all.extend(s.engine.store.runs(Some(name), limit).await?);
            }
            all.sort_by_key(|r| std::cmp::Reverse(r.id));
            all
        }
        _ => s.engine.store.runs(q.service.as_deref(), limit).await?,
    };
    runs.truncate(limit as usize);
    Ok(Json(serde_json::json!(runs)))
}

pub(crate) async fn run(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(s.delivery.run(id).await?)))
}

pub(crate) async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(
        s.delivery.cancel(id, &caller.actor()).await?
    )))
}

pub(crate) async fn approve(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(
        s.delivery.approve(id, &approver(&caller)).await?
    )))
}

/// The caller as someone deciding on a promotion: their side is their
/// customer's for a customer's people (whose reach `auth::check` has
/// limited to that customer's services), else the supplier's.
fn approver(caller: &Caller) -> tandem_delivery::Approver {
    tandem_delivery::Approver {
        actor: caller.actor(),
        email: caller.identity.email.clone(),
        customer: caller
            .identity
            .role
            .is_customer()
            .then(|| caller.identity.customer.clone())
            .flatten(),
    }
}

pub(crate) async fn policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.engine.store.service(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    Ok(Json(serde_json::json!(
        s.engine.store.policies(&name).await?
    )))
}

pub(crate) async fn set_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    Json(change): Json<tandem_delivery::PolicyChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(
        s.delivery
            .set_policy(&name, change, &caller.actor())
            .await?
    )))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct RejectBody {
    reason: String,
}

pub(crate) async fn reject(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
    Json(body): Json<RejectBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(
        s.delivery
            .reject(id, &approver(&caller), &body.reason)
            .await?
    )))
}

pub(crate) async fn retry(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let run = s.delivery.retry(id, &caller.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!(run))).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct LogQuery {
    follow: Option<bool>,
}

/// The run's log as Server-Sent Events: one `line` event per line, then an
/// `end` event with the run's status. With `follow`, new lines are sent as
/// they are written until the run finishes or waits for an approval.
pub(crate) async fn logs(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    s.delivery.run(id).await?;
    let follow = q.follow.unwrap_or(false);
    let state = Tail {
        s,
        id,
        follow,
        offset: 0,
        partial: Vec::new(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut t| async move {
        let chunk = t.next().await?;
        Some((Ok::<_, Infallible>(chunk), t))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

struct Tail {
    s: AppState,
    id: i64,
    follow: bool,
    offset: u64,
    partial: Vec<u8>,
    ended: bool,
}

impl Tail {
    /// The next SSE frames: new lines, or the end event; `None` after it.
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            // Read the status first: lines written before it are then all seen.
            let run = self.s.delivery.run(self.id).await.ok()?;
            let lines = self.read_lines().await;
            if !lines.is_empty() {
                let mut out = String::new();
                for line in lines {
                    out.push_str("event: line\n");
                    for part in line.split('\r') {
                        out.push_str("data: ");
                        out.push_str(part);
                        out.push('\n');
                    }
                    out.push('\n');
                }
                return Some(Bytes::from(out));
            }
            // A run parked for an approval ends the stream too: it may wait for days.
            if run.is_finished() || run.status == "waiting-approval" || !self.follow {
                self.ended = true;
                let end = serde_json::json!({ "status": run.status, "reason": run.reason });
                return Some(Bytes::from(format!("event: end\ndata: {end}\n\n")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn read_lines(&mut self) -> Vec<String> {
        let path = self.s.delivery.log_path(self.id);
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return Vec::new();
        };
        if file
            .seek(std::io::SeekFrom::Start(self.offset))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let Ok(n) = file.read_to_end(&mut buf).await else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=last).collect();
        String::from_utf8_lossy(&complete)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Secret names as environment variables name them.
fn check_secret_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadInput(format!(
            "secret name {name:?} must look like an environment variable: letters, digits and _, not starting with a digit"
        )))
    }
}

fn check_service_name(name: &str) -> Result<(), ApiError> {
    tandem_core::spec::ServiceName::try_from(name.to_owned())
        .map(drop)
        .map_err(ApiError::BadInput)
}

pub(crate) async fn secrets(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_service_name(&name)?;
    Ok(Json(serde_json::json!(
        s.engine.store.secrets(&name).await?
    )))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct SecretBody {
    value: String,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
pub(crate) struct SecretQuery {
    /// One environment's value (else the service-wide one).
    env: Option<String>,
}

/// `env` as a secret's environment: one the service declares, if it is
/// registered (a secret may be set before).
async fn secret_env(
    s: &AppState,
    service: &str,
    env: Option<String>,
) -> Result<Option<String>, ApiError> {
    let Some(env) = env.filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    check_secret_env(&env)?;
    if let Some(row) = s.engine.store.service(service).await?
        && !row.declares_env(&env)
    {
        return Err(ApiError::BadInput(format!(
            "{service} has no environment {env}"
        )));
    }
    Ok(Some(env))
}

fn check_secret_env(env: &str) -> Result<(), ApiError> {
    let ok = env.len() <= 64
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadInput(format!(
            "{env:?} is not an environment name"
        )))
    }
}

/// Secrets may be set before the service is registered, so its first
/// release finds them.
pub(crate) async fn set_secret(
    State(s): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    caller: Caller,
    Query(q): Query<SecretQuery>,
    Json(body): Json<SecretBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_service_name(&name)?;
    check_secret_name(&secret)?;
    let env = secret_env(&s, &name, q.env).await?;
    if body.value.is_empty() || body.value.len() > 64 * 1024 {
        return Err(ApiError::BadInput(
            "a secret value must be 1 byte to 64 KiB".into(),
        ));
    }
    // It becomes an environment variable, which cannot hold one: the
    // service could never start again.
    if body.value.contains('\0') {
        return Err(ApiError::BadInput(
            "a secret value cannot contain a NUL byte: it is given to the service as an environment variable".into(),
        ));
    }
    s.engine
        .store
        .set_secret(&name, env.as_deref(), &secret, &body.value, &caller.actor())
        .await?;
    Ok(Json(
        serde_json::json!({ "service": name, "name": secret, "env": env }),
    ))
}

pub(crate) async fn remove_secret(
    State(s): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    caller: Caller,
    Query(q): Query<SecretQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let env = q.env.filter(|e| !e.is_empty());
    if let Some(e) = &env {
        check_secret_env(e)?;
    }
    s.engine
        .store
        .remove_secret(&name, env.as_deref(), &secret, &caller.actor())
        .await?;
    Ok(Json(serde_json::json!({ "removed": secret })))
}
