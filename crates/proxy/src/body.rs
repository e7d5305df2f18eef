//! Response bodies that hold their target's in-flight slot until the last
//! byte is sent, so a drain waits for streamed responses too, and drive the
//! upstream connection the body comes from; and bodies that fail when their
//! sender goes quiet for too long ([`Quiet`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::deadline::Deadline;
use crate::target::InFlight;
use crate::upstream::Upstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// An upstream body, the connection it arrives on and the slot it occupies.
/// Once the body has ended the connection goes back to the target's pool.
pub struct Tracked {
    inner: Incoming,
    upstream: Option<Upstream>,
    slot: InFlight,
}

impl Tracked {
    /// `upstream` is `None` when someone else drives the connection; the
    /// body fails when the upstream sends nothing for `quiet`.
    pub fn boxed(
        inner: Incoming,
        upstream: Option<Upstream>,
        slot: InFlight,
        quiet: Duration,
    ) -> ProxyBody {
        let tracked = Tracked {
            inner,
            upstream,
            slot,
        };
        Quiet::new(tracked, quiet).boxed()
    }

    fn finish(&mut self) {
        if let Some(up) = self.upstream.take() {
            self.slot.target.checkin(up);
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

/// A body that fails when, asked for a frame, it has none for `limit`: a
/// stalled upload or a stuck upstream then ends its exchange instead of
/// holding it for ever. Time the reader spends elsewhere does not count.
pub struct Quiet<B> {
    inner: B,
    deadline: Deadline,
    /// A wait for a frame is on (its deadline set).
    waiting: bool,
}

impl<B> Quiet<B> {
    pub fn new(inner: B, limit: Duration) -> Quiet<B> {
        Quiet {
            inner,
            deadline: Deadline::new(limit),
            waiting: false,
        }
    }
}

impl<B> Body for Quiet<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.waiting {
            this.waiting = true;
            this.deadline.restart();
        }
        match this.deadline.poll_passed(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(this.deadline.limit()))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a [`Quiet`] body whose sender went quiet.
#[derive(Debug, thiserror::Error)]
#[error("nothing sent for {0:?}")]
pub struct Stalled(pub Duration);

/// The error of a request body that failed on the client's side: cut
/// short, or malformed (a bad chunk): the client's doing, not the
/// service's.
#[derive(Debug, thiserror::Error)]
#[error("the request body failed: {0}")]
pub struct Unreadable(#[source] pub BoxError);

/// Whether `error` or one of its causes is an `E`.
pub fn caused<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame, then none for ever.
    struct OneThenNothing(bool);

    impl Body for OneThenNothing {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_body_fails_a_limit_after_its_reader_starts_waiting() {
        let mut body = Quiet::new(OneThenNothing(false), Duration::from_secs(2));
        assert!(body.frame().await.expect("frame").is_ok());
        // The reader is busy elsewhere for longer than the limit...
        tokio::time::sleep(Duration::from_secs(10)).await;
        // ...which does not count: the limit runs from when it asks again.
        let asked = tokio::time::Instant::now();
        assert!(body.frame().await.expect("an error").is_err());
        assert_eq!(asked.elapsed(), Duration::from_secs(2));
    }
}
