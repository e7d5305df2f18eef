//! People, their tokens and the customers they may belong to: `whoami`,
//! `users`, `tokens`, `customers`. Who may call each is in
//! [`crate::openapi::PATHS`]; what a non-admin may do with tokens (see and
//! revoke their own) is decided here.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tandem_core::access::Role;
use tandem_store::identity::UserRow;

use crate::{ApiError, AppState, Caller};

pub(crate) async fn whoami(caller: Caller) -> Json<serde_json::Value> {
    let who = &caller.identity;
    Json(serde_json::json!({
        "user": who.user,
        "role": who.role,
        "customer": who.customer,
        "email": who.email,
        "token": who.token,
    }))
}

pub(crate) async fn users(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.engine.store.users().await?).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    name: String,
    role: String,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

pub(crate) async fn add_user(
    State(s): State<AppState>,
    caller: Caller,
    Json(body): Json<UserBody>,
) -> Result<Response, ApiError> {
    let row = UserRow {
        name: body.name,
        role: body.role,
        customer: body.customer.filter(|c| !c.is_empty()),
        email: body.email.filter(|e| !e.is_empty()),
        created_at: String::new(),
    };
    s.engine.store.add_user(&row, &caller.actor()).await?;
    let added = s.engine.store.user(&row.name).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

pub(crate) async fn remove_user(
    State(s): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    s.engine.store.remove_user(&name, &caller.actor()).await?;
    Ok(Json(serde_json::json!({ "removed": name })).into_response())
}

/// All tokens for an admin; one's own for anyone else.
pub(crate) async fn tokens(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let own = (caller.identity.role != Role::Admin).then_some(caller.identity.user.as_str());
    Ok(Json(s.engine.store.tokens(own).await?).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    user: String,
    #[serde(default)]
    name: Option<String>,
    /// How long it is valid (`30d`, `12h`); forever without.
    #[serde(default)]
    expires: Option<String>,
}

pub(crate) async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    Json(body): Json<TokenBody>,
) -> Result<Response, ApiError> {
    let expires_at = match body.expires.as_deref() {
        None | Some("") => None,
        Some(text) => {
            let d = text
                .parse::<tandem_core::Duration>()
                .map_err(|e| ApiError::BadInput(format!("--expires {text:?}: {e}")))?
                .to_std();
            let d = jiff::SignedDuration::try_from(d)
                .map_err(|_| ApiError::BadInput(format!("--expires {text:?} is too long")))?;
            Some(
                jiff::Timestamp::now()
                    .checked_add(d)
                    .map_err(|_| ApiError::BadInput(format!("--expires {text:?} is too long")))?,
            )
        }
    };
    let name = body.name.unwrap_or_else(|| "token".into());
    let (token, row) = s
        .engine
        .store
        .create_token(&body.user, &name, expires_at, &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token, "id": row.id, "user": row.user, "name": row.name, "expires_at": row.expires_at })),
    )
        .into_response())
}

/// Revokes a token: an admin any, anyone else only their own (another's
/// is answered as unknown).
pub(crate) async fn revoke_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if caller.identity.role != Role::Admin {
        let own = s.engine.store.tokens(Some(&caller.identity.user)).await?;
        if !own.iter().any(|t| t.id == id) {
            return Err(ApiError::NotFound(format!("no token {id}")));
        }
    }
    s.engine.store.revoke_token(&id, &caller.actor()).await?;
    Ok(Json(serde_json::json!({ "revoked": id })).into_response())
}

pub(crate) async fn customers(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.engine.store.customers().await?).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerBody {
    id: String,
    name: String,
}

pub(crate) async fn add_customer(
    State(s): State<AppState>,
    caller: Caller,
    Json(body): Json<CustomerBody>,
) -> Result<Response, ApiError> {
    s.engine
        .store
        .add_customer(&body.id, &body.name, &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": body.id, "name": body.name })),
    )
        .into_response())
}
