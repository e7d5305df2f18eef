//! Handing client connections to another proxy, so that replacing the
//! process that serves them closes none of them.
//!
//! After [`Proxy::hand_off`](crate::Proxy::hand_off), each connection
//! lets go at the first point where it holds nothing in flight: an
//! HTTP/1.1 connection of the fast path between two requests (with the
//! bytes it has read of the next one), a tunnel (after an upgrade) once
//! each direction has written on what it read. It comes out as a
//! [`Moved`] with its sockets as plain descriptors; whoever owns both
//! proxies carries it over (the agent passes the descriptors to its
//! successor with `SCM_RIGHTS`) and the other proxy
//! [`adopt`](crate::Proxy::adopt)s it. HTTP/2 connections and HTTP/1
//! connections the general path serves cannot move (hyper keeps their
//! state): they get a GOAWAY or `connection: close` instead.

use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use crate::server::Inner;

/// A client connection one proxy let go of, for another to serve on.
#[derive(Debug)]
pub enum Moved {
    /// An HTTP/1.1 connection between two requests, with what it has sent
    /// of the next one.
    Client { stream: StdTcpStream, read: Vec<u8> },
    /// A tunnel after an upgrade, and which of its directions still carry
    /// bytes (a direction whose sender closed was shut down on the far
    /// side).
    Tunnel {
        client: StdTcpStream,
        upstream: StdTcpStream,
        from_client: bool,
        from_upstream: bool,
    },
}

/// Where moved connections go.
pub(crate) type Mover = mpsc::UnboundedSender<Moved>;

/// Resolves, with where to send a connection, once the proxy hands its
/// connections off; never if it only closes them.
pub(crate) async fn handing_off(inner: &Inner, closing: &mut watch::Receiver<bool>) -> Mover {
    let closed = closing.wait_for(|c| *c).await.is_ok();
    if closed && let Some(mover) = inner.mover() {
        return mover;
    }
    std::future::pending().await
}

/// Bytes carried at a time in each direction of a tunnel.
const TUNNEL_BUF: usize = 16 * 1024;

/// How one direction of a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Its sender closed; the other side was told (write shut down).
    Ended,
    /// Asked to stop, with everything it read written on.
    Stopped,
    /// A read or a write failed: the tunnel is over.
    Failed,
}

/// One direction: writes `pending`, then copies until its sender closes,
/// a socket fails or the proxy hands off. Stops only between a read and
/// the next, never with bytes read and not written. A direction that is not
/// `open` (its sender closed before) has ended already.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pending: &[u8],
    open: bool,
    mut closing: watch::Receiver<bool>,
    inner: &Inner,
) -> (OwnedReadHalf, OwnedWriteHalf, Flow) {
    if !open {
        return (from, to, Flow::Ended);
    }
    if !pending.is_empty() && to.write_all(pending).await.is_err() {
        return (from, to, Flow::Failed);
    }
    let mut buf = vec![0u8; TUNNEL_BUF];
    let stop = handing_off(inner, &mut closing);
    tokio::pin!(stop);
    loop {
        let read = tokio::select! {
            biased;
            read = from.read(&mut buf) => read,
            _ = &mut stop => return (from, to, Flow::Stopped),
        };
        let flow = match read {
            Ok(0) => match to.shutdown().await {
                Ok(()) => Flow::Ended,
                Err(_) => Flow::Failed,
            },
            Ok(n) => match to.write_all(&buf[..n]).await {
                Ok(()) => continue,
                Err(_) => Flow::Failed,
            },
            Err(_) => Flow::Failed,
        };
        return (from, to, flow);
    }
}

/// Relays a tunnel between `client` and `upstream` until both directions
/// end or one fails, first writing what was read of either before the
/// upgrade (`open` says which directions still carry bytes). When the
/// proxy hands off, the tunnel moves (directions already ended stay
/// ended).
pub(crate) async fn relay(
    inner: &Arc<Inner>,
    client: TcpStream,
    upstream: TcpStream,
    to_upstream: &[u8],
    to_client: &[u8],
    open: (bool, bool),
) {
    let stopped = relay_until_stopped(inner, client, upstream, to_upstream, to_client, open);
    if let Some(moved) = stopped.await
        && let Some(mover) = inner.mover()
    {
        let _ = mover.send(moved);
    }
}

/// [`relay`]'s work: the tunnel if it stopped for a hand-off, `None` if it
/// is over.
async fn relay_until_stopped(
    inner: &Arc<Inner>,
    client: TcpStream,
    upstream: TcpStream,
    to_upstream: &[u8],
    to_client: &[u8],
    open: (bool, bool),
) -> Option<Moved> {
    let closing = inner.closing_signal();
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(
        client_read,
        upstream_write,
        to_upstream,
        open.0,
        closing.clone(),
        inner,
    );
    let down = pump(
        upstream_read,
        client_write,
        to_client,
        open.1,
        closing,
        inner,
    );
    tokio::pin!(up, down);
    // A failure in one direction ends both: the other may wait for ever on
    // a peer that is gone.
    let (up, down) = tokio::select! {
        a = &mut up => {
            if a.2 == Flow::Failed { return None; }
            (a, down.await)
        }
        b = &mut down => {
            if b.2 == Flow::Failed { return None; }
            (up.await, b)
        }
    };
    let (up_flow, down_flow) = (up.2, down.2);
    if up_flow == Flow::Failed
        || down_flow == Flow::Failed
        || (up_flow == Flow::Ended && down_flow == Flow::Ended)
    {
        return None;
    }
    let client = up.0.reunite(down.1).ok()?.into_std().ok()?;
    let upstream = down.0.reunite(up.1).ok()?.into_std().ok()?;
    Some(Moved::Tunnel {
        client,
        upstream,
        from_client: up_flow == Flow::Stopped,
        from_upstream: down_flow == Flow::Stopped,
    })
}
