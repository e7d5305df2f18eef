//! The journal's proofs: the installation's verifier key, signed
//! checkpoints, and consistency proofs from an earlier checkpoint to the
//! journal now (see `tandem_engine::checkpoints`).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use tandem_engine::checkpoints::CheckpointError;

use crate::{ApiError, AppState};

impl From<CheckpointError> for ApiError {
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::Store(s) => s.into(),
            CheckpointError::Beyond { .. } => ApiError::BadInput(e.to_string()),
            CheckpointError::Diverged(_) => ApiError::Conflict(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// The verifier key of the installation's log, in signed-note form.
pub(crate) async fn key(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let key = s.engine.checkpoints.key()?;
    Ok(Json(serde_json::json!({
        "origin": key.name(),
        "verifier_key": key.verifier_key(),
    })))
}

/// A signed checkpoint of the journal as it stands (a new one if it grew).
pub(crate) async fn checkpoint(
    State(s): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = s.engine.checkpoints.checkpoint(&s.engine.store).await?;
    Ok(Json(match row {
        Some(row) => serde_json::to_value(row).map_err(|e| ApiError::Internal(e.to_string()))?,
        None => serde_json::Value::Null,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct ConsistencyQuery {
    /// The size of the earlier tree (a checkpoint's event count; 1 if
    /// not given).
    from: Option<u64>,
    /// The size of the later tree (a signed checkpoint's); the journal
    /// now if not given.
    to: Option<u64>,
}

/// The proof that the journal now extends its first `from` events.
pub(crate) async fn consistency(
    State(s): State<AppState>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<tandem_engine::checkpoints::Consistency>, ApiError> {
    Ok(Json(
        s.engine
            .checkpoints
            .consistency(&s.engine.store, q.from.unwrap_or(1), q.to)
            .await?,
    ))
}
