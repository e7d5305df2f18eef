//! Who is asking, and whether they may: every request to a route passes
//! [`check`] before its handler. What a route needs is in
//! [`crate::openapi::PATHS`] beside its description (a route missing there
//! needs an admin); whether a role meets it is
//! [`tandem_core::access::decide`]. A customer's people reach their own
//! customer's services only: a route naming another customer's service,
//! run or incident answers 404, as if it did not exist, and lists are
//! filtered by their handlers through [`Caller::sees`].
//!
//! The journal's actor is the caller's user (`user:<name>`); nothing the
//! client sends can change it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tandem_core::access::{Access, Need, decide};
use tandem_store::identity::{Identity, Refusal};

use crate::{ApiError, AppState};

/// The authenticated caller of a request, and how far they reach.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
}

impl Caller {
    /// The journal's actor for what they do.
    pub fn actor(&self) -> String {
        self.identity.actor()
    }

    /// Whether they may see a service delivered to `customer`.
    pub fn sees(&self, customer: Option<&str>) -> bool {
        !self.scoped() || customer.is_some() && customer == self.identity.customer.as_deref()
    }

    /// Whether the caller is bound to one customer.
    pub fn scoped(&self) -> bool {
        // By who they are, not by the route's need: a customer's person on
        // a route for anyone signed in is still bound to the customer.
        self.identity.role.is_customer()
    }

    /// The services the caller may see: `None` for all of them.
    pub async fn services(
        &self,
        store: &tandem_store::Store,
    ) -> Result<Option<std::collections::HashSet<String>>, ApiError> {
        if !self.scoped() {
            return Ok(None);
        }
        Ok(Some(
            store
                .services()
                .await?
                .into_iter()
                .filter(|s| self.sees(s.customer.as_deref()))
                .map(|s| s.name)
                .collect(),
        ))
    }
}

/// Whether `service` is in what [`Caller::services`] returned.
pub fn visible(seen: &Option<std::collections::HashSet<String>>, service: &str) -> bool {
    seen.as_ref().is_none_or(|set| set.contains(service))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Internal("a handler needing a caller on a public route".into())
        })
    }
}

/// Names (besides IP addresses and `localhost`) the API answers to as a
/// request's `Host`: a page of another site whose name an attacker points
/// at this machine (DNS rebinding) is refused.
#[derive(Clone, Default)]
pub struct AllowedHosts(pub Arc<Vec<String>>);

impl AllowedHosts {
    fn allows(&self, host: &str) -> bool {
        let name = host_name(host);
        // No Host at all (HTTP/1.0 tools): no page of a browser.
        name.is_empty()
            || name.eq_ignore_ascii_case("localhost")
            || name.parse::<std::net::IpAddr>().is_ok()
            || self.0.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// The host of a `Host` header value, without its port (`[::1]:7070` →
/// `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Checks every request before routing, and shapes what axum itself
/// answers: a `Host` the server does not answer to is refused (DNS
/// rebinding), a changing request from a page of another site (`Origin`)
/// is refused (a browser's cross-site form or fetch), and axum's own
/// plain-text rejections (a body that is not the JSON asked for, a path
/// parameter that is not a number) become the API's JSON error.
pub async fn same_site(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return ApiError::BadInput("a request names one Host".into()).into_response();
    }
    let host = match req.headers().get(header::HOST).map(|h| h.to_str()) {
        Some(Ok(h)) => h.to_owned(),
        // Not text: not a name this server answers to (never "no Host").
        Some(Err(_)) => return ApiError::BadInput("the Host is not text".into()).into_response(),
        None => req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    if !s.allowed_hosts.allows(&host) {
        s.refused.0[1].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(host, path = %req.uri().path(), "request for a host this server does not answer to");
        return ApiError::Forbidden(format!(
            "this server does not answer to the host {host:?}; name it with `tandem up --api-host NAME`"
        ))
        .into_response();
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(&host));
        if !same {
            s.refused.0[1].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(origin = ?origin, host, path = %req.uri().path(), "cross-site request refused");
            return ApiError::Forbidden(format!(
                "a {} from a page of another site ({}) is refused",
                req.method(),
                origin.to_str().unwrap_or("?")
            ))
            .into_response();
        }
    }
    let resp = next.run(req).await;
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !(plain && (resp.status().is_client_error() || resp.status().is_server_error())) {
        return resp;
    }
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_owned();
    (
        status,
        axum::Json(serde_json::json!({ "error": message, "log_tail": [] })),
    )
        .into_response()
}

/// Requests refused, by answer, for `/metrics`.
#[derive(Clone, Default)]
pub struct Refused(Arc<[AtomicU64; 2]>);

impl Refused {
    pub fn metrics(&self) -> String {
        let [unauthorized, forbidden] = &*self.0;
        format!(
            "# HELP tandem_api_refused_total API requests refused: 401 no valid token, 403 the role may not.\n# TYPE tandem_api_refused_total counter\ntandem_api_refused_total{{status=\"401\"}} {}\ntandem_api_refused_total{{status=\"403\"}} {}\n",
            unauthorized.load(Ordering::Relaxed),
            forbidden.load(Ordering::Relaxed)
        )
    }
}

/// The need of `method` on the route `route` (as the router spells it).
pub fn need(method: &Method, route: &str) -> Need {
    // HEAD is a GET without the body, and needs what the GET needs.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    crate::openapi::PATHS
        .iter()
        .find(|p| p.path == route && p.method.eq_ignore_ascii_case(method.as_str()))
        .map_or(Need::Admin, |p| p.need)
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The check every routed request passes (a `route_layer`).
pub async fn check(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let need = need(&parts.method, &route);
    if need == Need::Public {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let method = parts.method.clone();
    let refuse = |status: usize, who: &str, error: ApiError| {
        s.refused.0[status].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%method, route, who, error = ?error, "request refused");
        error.into_response()
    };
    let identity = match bearer(&parts) {
        None => {
            return refuse(
                0,
                "",
                ApiError::Unauthorized(
                    "this route needs a token (Authorization: Bearer …); `tandem tokens create` makes one".into(),
                ),
            );
        }
        Some(token) => match s.engine.store.authenticate(token).await {
            Ok(identity) => identity,
            Err(Refusal::Expired) => {
                return refuse(
                    0,
                    "",
                    ApiError::Unauthorized("the token has expired".into()),
                );
            }
            Err(Refusal::Unavailable) => {
                return ApiError::Unavailable("the tokens cannot be read now; try again".into())
                    .into_response();
            }
            Err(Refusal::Unknown) => {
                return refuse(
                    0,
                    "",
                    ApiError::Unauthorized("the token is not valid (unknown or revoked)".into()),
                );
            }
        },
    };
    let access = decide(identity.role, need);
    // A customer's people learn nothing of what is not their customer's,
    // not even that it exists: naming another's service, run or incident
    // is answered 404 whatever they asked to do with it.
    if identity.role.is_customer() {
        // Parameters that cannot be read are refused, never left unchecked.
        let Ok(params) = RawPathParams::from_request_parts(&mut parts, &s).await else {
            return ApiError::BadInput("a path parameter is not text".into()).into_response();
        };
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        match owner_of(&s, &route, &params).await {
            Ok(Some(customer)) if customer.is_none() || customer != identity.customer => {
                return ApiError::NotFound(not_found(&route, &params)).into_response();
            }
            Ok(_) => {}
            Err(e) => return e.into_response(),
        }
    }
    if access == Access::Deny {
        let message = format!(
            "{} ({}) may not {} {route}",
            identity.user, identity.role, parts.method
        );
        return refuse(1, &identity.user, ApiError::Forbidden(message));
    }
    let caller = Caller { identity };
    let token = caller.identity.token.clone();
    parts.extensions.insert(caller);
    tandem_store::with_token(token, next.run(Request::from_parts(parts, body))).await
}

/// The customer of what the route's parameters name: `Some(customer)` for
/// a customer, or a service, run or incident (`Some(None)`: a service of nobody's, or
/// nothing by that name), `None` when the route names none of them.
async fn owner_of(
    s: &AppState,
    route: &str,
    params: &[(String, String)],
) -> Result<Option<Option<String>>, ApiError> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let store = &s.engine.store;
    // A customer's route names the customer itself.
    if let Some(name) = param("name").filter(|_| route.starts_with("/api/v1/customers/")) {
        return Ok(Some(Some(name.to_owned())));
    }
    let service =
        if let Some(name) = param("name").filter(|_| route.starts_with("/api/v1/services/")) {
            Some(name.to_owned())
        } else if let Some(id) = param("id") {
            let id: i64 = id.parse().unwrap_or(-1);
            if route.starts_with("/api/v1/runs/") {
                Some(
                    store
                        .run(id)
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.service)
                        .unwrap_or_default(),
                )
            } else if route.starts_with("/api/v1/incidents/") {
                Some(
                    store
                        .incident(id)
                        .await
                        .ok()
                        .flatten()
                        .map(|i| i.service)
                        .unwrap_or_default(),
                )
            } else {
                None
            }
        } else {
            None
        };
    let Some(service) = service else {
        return Ok(None);
    };
    Ok(Some(
        store.service(&service).await?.and_then(|row| row.customer),
    ))
}

fn not_found(route: &str, params: &[(String, String)]) -> String {
    match params.first() {
        Some((k, v)) if k == "name" && route.starts_with("/api/v1/customers/") => {
            format!("no customer {v}")
        }
        Some((k, v)) if k == "name" => format!("no service {v}"),
        Some((_, v)) if route.starts_with("/api/v1/runs/") => format!("no run {v}"),
        Some((_, v)) => format!("no incident {v}"),
        None => "not found".into(),
    }
}
