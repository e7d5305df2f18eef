//! The proxy server: accepts HTTP/1.1 and h2c, finds the route, claims a
//! target, forwards, retries an idempotent request once on another target
//! after a connection-level failure, and holds requests briefly while a
//! route has no usable target (during a switch or a restart).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::body::{self, ProxyBody, Tracked};
use crate::forward;
use crate::router::{Route, RouteTable};
use crate::target::InFlight;

/// Tunables of the proxy, with production defaults.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long a request waits for a usable target before a 503.
    pub hold_timeout: Duration,
    /// How long to wait for an upstream's response headers before a 504.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            hold_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A handle to the proxy; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<RouteTable>,
    changed: Notify,
    client: Client<HttpConnector, ProxyBody>,
    config: ProxyConfig,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Proxy {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(RouteTable::default()),
                changed: Notify::new(),
                client,
                config,
            }),
        }
    }

    /// Switches every request that starts from now on to `table`.
    pub fn publish(&self, table: RouteTable) {
        self.inner.table.store(Arc::new(table));
        self.inner.changed.notify_waiters();
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// Serves `listener` until `shutdown` completes; connections already
    /// accepted finish on their own tasks.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let _ = stream.set_nodelay(true);
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(Arc::clone(&inner), client, req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, %client, "client connection ended with error");
                }
            });
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let Some(host) = request_host(&req) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "request has no Host\n"));
    };
    let (route, slot) = match claim(&inner, &host, req.uri().path()).await {
        Claim::Got(route, slot) => (route, slot),
        Claim::NoRoute => {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                format!("no route for {host}\n"),
            ));
        }
        Claim::NoTarget(route) => {
            route.metrics.record(503, started.elapsed());
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} has no ready instance\n", route.service),
            ));
        }
    };

    let client_upgrade =
        forward::wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let upgrade = forward::strip_hop_by_hop(&mut headers);
    forward::add_forwarded(&mut headers, client, &host);
    if let Some(u) = upgrade.clone() {
        forward::restore_upgrade(&mut headers, u);
    }
    let retryable = upgrade.is_none()
        && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && body.is_end_stream();
    let mut body = Some(body);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();

    let mut slot = slot;
    let mut retried = false;
    loop {
        let target = Arc::clone(&slot.target);
        let upstream_body = match body.take() {
            Some(b) if !retryable => b.boxed(),
            _ => body::empty(),
        };
        let mut upstream = Request::new(upstream_body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.version_mut() = Version::HTTP_11;
        // Only a retryable request can need the headers a second time.
        *upstream.headers_mut() = if retryable && !retried {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        match format!("http://{}{}", target.addr, path_and_query).parse() {
            Ok(uri) => *upstream.uri_mut() = uri,
            Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "bad request target\n")),
        }
        let outcome = tokio::time::timeout(
            inner.config.response_timeout,
            inner.client.request(upstream),
        )
        .await;
        match outcome {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let latency = started.elapsed();
                target.metrics.record(status.as_u16(), latency);
                route.metrics.record(status.as_u16(), latency);
                return Ok(respond(resp, slot, client_upgrade));
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    target.eject();
                }
                tracing::debug!(error = %e, target = %target.id, "upstream request failed");
                if retryable
                    && !retried
                    && let Some(next) = route.pick(Some(&target))
                {
                    retried = true;
                    slot = next;
                    continue;
                }
                let latency = started.elapsed();
                target.metrics.record(502, latency);
                route.metrics.record(502, latency);
                return Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    format!("{} did not answer\n", route.service),
                ));
            }
            Err(_) => {
                let latency = started.elapsed();
                target.metrics.record(504, latency);
                route.metrics.record(504, latency);
                return Ok(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("{} did not answer in time\n", route.service),
                ));
            }
        }
    }
}

enum Claim {
    Got(Arc<Route>, InFlight),
    NoRoute,
    NoTarget(Arc<Route>),
}

/// Finds the route and claims a target; while the route has none, waits for
/// the next published table, up to the hold timeout.
async fn claim(inner: &Inner, host: &str, path: &str) -> Claim {
    // Fast path: no waiter registration (a lock on the shared Notify) unless
    // the route has no usable target right now.
    {
        let table = inner.table.load();
        match table.lookup(host, path) {
            None => return Claim::NoRoute,
            Some(route) => {
                if let Some(slot) = route.pick(None) {
                    return Claim::Got(Arc::clone(route), slot);
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + inner.config.hold_timeout;
    loop {
        let changed = inner.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let table = inner.table.load();
        let Some(route) = table.lookup(host, path) else {
            return Claim::NoRoute;
        };
        if let Some(slot) = route.pick(None) {
            return Claim::Got(Arc::clone(route), slot);
        }
        let route = Arc::clone(route);
        drop(table);
        // Ejected targets come back on their own; poll so they are seen.
        let wake = tokio::time::Instant::now() + Duration::from_millis(100);
        if tokio::time::timeout_at(wake.min(deadline), changed)
            .await
            .is_err()
            && tokio::time::Instant::now() >= deadline
        {
            return Claim::NoTarget(route);
        }
    }
}

fn respond(
    mut resp: Response<Incoming>,
    slot: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _slot = slot;
            if let (Ok(a), Ok(b)) = tokio::join!(client_upgrade, upstream_upgrade) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, body::empty());
    }
    let (mut parts, incoming) = resp.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Tracked::boxed(incoming, slot))
}

fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(h) = req.uri().host() {
        return Some(match req.uri().port_u16() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        });
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn plain(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(body::text(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
