//! A run's log: what its stages printed, as plain text in
//! `data/runs/<id>.log`, capped so a chatty build cannot fill the disk: its
//! first 8 MiB and its last 1 MiB (where a failure says why), with a line
//! saying how much was cut between them. Readers follow the file; it is
//! complete once the run has finished (the tail comes last).

use std::io::Write;
use std::path::PathBuf;

use tandem_engine::{Progress, Reporter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes kept from a run's start; past them, the last [`TAIL_CAP`] bytes
/// are kept too and written at the end, after a line saying what was cut.
pub const LOG_CAP: u64 = 8 * 1024 * 1024;
pub const TAIL_CAP: u64 = 1024 * 1024;

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
            let (mut cut, mut tail_bytes) = (0u64, 0u64);
            let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
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
                if !truncated && written + line.len() as u64 > LOG_CAP {
                    truncated = true;
                }
                if truncated {
                    // The end is where a failure says why: keep it.
                    cut += line.len() as u64;
                    tail_bytes += line.len() as u64;
                    tail.push_back(line);
                    while tail_bytes > TAIL_CAP {
                        let gone = tail.pop_front().unwrap_or_default();
                        tail_bytes -= gone.len() as u64;
                    }
                    continue;
                }
                written += line.len() as u64;
                let _ = file.write_all(line.as_bytes());
            }
            if truncated {
                let shown: u64 = tail_bytes;
                let _ = writeln!(
                    file,
                    "==> [log] {} bytes cut here (the log keeps its first {LOG_CAP} bytes and its last {shown})",
                    cut - shown
                );
                for line in &tail {
                    let _ = file.write_all(line.as_bytes());
                }
            }
            let _ = file.sync_all();
        });
        (Reporter::new(tx), writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_log_past_its_cap_keeps_its_head_and_its_tail_and_says_what_was_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("1.log");
        let (reporter, writer) = RunLog::new(path.clone()).start();
        let line = "x".repeat(1023);
        // 12 MiB of lines, then the reason at the very end.
        for _ in 0..12 * 1024 {
            reporter.send(Progress::Log {
                step: "s".into(),
                line: line.clone(),
            });
        }
        reporter.send(Progress::Log {
            step: "s".into(),
            line: "the reason it failed".into(),
        });
        drop(reporter);
        writer.await.expect("writer");
        let text = std::fs::read_to_string(&path).expect("log");
        assert!(
            text.len() as u64 <= LOG_CAP + TAIL_CAP + 200,
            "{} bytes",
            text.len()
        );
        assert!(text.trim_end().ends_with("the reason it failed"));
        let marker = text
            .lines()
            .find(|l| l.starts_with("==> [log]"))
            .expect("a line saying what was cut");
        assert!(marker.contains("bytes cut here"), "{marker}");
    }
}
