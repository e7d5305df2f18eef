//! The agent's own metrics endpoint (`--agent-metrics-addr`, off by
//! default): `GET /metrics` answers the proxy's figures straight from the
//! data plane, so that they do not vanish while the control plane is
//! stopped. The socket is bound with `SO_REUSEPORT`, so an agent taking
//! over binds it beside the old one and nothing is refused meanwhile. It
//! answers 16 scrapers at once, each head within 10 s: it is not for the
//! internet (no authentication), and cannot take the agent's descriptors.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};

use crate::supervisor::Supervisor;

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` for the metrics endpoint (shared with a successor).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Scrapers served at once; more wait in the listen backlog, so that the
/// endpoint cannot take the agent's own file descriptors.
const SCRAPERS: usize = 16;

/// Serves `GET /metrics` on `listener` for as long as the task runs.
pub async fn serve(listener: TcpListener, supervisor: Supervisor) {
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(SCRAPERS));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&room).acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let supervisor = supervisor.clone();
                async move { Ok::<_, Infallible>(answer(&req, &supervisor)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

fn answer(req: &Request<Incoming>, supervisor: &Supervisor) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET | &http::Method::HEAD, "/metrics") => {
            (StatusCode::OK, TEXT_FORMAT, supervisor.metrics_text())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "the agent serves GET /metrics only\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    resp
}
