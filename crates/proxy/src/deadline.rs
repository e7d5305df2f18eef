//! A deadline that is cheap to move later, as the proxy does for every
//! wait: that only stores the new instant. The timer underneath stays where
//! it was, and when it fires before the deadline it is set again; only
//! moving the deadline earlier touches the timer at once. The fast path
//! (`h1`) keeps one per socket, and a [`crate::body::Quiet`] body one for
//! its sender.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

pub(crate) struct Deadline {
    /// The budget of one wait, from [`Deadline::restart`].
    limit: Duration,
    at: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    /// A deadline `limit` from now.
    pub(crate) fn new(limit: Duration) -> Deadline {
        let at = Instant::now() + limit;
        Deadline {
            limit,
            at,
            timer: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Changes the budget of the waits from the next [`Deadline::restart`].
    pub(crate) fn set_limit(&mut self, limit: Duration) {
        self.limit = limit;
    }

    /// Starts a wait with the usual budget.
    pub(crate) fn restart(&mut self) {
        self.set(Instant::now() + self.limit);
    }

    pub(crate) fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
    }

    /// `Ready` once the deadline has passed; otherwise `cx` is woken when
    /// it may have.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let at = self.at;
            self.timer.as_mut().reset(at);
        }
        Poll::Pending
    }

    /// Runs `fut` to its end, or until the deadline passes (`None`).
    pub(crate) async fn within<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            () = std::future::poll_fn(|cx| self.poll_passed(cx)) => None,
        }
    }

    /// Reads into `buf` what arrives within the budget: the count (0 at the
    /// end of the stream); `Err` for an error or nothing in time.
    pub(crate) async fn read<R>(&mut self, from: &mut R, buf: &mut BytesMut) -> Result<usize, ()>
    where
        R: AsyncRead + Unpin,
    {
        self.restart();
        match self.within(from.read_buf(buf)).await {
            Some(Ok(n)) => Ok(n),
            _ => Err(()),
        }
    }

    /// Writes all of `bytes` unless that takes longer than the budget.
    pub(crate) async fn write<W>(&mut self, to: &mut W, bytes: &[u8]) -> Result<(), ()>
    where
        W: AsyncWrite + Unpin,
    {
        self.restart();
        match self.within(to.write_all(bytes)).await {
            Some(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_holds_until_the_new_instant() {
        let start = Instant::now();
        let mut deadline = Deadline::new(Duration::from_secs(1));
        deadline.set(start + Duration::from_secs(5));
        let never = std::future::pending::<()>();
        assert_eq!(deadline.within(never).await, None);
        // The timer fired at 1 s, saw the deadline had moved, and waited on.
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        // Moved earlier, it fires at the earlier instant.
        let now = Instant::now();
        deadline.set(now + Duration::from_secs(60));
        deadline.set(now + Duration::from_secs(2));
        assert_eq!(deadline.within(std::future::pending::<()>()).await, None);
        assert_eq!(now.elapsed(), Duration::from_secs(2));

        // What ends first wins.
        deadline.set(Instant::now() + Duration::from_secs(3));
        assert_eq!(deadline.within(async { 7 }).await, Some(7));
    }
}
