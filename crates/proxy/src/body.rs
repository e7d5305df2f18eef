//! Response bodies that hold their target's in-flight slot until the last
//! byte is sent, so a drain waits for streamed responses too, and drive the
//! upstream connection the body comes from.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::target::InFlight;
use crate::upstream::Upstream;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// An upstream body, the connection it arrives on and the slot it occupies.
/// Once the body has ended the connection goes back to the target's pool.
pub struct Tracked {
    inner: Incoming,
    upstream: Option<Upstream>,
    slot: InFlight,
}

impl Tracked {
    /// `upstream` is `None` when someone else drives the connection.
    pub fn boxed(inner: Incoming, upstream: Option<Upstream>, slot: InFlight) -> ProxyBody {
        Tracked {
            inner,
            upstream,
            slot,
        }
        .boxed()
    }

    fn finish(&mut self) {
        if let Some(up) = self.upstream.take() {
            let target = &self.slot.target;
            target.checkin(&target.pool, up);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut frame = Pin::new(&mut this.inner).poll_frame(cx);
        if frame.is_pending()
            && let Some(up) = &mut this.upstream
        {
            // The data comes from the connection: let it read, then look again.
            up.drive(cx);
            frame = Pin::new(&mut this.inner).poll_frame(cx);
        }
        match &frame {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.upstream = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body nobody read to its end (HEAD, 204, a client that went away)
        // leaves the connection reusable only if nothing is left unread.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

/// A small fixed body for responses the proxy makes itself.
pub fn text(s: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(s.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
