//! tandem's reverse proxy, the hot half of the data plane.
//!
//! A request is matched against an immutable [`RouteTable`] snapshot (by
//! `Host` and longest path prefix), balanced round-robin over the route's
//! ready [`Target`]s and forwarded over HTTP/1.1 connections pooled per target and driven by
//! the request's own task (see `upstream`). Whoever
//! owns the targets (the agent) publishes a new table to switch traffic; a
//! publish never blocks a request and a request never blocks a publish.
//! The proxy knows nothing of releases, stores or the control plane.

mod body;
mod deadline;
mod forward;
mod h1;
pub mod metrics;
pub mod moving;
mod router;
mod server;
mod target;
pub mod tls;
mod upstream;

pub use metrics::RequestMetrics;
pub use moving::Moved;
pub use router::{Route, RouteTable};
pub use server::{Proxy, ProxyConfig, RefusedCounts};
pub use target::Target;
