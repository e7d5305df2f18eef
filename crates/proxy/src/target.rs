//! A target: one instance's address, with in-flight tracking for drains,
//! passive ejection after connection failures, and its own request metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http::uri::Authority;
use tokio::sync::Notify;

use crate::metrics::RequestMetrics;
use tokio::net::TcpStream;

use crate::upstream::{Idle, Pool, Upstream};

/// How long a target that refused a connection is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Target {
    pub id: String,
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once so forwarding does not format it.
    pub authority: Authority,
    pub metrics: RequestMetrics,
    /// Idle keep-alive connections of the hyper path (h2 clients, upgrades
    /// and the HTTP/1 requests the fast path hands over).
    pub pool: Pool<Upstream>,
    /// Idle keep-alive connections of the HTTP/1.1 fast path (`h1`).
    pub streams: Pool<TcpStream>,
    in_flight: AtomicU64,
    draining: AtomicBool,
    /// Milliseconds since `epoch` until which the target is skipped.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    idle: Notify,
}

impl Target {
    pub fn new(id: String, addr: SocketAddr) -> Arc<Self> {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        Arc::new(Target {
            id,
            addr,
            authority,
            metrics: RequestMetrics::default(),
            pool: Pool::default(),
            streams: Pool::default(),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            idle: Notify::new(),
        })
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(SeqCst)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(SeqCst) > self.now_ms()
    }

    pub fn eject(&self) {
        let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
        self.ejected_until_ms.store(until, SeqCst);
    }

    /// Lets the target take traffic again (a probe saw it healthy).
    pub fn readmit(&self) {
        self.ejected_until_ms.store(0, SeqCst);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Claims a request slot; `None` once the target drains. The increment
    /// comes before the draining check and [`Target::drain`] sets the flag
    /// before reading the count (both SeqCst), so a drain never misses a
    /// request that got in.
    pub fn acquire(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, SeqCst);
        if self.draining.load(SeqCst) {
            self.release_slot();
            return None;
        }
        Some(InFlight {
            target: Arc::clone(self),
        })
    }

    fn release_slot(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Closes idle connections that expired or that the target closed.
    pub fn prune_idle(&self) {
        self.pool.prune();
        self.streams.prune();
    }

    /// Takes back into its pool a connection whose exchange finished,
    /// unless the target drains.
    pub fn checkin<C: Idle>(&self, conn: C) {
        if !self.draining.load(SeqCst) {
            C::pool(self).checkin(conn);
        }
    }

    /// Stops new requests and waits until in-flight ones finish, at most
    /// `timeout`. Returns whether it finished in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.draining.store(true, SeqCst);
        self.pool.clear();
        self.streams.clear();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight.load(SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight.load(SeqCst) == 0;
            }
        }
    }
}

/// A claimed request slot; released on drop (when the response body ends or
/// the upgraded connection closes).
#[derive(Debug)]
pub struct InFlight {
    pub target: Arc<Target>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target.release_slot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        Target::new("i1".into(), SocketAddr::from(([127, 0, 0, 1], 1)))
    }

    #[tokio::test]
    async fn drain_waits_for_in_flight_requests() {
        let t = target();
        let slot = t.acquire().expect("not draining");
        let t2 = Arc::clone(&t);
        let drain = tokio::spawn(async move { t2.drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drain.is_finished());
        assert!(
            t.acquire().is_none(),
            "a draining target takes no new request"
        );
        drop(slot);
        assert!(drain.await.expect("join"));
        assert_eq!(t.in_flight(), 0);
    }

    #[tokio::test]
    async fn drain_gives_up_at_its_timeout() {
        let t = target();
        let _slot = t.acquire();
        assert!(!t.drain(Duration::from_millis(30)).await);
    }

    #[test]
    fn ejection_expires_or_is_lifted() {
        let t = target();
        t.eject();
        assert!(t.is_ejected());
        t.readmit();
        assert!(!t.is_ejected());
    }
}
