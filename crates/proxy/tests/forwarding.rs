//! The proxy against real sockets: a hyper backend on port 0, the proxy on
//! port 0, and clients speaking HTTP/1.1, h2c and a raw upgrade.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tandem_proxy::{Proxy, ProxyConfig, Route, RouteTable, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{start_backend, start_counting_backend};

/// A port nothing listens on.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Setup {
    proxy: Proxy,
    proxy_addr: SocketAddr,
    route_metrics: Arc<tandem_proxy::RequestMetrics>,
    targets: Vec<Arc<Target>>,
}

async fn start_proxy(targets: Vec<SocketAddr>) -> Setup {
    start_proxy_with(targets, ProxyConfig::default()).await
}

/// The test proxy with `base`'s limits and short timeouts.
async fn start_proxy_with(targets: Vec<SocketAddr>, base: ProxyConfig) -> Setup {
    let config = ProxyConfig {
        hold_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_secs(1),
        client_timeout: Duration::from_millis(500),
        // Short, unless the test asks for another.
        head_timeout: match base.head_timeout == ProxyConfig::default().head_timeout {
            true => Duration::from_millis(500),
            false => base.head_timeout,
        },
        kept_upstream_hold: Duration::from_millis(300),
        ..base
    };
    let config_response_timeout = config.response_timeout;
    let proxy = Proxy::new(config);
    let targets: Vec<Arc<Target>> = targets
        .into_iter()
        .enumerate()
        .map(|(i, a)| Target::new(format!("t{i}"), a))
        .collect();
    let route_metrics = Arc::new(tandem_proxy::RequestMetrics::default());
    let route = |host: &str, targets: Vec<Arc<Target>>| Route {
        service: "app".into(),
        host: host.into(),
        path_prefix: "/".into(),
        targets,
        cursor: Arc::default(),
        metrics: Arc::clone(&route_metrics),
        maintenance: None,
        timeout: None,
        https_only: false,
    };
    let maintenance = Route {
        maintenance: Some(120),
        ..route("maint.test", targets.clone())
    };
    // Waits for its upstreams three times as long as the proxy's default.
    let patient = Route {
        timeout: Some(3 * config_response_timeout),
        ..route("patient.test", targets.clone())
    };
    proxy.publish(RouteTable::new([
        route("app.test", targets.clone()),
        route("empty.test", Vec::new()),
        maintenance,
        patient,
    ]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_addr = listener.local_addr().expect("addr");
    let serving = proxy.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    Setup {
        proxy,
        proxy_addr,
        route_metrics,
        targets,
    }
}

/// Sends `raw` on a fresh connection and reads until the proxy closes it.
async fn until_closed(proxy: SocketAddr, raw: &str) -> (String, Duration) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    send_until_closed(&mut s, raw).await
}

/// Writes `raw` on `s`, then reads until the proxy closes it (at most 5 s):
/// what came, and how long the reading took.
async fn send_until_closed(s: &mut TcpStream, raw: &str) -> (String, Duration) {
    s.write_all(raw.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("closed, not left hanging")
        .expect("read");
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Reads from `s` until what came ends with `end`.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    while !got.ends_with(end) {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.expect("read");
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the proxy's count of open client connections comes to `open`
/// within 2 s.
async fn open_connections_become(proxy: &Proxy, open: usize) -> bool {
    for _ in 0..100 {
        if proxy.connections().0 == open {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
async fn http1(addr: SocketAddr, raw_request: &str) -> (u16, String) {
    let (out, _) = until_closed(addr, raw_request).await;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn forwards_with_x_forwarded_headers_and_without_hop_by_hop_ones() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (status, seen) = http1(
        setup.proxy_addr,
        "GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close, x-secret\r\nx-secret: 1\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: app.test\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("host: app.test\n"), "{seen}");
    assert!(seen.contains("accept: */*\n"), "{seen}");
    for gone in ["x-secret", "te:", "keep-alive"] {
        assert!(!seen.contains(gone), "{gone} was forwarded: {seen}");
    }
}

/// What a client claims of where a request came from.
const CLAIMS: &str = "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\
    Forwarded: for=10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
    X-Forwarded-Host: evil.test\r\nX_Forwarded_For: 10.0.0.3\r\nX-Forwarded-Ssl: on\r\n";

#[tokio::test]
async fn a_clients_forwarding_headers_are_replaced_on_both_paths() {
    let setup = start_proxy(vec![start_backend().await]).await;
    // HTTP/1.1 takes the fast path, HTTP/1.0 the general one.
    for version in ["1.1", "1.0"] {
        let (status, seen) = http1(
            setup.proxy_addr,
            &format!("GET / HTTP/{version}\r\nHost: app.test\r\n{CLAIMS}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{seen}");
        let lines: Vec<&str> = seen.lines().collect();
        for wanted in [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: app.test",
        ] {
            assert_eq!(
                lines.iter().filter(|l| **l == wanted).count(),
                1,
                "HTTP/{version}: {wanted}: {seen}"
            );
        }
        for gone in [
            "10.0.0",
            "forwarded:",
            "x-real-ip",
            "evil",
            "https",
            "ssl",
            "x_",
        ] {
            assert!(!seen.contains(gone), "HTTP/{version}: {gone}: {seen}");
        }
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_extended_on_both_paths() {
    let config = ProxyConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..ProxyConfig::default()
    };
    let setup = start_proxy_with(vec![start_backend().await], config).await;
    for version in ["1.1", "1.0"] {
        let (status, seen) = http1(
            setup.proxy_addr,
            &format!("GET / HTTP/{version}\r\nHost: app.test\r\n{CLAIMS}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{seen}");
        for wanted in [
            "x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1\n",
            "forwarded: for=10.0.0.1, for=127.0.0.1\n",
            "x-real-ip: 10.0.0.1\n",
            "x-forwarded-proto: https\n",
            "x-forwarded-host: evil.test\n",
            "host: app.test\n",
        ] {
            assert_eq!(
                seen.matches(wanted).count(),
                1,
                "HTTP/{version}: {wanted}: {seen}"
            );
        }
        assert_eq!(seen.matches("x-forwarded-for").count(), 1, "{seen}");
        assert!(
            !seen.contains("10.0.0.3"),
            "a `_` spelling is nobody's: {seen}"
        );
        assert!(seen.contains("x-forwarded-ssl: on\n"), "{seen}");
    }
}

#[tokio::test]
async fn host_named_in_connection_still_reaches_the_service() {
    let setup = start_proxy(vec![start_backend().await]).await;
    for version in ["1.1", "1.0"] {
        let (status, seen) = http1(
            setup.proxy_addr,
            &format!("GET / HTTP/{version}\r\nHost: app.test\r\nConnection: host, close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{seen}");
        assert!(
            seen.lines().any(|l| l == "host: app.test"),
            "HTTP/{version}: {seen}"
        );
    }
}

#[tokio::test]
async fn the_edges_of_http_1_are_decided_for_1_0_and_1_1_alike() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let cases: [(&str, &str, u16); 8] = [
        // A fragment is no part of a request target (RFC 9112 §3.2).
        ("fragment", "GET /a#b HTTP/{v}\r\nHost: app.test\r\n", 400),
        (
            "a port that is no number",
            "GET / HTTP/{v}\r\nHost: app.test:abc\r\n",
            400,
        ),
        ("two ports", "GET / HTTP/{v}\r\nHost: app.test:1:2\r\n", 400),
        (
            "a space in Host",
            "GET / HTTP/{v}\r\nHost: app .test\r\n",
            400,
        ),
        (
            "a numeric port",
            "GET / HTTP/{v}\r\nHost: app.test:8080\r\n",
            200,
        ),
        (
            "an IPv6 literal",
            "GET / HTTP/{v}\r\nHost: [::1]:8080\r\n",
            404,
        ),
        // Another coding before chunked would reach the service unnamed
        // (HTTP/1.0 has no transfer codings: hyper refuses any).
        (
            "gzip, chunked",
            "POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n",
            501,
        ),
        (
            "a later minor version",
            "GET / HTTP/1.2\r\nHost: app.test\r\n",
            200,
        ),
    ];
    for (name, head, status) in cases {
        for v in ["1.1", "1.0"] {
            let mut raw = head.replace("{v}", v);
            raw.push_str("Connection: close\r\n\r\n");
            if raw.contains("chunked") {
                raw.push_str("3\r\nabc\r\n0\r\n\r\n");
            }
            let (got, body) = http1(setup.proxy_addr, &raw).await;
            assert_eq!(got, status, "{name}, HTTP/{v}: {body}");
        }
    }
}

#[tokio::test]
async fn an_upgrade_to_h2c_goes_on_as_a_plain_request() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (status, seen) = http1(
        setup.proxy_addr,
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "not switched to a tunnel: {seen}");
    for gone in ["upgrade", "http2-settings"] {
        assert!(!seen.contains(gone), "{gone} forwarded: {seen}");
    }
}

#[tokio::test]
async fn an_http2_preface_after_http1_requests_is_refused() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (got, _) = until_closed(
        setup.proxy_addr,
        "GET / HTTP/1.1\r\nHost: app.test\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = got.lines().filter(|l| l.starts_with("HTTP/")).collect();
    assert_eq!(statuses.len(), 2, "{got}");
    assert!(statuses[0].starts_with("HTTP/1.1 200"), "{got}");
    assert!(statuses[1].starts_with("HTTP/1.1 400"), "{got}");
    assert_eq!(
        setup.route_metrics.snapshot().total(),
        1,
        "one request served"
    );
}

#[tokio::test]
async fn declared_request_trailers_reach_the_service() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (status, trailers) = http1(
        setup.proxy_addr,
        "POST /trailers HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
         Trailer: x-checksum\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(trailers.contains("\"x-checksum\": \"42\""), "{trailers:?}");
}

#[tokio::test]
async fn a_204_goes_on_without_a_content_length() {
    let (backend, _) =
        start_raw_backend("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", None).await;
    let setup = start_proxy(vec![backend]).await;
    for version in ["1.1", "1.0"] {
        let (got, _) = until_closed(
            setup.proxy_addr,
            &format!("GET / HTTP/{version}\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(got.starts_with("HTTP/1.") && got.contains(" 204 "), "{got}");
        assert!(
            !got.to_lowercase().contains("content-length"),
            "HTTP/{version}: {got}"
        );
    }
}

#[tokio::test]
async fn a_response_whose_first_chunk_is_malformed_is_a_502() {
    for body in ["10000000000000000\r\n", "zz\r\nab\r\n0\r\n\r\n"] {
        let response = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let (backend, _) = start_raw_backend(Box::leak(response.into_boxed_str()), None).await;
        let setup = start_proxy(vec![backend]).await;
        let (status, text) = http1(
            setup.proxy_addr,
            "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 502, "{body:?}: {text}");
        assert_eq!(
            setup.route_metrics.snapshot().classes[4],
            1,
            "counted as a 5xx"
        );
    }
}

#[tokio::test]
async fn h2c_clients_are_served_and_their_authority_becomes_host() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let mut sender = h2c::<Empty<Bytes>>(setup.proxy_addr).await.0;
    let req = Request::get("http://app.test/h2")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(seen.contains("host: app.test\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: app.test\n"), "{seen}");
}

#[tokio::test]
async fn idempotent_request_is_retried_on_another_target_and_the_dead_one_ejected() {
    let setup = start_proxy(vec![dead_port(), start_backend().await]).await;
    for _ in 0..6 {
        let (status, body) = http1(
            setup.proxy_addr,
            "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        setup.targets[0].is_ejected(),
        "a refusing target is ejected"
    );
    assert_eq!(
        setup.route_metrics.snapshot().classes[1],
        6,
        "every request counted once, as a 2xx"
    );
}

#[tokio::test]
async fn request_with_a_body_is_not_retried() {
    let setup = start_proxy(vec![dead_port()]).await;
    let (status, _) = http1(
        setup.proxy_addr,
        "POST / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(setup.route_metrics.snapshot().classes[4], 1);
}

/// Asks the backend, through the proxy, to upgrade to its echo protocol;
/// returns the connection and the response head.
async fn upgrade_to_echo(proxy: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_until(&mut s, b"\r\n\r\n").await;
    (s, head)
}

/// Sends `what` through an echo tunnel; what came back.
async fn echo(s: &mut TcpStream, what: &[u8]) -> Vec<u8> {
    s.write_all(what).await.expect("write");
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    back
}

#[tokio::test]
async fn upgrade_is_passed_through_both_ways() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (mut s, head) = upgrade_to_echo(setup.proxy_addr).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert_eq!(echo(&mut s, b"ping").await, b"ping");
}

#[tokio::test]
async fn unknown_host_is_404_and_a_route_without_targets_503_after_the_hold() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (status, _) = http1(
        setup.proxy_addr,
        "GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    let started = std::time::Instant::now();
    let (status, body) = http1(
        setup.proxy_addr,
        "GET / HTTP/1.1\r\nHost: empty.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "held for the hold timeout first"
    );
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (backend, accepted) = start_counting_backend().await;
    let setup = start_proxy(vec![backend]).await;
    for i in 0..20 {
        let (status, body) = http1(
            setup.proxy_addr,
            &format!("GET /{i} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 sequential requests share one upstream connection"
    );
}

#[tokio::test]
async fn large_bodies_stream_through_both_ways_intact() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let stream = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for round in 0..3u8 {
        let payload: Bytes = (0..4 * 1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ round)
            .collect::<Vec<u8>>()
            .into();
        let req = Request::post("/echo")
            .header("host", "app.test")
            .body(Full::new(payload.clone()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), payload.len(), "round {round}");
        assert!(body == payload, "round {round}: body differs");
    }
}

/// A backend that answers every request head it reads with `response` as
/// it is; with `close_after`, it closes the connection that long after the
/// first answer (as servers do with idle keep-alive connections).
async fn start_raw_backend(
    response: &'static str,
    close_after: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        if let Some(linger) = close_after {
                            tokio::time::sleep(linger).await;
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

async fn start_closing_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    start_raw_backend(OK, Some(Duration::from_millis(30))).await
}

/// Sends `requests` on one connection with a hyper client (so responses
/// are framed by a real HTTP/1.1 client) and returns (status, body) each.
async fn on_one_connection(
    addr: SocketAddr,
    requests: Vec<Request<Full<Bytes>>>,
) -> Vec<(u16, String)> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut out = Vec::new();
    for req in requests {
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .expect("answer in time")
            .expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        out.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    out
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "app.test")
        .body(Full::default())
        .expect("request")
}

#[tokio::test]
async fn chunked_responses_pass_through_and_the_upstream_connection_is_reused() {
    let (backend, accepted) = start_raw_backend(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        None,
    )
    .await;
    let setup = start_proxy(vec![backend]).await;
    let answers = on_one_connection(setup.proxy_addr, vec![get("/a"), get("/b")]).await;
    assert_eq!(answers, vec![(200, "hello world".to_string()); 2]);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
}

#[tokio::test]
async fn a_response_ended_by_close_reaches_the_client_which_is_then_closed() {
    let (backend, _) =
        start_raw_backend("HTTP/1.1 200 OK\r\n\r\nall of it", Some(Duration::ZERO)).await;
    let setup = start_proxy(vec![backend]).await;
    // until_closed fails unless the proxy closes the client connection.
    let (out, _) = until_closed(setup.proxy_addr, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nall of it"), "{out}");
}

#[tokio::test]
async fn an_upstream_that_closes_after_answering_leaves_the_client_connection_open() {
    let (backend, accepted) = start_raw_backend(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        Some(Duration::ZERO),
    )
    .await;
    let setup = start_proxy(vec![backend]).await;
    let answers = on_one_connection(setup.proxy_addr, vec![get("/a"), get("/b")]).await;
    assert_eq!(answers, vec![(200, "ok".to_string()); 2]);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new upstream connection each"
    );
}

#[tokio::test]
async fn interim_responses_are_passed_on_before_the_final_one() {
    let (backend, _) = start_raw_backend(
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        None,
    )
    .await;
    let setup = start_proxy(vec![backend]).await;
    let raw = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let (out, _) = until_closed(setup.proxy_addr, raw).await;
    assert!(
        out.starts_with(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
}

#[tokio::test]
async fn a_malformed_answer_is_502_and_a_silent_upstream_504_after_the_response_timeout() {
    let (garbage, _) = start_raw_backend("SSH-2.0-OpenSSH_9.2\r\n\r\n", None).await;
    const GET: &str = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let setup = start_proxy(vec![garbage]).await;
    let (status, body) = http1(setup.proxy_addr, GET).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "app sent a malformed response\n")
    );

    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let setup = start_proxy(vec![silent_addr]).await;
    let started = std::time::Instant::now();
    let (status, body) = http1(setup.proxy_addr, GET).await;
    assert_eq!(
        (status, body.as_str()),
        (504, "app did not answer in time\n")
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        setup.route_metrics.snapshot().classes[4],
        1,
        "counted as a 5xx"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let mut pipeline = String::new();
    for (i, body) in ["first", "second", "third"].iter().enumerate() {
        let close = if i == 2 { "Connection: close\r\n" } else { "" };
        pipeline.push_str(&format!(
            "POST /echo HTTP/1.1\r\nHost: app.test\r\n{close}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    let (out, _) = until_closed(setup.proxy_addr, &pipeline).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    let at = |w: &str| out.find(&format!("\r\n\r\n{w}")).expect(w);
    assert!(
        at("first") < at("second") && at("second") < at("third"),
        "{out}"
    );
}

#[tokio::test]
async fn head_responses_carry_no_body_and_the_connection_goes_on() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let head = Request::head("/x")
        .header("host", "app.test")
        .body(Full::default())
        .expect("request");
    let answers = on_one_connection(setup.proxy_addr, vec![head, get("/y")]).await;
    assert_eq!(answers[0], (200, String::new()));
    assert_eq!(answers[1].0, 200);
    assert!(
        answers[1].1.contains("x-forwarded-host: app.test"),
        "{answers:?}"
    );
}

#[tokio::test]
async fn http10_and_chunked_uploads_take_the_general_path() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (status, seen) = http1(setup.proxy_addr, "GET / HTTP/1.0\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen.contains("x-forwarded-host: app.test\n"), "{seen}");
    let (status, echoed) = http1(
        setup.proxy_addr,
        "POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((status, echoed.as_str()), (200, "abcdefg"));
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_until_one_leaves() {
    let config = ProxyConfig {
        max_connections: 2,
        ..ProxyConfig::default()
    };
    let setup = start_proxy_with(vec![start_backend().await], config).await;
    let first = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    let _second = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    // The third gets through the kernel's backlog but is not served...
    let third = tokio::spawn(http1(
        setup.proxy_addr,
        "GET /third HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "served beyond the limit");
    assert_eq!(setup.proxy.connections(), (2, 2));
    // ...until a slot frees up.
    drop(first);
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a client left")
        .expect("task");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_head_that_drips_is_cut_off_after_the_head_timeout_however_slowly_it_comes() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let s = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    let (mut reader, mut writer) = s.into_split();
    // A byte every 100 ms: every read comes well within the client
    // timeout, the head never comes whole (slowloris).
    let drip = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Drip: "
            .iter()
            .cycle()
            .take(60)
        {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got))
        .await
        .expect("closed")
        .expect("read");
    let took = started.elapsed();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2_000),
        "cut off after {took:?}, head timeout 500 ms"
    );
    drip.abort();
    assert_eq!(
        setup.route_metrics.snapshot().total(),
        0,
        "nothing forwarded"
    );
}

#[tokio::test]
async fn an_http2_preface_that_stops_half_way_is_let_go_after_the_head_timeout() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (got, took) = until_closed(setup.proxy_addr, "PRI * HTTP/2.0\r\n").await;
    assert_eq!(got, "");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(setup.proxy.refused().slow_heads, 1);
}

#[tokio::test]
async fn a_connection_that_never_sends_is_closed_after_the_head_timeout() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (got, took) = until_closed(setup.proxy_addr, "").await;
    assert_eq!(got, "", "closed without a word");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(open_connections_become(&setup.proxy, 0).await);
}

/// A connection to `to` from the loopback address `source`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind");
    socket.connect(to).await.expect("connect")
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let config = ProxyConfig {
        max_connections: 20,
        max_connections_per_client: 5,
        ..ProxyConfig::default()
    };
    let setup = start_proxy_with(vec![start_backend().await], config).await;
    // Five idle connections from 127.0.0.2 take that address's share...
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.2", setup.proxy_addr).await);
    }
    assert!(open_connections_become(&setup.proxy, 5).await);
    // ...so its sixth is told so and closed,
    let mut sixth = connect_from("127.0.0.2", setup.proxy_addr).await;
    let (got, _) = send_until_closed(&mut sixth, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 429"), "{got}");
    // while another address is served at once.
    let started = std::time::Instant::now();
    let mut other = connect_from("127.0.0.3", setup.proxy_addr).await;
    let (got, _) = send_until_closed(
        &mut other,
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A connection that leaves makes room for the next from that address.
    held.pop();
    assert!(open_connections_become(&setup.proxy, 4).await);
    let mut again = connect_from("127.0.0.2", setup.proxy_addr).await;
    let (got, _) = send_until_closed(
        &mut again,
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn at_the_connection_limit_idle_connections_and_slow_heads_make_room() {
    let config = ProxyConfig {
        max_connections: 2,
        head_timeout: Duration::from_secs(30),
        ..ProxyConfig::default()
    };
    let setup = start_proxy_with(vec![start_backend().await], config).await;
    // One connection idle after a request (past the hold), one dripping a
    // head: the proxy is full.
    let mut idle = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut idle, b"\r\n\r\n").await;
    let mut dripping = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    dripping
        .write_all(b"GET / HTTP/1.1\r\nHo")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(setup.proxy.connections(), (2, 2));
    // A new client is served within about a second: both make room.
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        http1(
            setup.proxy_addr,
            "GET /fresh HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("served");
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(
        rest.iter().all(|b| *b != b'H'),
        "the idle one closed without a word"
    );
    let (got, _) = send_until_closed(&mut dripping, "").await;
    assert!(got.starts_with("HTTP/1.1 408"), "the slow head: {got}");
    let refused = setup.proxy.refused();
    assert_eq!(
        (refused.reclaimed, refused.slow_heads),
        (1, 1),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_tunnel_counts_against_the_connection_limit_until_it_closes() {
    let config = ProxyConfig {
        max_connections: 2,
        ..ProxyConfig::default()
    };
    let setup = start_proxy_with(vec![start_backend().await], config).await;
    let (mut s, head) = upgrade_to_echo(setup.proxy_addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut s, b"ping").await;
    // The HTTP connection's task has ended; the tunnel holds one permit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(setup.proxy.connections(), (1, 2));
    drop(s);
    assert!(
        open_connections_become(&setup.proxy, 0).await,
        "the tunnel's permit was not given back: {:?}",
        setup.proxy.connections()
    );
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_is_cut_off_after_the_client_timeout() {
    let (backend, _) = start_counting_backend().await;
    let setup = start_proxy(vec![backend]).await;
    let raw = "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc";
    let (_, took) = until_closed(setup.proxy_addr, raw).await;
    assert!(took >= Duration::from_millis(400));
    assert!(
        open_connections_become(&setup.proxy, 0).await,
        "the stalled connection is still counted"
    );
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_after_the_response_timeout() {
    // A body too large to be held back: it streams, so the client has the
    // head and the start when the upstream stalls.
    const STALLS: &str = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc";
    let (backend, _) = start_raw_backend(STALLS, Some(Duration::from_secs(30))).await;
    let setup = start_proxy(vec![backend]).await;
    let (got, took) =
        until_closed(setup.proxy_addr, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("\r\n\r\nabc"), "the part that came: {got}");
    assert!(took >= Duration::from_millis(900));

    // A small body is held back whole, so its stall is a clean 504.
    const SMALL: &str = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
    let (backend, _) = start_raw_backend(SMALL, Some(Duration::from_secs(30))).await;
    let setup = start_proxy(vec![backend]).await;
    let (status, body) = http1(
        setup.proxy_addr,
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (504, "app did not answer in time\n")
    );
}

#[tokio::test]
async fn on_the_general_path_a_head_that_stalls_is_cut_off_after_the_head_timeout() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let mut s = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    // HTTP/1.0 goes to hyper, which then serves the connection.
    s.write_all(
        b"POST /echo HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .expect("write");
    read_until(&mut s, b"\r\n\r\nhi").await;
    let (_, took) = send_until_closed(&mut s, "GET /next HTTP/1.0\r\nHo").await;
    assert!(took >= Duration::from_millis(400));
}

/// A request body that sends `abc` and then nothing, for ever.
struct StallingBody(bool);

impl hyper::body::Body for StallingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        let abc = hyper::body::Frame::data(Bytes::from_static(b"abc"));
        std::task::Poll::Ready(Some(Ok(abc)))
    }
}

/// An HTTP/2 (h2c) connection to the proxy, and the task driving it
/// (it ends when the connection does).
async fn h2c<B>(
    proxy: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

#[tokio::test]
async fn on_the_general_path_a_stalled_upload_is_cut_off_after_the_client_timeout() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let mut sender = h2c::<StallingBody>(setup.proxy_addr).await.0;
    let req = Request::post("http://app.test/echo")
        .body(StallingBody(false))
        .expect("request");
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("answered, not left hanging")
        .expect("response");
    assert_eq!(resp.status(), 408, "the client's doing, not the service's");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn on_the_general_path_a_stuck_upstream_body_fails_after_the_response_timeout() {
    const STALLS: &str = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
    let (backend, _) = start_raw_backend(STALLS, Some(Duration::from_secs(30))).await;
    let setup = start_proxy(vec![backend]).await;
    let mut sender = h2c::<StallingBody>(setup.proxy_addr).await.0;
    let req = Request::get("http://app.test/")
        .body(StallingBody(true))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("ended, not left hanging");
    assert!(
        body.is_err(),
        "the stream is reset, not ended as if complete"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn a_get_whose_upstream_dies_mid_body_is_answered_whole_by_another() {
    // An instance killed between writing its head and its body.
    const DIES: &str = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
    let (dying, _) = start_raw_backend(DIES, Some(Duration::ZERO)).await;
    let setup = start_proxy(vec![dying, start_backend().await]).await;
    // Round robin sends every other one to the dying instance first.
    for i in 0..4 {
        let (status, body) = http1(
            setup.proxy_addr,
            &format!("GET /{i} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            body.contains("host: app.test\n"),
            "not the whole answer: {body:?}"
        );
    }
}

#[tokio::test]
async fn a_quiet_client_hands_its_upstream_connection_back_after_the_hold() {
    let (backend, accepted) = start_counting_backend().await;
    let setup = start_proxy(vec![backend]).await;
    // Client A makes a request and then stays connected, quiet.
    let stream = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    let (mut quiet, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = quiet.send_request(get("/a")).await.expect("response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
    // Past the hold (300 ms), B gets the connection A no longer holds.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answers = on_one_connection(setup.proxy_addr, vec![get("/b")]).await;
    assert_eq!(answers[0].0, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "B reused the upstream connection A handed back"
    );
    // A is still served.
    let resp = quiet.send_request(get("/c")).await.expect("response");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_upstream_connection_a_departing_client_left_half_written_is_not_reused() {
    // A request whose body never comes in full: the upstream connection is
    // not handed to anyone else half-written.
    let (backend, accepted) = start_counting_backend().await;
    let setup = start_proxy(vec![backend]).await;
    let mut s = TcpStream::connect(setup.proxy_addr).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answers = on_one_connection(setup.proxy_addr, vec![get("/after")]).await;
    assert_eq!(answers[0].0, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the half-written connection was dropped"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_replaced_even_for_a_post() {
    let (backend, accepted) = start_closing_backend().await;
    let setup = start_proxy(vec![backend]).await;
    for _ in 0..3 {
        let (status, body) = http1(
            setup.proxy_addr,
            "POST / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        // Let the backend close the now idle upstream connection.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "one connection each");
    assert_eq!(setup.route_metrics.snapshot().classes[1], 3);
}

#[tokio::test]
async fn a_route_in_maintenance_answers_503_with_retry_after_and_forwards_nothing() {
    let (backend, accepted) = start_counting_backend().await;
    let setup = start_proxy(vec![backend]).await;
    let raw = "GET / HTTP/1.1\r\nHost: maint.test\r\nConnection: close\r\n\r\n";
    let (out, _) = until_closed(setup.proxy_addr, raw).await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("retry-after: 120\r\n"),
        "{out}"
    );
    assert!(out.contains("down for maintenance"), "{out}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
}

#[tokio::test]
async fn closing_gracefully_ends_each_connection_after_its_next_response() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let fast_path = "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc";
    // A chunked upload takes the connection to the general (hyper) path.
    let general_path = "POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut conns = Vec::new();
    for raw in [fast_path, general_path] {
        let mut s = TcpStream::connect(setup.proxy_addr).await.expect("connect");
        s.write_all(raw.as_bytes()).await.expect("write");
        let first = read_until(&mut s, b"abc").await;
        assert!(
            first.starts_with("HTTP/1.1 200")
                && !first.to_lowercase().contains("connection: close"),
            "{first}"
        );
        conns.push((s, raw));
    }
    assert!(open_connections_become(&setup.proxy, 2).await);
    setup.proxy.close_gracefully();
    for (mut s, raw) in conns {
        let (last, _) = send_until_closed(&mut s, raw).await;
        assert!(last.starts_with("HTTP/1.1 200"), "{last}");
        assert!(last.to_lowercase().contains("connection: close"), "{last}");
        assert!(
            last.ends_with("abc"),
            "the whole response, then the close: {last}"
        );
    }
    assert!(open_connections_become(&setup.proxy, 0).await);
}

#[tokio::test]
async fn closing_gracefully_tells_http2_clients_to_go_away() {
    let setup = start_proxy(vec![start_backend().await]).await;
    let (mut sender, conn) = h2c::<Empty<Bytes>>(setup.proxy_addr).await;
    let req = Request::get("http://app.test/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    assert_eq!(
        sender.send_request(req).await.expect("response").status(),
        200
    );
    setup.proxy.close_gracefully();
    // GOAWAY: the client's connection ends cleanly, and the proxy's count
    // of open connections falls to none.
    let ended = tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("the connection ends, not left open");
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert!(open_connections_become(&setup.proxy, 0).await);
}

/// A backend that answers `abc`, then after `gap` of silence `def` (a
/// `Content-Length: 6` body), like an event stream between two events.
async fn start_pausing_backend(gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc";
                if stream.write_all(head.as_bytes()).await.is_ok() {
                    tokio::time::sleep(gap).await;
                    let _ = stream.write_all(b"def").await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_route_with_a_longer_timeout_lets_its_upstream_pause_longer() {
    // The proxy waits 1 s by default; "patient.test" 3 s. The backend
    // pauses 1.5 s mid-body (a 4 KiB body would be held whole for a GET,
    // so this one streams: it is a POST).
    let setup = start_proxy(vec![
        start_pausing_backend(Duration::from_millis(1500)).await,
    ])
    .await;
    let post = |host: &str| {
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let (whole, _) = until_closed(setup.proxy_addr, &post("patient.test")).await;
    assert!(
        whole.starts_with("HTTP/1.1 200") && whole.ends_with("abcdef"),
        "{whole}"
    );
    let (cut, _) = until_closed(setup.proxy_addr, &post("app.test")).await;
    assert!(
        cut.ends_with("abc"),
        "cut off after the default wait: {cut}"
    );
    // The general path (h2c) keeps the same time.
    let mut sender = h2c::<Empty<Bytes>>(setup.proxy_addr).await.0;
    for (host, complete) in [("patient.test", true), ("app.test", false)] {
        let req = Request::post(format!("http://{host}/"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await;
        assert_eq!(body.is_ok(), complete, "{host}: {body:?}");
    }
}

/// Reads one response to a `GET /` (the backend echoes headers, with a
/// `content-length`) off a kept-alive connection: its head and body.
async fn read_response(s: &mut TcpStream) -> String {
    let head = read_until(s, b"\r\n\r\n").await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn handing_off_moves_keep_alive_connections_and_tunnels_to_another_proxy() {
    let backend = start_backend().await;
    let old = start_proxy(vec![backend]).await;
    let new = start_proxy(vec![backend]).await;
    let get = "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";

    // Idle between requests, on the fast path.
    let mut idle = TcpStream::connect(old.proxy_addr).await.expect("connect");
    idle.write_all(get.as_bytes()).await.expect("write");
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    // Half-way through sending a request head.
    let mut halfway = TcpStream::connect(old.proxy_addr).await.expect("connect");
    halfway
        .write_all(&get.as_bytes()[..20])
        .await
        .expect("write");
    // A tunnel, with bytes in flight both ways before and after.
    let (mut tunnel, head) = upgrade_to_echo(old.proxy_addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut tunnel, b"before").await, b"before");
    // A connection on the general path (after a chunked upload), which
    // cannot move.
    let mut general = TcpStream::connect(old.proxy_addr).await.expect("connect");
    let chunked = "POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    general.write_all(chunked.as_bytes()).await.expect("write");
    assert!(
        read_until(&mut general, b"abc")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(open_connections_become(&old.proxy, 4).await);
    let served_by_old = old.route_metrics.snapshot().total();

    let mut moved = old.proxy.hand_off();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(2), moved.recv())
            .await
            .expect("the idle connection and the tunnel move at once")
            .expect("a moved connection");
        kinds.push(matches!(m, tandem_proxy::Moved::Tunnel { .. }));
        new.proxy.adopt(m);
    }
    kinds.sort();
    assert_eq!(kinds, [false, true], "one client connection, one tunnel");

    // The rest of the half-sent request is answered by the old proxy,
    // without `close`, and the connection moves after it.
    halfway
        .write_all(&get.as_bytes()[20..])
        .await
        .expect("write");
    let answer = read_response(&mut halfway).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    let m = tokio::time::timeout(Duration::from_secs(2), moved.recv())
        .await
        .expect("moves after its response")
        .expect("a moved connection");
    assert!(matches!(m, tandem_proxy::Moved::Client { .. }));
    new.proxy.adopt(m);
    assert_eq!(old.route_metrics.snapshot().total(), served_by_old + 1);

    // The same client sockets, now served by the new proxy.
    let new_before = new.route_metrics.snapshot().total();
    for s in [&mut idle, &mut halfway] {
        s.write_all(get.as_bytes()).await.expect("write");
        let answer = read_response(s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.to_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert_eq!(new.route_metrics.snapshot().total(), new_before + 2);
    assert_eq!(echo(&mut tunnel, b"after").await, b"after");
    assert_eq!(
        old.route_metrics.snapshot().total(),
        served_by_old + 1,
        "none of it went through the old proxy"
    );
    assert!(
        open_connections_become(&new.proxy, 3).await,
        "{:?}",
        new.proxy.connections()
    );

    // The general path's connection is told to close after its next
    // response instead; then the old proxy has nothing left.
    let (last, _) = send_until_closed(&mut general, chunked).await;
    assert!(last.to_lowercase().contains("connection: close"), "{last}");
    assert!(open_connections_become(&old.proxy, 0).await);
    old.proxy.stop_handing_off();
    assert!(moved.recv().await.is_none(), "the channel ends");
}

/// A backend that upgrades one connection, reads what the client sends
/// until it closes its side, says so on the first channel, and when told
/// on the second answers `got <what it read>` and closes.
async fn start_late_answering_backend() -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (read_all, read_all_rx) = tokio::sync::oneshot::channel();
    let (answer_tx, answer) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_until(&mut stream, b"\r\n\r\n").await;
        let head =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("read");
        let _ = read_all.send(());
        let _ = answer.await;
        let mut reply = b"got ".to_vec();
        reply.extend_from_slice(&got);
        stream.write_all(&reply).await.expect("write");
    });
    (addr, read_all_rx, answer_tx)
}

#[tokio::test]
async fn a_tunnel_one_side_closed_moves_with_the_other_direction_still_open() {
    let (backend, read_all, answer) = start_late_answering_backend().await;
    let old = start_proxy(vec![backend]).await;
    let new = start_proxy(vec![backend]).await;
    let (mut tunnel, head) = upgrade_to_echo(old.proxy_addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tunnel.write_all(b"last").await.expect("write");
    tunnel.shutdown().await.expect("half-close");
    tokio::time::timeout(Duration::from_secs(2), read_all)
        .await
        .expect("the backend sees the close")
        .expect("signal");
    let mut moved = old.proxy.hand_off();
    let m = tokio::time::timeout(Duration::from_secs(2), moved.recv())
        .await
        .expect("moves")
        .expect("a moved connection");
    assert!(
        matches!(
            m,
            tandem_proxy::Moved::Tunnel {
                from_client: false,
                from_upstream: true,
                ..
            }
        ),
        "{m:?}"
    );
    new.proxy.adopt(m);
    assert!(open_connections_become(&old.proxy, 0).await);
    let _ = answer.send(());
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest))
        .await
        .expect("the tunnel ends")
        .expect("read");
    assert_eq!(String::from_utf8_lossy(&rest), "got last");
    assert!(open_connections_become(&new.proxy, 0).await);
}
