//! Progress of long work (a deploy, a rollback), streamed to the client as
//! newline-delimited JSON while it happens.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress {
    /// A phase began: `build`, `test`, `artifact`, `start`, `ready`, `switch`, `drain`.
    Phase {
        phase: String,
        message: String,
        at_ms: u64,
    },
    /// A line of step output.
    Log { step: String, line: String },
    /// The end, on success: the live release and what it took.
    Done {
        service: String,
        release: String,
        message: String,
        timings: Timings,
    },
    /// The end, on failure. `kind` is `bad_input` (the caller's to fix) or
    /// `failed` (the work ran and did not succeed).
    Failed {
        message: String,
        log_tail: Vec<String>,
        kind: String,
    },
}

/// What a release took, for people and `bench/deploy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From asking the agent to start instances until all were ready.
    pub start_to_ready_ms: u64,
    /// From "all new instances ready" to "route table switched".
    pub ready_to_switch_ms: u64,
    pub drain_ms: u64,
    pub total_ms: u64,
}

/// Where progress goes; a closed receiver (client gone) is fine: the work goes on.
#[derive(Clone)]
pub struct Reporter {
    tx: Option<mpsc::UnboundedSender<Progress>>,
}

impl Reporter {
    pub fn new(tx: mpsc::UnboundedSender<Progress>) -> Self {
        Reporter { tx: Some(tx) }
    }
    pub fn silent() -> Self {
        Reporter { tx: None }
    }
    pub fn send(&self, p: Progress) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(p);
        }
    }
    pub fn phase(&self, phase: &str, message: impl Into<String>) {
        self.send(Progress::Phase {
            phase: phase.into(),
            message: message.into(),
            at_ms: crate::now_ms(),
        });
    }
}
