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
    /// Secret values, replaced by `***` in everything sent.
    secrets: std::sync::Arc<tandem_core::masking::Masker>,
}

impl Reporter {
    pub fn new(tx: mpsc::UnboundedSender<Progress>) -> Self {
        Reporter {
            tx: Some(tx),
            secrets: Default::default(),
        }
    }
    pub fn silent() -> Self {
        Reporter {
            tx: None,
            secrets: Default::default(),
        }
    }

    /// The same reporter, masking `secrets` too (see
    /// `tandem_core::masking`: values too short to be secrets are not).
    pub fn masking(&self, secrets: Vec<String>) -> Self {
        Reporter {
            tx: self.tx.clone(),
            secrets: std::sync::Arc::new(self.secrets.with(secrets)),
        }
    }

    /// `text` with every secret value replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        self.secrets.mask(text)
    }

    pub fn send(&self, p: Progress) {
        let Some(tx) = &self.tx else { return };
        let p = if self.secrets.is_empty() {
            p
        } else {
            match p {
                Progress::Phase {
                    phase,
                    message,
                    at_ms,
                } => Progress::Phase {
                    phase,
                    message: self.mask(&message),
                    at_ms,
                },
                Progress::Log { step, line } => Progress::Log {
                    step,
                    line: self.mask(&line),
                },
                Progress::Failed {
                    message,
                    log_tail,
                    kind,
                } => Progress::Failed {
                    message: self.mask(&message),
                    log_tail: log_tail.iter().map(|l| self.mask(l)).collect(),
                    kind,
                },
                done => done,
            }
        };
        let _ = tx.send(p);
    }
    pub fn phase(&self, phase: &str, message: impl Into<String>) {
        self.send(Progress::Phase {
            phase: phase.into(),
            message: message.into(),
            at_ms: crate::now_ms(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_are_masked_in_every_line_sent() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r =
            Reporter::new(tx).masking(vec!["hunter2".into(), "hunter2-long".into(), String::new()]);
        r.send(Progress::Log {
            step: "s".into(),
            line: "password=hunter2-long and hunter2".into(),
        });
        r.send(Progress::Failed {
            message: "bad hunter2".into(),
            log_tail: vec!["x hunter2".into()],
            kind: "failed".into(),
        });
        assert_eq!(
            rx.recv().await,
            Some(Progress::Log {
                step: "s".into(),
                line: "password=*** and ***".into()
            })
        );
        match rx.recv().await {
            Some(Progress::Failed {
                message, log_tail, ..
            }) => {
                assert_eq!(message, "bad ***");
                assert_eq!(log_tail, ["x ***"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
