//! Probes: an HTTP GET (healthy when its status is in the probe's range), a TCP connect, or a command
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
    /// Runs one probe; `Err` says why it failed. An exec probe's command
    /// runs in `dir`, confined by `confine` as the instance is (its user,
    /// its groups, its fence).
    pub async fn check(
        &self,
        spec: &ProbeSpec,
        port: u16,
        dir: &str,
        confine: &(dyn Fn(&mut std::process::Command) -> std::io::Result<()> + Sync),
    ) -> Result<(), String> {
        let timeout = Duration::from_millis(spec.timeout_ms.max(1));
        let attempt = async {
            match &spec.kind {
                ProbeKind::Tcp => tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("tcp connect to port {port}: {e}")),
                ProbeKind::Http {
                    path,
                    status: (lo, hi),
                } => {
                    let uri: http::Uri = format!("http://127.0.0.1:{port}{path}")
                        .parse()
                        .map_err(|e| format!("bad probe path {path}: {e}"))?;
                    let resp = self
                        .http
                        .get(uri)
                        .await
                        .map_err(|e| format!("GET {path}: {e}"))?;
                    let status = resp.status();
                    if (*lo..=*hi).contains(&status.as_u16()) {
                        Ok(())
                    } else {
                        Err(format!("GET {path}: status {status}, healthy is {lo}-{hi}"))
                    }
                }
                ProbeKind::Exec { command } => {
                    let mut cmd = tokio::process::Command::new("/bin/sh");
                    cmd.arg("-c")
                        .arg(command)
                        .current_dir(dir)
                        .env("PORT", port.to_string())
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true);
                    confine(cmd.as_std_mut()).map_err(|e| format!("exec {command}: {e}"))?;
                    let status = cmd
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on port 0 that answers every request with `status`.
    async fn server(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        port
    }

    fn http(status: (u16, u16)) -> ProbeSpec {
        ProbeSpec {
            kind: ProbeKind::Http {
                path: "/up".into(),
                status,
            },
            interval_ms: 1000,
            timeout_ms: 1000,
            failures: 1,
        }
    }

    #[tokio::test]
    async fn http_probes_accept_exactly_their_status_range() {
        let prober = Prober::default();
        let no_content = server(204).await;
        let broken = server(500).await;
        assert_eq!(
            prober
                .check(&http((200, 299)), no_content, "/", &|_| Ok(()))
                .await,
            Ok(())
        );
        let err = prober
            .check(&http((200, 200)), no_content, "/", &|_| Ok(()))
            .await
            .expect_err("204 is outside 200-200");
        assert!(err.contains("204") && err.contains("200-200"), "{err}");
        assert!(
            prober
                .check(&http((200, 399)), broken, "/", &|_| Ok(()))
                .await
                .is_err()
        );
        assert_eq!(
            prober
                .check(&http((500, 599)), broken, "/", &|_| Ok(()))
                .await,
            Ok(())
        );
    }
}
