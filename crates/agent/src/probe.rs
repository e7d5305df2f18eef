//! Probes: an HTTP GET (2xx/3xx healthy), a TCP connect, or a command
//! (exit 0 healthy), each against one instance's port, with a timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tandem_core::protocol::{ProbeKind, ProbeSpec};

/// Shared HTTP client for probes (no pooling: each probe is a fresh connect,
/// like a client that arrives from nowhere).
#[derive(Clone)]
pub struct Prober {
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Prober { http }
    }
}

impl Prober {
    /// Runs one probe; `Err` says why it failed.
    pub async fn check(&self, spec: &ProbeSpec, port: u16, dir: &str) -> Result<(), String> {
        let timeout = Duration::from_millis(spec.timeout_ms.max(1));
        let attempt = async {
            match &spec.kind {
                ProbeKind::Tcp => tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("tcp connect to port {port}: {e}")),
                ProbeKind::Http { path } => {
                    let uri: http::Uri = format!("http://127.0.0.1:{port}{path}")
                        .parse()
                        .map_err(|e| format!("bad probe path {path}: {e}"))?;
                    let resp = self
                        .http
                        .get(uri)
                        .await
                        .map_err(|e| format!("GET {path}: {e}"))?;
                    let status = resp.status();
                    if status.is_success() || status.is_redirection() {
                        Ok(())
                    } else {
                        Err(format!("GET {path}: status {status}"))
                    }
                }
                ProbeKind::Exec { command } => {
                    let status = tokio::process::Command::new("/bin/sh")
                        .arg("-c")
                        .arg(command)
                        .current_dir(dir)
                        .env("PORT", port.to_string())
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status()
                        .await
                        .map_err(|e| format!("exec {command}: {e}"))?;
                    if status.success() {
                        Ok(())
                    } else {
                        Err(format!("exec {command}: {status}"))
                    }
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("probe timed out after {}ms", spec.timeout_ms)))
    }
}
