//! What the proxy's test suites share: a real hyper backend on port 0.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers with the request headers it received, one `name: value` a line;
/// `/echo` with the request body; `/ws` upgrades to a byte echo.
async fn backend(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/echo" {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        return Ok(Response::new(Full::new(body.unwrap_or_default())));
    }
    if req.uri().path() == "/trailers" {
        let collected = req.into_body().collect().await.ok();
        let trailers = collected.as_ref().and_then(|c| c.trailers());
        let text = trailers.map_or(String::new(), |t| format!("{t:?}"));
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    if req.uri().path() == "/ws" {
        let upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::default())
            .expect("response");
        return Ok(resp);
    }
    let mut seen = String::new();
    for (name, value) in req.headers() {
        seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    Ok(Response::new(Full::new(Bytes::from(seen))))
}

pub async fn start_backend() -> SocketAddr {
    start_counting_backend().await.0
}

/// The backend and the number of connections it has accepted.
pub async fn start_counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(backend))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    (addr, accepted)
}
