//! The control plane's side of the agent protocol: one unix-socket
//! connection per request, one JSON line each way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tandem_core::protocol::{
    AgentStatus, CertificateInfo, GroupSpec, HANDOVER_REFUSAL, LogCursor, LogLine, Redacted,
    Request, Response, RouteSpec, SOCKET_FILE, UPGRADE_TIMEOUT,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("agent not reachable at {path}: {source}")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("agent closed the connection without answering")]
    NoAnswer,
    #[error("agent did not answer `{request}` within {seconds}s (hung or overloaded)")]
    TimedOut { request: String, seconds: u64 },
    #[error("agent sent an unreadable answer: {0}")]
    Garbled(String),
    #[error("agent refused: {0}")]
    Refused(String),
    #[error("agent gave an unexpected answer to {request}: {answer}")]
    Unexpected {
        request: &'static str,
        answer: String,
    },
}

/// What `WaitReady` found.
#[derive(Debug)]
pub enum Readiness {
    Ready {
        at_ms: u64,
    },
    NotReady {
        reason: String,
        log_tail: Vec<String>,
    },
}

fn unexpected(request: &'static str, answer: &Response) -> AgentClientError {
    AgentClientError::Unexpected {
        request,
        answer: format!("{answer:?}"),
    }
}

#[derive(Clone, Debug)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn for_data_dir(data_dir: &Path) -> Self {
        AgentClient {
            socket: data_dir.join(SOCKET_FILE),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; an agent `Error` answer becomes `Refused`. While
    /// the agent hands over to a new one, asks again (for up to
    /// `HANDOVER_RETRY_FOR`): every request is idempotent, and the new
    /// agent answers on the same socket.
    pub async fn call(&self, request: &Request) -> Result<Response, AgentClientError> {
        let give_up = tokio::time::Instant::now() + HANDOVER_RETRY_FOR;
        loop {
            match self.call_once(request).await {
                Err(AgentClientError::Refused(why))
                    if why.starts_with(HANDOVER_REFUSAL)
                        && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// One exchange, bounded: an agent that accepts but never answers
    /// (stopped, hung) must not hang its caller — the monitor least of all.
    async fn call_once(&self, request: &Request) -> Result<Response, AgentClientError> {
        let exchange = self.exchange(request);
        match answer_within(request) {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(AgentClientError::TimedOut {
                        // The protocol's name for it.
                        request: serde_json::to_value(request)
                            .ok()
                            .and_then(|v| Some(v.get("op")?.as_str()?.to_owned()))
                            .unwrap_or_default(),
                        seconds: limit.as_secs(),
                    })
                }),
            None => exchange.await,
        }
    }

    async fn exchange(&self, request: &Request) -> Result<Response, AgentClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            AgentClientError::Unreachable {
                path: self.socket.display().to_string(),
                source,
            }
        })?;
        let (read, mut write) = stream.into_split();
        // The key first (see `Request::Auth`), the request right behind it.
        let dir = self.socket.parent().unwrap_or(Path::new("."));
        let key =
            tandem_seal::local_key(dir, tandem_core::protocol::AGENT_KEY).map_err(|source| {
                AgentClientError::Unreachable {
                    path: dir.join("keys").display().to_string(),
                    source,
                }
            })?;
        let mut line = serde_json::to_vec(&Request::Auth { key })
            .map_err(|e| AgentClientError::Garbled(e.to_string()))?;
        line.push(b'\n');
        line.extend(
            serde_json::to_vec(request).map_err(|e| AgentClientError::Garbled(e.to_string()))?,
        );
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|source| AgentClientError::Unreachable {
                path: self.socket.display().to_string(),
                source,
            })?;
        let mut read = BufReader::new(read);
        let mut answer = String::new();
        for first in [true, false] {
            answer.clear();
            read.read_line(&mut answer)
                .await
                .map_err(|source| AgentClientError::Unreachable {
                    path: self.socket.display().to_string(),
                    source,
                })?;
            if answer.is_empty() {
                return Err(AgentClientError::NoAnswer);
            }
            if first {
                match serde_json::from_str(&answer) {
                    Ok(Response::Ok) => {}
                    // An agent older than keys knows no `auth`, and answers
                    // the request behind it all the same.
                    Ok(Response::Error { message }) if message.starts_with("bad request") => {}
                    Ok(Response::Error { message }) => {
                        return Err(AgentClientError::Refused(message));
                    }
                    Ok(other) => return Err(unexpected("auth", &other)),
                    Err(e) => return Err(AgentClientError::Garbled(e.to_string())),
                }
            }
        }
        match serde_json::from_str(&answer) {
            Ok(Response::Error { message }) => Err(AgentClientError::Refused(message)),
            Ok(r) => Ok(r),
            Err(e) => Err(AgentClientError::Garbled(e.to_string())),
        }
    }

    /// The agent's pid and the address its proxy listens on.
    pub async fn hello(&self) -> Result<(u32, String), AgentClientError> {
        match self.call(&Request::Hello).await? {
            Response::Hello {
                pid, proxy_addr, ..
            } => Ok((pid, proxy_addr)),
            other => Err(unexpected("hello", &other)),
        }
    }

    pub async fn status(&self) -> Result<AgentStatus, AgentClientError> {
        match self.call(&Request::Status).await? {
            Response::Status { status } => Ok(status),
            other => Err(unexpected("status", &other)),
        }
    }

    pub async fn start_group(&self, group: GroupSpec) -> Result<Vec<String>, AgentClientError> {
        let group = Box::new(group);
        match self.call(&Request::StartGroup { group }).await? {
            Response::Started { instances } => Ok(instances),
            other => Err(unexpected("start_group", &other)),
        }
    }

    pub async fn wait_ready(
        &self,
        service: &str,
        release: &str,
        timeout_ms: u64,
    ) -> Result<Readiness, AgentClientError> {
        let request = Request::WaitReady {
            service: service.into(),
            release: release.into(),
            timeout_ms,
        };
        match self.call(&request).await? {
            Response::Ready { ready_at_ms } => Ok(Readiness::Ready { at_ms: ready_at_ms }),
            Response::NotReady { reason, log_tail } => Ok(Readiness::NotReady { reason, log_tail }),
            other => Err(unexpected("wait_ready", &other)),
        }
    }

    /// Switches the route; returns when it switched and the release it replaced.
    pub async fn activate(
        &self,
        service: &str,
        release: &str,
        route: RouteSpec,
    ) -> Result<(u64, Option<String>), AgentClientError> {
        let request = Request::Activate {
            service: service.into(),
            release: release.into(),
            route,
        };
        match self.call(&request).await? {
            Response::Activated {
                switched_at_ms,
                previous,
            } => Ok((switched_at_ms, previous)),
            other => Err(unexpected("activate", &other)),
        }
    }

    pub async fn stop_group(
        &self,
        service: &str,
        release: &str,
        drain_timeout_ms: u64,
    ) -> Result<(), AgentClientError> {
        let request = Request::StopGroup {
            service: service.into(),
            release: release.into(),
            drain_timeout_ms,
        };
        match self.call(&request).await? {
            Response::Stopped { .. } => Ok(()),
            other => Err(unexpected("stop_group", &other)),
        }
    }

    pub async fn logs(
        &self,
        service: &str,
        release: Option<String>,
        lines: usize,
        after: BTreeMap<String, LogCursor>,
    ) -> Result<Vec<LogLine>, AgentClientError> {
        match self
            .call(&Request::Logs {
                service: service.into(),
                release,
                lines,
                after,
            })
            .await?
        {
            Response::Logs { lines } => Ok(lines),
            other => Err(unexpected("logs", &other)),
        }
    }

    pub async fn metrics(&self) -> Result<String, AgentClientError> {
        match self.call(&Request::Metrics).await? {
            Response::Metrics { text } => Ok(text),
            other => Err(unexpected("metrics", &other)),
        }
    }

    pub async fn maintenance(
        &self,
        service: &str,
        on: bool,
        retry_after_s: u32,
    ) -> Result<(), AgentClientError> {
        let request = Request::Maintenance {
            service: service.into(),
            on,
            retry_after_s,
        };
        match self.call(&request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("maintenance", &other)),
        }
    }

    /// Serves `chain_pem` and `key_pem` for `host` over HTTPS.
    pub async fn set_certificate(
        &self,
        host: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), AgentClientError> {
        let request = Request::SetCertificate {
            host: host.into(),
            chain_pem: chain_pem.into(),
            key_pem: Redacted(key_pem.into()),
        };
        match self.call(&request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("set_certificate", &other)),
        }
    }

    /// The certificates the agent serves, with their chains.
    pub async fn certificates(&self) -> Result<Vec<CertificateInfo>, AgentClientError> {
        match self.call(&Request::Certificates).await? {
            Response::Certificates { certificates } => Ok(certificates),
            other => Err(unexpected("certificates", &other)),
        }
    }

    /// Answers ACME HTTP-01 challenge `token` (or no longer: `None`).
    pub async fn acme_challenge(
        &self,
        token: &str,
        key_authorization: Option<&str>,
    ) -> Result<(), AgentClientError> {
        let request = Request::AcmeChallenge {
            token: token.into(),
            key_authorization: key_authorization.map(str::to_owned),
        };
        match self.call(&request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("acme_challenge", &other)),
        }
    }

    /// Asks the agent to start `exe` as its successor (`Request::Upgrade`)
    /// and waits until it took over: its pid. Asked once, never again.
    pub async fn upgrade(&self, exe: &Path) -> Result<u32, AgentClientError> {
        let request = Request::Upgrade {
            exe: exe.display().to_string(),
        };
        match self.call_once(&request).await? {
            Response::Upgraded { pid } => Ok(pid),
            other => Err(unexpected("upgrade", &other)),
        }
    }

    pub async fn shutdown(&self, stop_instances: bool) -> Result<(), AgentClientError> {
        match self.call(&Request::Shutdown { stop_instances }).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("shutdown", &other)),
        }
    }
}

/// How long the agent may take to answer `request`; `None` for requests
/// whose work has its own bounds the client does not know (a drain and a
/// stop, the shutdown).
fn answer_within(request: &Request) -> Option<std::time::Duration> {
    use std::time::Duration;
    match request {
        // Answered from memory.
        Request::Hello | Request::Status | Request::Metrics => Some(Duration::from_secs(3)),
        Request::WaitReady { timeout_ms, .. } => {
            Some(Duration::from_millis(*timeout_ms) + Duration::from_secs(10))
        }
        Request::StopGroup { .. } | Request::Shutdown { .. } => None,
        // The agent waits for its successor that long, then answers.
        Request::Upgrade { .. } => Some(UPGRADE_TIMEOUT + Duration::from_secs(10)),
        _ => Some(Duration::from_secs(10)),
    }
}

/// How long a request keeps being asked again while the agent hands over.
const HANDOVER_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);
