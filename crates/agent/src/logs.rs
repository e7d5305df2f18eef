//! Per-instance log files with size-based rotation (`x.log` → `x.log.1`),
//! and a small in-memory tail for failure messages.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

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

    /// Copies lines from a child's stdout or stderr until it closes.
    pub fn capture(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.write_line(&line);
            }
        });
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
}
