//! The one place where errors become HTTP statuses. A 500 never carries
//! internals to the client; the cause is logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tandem_engine::artifact::ArtifactError;
use tandem_engine::{EngineError, Progress};
use tandem_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadInput(String),
    /// No valid token (401).
    Unauthorized(String),
    /// The caller's role may not (403).
    Forbidden(String),
    NotFound(String),
    /// The request conflicts with the current state (409).
    Conflict(String),
    Failed(String, Vec<String>),
    Unavailable(String),
    Internal(String),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Spec(s) => ApiError::BadInput(s.to_string()),
            EngineError::BadInput(m) => ApiError::BadInput(m),
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::Failed { reason, log_tail } => ApiError::Failed(reason, log_tail),
            EngineError::Agent(a) => ApiError::Unavailable(a.to_string()),
            EngineError::Store(s) => s.into(),
            EngineError::Artifact(
                a @ (ArtifactError::Missing(_)
                | ArtifactError::Escapes(_)
                | ArtifactError::LinkOutside { .. }
                | ArtifactError::Special { .. }),
            ) => ApiError::BadInput(a.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<tandem_delivery::DeliveryError> for ApiError {
    fn from(e: tandem_delivery::DeliveryError) -> Self {
        use tandem_delivery::DeliveryError as D;
        match e {
            D::BadInput(m) => ApiError::BadInput(m),
            D::NotFound(m) => ApiError::NotFound(m),
            D::Conflict(m) => ApiError::Conflict(m),
            D::Forbidden(m) => ApiError::Forbidden(m),
            D::Git(g) => ApiError::Failed(g.to_string(), Vec::new()),
            D::Engine(e) => e.into(),
            D::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Invalid(m) => ApiError::BadInput(m),
            // The storage's fault, not the request's: nothing was changed,
            // and asking again once there is room will do.
            e @ (StoreError::Storage { .. } | StoreError::Damaged { .. }) => {
                ApiError::Unavailable(format!("{e}; nothing was changed"))
            }
            e @ StoreError::Busy => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    /// The last event of a progress stream that ended in this error. A bad
    /// input is the caller's to fix (`bad_input`); anything else `failed`.
    pub fn into_progress(self) -> Progress {
        let (message, log_tail, kind) = match self {
            ApiError::BadInput(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m) => (m, Vec::new(), "bad_input"),
            ApiError::Failed(m, tail) => (m, tail, "failed"),
            ApiError::Unavailable(m) => (m, Vec::new(), "failed"),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (INTERNAL.to_string(), Vec::new(), "failed")
            }
        };
        Progress::Failed {
            message,
            log_tail,
            kind: kind.into(),
        }
    }
}

/// What a client is told about an internal error; the cause goes to the log.
const INTERNAL: &str = "internal error; see the server log";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, log_tail) = match self {
            ApiError::BadInput(m) => (StatusCode::BAD_REQUEST, m, Vec::new()),
            ApiError::Unauthorized(m) => {
                let body = Json(serde_json::json!({ "error": m, "log_tail": [] }));
                return (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    body,
                )
                    .into_response();
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m, Vec::new()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m, Vec::new()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m, Vec::new()),
            ApiError::Failed(m, tail) => (StatusCode::UNPROCESSABLE_ENTITY, m, tail),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, Vec::new()),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    INTERNAL.to_string(),
                    Vec::new(),
                )
            }
        };
        (
            status,
            Json(serde_json::json!({ "error": message, "log_tail": log_tail })),
        )
            .into_response()
    }
}
