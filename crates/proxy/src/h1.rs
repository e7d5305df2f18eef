//! The HTTP/1.1 fast path: the common request (HTTP/1.1, no body or a
//! `Content-Length` body, no upgrade) proxied with one task, two sockets and
//! no per-request objects. The client's head is parsed with `httparse` and
//! rewritten straight into the upstream head (hop-by-hop headers dropped,
//! `X-Forwarded-*` set); the response head is parsed and rewritten the same
//! way, and bodies are copied as they come, framed by their length or by
//! scanning their chunks ([`Chunked`]). In the steady state a request costs
//! one read and one write on each socket.
//!
//! Whatever this path does not take it hands over, before consuming
//! anything of that request, to the hyper server in `server` together with
//! the bytes read so far ([`Prefixed`]): h2c, upgrades, `Expect`, chunked
//! uploads, HTTP/1.0, absolute-form targets, duplicate `Host` or
//! `Content-Length`, and anything `httparse` rejects (hyper answers those).
//! Hyper then serves that connection to its end. Both paths share routing,
//! targets, metrics and retry rules.

use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::deadline::Deadline;
use crate::forward::{self, Forwarding, Peer};
use crate::moving::{self, Moved, Mover};
use crate::router::Route;
use crate::server::{Inner, Refusal, claim, record, retry_on};
use crate::target::{InFlight, Target};
use crate::upstream::{self, Idle};

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// How long a keep-alive client connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Bytes read from a socket at a time.
const READ_SIZE: usize = 16 * 1024;
/// How long a head may take while the proxy is at its connection limit.
const PRESSED_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for a response's first read (its head and a small body).
const RESPONSE_READ: usize = 2 * 1024;
/// Room for a request head's first read; it grows with the head.
const HEAD_READ: usize = 2 * 1024;
/// A response (head and body) of at most this many bytes, to a request that
/// may be sent again, is read whole before any of it goes to the client.
const HOLD_MAX: usize = 64 * 1024;

/// Serves `stream` (of which `read` was read already) until it closes or
/// moves (see [`moving`](crate::moving)); returns it with the bytes read
/// but not consumed when a request needs the general (hyper) path.
/// `fresh` is false for a connection that served requests elsewhere (one
/// moved here from another proxy): it is HTTP/1.1 already.
pub async fn serve(
    inner: &Inner,
    stream: TcpStream,
    read: BytesMut,
    peer: &Peer,
    fresh: bool,
) -> Option<(TcpStream, BytesMut)> {
    let head_timeout = inner.config.head_timeout;
    let read_empty = read.is_empty();
    // Buffers are taken when there is something to read, not before: a
    // connection that sends nothing costs no buffer.
    let mut conn = Conn {
        client: stream,
        buf: read,
        up_buf: BytesMut::new(),
        head: Vec::new(),
        answer: Vec::new(),
        kept: Kept(None),
        client_deadline: Deadline::new(inner.config.client_timeout),
        upstream_deadline: Deadline::new(inner.config.response_timeout),
        // A fresh connection's first head has `head_timeout` from the
        // accept, whether or not anything comes; one moved here between
        // two requests is idle, unless it brought part of the next.
        head_by: (fresh || !read_empty).then(|| Instant::now() + head_timeout),
        head_started: Instant::now(),
        head_timeout,
    };
    let mut served = !fresh;
    // Watched while the connection waits for its next request: made once,
    // so that a wait costs one look at its waiter, not a new registration.
    let mut closing = inner.closing_signal();
    let handing_off = moving::handing_off(inner, &mut closing);
    tokio::pin!(handing_off);
    let mut pressure = inner.pressure_signal();
    loop {
        // Between two requests: the point at which a connection can move
        // (`mover` looks at `closing` first, so this costs one load).
        if let Some(mover) = inner.mover() {
            conn.move_to(&mover);
            return None;
        }
        let mut req = loop {
            match parse_request(&conn.buf, peer, &mut conn.head) {
                Parsed::Request(req) => break req,
                // Read as HTTP/1.1 from here on.
                Parsed::Handoff if as_http11(&mut conn.buf) => {}
                // An HTTP/2 preface is a connection's first bytes or
                // nothing (RFC 9113 §3.4): after HTTP/1.1 requests it
                // would turn the rest into another protocol.
                Parsed::Handoff if served && conn.buf.starts_with(b"PRI ") => {
                    let refusal = Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "an HTTP/2 preface in the middle of an HTTP/1.1 connection\n",
                    );
                    conn.plain(refusal, true).await;
                    return None;
                }
                Parsed::Handoff => return Some((conn.client, conn.buf)),
                Parsed::Refuse(refusal) => {
                    conn.plain(refusal, true).await;
                    return None;
                }
                Parsed::Partial if conn.buf.len() >= MAX_HEAD => {
                    return Some((conn.client, conn.buf));
                }
                Parsed::Partial => {
                    let hold = inner.config.kept_upstream_hold;
                    let read = if conn.buf.is_empty() {
                        tokio::select! {
                            biased;
                            read = conn.read_client(hold, &mut pressure) => read,
                            mover = &mut handing_off => {
                                conn.move_to(&mover);
                                return None;
                            }
                        }
                    } else {
                        conn.read_client(hold, &mut pressure).await
                    };
                    match read {
                        Read::More => {}
                        Read::Closed => return None,
                        Read::Reclaimed => {
                            inner.refused.reclaimed.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                        // Nothing came at all: a connection opened and
                        // never used, closed without a word.
                        Read::TimedOut if conn.buf.is_empty() => return None,
                        Read::TimedOut => {
                            inner.refused.slow_heads.fetch_add(1, Ordering::Relaxed);
                            let refusal = Refusal::new(
                                StatusCode::REQUEST_TIMEOUT,
                                "the request head took too long\n",
                            );
                            conn.plain(refusal, true).await;
                            return None;
                        }
                    }
                }
            }
        };
        served = true;
        conn.head_by = None;
        req.close |= inner.closing() && inner.mover().is_none();
        match conn.proxy(inner, req).await {
            // With more than half the connection slots taken, a connection
            // keeps nothing between requests: its upstream connection goes
            // back to the pool for others, its buffers to the allocator, so
            // that a crowd costs one socket and a small task a client.
            Next::KeepAlive if inner.crowded() && conn.buf.is_empty() => {
                conn.kept = Kept(None);
                conn.release_buffers();
            }
            Next::KeepAlive => {}
            Next::Close => {
                let _ = conn.client.shutdown().await;
                return None;
            }
        }
    }
}

/// How a wait for more of a request ended.
enum Read {
    More,
    /// The client closed, or the connection failed.
    Closed,
    /// The head did not come whole within `head_timeout`, or the
    /// connection stayed idle between requests for `IDLE_TIMEOUT`.
    TimedOut,
    /// Idle between requests while the proxy is at its connection limit:
    /// closed to make room.
    Reclaimed,
}

/// A request line of a later HTTP/1 minor version (`HTTP/1.2`) is
/// HTTP/1.1 to this proxy (RFC 9110 §2.5: a recipient treats it as the
/// highest minor version it speaks): the version is rewritten in place.
/// Whether it was.
fn as_http11(buf: &mut [u8]) -> bool {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let end = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    let Some(start) = end.checked_sub(9) else {
        return false;
    };
    let version = &mut buf[start..end];
    if version.starts_with(b" HTTP/1.") && (b'2'..=b'9').contains(&version[8]) {
        version[8] = b'1';
        return true;
    }
    false
}

/// One client connection's sockets and buffers, reused by every request.
struct Conn {
    client: TcpStream,
    /// Read from the client, not yet consumed.
    buf: BytesMut,
    /// Read from the upstream, not yet sent on.
    up_buf: BytesMut,
    /// The request's head as sent upstream (kept for a retry).
    head: Vec<u8>,
    /// The response's head as sent to the client, or the proxy's own answer.
    answer: Vec<u8>,
    /// The upstream connection of the last exchange, kept for the next
    /// request to the same target.
    kept: Kept,
    /// Waiting on the client, with `client_timeout` for the rest of a
    /// head, each part of the body and each write to it.
    client_deadline: Deadline,
    /// Waiting on the upstream, with `response_timeout` for the start of
    /// its answer, then for each read and write.
    upstream_deadline: Deadline,
    /// When the head being read has to be complete: `head_timeout` after
    /// its first byte (after the accept for a connection's first), however
    /// slowly it drips. `None` between requests.
    head_by: Option<Instant>,
    /// When the head being read started.
    head_started: Instant,
    head_timeout: Duration,
}

/// A connection kept by one client connection; back to its target's pool
/// when it is dropped.
struct Kept(Option<(Arc<Target>, TcpStream)>);

impl Kept {
    /// The kept connection if it is to `target` and still good; any other
    /// goes back to its pool.
    fn take(&mut self, target: &Arc<Target>) -> Option<TcpStream> {
        let (kept_for, mut up) = self.0.take()?;
        if !Arc::ptr_eq(&kept_for, target) {
            kept_for.checkin(up);
            return None;
        }
        up.reusable().then_some(up)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some((target, up)) = self.0.take() {
            target.checkin(up);
        }
    }
}

enum Next {
    KeepAlive,
    Close,
}

/// How an exchange with one target failed.
enum Failure {
    /// Nothing of a response arrived; another connection may be tried if
    /// the request can be sent again.
    Upstream { connect: bool },
    /// The upstream answered something that is not an HTTP/1.1 response.
    Malformed,
    /// The response did not start within `response_timeout`.
    Timeout,
    /// The client went away while its body was being forwarded.
    Client,
    /// The proxy has no file descriptor left for an upstream connection.
    Busy,
}

impl Failure {
    /// What the client is told of it (after the service's name), and how
    /// it is counted.
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "did not answer in time"),
            Failure::Malformed => (StatusCode::BAD_GATEWAY, "sent a malformed response"),
            Failure::Upstream { .. } => (StatusCode::BAD_GATEWAY, "did not answer"),
            Failure::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot be reached: the proxy is at its limit of open files",
            ),
            // The general path's answer; here the connection just closes.
            Failure::Client => (
                StatusCode::REQUEST_TIMEOUT,
                "waited too long for the request body",
            ),
        }
    }
}

impl Conn {
    /// Lets the connection go to `mover`, with what it has read of the
    /// next request. Any upstream connection it kept goes back to its pool.
    fn move_to(self, mover: &Mover) {
        let Conn { client, buf, .. } = self;
        match client.into_std() {
            Ok(stream) => {
                let _ = mover.send(Moved::Client {
                    stream,
                    read: buf.to_vec(),
                });
            }
            Err(e) => tracing::debug!(error = %e, "a client connection could not move"),
        }
    }

    /// Reads more of the next request. A client that goes quiet between
    /// requests keeps its upstream connection for `hold` only: after that
    /// it goes back to the target's pool, where other clients can use it,
    /// and the connection's buffers go back to the allocator, so that an
    /// idle connection costs its task and sockets, not 34 KiB. Once a head
    /// has started, all of it has to come by `head_by`.
    async fn read_client(&mut self, hold: Duration, pressure: &mut watch::Receiver<bool>) -> Read {
        let now = Instant::now();
        if self.buf.is_empty() && self.head_by.is_none() {
            let give_up = now + IDLE_TIMEOUT;
            if self.kept.0.is_some() {
                self.client_deadline.set(give_up.min(now + hold));
                // The next thing is a head: a small buffer, so that the
                // connections that wait in their hold, many at once in a
                // burst, do not each hold 16 KiB.
                self.buf.reserve(HEAD_READ);
                let read = self.client.read_buf(&mut self.buf);
                match self.client_deadline.within(read).await {
                    Some(Ok(0) | Err(_)) => return Read::Closed,
                    Some(Ok(_)) => return Read::More,
                    None => self.kept = Kept(None),
                }
            }
            self.release_buffers();
            self.client_deadline.set(give_up);
            // While the proxy is at its connection limit, a connection idle
            // between requests makes room (as nginx closes idle keep-alive
            // connections when it runs out): a server may close one at any
            // time (RFC 9112 §9.5).
            let readable = tokio::select! {
                biased;
                readable = self.client_deadline.within(self.client.readable()) => readable,
                _ = pressure.wait_for(|at_limit| *at_limit) => return Read::Reclaimed,
            };
            match readable {
                Some(Ok(())) => {}
                Some(Err(_)) => return Read::Closed,
                None => return Read::TimedOut,
            }
            self.start_head(Instant::now());
        }
        // A head has `head_timeout` from its first byte; while the proxy is
        // at its connection limit only `PRESSED_HEAD_TIMEOUT`, so that heads
        // that drip make room for clients that send theirs at once.
        if self.head_by.is_none() {
            self.start_head(now);
        }
        // Once seen during this wait, the limit holds for it: the room it
        // makes may end the pressure before this connection is polled.
        let mut pressed = *pressure.borrow();
        loop {
            let by = self.head_by.unwrap_or(now);
            let by = match pressed {
                true => by.min(self.head_started + PRESSED_HEAD_TIMEOUT),
                false => by,
            };
            self.client_deadline.set(by);
            if self.buf.is_empty() {
                // A connection's first head: no buffer before there is
                // something to read.
                let readable = tokio::select! {
                    biased;
                    readable = self.client_deadline.within(self.client.readable()) => Some(readable),
                    _ = pressure.wait_for(|at_limit| *at_limit), if !pressed => None,
                };
                match readable {
                    // The proxy reached its limit meanwhile: again, with
                    // the shorter deadline.
                    None => {
                        pressed = true;
                        continue;
                    }
                    Some(Some(Ok(()))) => {}
                    Some(Some(Err(_))) => return Read::Closed,
                    Some(None) => return Read::TimedOut,
                }
            }
            // A head is small: a buffer that grows with it, so that a head
            // that drips in costs little.
            self.buf.reserve(HEAD_READ.max(self.buf.len()));
            let got = tokio::select! {
                biased;
                got = self.client_deadline.within(self.client.read_buf(&mut self.buf)) => Some(got),
                _ = pressure.wait_for(|at_limit| *at_limit), if !pressed => None,
            };
            match got {
                None => {
                    pressed = true;
                    continue;
                }
                Some(Some(Ok(n))) if n > 0 => return Read::More,
                Some(Some(_)) => return Read::Closed,
                Some(None) => return Read::TimedOut,
            }
        }
    }

    /// A head starts (its first byte came, or the connection was accepted).
    fn start_head(&mut self, at: Instant) {
        self.head_started = at;
        self.head_by = Some(at + self.head_timeout);
    }

    /// Gives the buffers of a connection that waits back to the allocator
    /// (they are taken again when something comes).
    fn release_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.up_buf = BytesMut::new();
        self.head = Vec::new();
        self.answer = Vec::new();
    }

    /// Forwards one parsed request and its response.
    async fn proxy(&mut self, inner: &Inner, req: RequestHead) -> Next {
        let started = std::time::Instant::now();
        let host = std::str::from_utf8(&self.buf[req.host.clone()]).unwrap_or_default();
        let path = std::str::from_utf8(&self.buf[req.path.clone()]).unwrap_or_default();
        let claimed = claim(inner, host, path, req.secure).await;
        let claimed = claimed.or_refuse(inner, host, path, started);
        self.buf.advance(req.head_len);
        // A body nobody is going to read leaves the connection out of step.
        let close_unread = req.close || req.body_len > 0;
        let (route, mut slot) = match claimed {
            Ok(got) => got,
            Err(refusal) => return self.plain(refusal, close_unread).await,
        };
        self.upstream_deadline
            .set_limit(route.timeout.unwrap_or(inner.config.response_timeout));
        let mut retried = false;
        loop {
            let target = Arc::clone(&slot.target);
            let failure = match self.exchange(inner, &target, &req).await {
                Ok((upstream, resp)) => {
                    return self
                        .respond(&route, slot, upstream, resp, &req, started)
                        .await;
                }
                Err(f) => f,
            };
            match failure {
                Failure::Client => return Next::Close,
                Failure::Upstream { connect } => {
                    let retry = retry_on(&route, &target, connect, req.retryable, &mut retried);
                    if let Some(next) = retry {
                        slot = next;
                        continue;
                    }
                }
                Failure::Timeout | Failure::Malformed | Failure::Busy => {}
            }
            let (status, why) = failure.answer();
            record(&route, &target, status, started);
            let refusal = Refusal::new(status, format!("{} {why}\n", route.service));
            // The request body may be half sent: only a bodiless request
            // leaves the client connection in step.
            return self.plain(refusal, close_unread).await;
        }
    }

    /// Sends the request (head in `self.head`, body from the client) to
    /// `target` and reads the response head (from `self.up_buf`; the head
    /// for the client goes to `self.head`). A pooled connection that fails
    /// before any answer is replaced by a fresh one when the request can be
    /// sent again.
    async fn exchange(
        &mut self,
        inner: &Inner,
        target: &Arc<Target>,
        req: &RequestHead,
    ) -> Result<(TcpStream, ResponseHead), Failure> {
        let config = &inner.config;
        loop {
            let reused = self.kept.take(target).or_else(|| target.streams.checkout());
            let (mut up, pooled) = match reused {
                Some(up) => (up, true),
                None => match upstream::connect_tcp(target.addr, config.connect_timeout).await {
                    Ok(up) => (up, false),
                    Err(upstream::UpstreamError::NoDescriptors(_)) => return Err(Failure::Busy),
                    Err(_) => return Err(Failure::Upstream { connect: true }),
                },
            };
            match self.round_trip(&mut up, req).await {
                Ok(resp) => return Ok((up, resp)),
                Err(Failure::Upstream { .. }) if pooled && req.retryable => continue,
                Err(f) => return Err(f),
            }
        }
    }

    /// Sends the request on `up` and reads the response head, which has to
    /// start within the upstream timeout.
    async fn round_trip(
        &mut self,
        up: &mut TcpStream,
        req: &RequestHead,
    ) -> Result<ResponseHead, Failure> {
        // One budget for writing the head and for the answer to start,
        // unless the body has to be waited for.
        self.upstream_deadline.restart();
        if self.send(up, req.body_len).await? {
            self.upstream_deadline.restart();
        }
        self.up_buf.clear();
        let resp = self.read_head(up, req).await?;
        if req.retryable {
            self.read_small_body(up, &resp).await?;
        }
        Ok(resp)
    }

    /// Reads the rest of a response of at most `HOLD_MAX` bytes into
    /// `self.up_buf` before any of it goes to the client: an upstream that
    /// dies mid-body (an instance killed between writing its head and its
    /// body) then leaves a request that can still go elsewhere, instead of
    /// a truncated answer. Larger and open-ended bodies are streamed.
    async fn read_small_body(
        &mut self,
        up: &mut TcpStream,
        resp: &ResponseHead,
    ) -> Result<(), Failure> {
        let Framing::Length(body) = resp.framing else {
            return Ok(());
        };
        let whole = usize::try_from(body)
            .unwrap_or(usize::MAX)
            .saturating_add(resp.head_len);
        if resp.interim || whole > HOLD_MAX {
            return Ok(());
        }
        while self.up_buf.len() < whole {
            self.up_buf.reserve(whole - self.up_buf.len());
            let read = up.read_buf(&mut self.up_buf);
            match self.upstream_deadline.within(read).await {
                Some(Ok(n)) if n > 0 => {}
                Some(_) => return Err(Failure::Upstream { connect: false }),
                None => return Err(Failure::Timeout),
            }
        }
        Ok(())
    }

    /// Reads the next response head into `self.up_buf` (its rewrite for the
    /// client into `self.answer`) before the upstream deadline.
    async fn read_head(
        &mut self,
        up: &mut TcpStream,
        req: &RequestHead,
    ) -> Result<ResponseHead, Failure> {
        let read = read_response_head(up, &mut self.up_buf, req, &mut self.answer);
        self.upstream_deadline
            .within(read)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    /// Writes the head and the request body to `up`, the first write under
    /// the upstream deadline as it is set. Returns whether the rest of the
    /// body had to be waited for.
    async fn send(&mut self, up: &mut TcpStream, body_len: u64) -> Result<bool, Failure> {
        let upstream_failed = |_| Failure::Upstream { connect: false };
        let first = self
            .buf
            .len()
            .min(usize::try_from(body_len).unwrap_or(usize::MAX));
        let mut left = body_len - first as u64;
        let waited = left > 0;
        // One write for the head and what has come of the body.
        let head_len = self.head.len();
        self.head.extend_from_slice(&self.buf[..first]);
        let written = self
            .upstream_deadline
            .within(up.write_all(&self.head))
            .await;
        self.head.truncate(head_len);
        match written {
            Some(Ok(())) => self.buf.advance(first),
            _ => return Err(upstream_failed(())),
        }
        while left > 0 {
            self.buf.reserve(READ_SIZE);
            let read = self.client_deadline.read(&mut self.client, &mut self.buf);
            if !matches!(read.await, Ok(n) if n > 0) {
                return Err(Failure::Client);
            }
            let take = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let written = self.upstream_deadline.write(up, &self.buf[..take]);
            written.await.map_err(upstream_failed)?;
            self.buf.advance(take);
            left -= take as u64;
        }
        Ok(waited)
    }

    /// Sends the response `resp`, whose start is in `self.up_buf`, on to
    /// the client.
    async fn respond(
        &mut self,
        route: &Route,
        slot: InFlight,
        mut up: TcpStream,
        mut resp: ResponseHead,
        req: &RequestHead,
        started: std::time::Instant,
    ) -> Next {
        let target = Arc::clone(&slot.target);
        // Interim responses (100, 103) go through as they are.
        while resp.interim {
            let interim = self.up_buf.split_to(resp.head_len);
            let written = self.client_deadline.write(&mut self.client, &interim);
            if written.await.is_err() {
                return Next::Close;
            }
            self.upstream_deadline.restart();
            match self.read_head(&mut up, req).await {
                Ok(next) => resp = next,
                Err(failure) => {
                    record(route, &target, failure.answer().0, started);
                    return Next::Close;
                }
            }
        }
        self.up_buf.advance(resp.head_len);
        let mut end = BodyEnd::new(resp.framing);
        // A body malformed from its first bytes (a chunk size too long to
        // be one) is a 502 while nothing of the response has gone out.
        let Ok(first) = end.feed(&self.up_buf) else {
            let (status, why) = Failure::Malformed.answer();
            record(route, &target, status, started);
            let text = format!("{} {why}\n", route.service);
            return self.plain(Refusal::new(status, text), true).await;
        };
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK);
        record(route, &target, status, started);
        let ended = self.relay_body(&mut up, end, first).await;
        let client_close = match ended {
            Ok(()) => req.close || resp.framing == Framing::Close,
            Err(()) => return Next::Close,
        };
        if resp.keep_alive && self.up_buf.is_empty() {
            self.kept = Kept(Some((target, up)));
        }
        drop(slot);
        if client_close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Sends the head and then the body as it comes, the first of it
    /// already in `self.up_buf` (and fed to `end`, which said `first`),
    /// until `end` says it is complete.
    async fn relay_body(
        &mut self,
        up: &mut TcpStream,
        mut end: BodyEnd,
        first: (usize, bool),
    ) -> Result<(), ()> {
        let (mut take, mut done) = first;
        self.answer.extend_from_slice(&self.up_buf[..take]);
        self.up_buf.advance(take);
        self.client_deadline
            .write(&mut self.client, &self.answer)
            .await?;
        while !done {
            self.up_buf.clear();
            self.up_buf.reserve(READ_SIZE);
            match self.upstream_deadline.read(up, &mut self.up_buf).await? {
                0 if matches!(end, BodyEnd::Close) => return Ok(()),
                0 => return Err(()),
                _ => {}
            }
            (take, done) = end.feed(&self.up_buf)?;
            self.client_deadline
                .write(&mut self.client, &self.up_buf[..take])
                .await?;
            self.up_buf.advance(take);
        }
        Ok(())
    }

    /// A response the proxy makes itself.
    async fn plain(&mut self, refusal: Refusal, close: bool) -> Next {
        use std::io::Write;
        let Refusal {
            status,
            text,
            retry_after,
            location,
        } = refusal;
        self.answer.clear();
        let _ = write!(
            self.answer,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            text.len()
        );
        if let Some(seconds) = retry_after {
            let _ = write!(self.answer, "retry-after: {seconds}\r\n");
        }
        if let Some(location) = location {
            let _ = write!(self.answer, "location: {location}\r\n");
        }
        if close {
            self.answer.extend_from_slice(b"connection: close\r\n");
        }
        self.answer.extend_from_slice(b"\r\n");
        self.answer.extend_from_slice(text.as_bytes());
        match self
            .client_deadline
            .write(&mut self.client, &self.answer)
            .await
        {
            Ok(()) if !close => Next::KeepAlive,
            _ => Next::Close,
        }
    }
}

/// Reads from `up` until `buf` starts with a whole response head, and
/// parses it, writing the head for the client to `out`.
async fn read_response_head(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    req: &RequestHead,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Failure> {
    loop {
        match parse_response(buf, req.head_method, req.close, out) {
            Ok(Some(resp)) => return Ok(resp),
            Ok(None) if buf.len() < MAX_HEAD => {}
            _ => return Err(Failure::Malformed),
        }
        // Most answers are small: what a response's start needs first,
        // grown by the body's reads when it is not.
        buf.reserve(RESPONSE_READ);
        match up.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            // Closed or reset before a whole head: nothing usable arrived.
            _ => return Err(Failure::Upstream { connect: false }),
        }
    }
}

/// A request the fast path takes, as found in the client's buffer.
#[derive(Debug)]
struct RequestHead {
    head_len: usize,
    host: Range<usize>,
    path: Range<usize>,
    body_len: u64,
    /// The client asked to close after this exchange.
    close: bool,
    /// GET, HEAD or OPTIONS without a body: safe to send again.
    retryable: bool,
    /// Came over HTTPS, as a trusted proxy in front says.
    secure: bool,
    head_method: bool,
}

#[derive(Debug)]
enum Parsed {
    Partial,
    Request(RequestHead),
    Handoff,
    /// Answered by the proxy itself, and the connection closed.
    Refuse(Refusal),
}

/// The tokens of `Connection` values other than `close` and `keep-alive`:
/// headers the sender wants dropped at this hop, but never the framing or
/// `Host` (`forward::droppable_by_connection`). At most eight are taken;
/// `Err` for more, or for `upgrade`.
fn connection_tokens<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    close: &mut bool,
) -> Result<Vec<&'a str>, ()> {
    let mut named = Vec::new();
    for value in values {
        let value = std::str::from_utf8(value).map_err(drop)?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("close") {
                *close = true;
            } else if token.eq_ignore_ascii_case("upgrade") || named.len() == 8 {
                return Err(());
            } else if !token.eq_ignore_ascii_case("keep-alive")
                && forward::droppable_by_connection(token)
            {
                named.push(token);
            }
        }
    }
    Ok(named)
}

/// A status code as its three digits (`parse_response` took it from
/// three digits, so it is below 1000).
fn status_digits(status: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + (n % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

/// A `Content-Length` value: digits only, no sign, no list.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Appends `h` as sent on: `name: value` and CRLF.
fn push_header(out: &mut Vec<u8>, h: &httparse::Header<'_>) {
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(h.value);
    out.extend_from_slice(b"\r\n");
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Parses the request at the start of `buf` and, when the fast path takes
/// it, writes the head to send upstream into `out`.
fn parse_request(buf: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    // A fragment is never part of a request-target (RFC 9112 §3.2). hyper
    // would drop it where this path would route by it: refused on both.
    if path.as_bytes().contains(&b'#') {
        return Parsed::Refuse(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the request target has a #fragment\n",
        ));
    }
    if version != 1 || !path.starts_with('/') {
        return Parsed::Handoff;
    }
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Parsed::Handoff;
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            match (body_len, content_length(h.value)) {
                (None, Some(n)) => body_len = Some(n),
                _ => return Parsed::Handoff,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Handoff;
        }
    }
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Parsed::Handoff;
    };
    if !forward::valid_host(host) {
        return Parsed::Refuse(Refusal::new(
            StatusCode::BAD_REQUEST,
            "request has no valid Host\n",
        ));
    }
    let connection = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value);
    let Ok(named) = connection_tokens(connection, &mut close) else {
        return Parsed::Handoff;
    };

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // A trusted proxy's forwarding headers, to be extended; anyone else's
    // are dropped (see `forward::add_forwarded`, the general path's).
    let mut prior_for = Vec::new();
    let mut prior_forwarded = Vec::new();
    let (mut proto_given, mut host_given, mut secure) = (false, false, false);
    for h in req.headers.iter() {
        if let Some(which) = forward::forwarded(h.name) {
            // A `_` spelling is nobody's to send (see `forward`).
            if peer.trusted && !h.name.contains('_') {
                match which {
                    Forwarding::For => prior_for.push(h.value),
                    Forwarding::Rfc7239 => prior_forwarded.push(h.value),
                    Forwarding::Proto
                    | Forwarding::Host
                    | Forwarding::RealIp
                    | Forwarding::Other => {
                        proto_given |= which == Forwarding::Proto;
                        secure |=
                            which == Forwarding::Proto && h.value.eq_ignore_ascii_case(b"https");
                        host_given |= which == Forwarding::Host;
                        push_header(out, h);
                    }
                }
            }
            continue;
        }
        if forward::is_hop_by_hop(h.name) || named.iter().any(|n| n.eq_ignore_ascii_case(h.name)) {
            continue;
        }
        push_header(out, h);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in prior_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.ip.as_bytes());
    if !prior_forwarded.is_empty() {
        out.extend_from_slice(b"\r\nforwarded: ");
        for prior in prior_forwarded {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer.forwarded_element().as_bytes());
    }
    if !proto_given {
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(peer.proto.as_bytes());
    }
    if !host_given {
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(host);
    }
    out.extend_from_slice(b"\r\n\r\n");

    let body_len = body_len.unwrap_or(0);
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS");
    Parsed::Request(RequestHead {
        head_len,
        host: offset(buf, host),
        path: offset(buf, path.as_bytes()),
        body_len,
        close,
        retryable: idempotent && body_len == 0,
        secure,
        head_method: method == "HEAD",
    })
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes; the client connection closes after it.
    Close,
}

#[derive(Debug)]
struct ResponseHead {
    head_len: usize,
    status: u16,
    /// 1xx other than 101: sent on as is, the real response follows.
    interim: bool,
    framing: Framing,
    /// The upstream connection may take another request afterwards.
    keep_alive: bool,
}

/// Parses the response at the start of `buf` and writes the head to send
/// to the client into `out`. `Ok(None)` while incomplete; `Err` for a
/// response that cannot be forwarded (malformed, 101 unasked for).
fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ()> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(());
    };
    if status == 101 {
        return Err(());
    }
    if (100..200).contains(&status) {
        return Ok(Some(ResponseHead {
            head_len,
            status,
            interim: true,
            framing: Framing::Length(0),
            keep_alive: true,
        }));
    }
    let mut upstream_close = false;
    let connection = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value);
    let named = connection_tokens(connection, &mut upstream_close)?;
    let mut length = None;
    let mut chunked = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match (length, content_length(h.value)) {
                (_, None) => return Err(()),
                (Some(a), Some(b)) if a != b => return Err(()),
                (_, n) => length = n,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    // Both: a sign of response splitting (RFC 9112 §6.3). The chunks frame
    // this response, but what follows it on the connection may be another
    // response hidden in it, so the connection is not used again.
    let ambiguous = chunked.is_some() && length.is_some();
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&status_digits(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length_sent = false;
    for h in resp.headers.iter() {
        let keep_encoding = chunked.is_some() && h.name.eq_ignore_ascii_case("transfer-encoding");
        let is_length = h.name.eq_ignore_ascii_case("content-length");
        // Beside chunks a length is not the length; and the same length
        // twice goes on once (RFC 9112 §6.3).
        // A 204 has no content, so no length of it (RFC 9110 §8.6).
        let dropped_length = is_length && (chunked.is_some() || length_sent || status == 204);
        length_sent |= is_length;
        if dropped_length
            || (forward::is_hop_by_hop(h.name) && !keep_encoding)
            || named.iter().any(|n| n.eq_ignore_ascii_case(h.name))
        {
            continue;
        }
        push_header(out, h);
    }
    if client_close || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        interim: false,
        framing,
        keep_alive: version == 1 && !upstream_close && !ambiguous && framing != Framing::Close,
    }))
}

/// How much of what arrives belongs to a response body, by its framing.
enum BodyEnd {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything, until the upstream closes.
    Close,
}

impl BodyEnd {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunked(Chunked::default()),
            Framing::Close => BodyEnd::Close,
        }
    }

    /// How many of `input`'s bytes belong to the body, and whether it ends
    /// with them. `Err` for a malformed chunked body.
    fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            BodyEnd::Length(left) => {
                let take = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            BodyEnd::Chunked(chunks) => chunks.feed(input),
            BodyEnd::Close => Ok((input.len(), false)),
        }
    }
}

/// Finds the end of a chunked body as it streams past, without decoding
/// it: chunk sizes, extensions, data, and trailers up to the empty line.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Bytes left in the current chunk, or the size being read.
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeEnd,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerEnd,
    LastLf,
    Done,
}

impl Chunked {
    /// Takes the next bytes of the body: how many of them belong to it, and
    /// whether it ended with them. `Err` for a malformed body.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            if self.state == Done {
                break;
            }
            if self.state == Data {
                let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(());
                    }
                    self.digits += 1;
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self.size * 16 + u64::from(d);
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeEnd,
                (Extension, b'\r') => SizeEnd,
                (Extension, b'\n') => return Err(()),
                (Extension, _) => Extension,
                (SizeEnd, b'\n') if self.size == 0 => TrailerStart,
                (SizeEnd, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => LastLf,
                (TrailerStart | Trailer, b'\n') => return Err(()),
                (Trailer, b'\r') => TrailerEnd,
                (TrailerStart | Trailer, _) => Trailer,
                (TrailerEnd, b'\n') => TrailerStart,
                (LastLf, b'\n') => Done,
                _ => return Err(()),
            };
        }
        Ok((i, self.state == Done))
    }
}

/// A connection's stream with bytes already read from it put back in front,
/// for handing a connection over mid-way.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    /// The bytes not yet read, and the stream.
    pub fn into_parts(self) -> (BytesMut, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(trusted: bool) -> Peer {
        Peer {
            ip: "10.0.0.9".into(),
            trusted,
            proto: "http",
        }
    }

    fn request(raw: &str) -> (Parsed, String) {
        let mut out = Vec::new();
        let parsed = parse_request(raw.as_bytes(), &client(false), &mut out);
        (parsed, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn request_head_is_rewritten_for_upstream() {
        let raw = "POST /a?b=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, x-secret\r\n\
                   X-Secret: 1\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\
                   Content-Length: 3\r\nAccept: */*\r\n\r\nabc";
        let (parsed, out) = request(raw);
        let Parsed::Request(req) = parsed else {
            panic!("not taken: {parsed:?}");
        };
        assert_eq!(req.head_len, raw.len() - 3);
        assert_eq!(&raw[req.host], "shop.test");
        assert_eq!(&raw[req.path], "/a?b=1");
        assert_eq!((req.body_len, req.close, req.retryable), (3, false, false));
        assert_eq!(
            out,
            "POST /a?b=1 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.test\r\n\r\n"
        );
    }

    #[test]
    fn requests_the_fast_path_does_not_take_are_handed_over() {
        for raw in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        ] {
            let (parsed, _) = request(raw);
            assert!(matches!(parsed, Parsed::Handoff), "{raw:?}: {parsed:?}");
        }
        assert!(matches!(
            request("GET / HTTP/1.1\r\nHost: a\r\n").0,
            Parsed::Partial
        ));
    }

    fn response(raw: &str, head_request: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let resp = parse_response(raw.as_bytes(), head_request, false, &mut out)
            .expect("valid")
            .expect("complete");
        (resp, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            false,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(5), true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(
            (r.framing, r.keep_alive),
            (Framing::Chunked, false),
            "framed by its chunks, its connection not used again"
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (r, out) = response("HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let (r, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(r.framing, Framing::Length(0));
        let (r, _) = response("HTTP/1.1 304 Not Modified\r\n\r\n", false);
        assert_eq!(r.framing, Framing::Length(0));
        let (r, _) = response(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(0), false));
        let (r, _) = response("HTTP/1.1 100 Continue\r\n\r\n", false);
        assert!(r.interim);
        let mut out = Vec::new();
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(
                parse_response(bad.as_bytes(), false, false, &mut out).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_are_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n";
        let mut tail = body.to_vec();
        tail.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for split in 0..tail.len() {
            let mut c = Chunked::default();
            let (a, done_a) = c.feed(&tail[..split]).expect("valid");
            assert_eq!(a, split.min(body.len()));
            let (b, done_b) = if done_a {
                (0, true)
            } else {
                c.feed(&tail[split..]).expect("valid")
            };
            assert!(done_b, "split at {split}");
            assert_eq!(a + b, body.len(), "split at {split}");
        }
        for bad in [&b"x\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"0\r\nbad\n"] {
            assert!(Chunked::default().feed(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Chunked::default().feed(b"0\r\n\r\n"), Ok((5, true)));
    }

    /// Properties of the parsers over generated and mangled messages: the
    /// head sent on always carries the framing the fast path itself went
    /// by, so the next hop cannot read the message differently.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        /// Header lines from pieces that matter to framing and routing,
        /// mostly spelled well, sometimes badly.
        fn header_line() -> impl Strategy<Value = String> {
            let names = select(vec![
                "Host",
                "host",
                "HOST",
                "Content-Length",
                "content-length",
                "Transfer-Encoding",
                "Connection",
                "X-Forwarded-For",
                "X-Forwarded-Host",
                "Expect",
                "Upgrade",
                "Keep-Alive",
                "TE",
                "X-A",
                "Accept",
                "Content-Length ",
                " Host",
                "Host\0",
            ]);
            let values = select(vec![
                "a.test",
                "",
                "0",
                "5",
                "05",
                "+5",
                "5, 5",
                " 5",
                "5 ",
                "-1",
                "0x5",
                "18446744073709551616",
                "chunked",
                "gzip, chunked",
                "close",
                "keep-alive",
                "close, x-a",
                "x-a",
                "upgrade",
                "100-continue",
                "1.2.3.4",
                "a\rb",
            ]);
            let separators =
                prop_oneof![8 => Just(": "), 1 => select(vec![":", ":\t", " : ", ": \x0b"])];
            let ends = prop_oneof![8 => Just("\r\n"), 1 => select(vec!["\n", "\r\n "])];
            (names, separators, values, ends).prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}"))
        }

        /// A request from those pieces, mostly one the fast path could
        /// take (a good request line and a Host), then perhaps one byte
        /// changed.
        fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
            let lines = prop_oneof![
                8 => select(vec!["GET / HTTP/1.1", "POST /a?b=1 HTTP/1.1", "HEAD /x HTTP/1.1"]),
                1 => select(vec!["GET / HTTP/1.0", "GET http://a.test/ HTTP/1.1", "G ET / HTTP/1.1", "GET / http/1.1", "GET  / HTTP/1.1"]),
            ];
            let host = prop_oneof![4 => Just("Host: a.test\r\n"), 1 => Just("")];
            let heads = proptest::collection::vec(header_line(), 0..6);
            let body = proptest::collection::vec(any::<u8>(), 0..12);
            let mutation = prop_oneof![
                3 => Just(None),
                1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(Some),
            ];
            (lines, host, heads, body, mutation).prop_map(|(line, host, heads, body, mutation)| {
                let mut raw = format!("{line}\r\n{host}{}\r\n", heads.concat()).into_bytes();
                raw.extend_from_slice(&body);
                if let Some((at, byte)) = mutation {
                    let at = at.index(raw.len());
                    raw[at] = byte;
                }
                raw
            })
        }

        /// The numbers the `Content-Length`s of a parsed head say.
        fn lengths(headers: &[httparse::Header<'_>]) -> Vec<Option<u64>> {
            values(headers, "content-length")
                .into_iter()
                .map(content_length)
                .collect()
        }

        /// The values of the headers named `name` in a parsed head.
        fn values<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_parse_without_panicking(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
                let mut out = Vec::new();
                let _ = parse_request(&raw, &client(false), &mut out);
                let _ = parse_response(&raw, false, false, &mut out);
            }

            #[test]
            fn a_request_the_fast_path_takes_goes_on_framed_as_it_read_it(raw in request_bytes()) {
                let mut out = Vec::new();
                let Parsed::Request(req) = parse_request(&raw, &client(false), &mut out) else {
                    return Ok(());
                };
                // What it read: one Host, at most one Content-Length, no
                // Transfer-Encoding (or it would have handed it over).
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut read = httparse::Request::new(&mut headers);
                let read_len = read.parse(&raw);
                prop_assert!(matches!(read_len, Ok(httparse::Status::Complete(n)) if n == req.head_len));
                prop_assert_eq!(values(read.headers, "host").len(), 1);
                prop_assert!(values(read.headers, "content-length").len() <= 1);
                prop_assert!(values(read.headers, "transfer-encoding").is_empty());
                prop_assert_eq!(read.version, Some(1));
                // What goes on: a whole head, the same request line, one
                // Host with the routed value, the same length, nothing
                // hop-by-hop.
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
                let mut sent = httparse::Request::new(&mut headers);
                let sent_len = sent.parse(&out);
                prop_assert!(matches!(sent_len, Ok(httparse::Status::Complete(n)) if n == out.len()), "{:?}", String::from_utf8_lossy(&out));
                prop_assert_eq!(sent.method, read.method);
                prop_assert_eq!(sent.path, read.path);
                prop_assert_eq!(values(sent.headers, "host"), vec![&raw[req.host.clone()]]);
                let lengths = lengths(sent.headers);
                match req.body_len {
                    0 => prop_assert!(lengths.is_empty() || lengths == vec![Some(0)]),
                    n => prop_assert_eq!(lengths, vec![Some(n)]),
                }
                for hop in ["transfer-encoding", "connection", "keep-alive", "te", "upgrade"] {
                    prop_assert!(values(sent.headers, hop).is_empty(), "{hop} sent on");
                }
            }

            #[test]
            fn a_response_goes_to_the_client_framed_as_it_was_read(
                status in select(vec!["200 OK", "204 No Content", "304 Not Modified", "404 x", "103 Early"]),
                heads in proptest::collection::vec(header_line(), 0..6),
                head_request in any::<bool>(),
                client_close in any::<bool>(),
            ) {
                let raw = format!("HTTP/1.1 {status}\r\n{}\r\n", heads.concat());
                let mut out = Vec::new();
                let Ok(Some(resp)) = parse_response(raw.as_bytes(), head_request, client_close, &mut out) else {
                    return Ok(());
                };
                // Interim responses go on as they came.
                if resp.interim {
                    return Ok(());
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
                let mut sent = httparse::Response::new(&mut headers);
                prop_assert!(matches!(sent.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
                let lengths = lengths(sent.headers);
                let encodings = values(sent.headers, "transfer-encoding");
                let close = values(sent.headers, "connection").iter().any(|v| v.eq_ignore_ascii_case(b"close"));
                // The codings, all lines read as one list, end in chunked.
                let last = encodings.last().and_then(|e| e.rsplit(|b| *b == b',').next());
                let ends_chunked = last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                match resp.framing {
                    // The client reads by the length, or by nothing (HEAD, 204, 304).
                    Framing::Length(n) if !(head_request || resp.status == 204 || resp.status == 304) => {
                        prop_assert!(encodings.is_empty());
                        prop_assert_eq!(lengths, vec![Some(n)]);
                    }
                    Framing::Length(_) => prop_assert!(lengths.len() <= 1),
                    Framing::Chunked => {
                        prop_assert!(lengths.is_empty(), "a length beside the chunks");
                        prop_assert!(ends_chunked, "chunked for the client too");
                    }
                    Framing::Close => {
                        // A coding other than chunked last goes on with it:
                        // the client reads to the close too (RFC 9112 §6.3).
                        prop_assert!(lengths.is_empty());
                        prop_assert!(!ends_chunked);
                        prop_assert!(close, "a close-delimited body says so");
                    }
                }
                if client_close {
                    prop_assert!(close, "the client asked to close");
                }
            }
        }
    }
}
