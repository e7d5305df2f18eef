//! The route table: an immutable snapshot mapping `Host` + path prefix to a
//! route and its targets. The agent builds a new one for every change and
//! publishes it whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::metrics::RequestMetrics;
use crate::target::{InFlight, Target};

/// One route: where a service's traffic goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub service: Arc<str>,
    pub host: String,
    pub path_prefix: String,
    pub targets: Vec<Arc<Target>>,
    /// Round-robin cursor; shared across snapshots so balance survives publishes.
    pub cursor: Arc<AtomicUsize>,
    /// Per-route metrics; shared across snapshots so counters are cumulative.
    pub metrics: Arc<RequestMetrics>,
    /// In maintenance mode: answer 503 with this `Retry-After` (seconds).
    pub maintenance: Option<u32>,
    /// How long its upstreams may take to start an answer and then stay
    /// silent mid-answer; `None`: the proxy's `response_timeout`.
    pub timeout: Option<Duration>,
    /// Served over HTTPS only: a plain-HTTP request is redirected (308),
    /// and answers over HTTPS carry `Strict-Transport-Security`.
    pub https_only: bool,
}

impl Route {
    /// Claims the next usable target, skipping draining and ejected ones and
    /// `avoid` (a target that just failed).
    pub fn pick(&self, avoid: Option<&Arc<Target>>) -> Option<InFlight> {
        let n = self.targets.len();
        let start = self.cursor.fetch_add(1, Relaxed);
        for i in 0..n {
            let t = &self.targets[(start + i) % n];
            if t.is_ejected() || avoid.is_some_and(|a| Arc::ptr_eq(a, t)) {
                continue;
            }
            if let Some(slot) = t.acquire() {
                return Some(slot);
            }
        }
        None
    }

    /// Whether `path` (a request target, perhaps with its query) is under
    /// this route's prefix: the prefix whole, then the end, a `/` or the
    /// query.
    fn matches_path(&self, path: &str) -> bool {
        let p = self.path_prefix.as_str();
        path.starts_with(p)
            && (p.ends_with('/')
                || path.len() == p.len()
                || matches!(path.as_bytes()[p.len()], b'/' | b'?'))
    }
}

/// All routes, by host; within a host, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_host: HashMap<String, Vec<Arc<Route>>>,
}

impl RouteTable {
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut by_host: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for r in routes {
            by_host
                .entry(r.host.to_ascii_lowercase())
                .or_default()
                .push(Arc::new(r));
        }
        for routes in by_host.values_mut() {
            routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        }
        RouteTable { by_host }
    }

    /// Every route's targets (a target on several routes comes once each).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.by_host
            .values()
            .flatten()
            .flat_map(|route| route.targets.iter())
    }

    /// The route for a request's host (any port stripped) and path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        // `shop.test.` is `shop.test` written fully qualified.
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let routes = match self.by_host.get(host) {
            Some(r) => r,
            None => self.by_host.get(&host.to_ascii_lowercase())?,
        };
        routes.iter().find(|r| r.matches_path(path))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn route(host: &str, prefix: &str, service: &str) -> Route {
        Route {
            service: service.into(),
            host: host.into(),
            path_prefix: prefix.into(),
            targets: vec![Target::new(
                format!("{service}-1"),
                SocketAddr::from(([127, 0, 0, 1], 9)),
            )],
            cursor: Arc::default(),
            metrics: Arc::default(),
            maintenance: None,
            timeout: None,
            https_only: false,
        }
    }

    #[test]
    fn longest_prefix_wins_and_port_is_ignored() {
        let t = RouteTable::new([route("a.test", "/", "root"), route("a.test", "/api", "api")]);
        assert_eq!(
            t.lookup("a.test:8080", "/api/x").map(|r| &*r.service),
            Some("api")
        );
        assert_eq!(
            t.lookup("A.TEST", "/apix").map(|r| &*r.service),
            Some("root")
        );
        assert_eq!(t.lookup("a.test", "/api").map(|r| &*r.service), Some("api"));
        // The fast path looks up the whole target, query and all.
        assert_eq!(
            t.lookup("a.test", "/api?x=1").map(|r| &*r.service),
            Some("api")
        );
        assert_eq!(
            t.lookup("a.test", "/apix?x=1").map(|r| &*r.service),
            Some("root")
        );
        assert_eq!(
            t.lookup("a.test.:8080", "/").map(|r| &*r.service),
            Some("root"),
            "fully qualified"
        );
        assert!(t.lookup("b.test", "/").is_none());
    }

    #[test]
    fn pick_round_robins_and_skips_ejected() {
        let mut r = route("a.test", "/", "s");
        r.targets.push(Target::new(
            "s-2".into(),
            SocketAddr::from(([127, 0, 0, 1], 10)),
        ));
        let first = r.pick(None).map(|s| s.target.id.clone());
        let second = r.pick(None).map(|s| s.target.id.clone());
        assert_ne!(first, second);
        r.targets[0].eject();
        for _ in 0..4 {
            assert_eq!(
                r.pick(None).map(|s| s.target.id.clone()).as_deref(),
                Some("s-2")
            );
        }
        let avoid = Arc::clone(&r.targets[1]);
        assert!(r.pick(Some(&avoid)).is_none());
    }
}
