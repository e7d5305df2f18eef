//! Signs checkpoints of the journal as it grows — every
//! [`EVERY_EVENTS`] events, or [`EVERY`] after the last when it grew at
//! all — and publishes each new one (also those made on request) to the
//! witnesses: the webhook channels, besides the witness file the engine
//! appends to. `TANDEM_CHECKPOINT_EVERY` (seconds) and
//! `TANDEM_CHECKPOINT_EVENTS` change the cadence.

use std::time::{Duration, Instant};

use crate::Ops;

pub const EVERY_EVENTS: u64 = 1000;
pub const EVERY: Duration = Duration::from_secs(3600);

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

pub(crate) async fn run(ops: Ops) {
    let every = setting("TANDEM_CHECKPOINT_EVERY").map_or(EVERY, Duration::from_secs);
    let events = setting("TANDEM_CHECKPOINT_EVENTS")
        .unwrap_or(EVERY_EVENTS)
        .max(1);
    let store = &ops.engine.store;
    let mut published = match store.latest_checkpoint().await {
        Ok(latest) => latest.map_or(0, |c| c.size),
        Err(_) => 0,
    };
    let mut signed_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Ok(size), Ok(latest)) = (store.last_seq().await, store.latest_checkpoint().await)
        else {
            continue; // a store fault is the monitor's to tell
        };
        let signed = latest.as_ref().map_or(0, |c| c.size as u64);
        let due = size > signed
            && (latest.is_none()
                || size - signed >= events
                || signed_at.get_or_insert_with(Instant::now).elapsed() >= every);
        let newest = if due {
            match ops.engine.checkpoints.checkpoint(store).await {
                Ok(row) => {
                    signed_at = Some(Instant::now());
                    row
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign a checkpoint of the journal");
                    continue;
                }
            }
        } else {
            latest
        };
        if let Some(row) = newest.filter(|r| r.size > published) {
            ops.notifier.publish_checkpoint(&row).await;
            published = row.size;
        }
    }
}
