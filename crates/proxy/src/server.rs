//! The proxy server: accepts HTTP/1.1 and h2c, finds the route, claims a
//! target, forwards, retries an idempotent request once on another target
//! after a connection-level failure, and holds requests briefly while a
//! route has no usable target (during a switch or a restart).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use crate::body::{self, ProxyBody, Tracked};
use crate::forward::{self, Peer};
use crate::h1::{self, Prefixed};
use crate::moving::{self, Moved, Mover};
use crate::router::{Route, RouteTable};
use crate::target::{InFlight, Target};
use crate::upstream::{self, Upstream, UpstreamError};

/// Tunables of the proxy, with production defaults.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long a request waits for a usable target before a 503.
    pub hold_timeout: Duration,
    /// How long an upstream may take to start its response (then a 504)
    /// and, after that, between reads and writes (then the exchange is cut
    /// off).
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a client may take mid-request (the rest of a head, its
    /// body) or to take the response written to it, before the connection
    /// is closed.
    pub client_timeout: Duration,
    /// How long a client connection that is quiet between requests keeps
    /// its upstream connection for its next request before handing it back
    /// to the target's pool.
    pub kept_upstream_hold: Duration,
    /// Client connections served at once; the proxy stops accepting at
    /// this many (they wait in the listen backlog) instead of running out
    /// of file descriptors. Each one may hold an upstream connection too.
    pub max_connections: usize,
    /// How long a request head may take to come whole, from its first
    /// byte (from the accept for a connection's first request), however
    /// slowly it drips: then 408 and the connection closes. nginx's
    /// `client_header_timeout`, HAProxy's `timeout http-request`.
    pub head_timeout: Duration,
    /// Client connections one address may hold at once (a trusted proxy's
    /// are not counted): beyond it a new connection is told 429 and
    /// closed, so that one source cannot take every slot.
    pub max_connections_per_client: usize,
    /// Addresses of proxies in front of this one, whose `X-Forwarded-*`
    /// and `Forwarded` headers are kept and extended; anyone else's are
    /// replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            hold_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            client_timeout: Duration::from_secs(30),
            kept_upstream_hold: Duration::from_secs(2),
            max_connections: 10_000,
            head_timeout: Duration::from_secs(10),
            max_connections_per_client: 1_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A handle to the proxy; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    table: ArcSwap<RouteTable>,
    changed: Notify,
    pub(crate) config: ProxyConfig,
    /// One permit per client connection that may be open
    /// (`config.max_connections` of them).
    slots: Arc<Semaphore>,
    /// Set by [`Proxy::close_gracefully`]: every response from then on
    /// closes its connection.
    closing: AtomicBool,
    /// The same, for the general path's HTTP/2 connections to wait on.
    closing_signal: watch::Sender<bool>,
    /// True while the proxy is at its connection limit: idle connections
    /// close and request heads get `PRESSED_HEAD_TIMEOUT` (see `h1`).
    pressure: watch::Sender<bool>,
    /// Set by [`Proxy::hand_off`] before `closing`: where connections that
    /// can move go.
    moving: Mutex<Option<Mover>>,
    /// How the general path serves a connection.
    general: auto::Builder<TokioExecutor>,
    /// Open client connections by address (trusted proxies not counted),
    /// against `max_connections_per_client`.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Room for answering connections refused by `per_client`.
    refusals: Arc<Semaphore>,
    /// ACME HTTP-01 challenges under way: token → key authorization.
    challenges: ArcSwap<HashMap<String, String>>,
    /// Whether `challenges` has any (looked at by every request).
    challenging: AtomicBool,
    /// The port HTTPS is served on (0: none), for redirects to it.
    tls_port: AtomicU16,
    /// What was refused before any route was involved.
    pub(crate) refused: Refused,
    /// When a client at its connection limit was last logged.
    crowd_warning: Every,
    /// When the proxy at its connection limit was last logged.
    limit_warning: Every,
    /// Serialises changes of `challenges` and `challenging`.
    challenge_lock: Mutex<()>,
}

/// Counts of what the proxy turned away on its own, before or without a
/// route: its own metrics, since no service's figures include them.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    /// Requests for a host no route serves (404).
    pub(crate) unrouted: AtomicU64,
    /// Connections beyond their address's limit (429).
    pub(crate) crowded: AtomicU64,
    /// Request heads that did not come whole in time (408).
    pub(crate) slow_heads: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub(crate) handshakes: AtomicU64,
    /// Idle connections closed to make room at the connection limit.
    pub(crate) reclaimed: AtomicU64,
}

/// A copy of the proxy's own refusal counts ([`Proxy::refused`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusedCounts {
    pub unrouted: u64,
    pub crowded: u64,
    pub slow_heads: u64,
    pub handshakes: u64,
    pub reclaimed: u64,
}

impl Inner {
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    pub(crate) fn closing_signal(&self) -> watch::Receiver<bool> {
        self.closing_signal.subscribe()
    }

    /// More than half the connection slots are taken.
    pub(crate) fn crowded(&self) -> bool {
        self.slots.available_permits() < self.config.max_connections / 2
    }

    pub(crate) fn pressure_signal(&self) -> watch::Receiver<bool> {
        self.pressure.subscribe()
    }

    /// `https://` and `host` (its port replaced by the one HTTPS is served
    /// on, none for 443) and `target`.
    pub(crate) fn https_url(&self, host: &str, target: &str) -> String {
        let name = match host.strip_prefix('[') {
            Some(_) => host.split_once(']').map_or(host, |(h, _)| h).to_owned() + "]",
            None => host.split(':').next().unwrap_or(host).to_owned(),
        };
        match self.tls_port.load(Ordering::Relaxed) {
            0 | 443 => format!("https://{name}{target}"),
            port => format!("https://{name}:{port}{target}"),
        }
    }

    /// Where a connection goes when it can move; `None` unless the proxy
    /// hands off (only then is the lock taken).
    pub(crate) fn mover(&self) -> Option<Mover> {
        if !self.closing() {
            return None;
        }
        self.moving.lock().ok()?.clone()
    }
}

impl Proxy {
    pub fn new(mut config: ProxyConfig) -> Self {
        config.max_connections = config.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let mut general = auto::Builder::new(TokioExecutor::new());
        // The general path bounds its waits as the fast path does: a
        // whole request head within `head_timeout`; an HTTP/2 client that
        // stops answering pings is let go.
        general
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.head_timeout);
        general
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_EVERY)
            .keep_alive_timeout(config.client_timeout);
        Proxy {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(RouteTable::default()),
                changed: Notify::new(),
                slots: Arc::new(Semaphore::new(config.max_connections)),
                closing: AtomicBool::new(false),
                closing_signal: watch::Sender::new(false),
                pressure: watch::Sender::new(false),
                moving: Mutex::new(None),
                general,
                per_client: Mutex::new(HashMap::new()),
                refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
                challenges: ArcSwap::from_pointee(HashMap::new()),
                challenging: AtomicBool::new(false),
                tls_port: AtomicU16::new(0),
                refused: Refused::default(),
                crowd_warning: Every::default(),
                limit_warning: Every::default(),
                challenge_lock: Mutex::new(()),
                config,
            }),
        }
    }

    /// What the proxy turned away on its own since it started.
    pub fn refused(&self) -> RefusedCounts {
        let r = &self.inner.refused;
        RefusedCounts {
            unrouted: r.unrouted.load(Ordering::Relaxed),
            crowded: r.crowded.load(Ordering::Relaxed),
            slow_heads: r.slow_heads.load(Ordering::Relaxed),
            handshakes: r.handshakes.load(Ordering::Relaxed),
            reclaimed: r.reclaimed.load(Ordering::Relaxed),
        }
    }

    /// Client connections open now, and how many may be.
    pub fn connections(&self) -> (usize, usize) {
        let max = self.inner.config.max_connections;
        (max - self.inner.slots.available_permits(), max)
    }

    /// From now on every HTTP/1 response says `connection: close` and its
    /// connection closes after it, and HTTP/2 clients get a GOAWAY (they
    /// finish the streams they opened and open no more), so clients move to
    /// whoever accepts on the listening socket next without a request
    /// failing. HTTP/1 connections idle until the process exits are cut
    /// then. The caller stops
    /// accepting (the `shutdown` of [`Proxy::serve`]) and watches
    /// [`Proxy::connections`] fall.
    pub fn close_gracefully(&self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        self.inner.closing_signal.send_replace(true);
    }

    /// Like [`Proxy::close_gracefully`], except that the connections that
    /// can move (see [`moving`](crate::moving)) are not closed but come out
    /// of the returned channel, each as soon as it holds nothing in flight,
    /// for another proxy to [`adopt`](Proxy::adopt). The channel ends after
    /// [`Proxy::stop_handing_off`].
    pub fn hand_off(&self) -> mpsc::UnboundedReceiver<Moved> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut moving) = self.inner.moving.lock() {
            *moving = Some(tx);
        }
        self.close_gracefully();
        rx
    }

    /// Ends the channel of [`Proxy::hand_off`] once the connections that
    /// were to move have (their count, [`Proxy::connections`], is zero):
    /// what is still open after this is closed, not moved.
    pub fn stop_handing_off(&self) {
        if let Ok(mut moving) = self.inner.moving.lock() {
            moving.take();
        }
    }

    /// Serves a connection another proxy handed off, as if accepted here.
    /// It counts against the connection limit but is taken even beyond it:
    /// it is open already. Needs a tokio runtime.
    pub fn adopt(&self, moved: Moved) {
        let inner = Arc::clone(&self.inner);
        let permit = Arc::clone(&inner.slots).try_acquire_owned().ok();
        let tokio_stream = |s: std::net::TcpStream| {
            s.set_nonblocking(true)?;
            TcpStream::from_std(s)
        };
        match moved {
            Moved::Client { stream, read } => {
                let adopted = tokio_stream(stream).and_then(|s| Ok((s.peer_addr()?, s)));
                match adopted {
                    Ok((client, stream)) => {
                        let read = bytes::BytesMut::from(&read[..]);
                        let Some(peer) = Peer::admit(&inner, client.ip(), false) else {
                            return;
                        };
                        tokio::spawn(serve_client(inner, stream, peer, read, permit, false));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not adopt a client connection"),
                }
            }
            Moved::Tunnel {
                client,
                upstream,
                from_client,
                from_upstream,
            } => {
                let (client, upstream) = match (tokio_stream(client), tokio_stream(upstream)) {
                    (Ok(c), Ok(u)) => (c, u),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "could not adopt a tunnel");
                        return;
                    }
                };
                // The target it goes to, if this proxy routes to it, so
                // that a drain of that target waits for the tunnel.
                let slot = upstream.peer_addr().ok().and_then(|addr| {
                    let table = inner.table.load();
                    let target = table.targets().find(|t| t.addr == addr)?;
                    target.acquire()
                });
                tokio::spawn(async move {
                    let _slot = slot;
                    let _permit = permit;
                    let open = (from_client, from_upstream);
                    moving::relay(&inner, client, upstream, &[], &[], open).await;
                });
            }
        }
    }

    /// Answers ACME HTTP-01 challenge `token` with `key_authorization`
    /// (for any host, on plain HTTP), or no longer (`None`).
    pub fn set_challenge(&self, token: &str, key_authorization: Option<&str>) {
        let _one_at_a_time = self.inner.challenge_lock.lock();
        let next = self.inner.challenges.rcu(|current| {
            let mut next = HashMap::clone(current);
            match key_authorization {
                Some(answer) => next.insert(token.to_owned(), answer.to_owned()),
                None => next.remove(token),
            };
            next
        });
        drop(next);
        let any = !self.inner.challenges.load().is_empty();
        self.inner.challenging.store(any, Ordering::Relaxed);
    }

    /// Switches every request that starts from now on to `table`.
    pub fn publish(&self, table: RouteTable) {
        self.inner.table.store(Arc::new(table));
        self.inner.changed.notify_waiters();
    }

    /// Serves `listener` until `shutdown` completes; connections already
    /// accepted finish on their own tasks.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_on(listener, shutdown, None).await;
    }

    /// Serves HTTPS on `listener` with `config` (see [`crate::tls`]) until
    /// `shutdown` completes. Every TLS connection is served by hyper
    /// (HTTP/2 or HTTP/1.1, by ALPN), and cannot move to another proxy:
    /// at a hand-off it is closed after its next response, as the general
    /// path's are. Plain-HTTP requests for routes served over HTTPS only
    /// are redirected to this listener's port.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        self.inner.tls_port.store(port, Ordering::Relaxed);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        self.serve_on(listener, shutdown, Some(acceptor)).await;
    }

    async fn serve_on(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        tokio::pin!(shutdown);
        let sweeper = tokio::spawn(sweep_idle(Arc::clone(&self.inner)));
        let _stop_sweeping = AbortOnDropHandle::new(sweeper);
        let slots = &self.inner.slots;
        let max = self.inner.config.max_connections;
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
            // At the limit, this client waits for room (the next ones in
            // the listen backlog) and, while it waits, connections idle
            // between requests close and request heads get
            // `PRESSED_HEAD_TIMEOUT`: a flood of slow heads cannot keep a
            // new client out for longer than that.
            let permit = match Arc::clone(slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.inner.pressure.send_replace(true);
                    if self.inner.limit_warning.due(Duration::from_secs(60)) {
                        tracing::warn!(
                            max_connections = max,
                            "connection limit reached; idle connections and slow heads make room"
                        );
                    }
                    let waited = tokio::select! {
                        permit = Arc::clone(slots).acquire_owned() => {
                            permit.expect("the semaphore is never closed")
                        }
                        () = &mut shutdown => return,
                    };
                    self.inner.pressure.send_replace(false);
                    waited
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(peer) = Peer::admit(&self.inner, client.ip(), true) else {
                self.inner.refused.crowded.fetch_add(1, Ordering::Relaxed);
                if tls.is_none() {
                    refuse_crowded(&self.inner, stream);
                }
                continue;
            };
            let inner = Arc::clone(&self.inner);
            match &tls {
                None => {
                    let read = bytes::BytesMut::new();
                    tokio::spawn(serve_client(inner, stream, peer, read, Some(permit), true));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(serve_tls_client(inner, stream, peer, permit, acceptor));
                }
            }
        }
    }
}

/// A client connection's peer while it is open: counted against its
/// address's `max_connections_per_client` until dropped.
struct Admitted {
    inner: Arc<Inner>,
    peer: Peer,
    counted: Option<IpAddr>,
}

impl Peer {
    /// Admits a connection from `ip`, unless `enforce` and that address
    /// holds `max_connections_per_client` already.
    fn admit(inner: &Arc<Inner>, ip: IpAddr, enforce: bool) -> Option<Admitted> {
        // An IPv4 client of a dual-stack socket is its IPv4 address.
        let ip = ip.to_canonical();
        let config = &inner.config;
        let trusted = config.trusted_proxies.iter().any(|net| net.contains(&ip));
        let peer = Peer {
            ip: ip.to_string(),
            trusted,
            proto: "http",
        };
        let mut counted = None;
        let source = client_source(ip);
        if !trusted && let Ok(mut per_client) = inner.per_client.lock() {
            let open = per_client.entry(source).or_insert(0);
            if enforce && *open >= config.max_connections_per_client {
                // Said once a minute at most: every refused connection
                // would be a line, at the attacker's pace.
                if inner.crowd_warning.due(Duration::from_secs(60)) {
                    tracing::warn!(
                        client = %source,
                        max = config.max_connections_per_client,
                        "a client address is at its connection limit; more are refused (429)"
                    );
                }
                return None;
            }
            *open += 1;
            counted = Some(source);
        }
        Some(Admitted {
            inner: Arc::clone(inner),
            peer,
            counted,
        })
    }
}

/// What a client is counted as against `max_connections_per_client`: its
/// IPv4 address, or its IPv6 /64 (one subscriber's network, inside which
/// an address costs nothing to change).
fn client_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(net))
        }
    }
}

/// Lets something through at most once per period (a log line).
#[derive(Debug, Default)]
pub(crate) struct Every {
    /// Milliseconds since `UNIX_EPOCH` it last let through.
    last_ms: AtomicU64,
}

impl Every {
    fn due(&self, period: Duration) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let last = self.last_ms.load(Ordering::Relaxed);
        let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) >= period
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(ip) = self.counted else { return };
        if let Ok(mut per_client) = self.inner.per_client.lock()
            && let std::collections::hash_map::Entry::Occupied(mut open) = per_client.entry(ip)
        {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }
}

/// Connections refused for their address's limit that may be answered at
/// once; beyond that many, more are closed without a word.
const REFUSALS_AT_ONCE: usize = 256;
/// How long a refused connection is read from after its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Tells a connection beyond its address's limit so (429) and closes it.
/// What the client sends meanwhile is read and dropped for up to a second
/// first: closing a socket with unread bytes resets the connection, and
/// the client would lose the answer.
fn refuse_crowded(inner: &Inner, mut stream: TcpStream) {
    const TOO_MANY: &[u8] =
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\n\
        content-length: 39\r\nconnection: close\r\n\r\ntoo many connections from your address\n";
    let Ok(permit) = Arc::clone(&inner.refusals).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(TOO_MANY).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 512];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Serves one client connection, `read` being what was read of it already,
/// until it closes or moves. Plain HTTP/1.1 goes the fast path; whatever it
/// does not take (h2c, upgrades, chunked uploads, HTTP/1.0, …) goes to
/// hyper with the bytes read so far. `fresh`: accepted here, rather than
/// moved from another proxy after serving HTTP/1.1 there.
async fn serve_client(
    inner: Arc<Inner>,
    stream: TcpStream,
    admitted: Admitted,
    read: bytes::BytesMut,
    permit: Option<OwnedSemaphorePermit>,
    fresh: bool,
) {
    let _permit = permit;
    let peer = &admitted.peer;
    let Some((stream, read)) = h1::serve(&inner, stream, read, peer, fresh).await else {
        return;
    };
    // Boxed: hyper's connection is large, and only the connections that
    // need it should carry it.
    Box::pin(serve_general(inner, stream, peer, read, false)).await;
}

/// Serves a TLS connection: the handshake within `head_timeout`, then
/// hyper, with HTTP/2 when ALPN chose it.
async fn serve_tls_client(
    inner: Arc<Inner>,
    stream: TcpStream,
    mut admitted: Admitted,
    permit: OwnedSemaphorePermit,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let _permit = permit;
    admitted.peer.proto = "https";
    let handshake = tokio::time::timeout(inner.config.head_timeout, acceptor.accept(stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, client = %admitted.peer.ip, "TLS handshake failed");
            inner.refused.handshakes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            inner.refused.handshakes.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let read = bytes::BytesMut::new();
    Box::pin(serve_general(inner, stream, &admitted.peer, read, http2)).await;
}

/// Serves the rest of a connection with hyper, `read` being what the fast
/// path read of it and did not consume; `http2` when TLS's ALPN chose it.
async fn serve_general<S>(
    inner: Arc<Inner>,
    mut stream: S,
    peer: &Peer,
    mut read: bytes::BytesMut,
    http2: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    // hyper-util sniffs the protocol from the first bytes and waits for
    // them as long as they take, before any of hyper's own timers run: a
    // TLS client silent after its handshake, or an HTTP/2 preface that
    // stops half way, gets `head_timeout` for them, as any head does.
    let by = tokio::time::Instant::now() + inner.config.head_timeout;
    while read.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&read) {
        read.reserve(H2_PREFACE.len());
        match tokio::time::timeout_at(by, stream.read_buf(&mut read)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                inner.refused.slow_heads.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let client = peer.ip.clone();
    let peer = Arc::new(peer.clone());
    let mut closing = inner.closing_signal();
    let general = inner.general.clone();
    let svc_inner = Arc::clone(&inner);
    // When the last request started, for letting an idle HTTP/2
    // connection go (its pings keep it open otherwise).
    let opened = tokio::time::Instant::now();
    let last_request = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&last_request);
    let svc = service_fn(move |req| {
        let since = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        seen.store(since, Ordering::Relaxed);
        let inner = Arc::clone(&svc_inner);
        let http1 = req.version() < Version::HTTP_2;
        let answer = handle(Arc::clone(&inner), Arc::clone(&peer), req);
        async move {
            let mut resp = answer.await?;
            // hyper closes an HTTP/1 connection after a response that says so.
            if http1 && inner.closing() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let http2 = http2 || read.starts_with(H2_PREFACE);
    let idle = async {
        loop {
            let last = Duration::from_millis(last_request.load(Ordering::Relaxed));
            let until = opened + last + H2_IDLE;
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    let io = TokioIo::new(Prefixed::new(read, stream));
    let conn = general.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // An HTTP/2 connection is asked to go away (GOAWAY: its open streams
    // finish, no new ones start) when the proxy closes, or when no request
    // has started on it for `H2_IDLE`.
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = async {
            tokio::select! {
                _ = closing.wait_for(|c| *c) => {}
                () = idle => {}
            }
        }, if http2 => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %client, "client connection ended with error");
    }
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP/2 connection may go without a new request before it
/// is asked to go away (the fast path's keep-alive idle time).
const H2_IDLE: Duration = Duration::from_secs(75);

/// How often an HTTP/2 client is pinged when it has sent nothing.
const H2_PING_EVERY: Duration = Duration::from_secs(30);

/// How often idle upstream connections no request touched are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Closes, every `SWEEP_EVERY`, the idle upstream connections that expired
/// or that their server closed, in pools no request is touching.
async fn sweep_idle(inner: Arc<Inner>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for target in inner.table.load().targets() {
            target.prune_idle();
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let Some(host) = request_host(&req).filter(|h| forward::valid_host(h.as_bytes())) else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "request has no valid Host\n",
        ));
    };
    // Two Hosts: which one a service would go by is anyone's guess (RFC
    // 9112 §3.2 says 400).
    if req
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "request has more than one Host\n",
        ));
    }
    // A coding beside chunked (`gzip, chunked`) would reach the service
    // without its name once hyper has framed the body anew: refused, as
    // nginx does (RFC 9112 §6.1: 501 for a coding not understood).
    // Every line of it is one list (RFC 9110 §5.3): chunked on two lines is
    // chunked twice.
    let mut codings = req
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    let only_chunked = match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(c), None) => c.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    };
    if !only_chunked {
        return Ok(plain(
            StatusCode::NOT_IMPLEMENTED,
            "only the chunked transfer coding is taken\n",
        ));
    }
    let host_name = host.to_str().unwrap_or_default();
    let tls = peer.proto == "https";
    let secure = tls || (peer.trusted && forwarded_https(req.headers()));
    let claimed = claim(&inner, host_name, req.uri().path(), secure).await;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (route, mut slot) = match claimed.or_refuse(&inner, host_name, target, started) {
        Ok(got) => got,
        Err(refusal) => {
            let mut resp = plain(refusal.status, refusal.text);
            if let Some(seconds) = refusal.retry_after {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            if let Some(location) = refusal.location.and_then(|l| HeaderValue::try_from(l).ok()) {
                resp.headers_mut().insert(http::header::LOCATION, location);
            }
            return Ok(resp);
        }
    };
    // A route served over HTTPS only tells browsers to keep to it.
    let hsts = tls && route.https_only;

    let upgrade = forward::upgrade(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    forward::strip_hop_by_hop(&mut headers);
    forward::add_forwarded(&mut headers, &peer, &host);
    let upgrading = upgrade.is_some();
    // A tunnel outlives its connection's task (which ends at the upgrade),
    // so it holds a connection permit of its own.
    let tunnel_permit = match upgrading {
        false => None,
        true => match Arc::clone(&inner.slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                route.metrics.record(503, started.elapsed());
                return Ok(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "connection limit reached\n",
                ));
            }
        },
    };
    let retryable = match upgrade {
        Some(u) => {
            forward::restore_upgrade(&mut headers, u);
            false
        }
        None => {
            matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
                && body.is_end_stream()
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // A retryable request has no body, so it can be sent again as is.
    let mut body = Some(body);
    let mut retried = false;
    loop {
        let target = Arc::clone(&slot.target);
        let upstream_body = match body.take() {
            Some(b) if !retryable => {
                let b = b.map_err(|e| body::Unreadable(e.into()));
                body::Quiet::new(b, inner.config.client_timeout).boxed()
            }
            _ => body::empty(),
        };
        let mut upstream = Request::new(upstream_body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.uri_mut() = Uri::from(path_and_query.clone());
        // Only a first attempt that may be retried needs to keep the headers.
        *upstream.headers_mut() = if retryable && !retried {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let config = &inner.config;
        let wait = route.timeout.unwrap_or(config.response_timeout);
        let sent = tokio::time::timeout(wait, async {
            if upgrading {
                upstream::exchange_upgrade(target.addr, config.connect_timeout, upstream)
                    .await
                    .map(|resp| (resp, None))
            } else {
                upstream::exchange(&target.pool, target.addr, config.connect_timeout, upstream)
                    .await
                    .map(|(resp, up)| (resp, Some(up)))
            }
        })
        .await;
        let (status, why) = match sent {
            Ok(Ok((resp, conn))) => {
                record(&route, &target, resp.status(), started);
                let tunnel = client_upgrade.zip(tunnel_permit);
                let mut resp = respond(&inner, resp, conn, slot, tunnel, wait);
                if hsts {
                    resp.headers_mut()
                        .insert(http::header::STRICT_TRANSPORT_SECURITY, HSTS.clone());
                }
                return Ok(resp);
            }
            Ok(Err(e)) if body::caused::<body::Stalled>(&e) => {
                // The client stopped sending its body: its doing, not the
                // service's (a 4xx does not count against the SLO).
                (
                    StatusCode::REQUEST_TIMEOUT,
                    "waited too long for the request body",
                )
            }
            Ok(Err(e)) if body::caused::<body::Unreadable>(&e) => {
                // Cut short or malformed by the client: its doing too.
                (
                    StatusCode::BAD_REQUEST,
                    "got a request body that was cut short or malformed",
                )
            }
            Ok(Err(UpstreamError::NoDescriptors(_))) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot be reached: the proxy is at its limit of open files",
            ),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, target = %target.id, "upstream request failed");
                let refused = matches!(e, UpstreamError::Connect(_));
                if let Some(next) = retry_on(&route, &target, refused, retryable, &mut retried) {
                    slot = next;
                    continue;
                }
                (StatusCode::BAD_GATEWAY, "did not answer")
            }
            Err(_) => (StatusCode::GATEWAY_TIMEOUT, "did not answer in time"),
        };
        record(&route, &target, status, started);
        return Ok(plain(status, format!("{} {why}\n", route.service)));
    }
}

/// What a route served over HTTPS only says to browsers: a year (the
/// preload list's minimum).
static HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Whether a trusted proxy in front says the request came over HTTPS.
fn forwarded_https(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// After a connection-level failure on `target`: ejects it if it refused
/// the connection, and claims another target when the request may go once
/// more (`retryable` and not yet `retried`).
pub(crate) fn retry_on(
    route: &Route,
    target: &Arc<Target>,
    refused: bool,
    retryable: bool,
    retried: &mut bool,
) -> Option<InFlight> {
    if refused {
        target.eject();
    }
    if !retryable || *retried {
        return None;
    }
    let next = route.pick(Some(target))?;
    *retried = true;
    Some(next)
}

/// Counts a finished request against its route and its target.
pub(crate) fn record(route: &Route, target: &Target, status: StatusCode, started: Instant) {
    let latency = started.elapsed();
    target.metrics.record(status.as_u16(), latency);
    route.metrics.record(status.as_u16(), latency);
}

pub(crate) enum Claim {
    Got(Arc<Route>, InFlight),
    NoRoute,
    NoTarget(Arc<Route>),
    Maintenance(Arc<Route>, u32),
    /// A plain-HTTP request for a route that is served over HTTPS only.
    ToHttps(Arc<Route>),
    /// An ACME HTTP-01 challenge the proxy answers itself: the key
    /// authorization.
    Challenge(String),
}

/// The proxy's own answer to a request that got no target.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub text: String,
    pub retry_after: Option<u32>,
    /// Where a redirect points.
    pub location: Option<String>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, text: impl Into<String>) -> Refusal {
        Refusal {
            status,
            text: text.into(),
            retry_after: None,
            location: None,
        }
    }
}

/// Where ACME servers ask for HTTP-01 challenges (RFC 8555 §8.3).
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

impl Claim {
    /// The route and claimed target, or the answer to give instead; a
    /// refusal on a known route counts against the route as a 503.
    /// `target` (path and query) is where a redirect to HTTPS goes on.
    pub(crate) fn or_refuse(
        self,
        inner: &Inner,
        host: &str,
        target: &str,
        started: Instant,
    ) -> Result<(Arc<Route>, InFlight), Refusal> {
        let refusal = match self {
            Claim::Got(route, slot) => return Ok((route, slot)),
            Claim::NoRoute => {
                inner.refused.unrouted.fetch_add(1, Ordering::Relaxed);
                Refusal::new(StatusCode::NOT_FOUND, format!("no route for {host}\n"))
            }
            Claim::NoTarget(route) => {
                route.metrics.record(503, started.elapsed());
                let text = format!("{} has no ready instance\n", route.service);
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, text)
            }
            Claim::Maintenance(route, seconds) => {
                route.metrics.record(503, started.elapsed());
                let text = format!("{} is down for maintenance\n", route.service);
                Refusal {
                    retry_after: Some(seconds),
                    ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, text)
                }
            }
            Claim::ToHttps(route) => {
                route.metrics.record(308, started.elapsed());
                let location = inner.https_url(host, target);
                Refusal {
                    location: Some(location.clone()),
                    ..Refusal::new(StatusCode::PERMANENT_REDIRECT, format!("{location}\n"))
                }
            }
            Claim::Challenge(key_authorization) => Refusal::new(StatusCode::OK, key_authorization),
        };
        Err(refusal)
    }
}

/// Finds the route and claims a target; while the route has none, waits for
/// the next published table, up to the hold timeout. `secure`: the request
/// came over HTTPS (to the proxy, or to a trusted proxy in front of it).
pub(crate) async fn claim(inner: &Inner, host: &str, path: &str, secure: bool) -> Claim {
    // First try without registering as a waiter: registering takes a lock on
    // the shared Notify, and almost every request finds a target at once.
    let claimed = claim_now(inner, host, path, secure);
    if !matches!(claimed, Claim::NoTarget(_)) {
        return claimed;
    }
    let deadline = tokio::time::Instant::now() + inner.config.hold_timeout;
    loop {
        let changed = inner.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let route = match claim_now(inner, host, path, secure) {
            Claim::NoTarget(route) => route,
            claimed => return claimed,
        };
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

fn claim_now(inner: &Inner, host: &str, path: &str, secure: bool) -> Claim {
    // One load on every request; the map is looked at only while an ACME
    // order is under way.
    if inner.challenging.load(Ordering::Relaxed)
        && let Some(token) = path.strip_prefix(CHALLENGE_PATH)
        && let Some(answer) = inner.challenges.load().get(token)
    {
        return Claim::Challenge(answer.clone());
    }
    let table = inner.table.load();
    match table.lookup(host, path) {
        None => Claim::NoRoute,
        Some(route) if route.https_only && !secure => Claim::ToHttps(Arc::clone(route)),
        Some(route) if route.maintenance.is_some() => {
            Claim::Maintenance(Arc::clone(route), route.maintenance.unwrap_or(0))
        }
        Some(route) => match route.pick(None) {
            Some(slot) => Claim::Got(Arc::clone(route), slot),
            None => Claim::NoTarget(Arc::clone(route)),
        },
    }
}

fn respond(
    inner: &Arc<Inner>,
    mut resp: Response<Incoming>,
    conn: Option<Upstream>,
    slot: InFlight,
    tunnel: Option<(hyper::upgrade::OnUpgrade, OwnedSemaphorePermit)>,
    quiet: Duration,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some((client_upgrade, permit)) = tunnel
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            let _slot = slot;
            let _permit = permit;
            if let (Ok(a), Ok(b)) = tokio::join!(client_upgrade, upstream_upgrade) {
                relay_upgraded(&inner, a, b).await;
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, body::empty());
    }
    let (mut parts, incoming) = resp.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    // A 204 has no content, so no length of it (RFC 9110 §8.6).
    if parts.status == StatusCode::NO_CONTENT {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    Response::from_parts(parts, Tracked::boxed(incoming, conn, slot, quiet))
}

/// Relays an upgraded connection over its sockets, so that it can move
/// (see [`moving`]). Both sides are the plain TCP streams the proxy makes
/// for HTTP/1.1: the client's as `serve_client` wraps it (inside
/// hyper-util's own wrapper), the upstream's as `exchange_upgrade` does. A
/// client over TLS is relayed through hyper's `Upgraded` instead, and
/// cannot move.
async fn relay_upgraded(inner: &Arc<Inner>, client: Upgraded, upstream: Upgraded) {
    let client = match auto::upgrade::downcast::<TokioIo<Prefixed<TcpStream>>>(client) {
        Ok(client) => client,
        Err(tls) => {
            let (mut a, mut b) = (TokioIo::new(tls), TokioIo::new(upstream));
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            return;
        }
    };
    let Ok(upstream) = upstream.downcast::<TokioIo<TcpStream>>() else {
        tracing::error!("an upgraded connection of an unexpected kind; closed");
        return;
    };
    // What was read of each side already is for the other side.
    let (mut to_upstream, client_stream) = client.io.into_inner().into_parts();
    to_upstream.extend_from_slice(&client.read_buf);
    let open = (true, true);
    let (upstream_stream, to_client) = (upstream.io.into_inner(), upstream.read_buf);
    moving::relay(
        inner,
        client_stream,
        upstream_stream,
        &to_upstream,
        &to_client,
        open,
    )
    .await;
}

/// The request's host: `:authority` for HTTP/2, else the `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(http::header::HOST).cloned(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle fast-path connection holds in memory besides its
    /// sockets: its task's future (buffers are given back while it waits;
    /// hyper's connection is boxed, taken only by connections that go the
    /// general path). The goal is at most 8 KiB an idle connection.
    #[tokio::test]
    async fn an_idle_connection_is_a_small_task() {
        let proxy = Proxy::new(ProxyConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let inner = Arc::clone(&proxy.inner);
        let ip = addr.ip();
        let admitted = Peer::admit(&inner, ip, true).expect("admitted");
        let task = serve_client(inner, stream, admitted, bytes::BytesMut::new(), None, true);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 3 * 1024, "a connection's future is {size} bytes");
    }

    #[test]
    fn a_client_is_counted_by_its_ipv4_address_or_its_ipv6_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(client_source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            client_source(ip("2001:db8:1:2:aa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_source(ip("2001:db8:1:2:ffff::9")),
            client_source(ip("2001:db8:1:2::5"))
        );
        assert_ne!(client_source(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn a_warning_is_due_once_a_period() {
        let every = Every::default();
        assert!(every.due(Duration::from_secs(60)));
        assert!(!every.due(Duration::from_secs(60)));
        assert!(every.due(Duration::ZERO));
    }
}
