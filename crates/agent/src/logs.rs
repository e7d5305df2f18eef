//! Per-instance log files with size-based rotation (`x.log` → `x.log.1`),
//! and a small in-memory tail for failure messages.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::os::fd::OwnedFd;

use tandem_core::protocol::LogCursor;
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
    /// The instance's secret values, masked in every line written.
    secrets: tandem_core::masking::Masker,
}

/// An instance log file: appended to, owner-only (what an instance prints
/// is its own business).
fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl InstanceLog {
    /// The log at `path`; `secrets` (values of the instance's secrets)
    /// are masked in what is written to it.
    pub fn open(path: PathBuf, secrets: Vec<String>) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = open_log(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(InstanceLog {
            inner: Arc::new(Mutex::new(Inner {
                path,
                file: Some(file),
                written,
                tail: VecDeque::new(),
                secrets: tandem_core::masking::Masker::new(secrets),
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
        let masked;
        let line = if inner.secrets.is_empty() {
            line
        } else {
            masked = inner.secrets.mask(line);
            masked.as_str()
        };
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
        self.file = open_log(&self.path).ok();
        self.written = 0;
    }
}

/// The name of the variable that sends a daemon's own log to a file it
/// rotates while it runs (what `up` gives the agent: `<data>/agent.log`).
pub const LOG_FILE_VARIABLE: &str = "TANDEM_LOG_FILE";

/// A daemon's own log, rotated while it runs: past `limit` bytes the file
/// is moved to `<path>.1` (over the one before) and a new one begun. A
/// write that fails (a full disk) is dropped, never fatal.
pub struct DaemonLog {
    path: PathBuf,
    limit: u64,
    inner: std::sync::Mutex<(Option<std::fs::File>, u64)>,
}

impl DaemonLog {
    pub fn open(path: &Path, limit: u64) -> DaemonLog {
        let file = open_log(path).ok();
        let written = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        DaemonLog {
            path: path.to_path_buf(),
            limit,
            inner: std::sync::Mutex::new((file, written)),
        }
    }

    fn write_all(&self, buf: &[u8]) {
        use std::io::Write;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.1 >= self.limit {
            let _ = std::fs::rename(&self.path, rotated_path(&self.path));
            *inner = (open_log(&self.path).ok(), 0);
        }
        if inner.0.is_none() {
            // Gone (removed, a full disk at rotation): tried again.
            inner.0 = open_log(&self.path).ok();
        }
        if let Some(file) = inner.0.as_mut()
            && file.write_all(buf).is_ok()
        {
            inner.1 += buf.len() as u64;
        }
    }
}

/// One event's output, written whole when it is dropped.
pub struct DaemonLogLine<'a> {
    log: &'a DaemonLog,
    buf: Vec<u8>,
}

impl std::io::Write for DaemonLogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for DaemonLogLine<'_> {
    fn drop(&mut self) {
        self.log.write_all(&self.buf);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for DaemonLog {
    type Writer = DaemonLogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        DaemonLogLine {
            log: self,
            buf: Vec::with_capacity(256),
        }
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
/// A follower gets at most this many bytes of a log file per call (the
/// lines after its cursor); it asks again for the rest.
pub const FOLLOW_MAX_BYTES: u64 = 1024 * 1024;

/// An instance log's lines, each with the cursor after it. With `after`,
/// every complete line written since that cursor, across a rotation (at
/// most [`FOLLOW_MAX_BYTES`] of each file per call); without it, or when
/// its file has been rotated away twice, the last `n` lines.
pub fn read_lines(path: &Path, n: usize, after: Option<LogCursor>) -> Vec<(String, LogCursor)> {
    let rotated = rotated_path(path);
    if let Some(at) = after {
        if inode(path) == Some(at.file) {
            return lines_from(path, at.offset, FOLLOW_MAX_BYTES).0;
        }
        if inode(&rotated) == Some(at.file) {
            let (mut lines, whole) = lines_from(&rotated, at.offset, FOLLOW_MAX_BYTES);
            // The new file only once the old one is read to its end.
            if whole {
                lines.extend(lines_from(path, 0, FOLLOW_MAX_BYTES).0);
            }
            return lines;
        }
    }
    let mut lines = lines_from(path, 0, u64::MAX).0;
    if lines.len() < n {
        let mut older = lines_from(&rotated, 0, u64::MAX).0;
        older.append(&mut lines);
        lines = older;
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The complete lines of `path` from byte `offset` on (from the start if
/// the file is now shorter), reading at most `limit` bytes, and whether
/// that read to the file's end. A last line still being written (no
/// newline yet) waits for the next call.
fn lines_from(path: &Path, offset: u64, limit: u64) -> (Vec<(String, LogCursor)>, bool) {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let Ok(mut file) = File::open(path) else {
        return (Vec::new(), true);
    };
    let Ok(meta) = file.metadata() else {
        return (Vec::new(), true);
    };
    let offset = if offset > meta.len() { 0 } else { offset };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err()
        || file.take(limit).read_to_end(&mut bytes).is_err()
    {
        return (Vec::new(), true);
    }
    let whole = (bytes.len() as u64) < limit;
    let mut lines = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes[at..].iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&bytes[at..at + len]).into_owned();
        at += len + 1;
        let next = LogCursor {
            file: meta.ino(),
            offset: offset + at as u64,
        };
        lines.push((line, next));
    }
    (lines, whole)
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
        let log = InstanceLog::open(path.clone(), Vec::new()).expect("open");
        let line = "x".repeat(1024);
        for _ in 0..(ROTATE_AT_BYTES / 1024 + 2) {
            log.write_line(&line);
        }
        log.write_line("last");
        assert!(rotated_path(&path).exists(), "rotated file exists");
        assert!(std::fs::metadata(&path).expect("meta").len() < ROTATE_AT_BYTES);
        let tail = read_lines(&path, 3, None);
        assert_eq!(tail.last().map(|(l, _)| l.as_str()), Some("last"));
        assert_eq!(tail.len(), 3);
        assert_eq!(log.tail(1), vec!["last".to_string()]);
    }

    #[test]
    fn a_cursor_gives_every_line_written_since_once_even_alike_and_across_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let log = InstanceLog::open(path.clone(), Vec::new()).expect("open");
        let texts = |lines: &[(String, LogCursor)]| -> Vec<String> {
            lines.iter().map(|(l, _)| l.clone()).collect()
        };
        log.write_line("one");
        log.write_line("same");
        let first = read_lines(&path, 1, None);
        assert_eq!(texts(&first), ["same"]);
        let mut at = first[0].1;
        // Bytes as a writer's partial write leaves them.
        let append = |bytes: &[u8]| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(bytes))
                .expect("append");
        };
        // Alike lines, and one still being written: it waits.
        log.write_line("same");
        log.write_line("same");
        append(b"half");
        let next = read_lines(&path, 1, Some(at));
        assert_eq!(texts(&next), ["same", "same"]);
        at = next[1].1;
        assert!(read_lines(&path, 1, Some(at)).is_empty(), "nothing new");
        append(b" done\n");
        let next = read_lines(&path, 1, Some(at));
        assert_eq!(texts(&next), ["half done"]);
        at = next[0].1;
        // Past the rotation: the rest of the old file, then the new one.
        let big = "x".repeat(1024);
        for _ in 0..(ROTATE_AT_BYTES / 1024 + 1) {
            log.write_line(&big);
        }
        log.write_line("after");
        // A page at a time (FOLLOW_MAX_BYTES), as a follower asks.
        let mut all = Vec::new();
        loop {
            let page = read_lines(&path, 1, Some(at));
            let Some((_, last)) = page.last() else { break };
            at = *last;
            all.extend(texts(&page));
        }
        assert_eq!(
            all.len() as u64,
            ROTATE_AT_BYTES / 1024 + 2,
            "every line once"
        );
        assert_eq!(all.last().map(String::as_str), Some("after"));
        assert!(all[..all.len() - 1].iter().all(|l| *l == big));
    }

    #[tokio::test]
    async fn a_detached_capture_keeps_what_it_read_and_its_pipe_reads_on() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = InstanceLog::open(dir.path().join("b.log"), Vec::new()).expect("open");
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
