//! Reports and bundles for a customer, and their contract: what a
//! customer receives and can check (see `tandem_report` and
//! `tandem_proof::bundle`). A customer's people reach their own customer
//! only; another customer is unknown (404).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tandem_engine::checkpoints::Checkpoints;
use tandem_report::sla::CheckpointRef;

use crate::{ApiError, AppState, Caller};

/// The customer asked for, else the caller's own (a customer's person).
fn customer_of(caller: &Caller, asked: Option<String>) -> Result<String, ApiError> {
    asked
        .or_else(|| caller.identity.customer.clone())
        .ok_or_else(|| ApiError::BadInput("customer=… is needed".into()))
}

/// The last month that has ended (UTC), as `YYYY-MM`.
fn last_month() -> String {
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let last = today.first_of_month().yesterday().unwrap_or(today);
    format!("{:04}-{:02}", last.year(), last.month())
}

/// `customer` if it exists and the caller may see it, else 404.
async fn customer_seen(s: &AppState, caller: &Caller, customer: &str) -> Result<(), ApiError> {
    let known = s
        .engine
        .store
        .customers()
        .await?
        .iter()
        .any(|c| c.id == customer);
    if known && caller.sees(Some(customer)) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no customer {customer}")))
    }
}

fn report_error(e: tandem_report::ReportError) -> ApiError {
    match e {
        tandem_report::ReportError::BadInput(m) => ApiError::BadInput(m),
        e => ApiError::Internal(e.to_string()),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlaQuery {
    /// The customer; a customer's person's own if not given.
    customer: Option<String>,
    /// `YYYY-MM` (UTC); the last month that has ended if not given.
    month: Option<String>,
    /// `json` (canonical, RFC 8785; the default), `csv`, `html` or `pdf`.
    format: Option<String>,
    /// The checkpoint (its event count) to rest on: one made before, so
    /// that the report and its bundle are of the same log.
    at: Option<u64>,
}

/// The SLA report of a customer and month.
pub(crate) async fn sla(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<SlaQuery>,
) -> Result<Response, ApiError> {
    let customer = customer_of(&caller, q.customer)?;
    let month = q.month.unwrap_or_else(last_month);
    customer_seen(&s, &caller, &customer).await?;
    let (from, to) = tandem_report::sla::month_minutes(&month).map_err(report_error)?;
    let checkpoints = &s.engine.checkpoints;
    let cp = checkpoints.at(&s.engine.store, q.at).await?;
    let events = Checkpoints::events_for(&s.engine.store, &customer, from, to, &cp).await?;
    let origin = checkpoints.key()?.name().to_owned();
    let checkpoint = CheckpointRef {
        origin,
        size: cp.size as u64,
        root: cp.root.clone(),
    };
    let report = tandem_report::sla::report(&events, &customer, &month, Some(checkpoint))
        .map_err(report_error)?;
    let (kind, body) = match q.format.as_deref().unwrap_or("json") {
        "json" => (
            "application/json",
            tandem_report::canonical(&report).map_err(report_error)?,
        ),
        "csv" => (
            "text/csv; charset=utf-8",
            tandem_report::render::csv(&report),
        ),
        "html" => (
            "text/html; charset=utf-8",
            tandem_report::render::html(&report),
        ),
        "pdf" => {
            let pdf = tandem_report::render::pdf(&report);
            return Ok(([(header::CONTENT_TYPE, "application/pdf")], pdf).into_response());
        }
        other => {
            return Err(ApiError::BadInput(format!(
                "format {other:?}: json, csv, html or pdf"
            )));
        }
    };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// The customer; a customer's person's own if not given.
    customer: Option<String>,
    /// First day (`YYYY-MM-DD`) or instant (RFC 3339), UTC; with `to`,
    /// the last month that has ended if not given.
    from: Option<String>,
    /// Day or instant after the last (exclusive).
    to: Option<String>,
    /// The checkpoint (its event count) to rest on; else the journal's now.
    at: Option<u64>,
}

/// A minute from a day (`2026-11-01`) or an instant.
fn minute_of(what: &str, text: &str) -> Result<i64, ApiError> {
    let ts = if text.len() == 10 {
        text.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    } else {
        text.parse::<jiff::Timestamp>().ok()
    };
    ts.map(|t| t.as_second().div_euclid(60)).ok_or_else(|| {
        ApiError::BadInput(format!(
            "{what} {text:?}: a day (2026-11-01) or an instant (2026-11-01T00:00:00Z)"
        ))
    })
}

/// A bundle of a customer's events, checkable offline.
pub(crate) async fn export(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let customer = customer_of(&caller, q.customer)?;
    customer_seen(&s, &caller, &customer).await?;
    let (from_text, to_text) = match (q.from, q.to) {
        (Some(f), Some(t)) => (f, t),
        (None, None) => {
            let (f, t) = tandem_report::sla::month_minutes(&last_month()).map_err(report_error)?;
            let day = tandem_report::sla::minute_ts;
            (day(f), day(t))
        }
        _ => {
            return Err(ApiError::BadInput(
                "give both from and to, or neither".into(),
            ));
        }
    };
    let (from, to) = (minute_of("from", &from_text)?, minute_of("to", &to_text)?);
    if from >= to {
        return Err(ApiError::BadInput(format!(
            "from {from_text} is not before to {to_text}"
        )));
    }
    let cp = s.engine.checkpoints.at(&s.engine.store, q.at).await?;
    let bundle = s
        .engine
        .checkpoints
        .export(
            &s.engine.store,
            &customer,
            (from, to),
            (&from_text, &to_text),
            &cp,
        )
        .await?;
    Ok(Json(bundle).into_response())
}

/// A customer's contract as last set.
pub(crate) async fn contract(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    customer_seen(&s, &caller, &name).await?;
    match s.engine.store.contract(&name).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError::NotFound(format!(
            "customer {name} has no contract yet"
        ))),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContractBody {
    /// The file's name, for errors.
    file: Option<String>,
    /// The contract as YAML.
    text: String,
}

/// Sets a customer's contract (journaled whole).
pub(crate) async fn set_contract(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<ContractBody>,
) -> Result<Response, ApiError> {
    customer_seen(&s, &caller, &name).await?;
    let file = body.file.as_deref().unwrap_or("contract.yaml");
    let contract = tandem_core::contract::Contract::parse(file, &body.text).map_err(|e| {
        ApiError::BadInput(format!("{}:{}:{}: {}", e.file, e.line, e.column, e.message))
    })?;
    s.engine
        .store
        .set_contract(&name, &contract, &caller.actor())
        .await?;
    Ok(Json(contract).into_response())
}

/// The services `caller` may see of those asked: one service, a
/// customer's, or all.
async fn services_for(
    s: &AppState,
    caller: &Caller,
    service: Option<&str>,
    customer: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let seen = caller.services(&s.engine.store).await?;
    let rows = s.engine.store.services().await?;
    if let Some(name) = service {
        return match rows.iter().find(|r| r.name == name) {
            Some(r) if crate::auth::visible(&seen, &r.name) => Ok(vec![r.name.clone()]),
            _ => Err(ApiError::NotFound(format!("no service {name}"))),
        };
    }
    if let Some(c) = customer {
        customer_seen(s, caller, c).await?;
    }
    Ok(rows
        .into_iter()
        .filter(|r| crate::auth::visible(&seen, &r.name))
        .filter(|r| customer.is_none_or(|c| r.customer.as_deref() == Some(c)))
        .map(|r| r.name)
        .collect())
}

/// An instant from a day or an instant, as RFC 3339.
fn instant(what: &str, text: &str) -> Result<String, ApiError> {
    let minute = minute_of(what, text)?;
    Ok(tandem_report::sla::minute_ts(minute))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DoraQuery {
    service: Option<String>,
    customer: Option<String>,
    /// Day or instant; 30 days before `to` if not given.
    from: Option<String>,
    /// Day or instant (exclusive); now if not given.
    to: Option<String>,
}

/// The DORA metrics of one service, a customer's or all, per service and
/// in total.
pub(crate) async fn dora(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<DoraQuery>,
) -> Result<Response, ApiError> {
    let customer = q.customer.or_else(|| caller.identity.customer.clone());
    let services = services_for(&s, &caller, q.service.as_deref(), customer.as_deref()).await?;
    let to = match q.to {
        Some(t) => instant("to", &t)?,
        None => jiff::Timestamp::now().to_string(),
    };
    let from = match q.from {
        Some(f) => instant("from", &f)?,
        None => to
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| {
                t.checked_sub(jiff::SignedDuration::from_hours(30 * 24))
                    .ok()
            })
            .map(|t| t.to_string())
            .unwrap_or_default(),
    };
    let events = s.engine.store.events_about(&services, false).await?;
    Ok(Json(tandem_report::dora::report(
        &events,
        &from,
        &to,
        Some(&services),
    ))
    .into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangesQuery {
    /// The customer; a customer's person's own if not given.
    customer: Option<String>,
    /// `YYYY-MM`; the last month that has ended if not given.
    month: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

/// Change evidence: a row per production change of a customer's services.
pub(crate) async fn changes(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ChangesQuery>,
) -> Result<Response, ApiError> {
    let customer = customer_of(&caller, q.customer)?;
    let month = q.month.unwrap_or_else(last_month);
    let services = services_for(&s, &caller, None, Some(&customer)).await?;
    let (from, to) = tandem_report::sla::month_minutes(&month).map_err(report_error)?;
    let ts = tandem_report::sla::minute_ts;
    let events = s.engine.store.events_about(&services, true).await?;
    let set = services.into_iter().collect();
    let rows = tandem_report::changes::report(&events, &set, &ts(from), &ts(to));
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(rows).into_response()),
        "csv" => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            tandem_report::changes::csv(&rows),
        )
            .into_response()),
        other => Err(ApiError::BadInput(format!("format {other:?}: json or csv"))),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TraceQuery {
    /// A commit (at least 7 hex digits of it).
    commit: Option<String>,
    /// `SERVICE/rN`.
    release: Option<String>,
    incident: Option<i64>,
}

/// A change's way from commit to production and the incidents it caused.
pub(crate) async fn trace(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<TraceQuery>,
) -> Result<Response, ApiError> {
    use tandem_report::trace::From;
    let store = &s.engine.store;
    let (services, from) = match (q.commit, q.release, q.incident) {
        (Some(c), None, None) => {
            if c.len() < 7 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::BadInput(format!(
                    "commit {c:?}: at least 7 hex digits of it"
                )));
            }
            (
                store.services_with_commit(&c).await?,
                From::Commit(c.to_lowercase()),
            )
        }
        (None, Some(r), None) => {
            let Some((service, release)) = r.split_once('/') else {
                return Err(ApiError::BadInput(format!(
                    "release {r:?}: SERVICE/rN (shop/r3)"
                )));
            };
            (
                vec![service.to_owned()],
                From::Release {
                    service: service.to_owned(),
                    release: release.to_owned(),
                },
            )
        }
        (None, None, Some(id)) => {
            // No incident and another customer's answer alike (below).
            let service = store.incident(id).await?.map(|i| i.service);
            (
                service.into_iter().collect(),
                From::Incident(id.to_string()),
            )
        }
        _ => {
            return Err(ApiError::BadInput(
                "give one of commit=, release= or incident=".into(),
            ));
        }
    };
    let seen = caller.services(store).await?;
    let services: Vec<String> = services
        .into_iter()
        .filter(|svc| crate::auth::visible(&seen, svc))
        .collect();
    let events = store.events_about(&services, false).await?;
    match tandem_report::trace::trace(&events, &from) {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::NotFound(
            "nothing in the journal leads from there".into(),
        )),
    }
}
