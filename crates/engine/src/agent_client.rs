//! The control plane's side of the agent protocol: one unix-socket
//! connection per request, one JSON line each way.

use std::path::{Path, PathBuf};

use tandem_core::protocol::{Request, Response, SOCKET_FILE};
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
    #[error("agent sent an unreadable answer: {0}")]
    Garbled(String),
    #[error("agent refused: {0}")]
    Refused(String),
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

    /// Sends one request; an agent `Error` answer becomes `Refused`.
    pub async fn call(&self, request: &Request) -> Result<Response, AgentClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            AgentClientError::Unreachable {
                path: self.socket.display().to_string(),
                source,
            }
        })?;
        let (read, mut write) = stream.into_split();
        let mut line =
            serde_json::to_vec(request).map_err(|e| AgentClientError::Garbled(e.to_string()))?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|source| AgentClientError::Unreachable {
                path: self.socket.display().to_string(),
                source,
            })?;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(|source| AgentClientError::Unreachable {
                path: self.socket.display().to_string(),
                source,
            })?;
        if answer.is_empty() {
            return Err(AgentClientError::NoAnswer);
        }
        match serde_json::from_str(&answer) {
            Ok(Response::Error { message }) => Err(AgentClientError::Refused(message)),
            Ok(r) => Ok(r),
            Err(e) => Err(AgentClientError::Garbled(e.to_string())),
        }
    }
}
