//! Per-instance log files with size-based rotation (`x.log` → `x.log.1`),
//! and a small in-memory tail for failure messages.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Rotate a log file once it grows past this.
pub const ROTATE_AT_BYTES: u64 = 10 * 1024 * 1024;
/// Lines kept in memory per instance.
pub const TAIL_LINES: usize = 40;

/// One instance's log: a file plus the last lines.
#[derive(Clone)]
pub struct InstanceLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    tail: VecDeque<String>,
}

impl InstanceLog {
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(InstanceLog {
            inner: Arc::new(Mutex::new(Inner {
                path,
                file: Some(file),
                written,
                tail: VecDeque::new(),
            })),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_line(&self, line: &str) {
        let mut inner = self.lock();
        if inner.written > ROTATE_AT_BYTES {
            inner.rotate();
        }
        if let Some(f) = inner.file.as_mut()
            && writeln!(f, "{line}").is_ok()
        {
            inner.written += line.len() as u64 + 1;
        }
        if inner.tail.len() == TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.tail.push_back(line.to_owned());
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let inner = self.lock();
        inner
            .tail
            .iter()
            .skip(inner.tail.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Copies lines from the read end of a child's stdout or stderr pipe
    /// until it closes or the capture is [detached](Capture::detach).
    pub fn capture(&self, pipe: OwnedFd) -> std::io::Result<Capture> {
        let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)?;
        let (detach, mut detached) = oneshot::channel::<()>();
        let log = self.clone();
        let task = tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut chunk = vec![0u8; 8 * 1024];
            loop {
                let n = tokio::select! {
                    biased;
                    _ = &mut detached => break,
                    read = reader.read(&mut chunk) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                pending.extend_from_slice(&chunk[..n]);
                let mut start = 0;
                while let Some(at) = pending[start..].iter().position(|b| *b == b'\n') {
                    log.write_bytes(&pending[start..start + at]);
                    start += at + 1;
                }
                pending.drain(..start);
                if pending.len() >= MAX_LINE {
                    log.write_bytes(&pending);
                    pending.clear();
                }
            }
            // What came without its newline yet still goes to the file.
            if !pending.is_empty() {
                log.write_bytes(&pending);
            }
        });
        Ok(Capture { detach, task })
    }

    fn write_bytes(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        self.write_line(line.strip_suffix('\r').unwrap_or(&line));
    }
}

/// Longest line kept whole; a longer one is written in pieces.
const MAX_LINE: usize = 64 * 1024;

/// A pipe being copied into an instance's log.
pub struct Capture {
    detach: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Capture {
    /// Stops copying: what was read is written out, a partial last line as
    /// a line of its own. What the instance writes from now on waits in
    /// the pipe for whoever reads it next.
    pub async fn detach(self) {
        let _ = self.detach.send(());
        let _ = self.task.await;
    }
}

impl Inner {
    fn rotate(&mut self) {
        self.file = None;
        let rotated = rotated_path(&self.path);
        let _ = std::fs::rename(&self.path, rotated);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.written = 0;
    }
}

/// Moves a log file of `limit` bytes or more aside (to `<path>.1`, over
/// the one before), for a writer about to append to it from the start:
/// the agent's own `agent.log`, each time an agent is started. Whether it
/// did.
pub fn rotate_if_past(path: &Path, limit: u64) -> bool {
    let big = std::fs::metadata(path).is_ok_and(|m| m.len() >= limit);
    big && std::fs::rename(path, rotated_path(path)).is_ok()
}

fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The last `n` lines of a log file (and its rotated predecessor if needed).
pub fn read_tail(path: &Path, n: usize) -> Vec<String> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let current = read(path);
    let mut lines: Vec<String> = current.lines().map(str::to_owned).collect();
    if lines.len() < n {
        let older = read(&rotated_path(path));
        let mut all: Vec<String> = older.lines().map(str::to_owned).collect();
        all.append(&mut lines);
        lines = all;
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_limit_is_moved_aside_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        std::fs::write(&log, "small\n").expect("write");
        assert!(!rotate_if_past(&log, 10), "under the limit it stays");
        assert!(!rotate_if_past(&dir.path().join("none.log"), 0), "no file");
        std::fs::write(&log, "0123456789\n").expect("write");
        assert!(rotate_if_past(&log, 10));
        assert!(!log.exists());
        let aside = std::fs::read_to_string(dir.path().join("agent.log.1")).expect("read");
        assert_eq!(aside, "0123456789\n");
    }

    #[test]
    fn rotates_past_the_limit_and_tails_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let log = InstanceLog::open(path.clone()).expect("open");
        let line = "x".repeat(1024);
        for _ in 0..(ROTATE_AT_BYTES / 1024 + 2) {
            log.write_line(&line);
        }
        log.write_line("last");
        assert!(rotated_path(&path).exists(), "rotated file exists");
        assert!(std::fs::metadata(&path).expect("meta").len() < ROTATE_AT_BYTES);
        let tail = read_tail(&path, 3);
        assert_eq!(tail.last().map(String::as_str), Some("last"));
        assert_eq!(tail.len(), 3);
        assert_eq!(log.tail(1), vec!["last".to_string()]);
    }

    #[tokio::test]
    async fn a_detached_capture_keeps_what_it_read_and_its_pipe_reads_on() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = InstanceLog::open(dir.path().join("b.log")).expect("open");
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        let pipe = OwnedFd::from(reader);
        let capture = log
            .capture(pipe.try_clone().expect("dup"))
            .expect("capture");
        writer.write_all(b"one\ntw").expect("write");
        let seen = |want: &str| {
            let log = log.clone();
            let want = want.to_owned();
            async move {
                for _ in 0..250 {
                    if log.tail(TAIL_LINES).contains(&want) {
                        return true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                false
            }
        };
        assert!(seen("one").await);
        capture.detach().await;
        assert_eq!(log.tail(2), vec!["one", "tw"], "the partial line is kept");
        writer.write_all(b"three\n").expect("write");
        let _again = log.capture(pipe).expect("capture again");
        assert!(seen("three").await, "{:?}", log.tail(5));
    }
}
