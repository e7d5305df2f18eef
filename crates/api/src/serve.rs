//! Serving the API with bounds, so that no client can take the control
//! plane's memory or file descriptors (which it needs for the agent's
//! socket, git and the store):
//!
//! - at most `max_connections` open connections: past that, new ones wait
//!   in the listen backlog until one closes;
//! - a request head must arrive whole within `head_timeout` (hyper's
//!   `header_read_timeout`), and a connection is closed after it;
//! - at most `max_requests` requests are being handled at once; more are
//!   answered `503` with `Retry-After: 1` at once, without work. Health
//!   is exempt: it must answer when everything else is busy. A streamed
//!   answer (deploy progress, log follow) counts only until its handler
//!   returns the stream.
//!
//! With a TLS configuration ([`tls_config`]) every connection is TLS: its
//! handshake must end within the head timeout too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// How long a stopping server waits for open requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The API's bounds; defaults fit one machine's control plane.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_requests: usize,
    pub head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_requests: 64,
            head_timeout: Duration::from_secs(10),
        }
    }
}

/// Adds the request bound to `router`.
pub fn bounded(router: Router, max_requests: usize) -> Router {
    let permits = Arc::new(Semaphore::new(max_requests));
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let permits = Arc::clone(&permits);
            async move {
                if req.uri().path() == "/api/v1/health" {
                    return next.run(req).await;
                }
                match permits.try_acquire_owned() {
                    Ok(_permit) => next.run(req).await,
                    Err(_) => busy(),
                }
            }
        },
    ))
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(serde_json::json!({
            "error": "the server is busy with other requests; try again in a second",
            "log_tail": [],
        })),
    )
        .into_response()
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then lets open requests finish, for at most
/// [`SHUTDOWN_GRACE`] (a deploy's progress stream would not end sooner:
/// its work is interrupted anyway, and reconciled at the next start).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let router = bounded(router, limits.max_requests);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |req: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(req.map(axum::body::Body::new))
            }
        });
        match &tls {
            None => {
                let conn = http
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let (acceptor, http) = (acceptor.clone(), http.clone());
                let watcher = graceful.watcher();
                let head_timeout = limits.head_timeout;
                tokio::spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(head_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = http
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
    Ok(())
}

/// The API's TLS configuration from a PEM certificate chain and its
/// private key (HTTP/1.1 over TLS 1.2 and 1.3).
pub fn tls_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the private key is not a PEM private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the certificate and the key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
