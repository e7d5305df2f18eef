//! The agent: tandem's data plane as its own process. It owns the proxy and
//! the supervised instances, keeps its state in a small file written
//! atomically, and answers the control plane on a unix socket. It never
//! touches the store and keeps serving when the control plane is gone.

pub mod logs;
pub mod probe;
pub mod socket;
pub mod supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tandem_core::protocol::SOCKET_FILE;
use tandem_proxy::{Proxy, ProxyConfig};

pub use supervisor::Supervisor;

/// Bounded drain when the agent itself shuts down with its instances.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub proxy_addr: SocketAddr,
    pub proxy: ProxyConfig,
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
/// files: two sockets each, after the agent's own.
pub fn connection_limit(fd_limit: u64, configured: usize) -> usize {
    let fits = fd_limit.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(fits)
        .unwrap_or(usize::MAX)
        .clamp(1, configured.max(1))
}

/// Takes the agent lock of `data_dir`, or says who holds it.
pub fn lock_data_dir(data_dir: &Path, name: &str) -> Result<Flock<std::fs::File>, AgentError> {
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
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        AgentError::AlreadyRunning(data_dir.display().to_string(), path.display().to_string())
    })?;
    use std::io::{Seek, Write};
    let _ = lock.set_len(0);
    let _ = lock.seek(std::io::SeekFrom::Start(0));
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(lock)
}

/// Runs the agent until SIGTERM/SIGINT or a `Shutdown` request.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| AgentError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let _lock = lock_data_dir(dir, "agent.lock")?;

    let listener = tokio::net::TcpListener::bind(config.proxy_addr)
        .await
        .map_err(|source| AgentError::ProxyBind {
            addr: config.proxy_addr,
            source,
        })?;
    let proxy_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();

    let socket_path = dir.join(SOCKET_FILE);
    // We hold the lock, so a socket file left here belongs to a dead agent.
    let _ = std::fs::remove_file(&socket_path);
    let control =
        tokio::net::UnixListener::bind(&socket_path).map_err(|source| AgentError::Socket {
            path: socket_path.display().to_string(),
            source,
        })?;

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
    supervisor.restore();

    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel::<bool>(1);
    let ctx = socket::Context {
        supervisor: supervisor.clone(),
        proxy_addr: proxy_addr.clone(),
        started_at_ms: supervisor::now_ms(),
        shutdown: shutdown_tx,
    };
    tokio::spawn(socket::serve(control, ctx));
    let (stop_proxy_tx, stop_proxy_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = tokio::spawn(async move {
        proxy
            .serve(listener, async {
                let _ = stop_proxy_rx.await;
            })
            .await;
    });
    tracing::info!(proxy = %proxy_addr, socket = %socket_path.display(), pid = std::process::id(), "agent started");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| AgentError::Socket {
            path: "SIGTERM handler".into(),
            source,
        })?;
    let stop_instances = tokio::select! {
        asked = shutdown_rx.recv() => asked.unwrap_or(true),
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
    };
    if stop_instances {
        supervisor.stop_all(SHUTDOWN_DRAIN).await;
    }
    let _ = stop_proxy_tx.send(());
    let _ = proxy_task.await;
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(stop_instances, "agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sockets_per_connection_after_the_reserve_and_never_above_the_configured() {
        assert_eq!(connection_limit(1024, 10_000), 384);
        assert_eq!(connection_limit(1 << 20, 10_000), 10_000);
        assert_eq!(connection_limit(100, 10_000), 1, "at least one");
        assert_eq!(connection_limit(1024, 0), 1);
    }
}
