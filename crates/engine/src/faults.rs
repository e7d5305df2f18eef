//! Fault injection for tests of crash safety: `TANDEM_FAULT_PAUSE=<point>:<ms>`
//! makes the control plane wait at a named point of a release, so that a
//! test can kill it exactly there. Unset (always, outside those tests),
//! [`pause`] is one load of a `OnceLock`.
//!
//! Points: `before-switch` (the new group is ready, traffic not yet
//! switched) and `before-stop` (switched and recorded, the old group not yet
//! stopped).

use std::sync::OnceLock;
use std::time::Duration;

fn configured() -> Option<&'static (String, Duration)> {
    static PAUSE: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            let value = std::env::var("TANDEM_FAULT_PAUSE").ok()?;
            let (point, ms) = value.split_once(':')?;
            Some((point.to_owned(), Duration::from_millis(ms.parse().ok()?)))
        })
        .as_ref()
}

/// Waits at `point` when a test asked for it.
pub async fn pause(point: &str) {
    if let Some((at, how_long)) = configured()
        && at == point
    {
        tracing::warn!(point, ?how_long, "paused by TANDEM_FAULT_PAUSE");
        tokio::time::sleep(*how_long).await;
    }
}
