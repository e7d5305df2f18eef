//! Response bodies that hold their target's in-flight slot until the last
//! byte is sent, so a drain waits for streamed responses too.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::target::InFlight;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// An upstream body plus the slot it occupies.
pub struct Tracked {
    inner: Incoming,
    _slot: InFlight,
}

impl Tracked {
    pub fn boxed(inner: Incoming, slot: InFlight) -> ProxyBody {
        Tracked { inner, _slot: slot }.boxed()
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
