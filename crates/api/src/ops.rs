//! Operations over HTTP: incidents (list, acknowledge, resolve) and the
//! channels that hear of them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tandem_store::ChannelRow;

use crate::{ApiError, AppState, Caller};

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct IncidentsQuery {
    /// Only unresolved incidents.
    open: Option<bool>,
    limit: Option<u32>,
}

pub(crate) async fn incidents(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<IncidentsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let seen = caller.services(&s.engine.store).await?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    // A customer's page is of their own incidents: filtered before it is
    // cut, not after.
    let read = if seen.is_some() { 10_000 } else { limit };
    let mut rows = s
        .engine
        .store
        .incidents(q.open.unwrap_or(false), read)
        .await?;
    rows.retain(|i| crate::auth::visible(&seen, &i.service));
    rows.truncate(limit as usize);
    Ok(Json(serde_json::json!(rows)))
}

pub(crate) async fn incident(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = s
        .engine
        .store
        .incident(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id}")))?;
    let deliveries = s.engine.store.deliveries(id).await?;
    let notifications: Vec<serde_json::Value> = s
        .engine
        .store
        .outbox_of(id)
        .await?
        .into_iter()
        .map(|n| {
            serde_json::json!({
                "webhook_id": n.webhook_id, "channel": n.channel, "event": n.event,
                "status": n.status, "attempts": n.attempts, "next_at": n.next_at,
                "last_detail": n.last_detail, "created_at": n.created_at, "done_at": n.done_at,
            })
        })
        .collect();
    let mut v = serde_json::json!(row);
    v["deliveries"] = serde_json::json!(deliveries);
    v["notifications"] = serde_json::json!(notifications);
    Ok(Json(v))
}

pub(crate) async fn acknowledge(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(
        s.ops.acknowledge(id, &caller.actor()).await?
    )))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
pub(crate) struct ResolveBody {
    note: Option<String>,
}

pub(crate) async fn resolve(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
    body: Option<Json<ResolveBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let note = body.and_then(|b| b.0.note).filter(|n| !n.trim().is_empty());
    Ok(Json(serde_json::json!(
        s.ops.resolve(id, &caller.actor(), note.as_deref()).await?
    )))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct ChannelBody {
    kind: String,
    target: String,
    secret: Option<String>,
    smtp: Option<String>,
    service: Option<String>,
    tier: Option<String>,
    /// Tell an unacknowledged page again this often (e.g. `15m`).
    repeat: Option<String>,
    /// Escalate an unacknowledged page this long after it opened…
    escalate_after: Option<String>,
    /// …to this channel too.
    escalate_to: Option<i64>,
    /// E-mail: `none`, `starttls` or `tls` (implicit TLS); default `none`
    /// for a relay on this machine, else `starttls`.
    smtp_tls: Option<String>,
    /// E-mail: log in to the relay as this user…
    smtp_user: Option<String>,
    /// …with this password (kept as the channel's secret, never shown).
    smtp_password: Option<String>,
}

pub(crate) async fn channels(
    State(s): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!(s.engine.store.channels().await?)))
}

pub(crate) async fn add_channel(
    State(s): State<AppState>,
    caller: Caller,
    Json(b): Json<ChannelBody>,
) -> Result<Response, ApiError> {
    let mut smtp_tls = None;
    match b.kind.as_str() {
        "webhook" | "slack" => {
            let uri: axum::http::Uri = b
                .target
                .parse()
                .map_err(|e| ApiError::BadInput(format!("{}: not a URL: {e}", b.target)))?;
            if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") {
                return Err(ApiError::BadInput(format!(
                    "{}: only http:// and https:// URLs",
                    b.target
                )));
            }
        }
        "email" => {
            if !b.target.contains('@') {
                return Err(ApiError::BadInput(format!(
                    "{} is not an e-mail address",
                    b.target
                )));
            }
            let smtp = b.smtp.as_deref().ok_or_else(|| {
                ApiError::BadInput("an e-mail channel needs --smtp host:port".into())
            })?;
            let Some((host, _)) = smtp
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
            else {
                return Err(ApiError::BadInput(format!(
                    "--smtp {smtp} is not host:port"
                )));
            };
            let local = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            let tls = b
                .smtp_tls
                .clone()
                .unwrap_or_else(|| if local { "none" } else { "starttls" }.into());
            if !["none", "starttls", "tls"].contains(&tls.as_str()) {
                return Err(ApiError::BadInput(format!(
                    "--smtp-tls {tls}: one of none, starttls, tls"
                )));
            }
            if b.smtp_user.is_some() != b.smtp_password.is_some() {
                return Err(ApiError::BadInput(
                    "--smtp-user and its password go together".into(),
                ));
            }
            if b.smtp_user.is_some() && tls == "none" {
                return Err(ApiError::BadInput(
                    "a password is sent only over TLS: give --smtp-tls starttls or tls".into(),
                ));
            }
            smtp_tls = Some(tls);
        }
        other => {
            return Err(ApiError::BadInput(format!(
                "no channel kind {other}; use webhook, slack or email"
            )));
        }
    }
    let seconds = |what: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|d| {
                let d: tandem_core::Duration = d
                    .parse()
                    .map_err(|e| ApiError::BadInput(format!("{what}: {e}")))?;
                let s = (d.as_millis() / 1000) as i64;
                if s < 1 {
                    return Err(ApiError::BadInput(format!("{what} must be at least 1s")));
                }
                Ok(s)
            })
            .transpose()
    };
    let repeat_s = seconds("repeat", &b.repeat)?;
    let escalate_after_s = seconds("escalate_after", &b.escalate_after)?;
    if escalate_after_s.is_some() != b.escalate_to.is_some() {
        return Err(ApiError::BadInput(
            "escalate_after and escalate_to go together: after how long, to which channel".into(),
        ));
    }
    if let Some(to) = b.escalate_to
        && !s.engine.store.channels().await?.iter().any(|c| c.id == to)
    {
        return Err(ApiError::BadInput(format!(
            "no channel {to} to escalate to"
        )));
    }
    let row = ChannelRow {
        id: 0,
        kind: b.kind,
        target: b.target,
        secret: b
            .secret
            .or(b.smtp_password.clone())
            .filter(|s| !s.is_empty()),
        smtp: b.smtp,
        service: b.service,
        tier: b.tier,
        created_at: String::new(),
        repeat_s,
        escalate_after_s,
        escalate_to: b.escalate_to,
        smtp_tls,
        smtp_user: b.smtp_user,
    };
    let row = s.engine.store.add_channel(&row, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!(row))).into_response())
}

pub(crate) async fn remove_channel(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.engine.store.remove_channel(id, &caller.actor()).await?;
    Ok(Json(serde_json::json!({ "removed": id })))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct MaintenanceBody {
    from: String,
    to: String,
    reason: String,
}

fn timestamp(what: &str, text: &str) -> Result<jiff::Timestamp, ApiError> {
    text.parse().map_err(|e| {
        ApiError::BadInput(format!(
            "{what} {text:?} is not an RFC 3339 time such as 2026-12-01T02:00:00Z: {e}"
        ))
    })
}

pub(crate) async fn schedule_maintenance(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    Json(b): Json<MaintenanceBody>,
) -> Result<Response, ApiError> {
    if s.engine.store.service(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    let (from, to) = (timestamp("--from", &b.from)?, timestamp("--to", &b.to)?);
    if to <= from {
        return Err(ApiError::BadInput(format!(
            "--to {} is not after --from {}",
            b.to, b.from
        )));
    }
    if to <= jiff::Timestamp::now() {
        return Err(ApiError::BadInput(format!("--to {} is in the past", b.to)));
    }
    if b.reason.trim().is_empty() {
        return Err(ApiError::BadInput(
            "a maintenance window needs a --reason".into(),
        ));
    }
    let row = s
        .ops
        .schedule_maintenance(&name, from, to, b.reason.trim(), &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!(row))).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct MaintenanceQuery {
    service: Option<String>,
}

pub(crate) async fn maintenance(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<MaintenanceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let seen = caller.services(&s.engine.store).await?;
    let mut rows = s.engine.store.maintenance(q.service.as_deref()).await?;
    rows.retain(|m| crate::auth::visible(&seen, &m.service));
    Ok(Json(serde_json::json!(rows)))
}

pub(crate) async fn remove_maintenance(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.engine
        .store
        .remove_maintenance(id, &caller.actor())
        .await?;
    Ok(Json(serde_json::json!({ "removed": id })))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct ModeBody {
    on: bool,
    retry_after_s: Option<u32>,
}

pub(crate) async fn maintenance_mode(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    Json(b): Json<ModeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.engine.store.service(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("no service named {name}")));
    }
    let retry = b.retry_after_s.unwrap_or(300);
    s.ops
        .maintenance_mode(&name, b.on, retry, &caller.actor())
        .await?;
    Ok(Json(
        serde_json::json!({ "service": name, "maintenance_mode": b.on, "retry_after_s": retry }),
    ))
}
