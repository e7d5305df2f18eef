//! Upstream HTTP/1.1 connections, pooled per target and driven by the task
//! that uses them.
//!
//! A hyper client connection is two halves: a `SendRequest` handle and a
//! `Connection` future that does the I/O. The usual client spawns the future
//! on its own task, so every exchange hops between tasks several times. Here
//! the request's own task polls it: [`exchange`] while waiting for the
//! response head, then the response body ([`crate::body::Tracked`]) while
//! the body streams. When the body ends, the connection goes back to its
//! target's [`Pool`]; an idle connection is not polled at all, and a
//! checkout first lets it notice a close that happened meanwhile.
//!
//! Upgrades (WebSocket) need the connection to outlive the exchange, so they
//! get a fresh connection on a task of its own ([`exchange_upgrade`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::target::Target;

/// Idle connections kept per target; beyond that a finished one is closed.
const POOL_MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused (most
/// servers close idle keep-alive connections after a minute or more).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an exchange with a target failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The proxy is out of file descriptors: no fault of the target's.
    #[error("connect: the proxy is out of file descriptors: {0}")]
    NoDescriptors(std::io::Error),
    #[error(transparent)]
    Http(hyper::Error),
}

/// One HTTP/1.1 connection to a target.
pub struct Upstream {
    send: http1::SendRequest<ProxyBody>,
    /// `None` once the connection has closed. Dropping it at once matters:
    /// a request still queued for it then fails (and comes back unsent)
    /// instead of waiting forever.
    conn: Option<http1::Connection<TokioIo<TcpStream>, ProxyBody>>,
}

impl Upstream {
    async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Upstream, UpstreamError> {
        let stream = connect_tcp(addr, timeout).await?;
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        Ok(Upstream {
            send,
            conn: Some(conn),
        })
    }

    /// Advances the connection's I/O; `cx` is woken when it can go further.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && Pin::new(conn).poll(cx).is_ready()
        {
            self.conn = None;
        }
    }

    /// Whether the connection can take another request now. Drives it once
    /// without registering for wake-ups, so a close by the server that
    /// already arrived is seen.
    fn reusable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.conn.is_some() && self.send.is_ready()
    }

    /// Sends `req` and drives the connection until the response head is in.
    /// A request that was never written comes back in the error.
    async fn send(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>> {
        let mut response = std::pin::pin!(self.send.try_send_request(req));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// A connection that can wait in a [`Pool`].
pub trait Idle: Sized {
    /// Whether the connection can take another request now. Must not block
    /// and must notice a close by the server that already arrived.
    fn reusable(&mut self) -> bool;

    /// The pool of `target` that holds connections of this kind.
    fn pool(target: &Target) -> &Pool<Self>;
}

impl Idle for Upstream {
    fn reusable(&mut self) -> bool {
        Upstream::reusable(self)
    }

    fn pool(target: &Target) -> &Pool<Self> {
        &target.pool
    }
}

impl Idle for TcpStream {
    fn pool(target: &Target) -> &Pool<Self> {
        &target.streams
    }

    /// An idle connection has nothing to read: a byte, an end of stream or
    /// an error all mean the server is done with it. `try_read` only makes
    /// the syscall when the reactor has seen the socket become readable, so
    /// the usual answer costs nothing.
    fn reusable(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// A target's idle connections, most recently used last.
pub struct Pool<C> {
    idle: Mutex<Vec<(C, Instant)>>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.lock().map(|v| v.len()).unwrap_or(0))
            .finish()
    }
}

impl<C: Idle> Pool<C> {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(C, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is still good.
    pub fn checkout(&self) -> Option<C> {
        loop {
            let (mut conn, since) = self.idle().pop()?;
            if since.elapsed() < POOL_IDLE_TIMEOUT && conn.reusable() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose exchange finished; closes it instead when
    /// it cannot be reused or the pool is full. (Expired ones are let go by
    /// checkouts and by [`Pool::prune`].)
    pub fn checkin(&self, mut conn: C) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < POOL_MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes the idle connections that expired or that the server closed
    /// meanwhile (run every few seconds by the proxy), so pools no request
    /// touches leave nothing in CLOSE_WAIT.
    pub fn prune(&self) {
        self.idle()
            .retain_mut(|(conn, since)| since.elapsed() < POOL_IDLE_TIMEOUT && conn.reusable());
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.idle().len()
    }

    /// Closes every idle connection (the target is going away).
    pub fn clear(&self) {
        self.idle().clear();
    }
}

/// Sends `req` to `addr` over a pooled connection (or a new one) and returns
/// the response head with the connection, which the response body must
/// keep driving. A pooled connection that turns out to be closed before the
/// request was written is replaced transparently.
pub async fn exchange(
    pool: &Pool<Upstream>,
    addr: SocketAddr,
    connect_timeout: Duration,
    mut req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Upstream), UpstreamError> {
    loop {
        let (mut up, pooled) = match pool.checkout() {
            Some(up) => (up, true),
            None => (Upstream::connect(addr, connect_timeout).await?, false),
        };
        match up.send(req).await {
            Ok(resp) => return Ok((resp, up)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if pooled => req = unsent,
                _ => return Err(UpstreamError::Http(e.into_error())),
            },
        }
    }
}

/// Sends an upgrade request over a fresh connection that runs on its own
/// task, so the upgraded stream can outlive this call.
pub async fn exchange_upgrade(
    addr: SocketAddr,
    connect_timeout: Duration,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let stream = connect_tcp(addr, connect_timeout).await?;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded upstream connection ended with error");
        }
    });
    send.send_request(req).await.map_err(UpstreamError::Http)
}

pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        // EMFILE, ENFILE: ours, not the target's.
        Ok(Err(e)) if matches!(e.raw_os_error(), Some(23 | 24)) => {
            return Err(UpstreamError::NoDescriptors(e));
        }
        Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
        Err(_) => {
            return Err(UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )));
        }
    };
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prune_closes_idle_connections_the_server_closed_and_keeps_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool: Pool<TcpStream> = Pool::default();
        let mut server_sides = Vec::new();
        for _ in 0..2 {
            pool.checkin(TcpStream::connect(addr).await.expect("connect"));
            server_sides.push(listener.accept().await.expect("accept").0);
        }
        assert_eq!(pool.len(), 2);
        // The server closes one of them; the reactor sees it readable.
        drop(server_sides.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.prune();
        assert_eq!(pool.len(), 1, "the closed one is gone, the open one kept");
    }
}
