//! A run's log: what its stages printed, as plain text in
//! `data/runs/<id>.log`, capped so a chatty build cannot fill the disk.
//! Readers follow the file; it is complete once the run has finished.

use std::io::Write;
use std::path::PathBuf;

use tandem_engine::{Progress, Reporter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes kept per run; beyond that one marker line and nothing more.
pub const LOG_CAP: u64 = 8 * 1024 * 1024;

pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    pub fn new(path: PathBuf) -> Self {
        RunLog { path }
    }

    /// A reporter whose progress is appended to the log, and the task that
    /// writes it (finished once every clone of the reporter is dropped).
    pub fn start(self) -> (Reporter, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
        let writer = tokio::task::spawn_blocking(move || {
            if let Some(parent) = self.path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let mut file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot write run log");
                    while rx.blocking_recv().is_some() {}
                    return;
                }
            };
            let mut written = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut truncated = false;
            while let Some(p) = rx.blocking_recv() {
                let line = match p {
                    Progress::Phase { phase, message, .. } => format!("==> [{phase}] {message}\n"),
                    Progress::Log { line, .. } => format!("{line}\n"),
                    Progress::Done { message, .. } => format!("==> {message}\n"),
                    Progress::Failed {
                        message, log_tail, ..
                    } => {
                        let mut s = format!("==> failed: {message}\n");
                        for l in log_tail {
                            s.push_str(&format!("    {l}\n"));
                        }
                        s
                    }
                };
                if truncated {
                    continue;
                }
                if written + line.len() as u64 > LOG_CAP {
                    truncated = true;
                    let _ = writeln!(file, "==> [log] truncated at {LOG_CAP} bytes");
                    continue;
                }
                written += line.len() as u64;
                let _ = file.write_all(line.as_bytes());
            }
            let _ = file.sync_all();
        });
        (Reporter::new(tx), writer)
    }
}
