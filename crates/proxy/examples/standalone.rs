//! The proxy alone: `standalone LISTEN BACKEND HOST`, one worker thread.
use std::sync::Arc;
use tandem_proxy::{Proxy, ProxyConfig, Route, RouteTable, Target};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let proxy = Proxy::new(ProxyConfig::default());
        let target = Target::new("t".into(), args[2].parse().expect("backend addr"));
        proxy.publish(RouteTable::new([Route {
            service: "bench".into(),
            host: args[3].clone(),
            path_prefix: "/".into(),
            targets: vec![target],
            cursor: Arc::default(),
            metrics: Arc::default(),
            maintenance: None,
            timeout: None,
            https_only: false,
        }]));
        let listener = tokio::net::TcpListener::bind(&args[1]).await.expect("bind");
        proxy.serve(listener, std::future::pending()).await;
    });
}
