//! The one place where errors become HTTP statuses. A 500 never carries
//! internals to the client; the cause is logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tandem_engine::EngineError;
use tandem_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadInput(String),
    NotFound(String),
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
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, log_tail) = match self {
            ApiError::BadInput(m) => (StatusCode::BAD_REQUEST, m, Vec::new()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m, Vec::new()),
            ApiError::Failed(m, tail) => (StatusCode::UNPROCESSABLE_ENTITY, m, tail),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, Vec::new()),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the server log".to_string(),
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
