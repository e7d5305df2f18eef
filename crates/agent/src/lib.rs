//! The agent: tandem's data plane as its own process. It owns the proxy and
//! the supervised instances, keeps its state in a small file written
//! atomically, and answers the control plane on a unix socket. It never
//! touches the store and keeps serving when the control plane is gone.

pub mod certs;
mod files;
pub mod handover;
pub mod listening;
pub mod logs;
pub mod metrics;
pub mod probe;
mod procfs;
pub mod socket;
pub mod supervisor;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_core::protocol::SOCKET_FILE;
use tandem_proxy::{Proxy, ProxyConfig};
use tokio_util::task::AbortOnDropHandle;

use handover::Sockets;
use socket::Stop;
pub use supervisor::Supervisor;

/// Bounded drain when the agent itself shuts down with its instances.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub proxy_addr: SocketAddr,
    pub proxy: ProxyConfig,
    /// Where the proxy serves HTTPS, if anywhere.
    pub tls_addr: Option<SocketAddr>,
    /// Where the agent serves its own `/metrics`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Take over from the agent running for `data_dir` (its sockets, lock
    /// and instances) instead of starting afresh.
    pub takeover: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("another agent already runs for data directory {0} (lock held on {1})")]
    AlreadyRunning(String, String),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen for proxy traffic on {addr}: {source}")]
    ProxyBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error("cannot open control socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
}

/// File descriptors kept back from the proxy's share for the agent's own
/// use: the control socket, log files, probes, instances' pipes.
const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard one (capped at 2^20):
/// a proxied connection holds two sockets, and the usual soft limit of
/// 1024 would stop the proxy at a few hundred clients. Returns the limit in
/// force. Instances started later inherit it.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let wanted = hard.min(1 << 20);
    if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).is_ok() {
        return wanted;
    }
    soft
}

/// How many client connections the proxy can take with `fd_limit` open
/// files: after the agent's own, three quarters of them. A connection
/// holds its client socket, and an upstream one only while a request is
/// in flight (or just after), so idle and slow clients — most of a large
/// crowd — cost one descriptor; the last quarter is left for upstream
/// connections, and a request that finds none left gets a 503 rather than
/// a target wrongly marked as refusing.
pub fn connection_limit(fd_limit: u64, configured: usize) -> usize {
    let fits = fd_limit.saturating_sub(RESERVED_FDS) / 4 * 3;
    usize::try_from(fits)
        .unwrap_or(usize::MAX)
        .clamp(1, configured.max(1))
}

/// Takes the agent lock of `data_dir`, or says who holds it. The lock
/// (`flock`) is held as long as any descriptor of the returned file is
/// open, in this process or one it was passed to.
pub fn lock_data_dir(data_dir: &Path, name: &str) -> Result<File, AgentError> {
    let file = try_lock(data_dir, name)?;
    note_pid(&file);
    Ok(file)
}

/// Whether nobody holds the lock `name` of `data_dir` (its holder died):
/// asked without taking it for longer than the asking, nor writing our pid
/// into it.
pub fn lock_is_free(data_dir: &Path, name: &str) -> bool {
    try_lock(data_dir, name).is_ok()
}

fn try_lock(data_dir: &Path, name: &str) -> Result<File, AgentError> {
    let path = data_dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
    file.try_lock().map_err(|_| {
        AgentError::AlreadyRunning(data_dir.display().to_string(), path.display().to_string())
    })?;
    Ok(file)
}

/// Writes our pid into a lock file we hold.
fn note_pid(mut file: &File) {
    use std::io::{Seek, Write};
    let _ = file.set_len(0);
    let _ = file.seek(std::io::SeekFrom::Start(0));
    let _ = writeln!(file, "{}", std::process::id());
}

/// The environment variable through which a parent passes the proxy's
/// listening socket, as the number of a descriptor it left open for us:
/// the `tandem up` that holds the socket while it starts a dead agent
/// again, so that clients wait in its backlog meanwhile.
pub const PROXY_FD_VAR: &str = "TANDEM_PROXY_FD";

/// The variables through which a listening socket is passed to an agent
/// ([`PROXY_FD_VAR`], systemd's socket activation): not for the processes
/// it starts (instances, its successor), to which they would lie.
pub(crate) const PASSED_SOCKET_VARS: [&str; 4] =
    [PROXY_FD_VAR, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// The listening socket a parent passed: in [`PROXY_FD_VAR`], or by
/// systemd's socket activation (`LISTEN_FDS=1` for our `LISTEN_PID`: the
/// socket is descriptor 3). `None` when nobody passed one.
#[allow(unsafe_code)]
fn inherited_listener() -> Result<Option<std::net::TcpListener>, AgentError> {
    use std::os::fd::FromRawFd;
    let (raw, how) = match std::env::var(PROXY_FD_VAR) {
        Ok(number) => (number.parse().ok(), format!("{PROXY_FD_VAR}={number}")),
        Err(_) => {
            let ours = std::env::var("LISTEN_PID")
                .is_ok_and(|pid| pid.trim() == std::process::id().to_string());
            match std::env::var("LISTEN_FDS") {
                Ok(n) if ours => ((n.trim() == "1").then_some(3), format!("LISTEN_FDS={n}")),
                _ => return Ok(None),
            }
        }
    };
    let bad = |why: &str| AgentError::Socket {
        path: how.clone(),
        source: std::io::Error::other(why.to_owned()),
    };
    let raw: std::os::fd::RawFd = match raw {
        Some(n) if n >= 3 => n,
        _ => {
            return Err(bad(
                "expected one listening socket, passed as descriptor 3 or above",
            ));
        }
    };
    // SAFETY: our parent left this descriptor open for us to own, and said
    // so in the variable; nothing else in this process knows of it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| bad(&format!("not an open descriptor: {e}")))?;
    let listener = std::net::TcpListener::from(fd);
    listener
        .local_addr()
        .map_err(|e| bad(&format!("not a listening socket: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| bad(&e.to_string()))?;
    Ok(Some(listener))
}

/// The sockets and lock to serve with: taken over from the running agent,
/// or made afresh.
struct Start {
    lock: File,
    listener: tokio::net::TcpListener,
    tls_listener: Option<tokio::net::TcpListener>,
    control: tokio::net::UnixListener,
    taken: Option<(handover::Offer, handover::Link)>,
}

async fn start(config: &AgentConfig) -> Result<Start, AgentError> {
    let dir = &config.data_dir;
    let socket_path = dir.join(SOCKET_FILE);
    let socket_error = |source| AgentError::Socket {
        path: socket_path.display().to_string(),
        source,
    };
    if config.takeover {
        let taken = handover::take(dir).await?;
        let lock = File::from(taken.sockets.lock);
        note_pid(&lock);
        let listener = std::net::TcpListener::from(taken.sockets.proxy);
        listener.set_nonblocking(true).map_err(socket_error)?;
        let control = std::os::unix::net::UnixListener::from(taken.sockets.control);
        control.set_nonblocking(true).map_err(socket_error)?;
        let tls_listener = match taken.sockets.tls {
            Some(fd) => {
                let tls = std::net::TcpListener::from(fd);
                tls.set_nonblocking(true).map_err(socket_error)?;
                Some(tokio::net::TcpListener::from_std(tls).map_err(socket_error)?)
            }
            // The old agent served no HTTPS: this one binds it, if asked.
            None => bind_tls(config).await?,
        };
        return Ok(Start {
            lock,
            listener: tokio::net::TcpListener::from_std(listener).map_err(socket_error)?,
            tls_listener,
            control: tokio::net::UnixListener::from_std(control).map_err(socket_error)?,
            taken: Some((taken.offer, taken.link)),
        });
    }
    let lock = lock_data_dir(dir, "agent.lock")?;
    let listener = match inherited_listener()? {
        Some(held) => tokio::net::TcpListener::from_std(held).map_err(socket_error)?,
        None => tokio::net::TcpListener::bind(config.proxy_addr)
            .await
            .map_err(|source| AgentError::ProxyBind {
                addr: config.proxy_addr,
                source,
            })?,
    };
    let tls_listener = bind_tls(config).await?;
    // We hold the lock, so a socket file left here belongs to a dead agent.
    let _ = std::fs::remove_file(&socket_path);
    let control = tokio::net::UnixListener::bind(&socket_path).map_err(socket_error)?;
    Ok(Start {
        lock,
        listener,
        tls_listener,
        control,
        taken: None,
    })
}

/// The HTTPS listening socket, when the agent is to serve HTTPS.
async fn bind_tls(config: &AgentConfig) -> Result<Option<tokio::net::TcpListener>, AgentError> {
    let Some(addr) = config.tls_addr else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| AgentError::ProxyBind { addr, source })
}

/// Runs the agent until SIGTERM/SIGINT, a `Shutdown` request or a
/// handover to a new agent.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let dir = &config.data_dir;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AgentError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
    // What every connection to the control socket starts with.
    let key: Arc<str> = tandem_seal::local_key(dir, tandem_core::protocol::AGENT_KEY)
        .map_err(|source| AgentError::DataDir {
            path: dir.join("keys").display().to_string(),
            source,
        })?
        .into();
    let Start {
        lock,
        listener,
        tls_listener,
        control,
        taken,
    } = start(&config).await?;
    let proxy_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let socket_path = dir.join(SOCKET_FILE);
    let dup = |fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map_err(|source| AgentError::Socket {
                path: "a descriptor to hand over".into(),
                source,
            })
    };
    // The lock lives as long as `sockets` (this process) or a descriptor
    // of it passed on in a handover does.
    let sockets = Arc::new(Sockets {
        lock: OwnedFd::from(lock),
        proxy: dup(listener.as_fd())?,
        control: dup(control.as_fd())?,
        tls: match &tls_listener {
            Some(tls) => Some(dup(tls.as_fd())?),
            None => None,
        },
    });

    let fd_limit = raise_fd_limit();
    let proxy_config = ProxyConfig {
        max_connections: connection_limit(fd_limit, config.proxy.max_connections),
        ..config.proxy.clone()
    };
    tracing::info!(
        fd_limit,
        max_connections = proxy_config.max_connections,
        "open-file limit"
    );
    let proxy = Proxy::new(proxy_config);
    let supervisor = Supervisor::new(proxy.clone(), dir.clone());
    let link = match taken {
        Some((offer, link)) => {
            supervisor.adopt(offer);
            Some(link)
        }
        None => {
            supervisor.restore();
            None
        }
    };

    let certs = Arc::new(certs::CertStore::open(dir));
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel::<Stop>(1);
    let (settled_tx, settled) = tokio::sync::watch::channel(link.is_none());
    let ctx = socket::Context {
        supervisor: supervisor.clone(),
        proxy_addr: proxy_addr.clone(),
        started_at_ms: supervisor::now_ms(),
        shutdown: shutdown_tx,
        sockets,
        changing: Arc::default(),
        settled,
        certs: Arc::clone(&certs),
        key,
    };
    let control_task = AbortOnDropHandle::new(tokio::spawn(socket::serve(control, ctx)));
    let _metrics_task = match config.metrics_addr {
        Some(addr) => {
            let listener =
                metrics::bind(addr).map_err(|source| AgentError::ProxyBind { addr, source })?;
            tracing::info!(metrics = %addr, "serving the agent's metrics");
            Some(AbortOnDropHandle::new(tokio::spawn(metrics::serve(
                listener,
                supervisor.clone(),
            ))))
        }
        None => None,
    };
    let (stop_proxy_tx, stop_proxy_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = proxy.clone();
    let proxy_task = tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stop_proxy_rx.await;
            })
            .await;
    });
    let (stop_tls_tx, stop_tls_rx) = tokio::sync::oneshot::channel::<()>();
    let tls_task = tls_listener.map(|tls| {
        let serving = proxy.clone();
        let config = tandem_proxy::tls::server_config(certs.certificates());
        let addr = tls.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(https = %addr, certificates = certs.list().len(), "serving HTTPS");
        tokio::spawn(async move {
            serving
                .serve_tls(tls, config, async {
                    let _ = stop_tls_rx.await;
                })
                .await;
        })
    });
    // Client connections the old agent passes on, served until it is gone.
    let _receiving = match link {
        Some(mut link) => {
            // From here the old agent lets go; until here it served on.
            if let Err(e) = link.confirm().await {
                tracing::warn!(error = %e, "could not tell the old agent we took over");
            }
            let receiving = handover::receive_connections(link, proxy.clone(), supervisor.clone());
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                receiving.await;
                let _ = settled_tx.send(true);
            })))
        }
        None => None,
    };
    tracing::info!(proxy = %proxy_addr, socket = %socket_path.display(), pid = std::process::id(), takeover = config.takeover, "agent started");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| AgentError::Socket {
            path: "SIGTERM handler".into(),
            source,
        })?;
    let stop = tokio::select! {
        asked = shutdown_rx.recv() => asked.unwrap_or(Stop::Everything),
        _ = term.recv() => Stop::Everything,
        _ = tokio::signal::ctrl_c() => Stop::Everything,
    };
    if matches!(stop, Stop::Everything) {
        supervisor.stop_all(SHUTDOWN_DRAIN).await;
    }
    let _ = stop_proxy_tx.send(());
    let _ = proxy_task.await;
    let _ = stop_tls_tx.send(());
    if let Some(task) = tls_task {
        let _ = task.await;
    }
    drop(control_task);
    if let Stop::HandedOver(given) = stop {
        // Client connections go to the new agent as they come to rest;
        // those that cannot move are closed after their next response.
        let moved = proxy.hand_off();
        let sending = tokio::spawn(handover::send_connections(given.link, moved));
        let deadline = tokio::time::Instant::now() + handover::HANDOVER_DRAIN;
        while proxy.connections().0 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.stop_handing_off();
        // Then what was served here after the offer, for the new agent to
        // count (a connection still open now is cut as this process ends).
        match tokio::time::timeout(Duration::from_secs(5), sending).await {
            Ok(Ok(mut link)) => {
                let counted = supervisor.counters().since(&given.offered);
                if let Err(e) = handover::send_counts(&mut link, &counted).await {
                    tracing::warn!(error = %e, "could not pass the last counts to the new agent");
                }
            }
            _ => tracing::warn!(
                "client connections were still being passed on; the last counts are lost"
            ),
        }
        tracing::info!(left = proxy.connections().0, "handed over; agent stopped");
        return Ok(());
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(?stop, "agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_whether_a_lock_is_free_leaves_it_and_its_pid_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("agent.lock"), "4242\n").expect("write");
        assert!(lock_is_free(dir.path(), "agent.lock"));
        let pid = std::fs::read_to_string(dir.path().join("agent.lock")).expect("read");
        assert_eq!(pid, "4242\n", "the last holder's pid stays");
        let held = lock_data_dir(dir.path(), "agent.lock").expect("lock");
        assert!(!lock_is_free(dir.path(), "agent.lock"), "held");
        drop(held);
        assert!(lock_is_free(dir.path(), "agent.lock"), "let go");
    }

    #[test]
    fn three_quarters_of_the_files_after_the_reserve_and_never_above_the_configured() {
        assert_eq!(connection_limit(1024, 10_000), 576);
        assert_eq!(connection_limit(20_000, 100_000), 14_808);
        assert_eq!(connection_limit(1 << 20, 10_000), 10_000);
        assert_eq!(connection_limit(100, 10_000), 1, "at least one");
        assert_eq!(connection_limit(1024, 0), 1);
    }
}
