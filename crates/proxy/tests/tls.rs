//! HTTPS: the proxy terminating TLS on a real socket, with certificates
//! made by a test CA, for clients that check them against that CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tandem_proxy::tls::{Certificates, certified_key, server_config};
use tandem_proxy::{Proxy, ProxyConfig, Route, RouteTable, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

mod support;
use support::start_backend;

/// A CA and certificates it signed for each of `hosts`.
struct Pki {
    ca_pem: String,
    leaves: Vec<(String, String, String)>,
}

fn pki(hosts: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaves = hosts
        .iter()
        .map(|host| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
            let cert = params.signed_by(&key, &issuer).expect("leaf");
            (host.to_string(), cert.pem(), key.serialize_pem())
        })
        .collect();
    Pki {
        ca_pem: ca_cert.pem(),
        leaves,
    }
}

struct Setup {
    plain: SocketAddr,
    https: SocketAddr,
    proxy: Proxy,
    ca_pem: String,
}

/// The proxy on a plain and a TLS port with routes `shop.test` (HTTPS
/// only) and `api.test` to one backend, each with its certificate.
async fn start() -> Setup {
    let backend = start_backend().await;
    let pki = pki(&["shop.test", "api.test"]);
    let certificates = Arc::new(Certificates::default());
    for (host, chain, key) in &pki.leaves {
        let key = certified_key(chain.as_bytes(), key.as_bytes()).expect("pair");
        certificates.set(host, key);
    }
    let proxy = Proxy::new(ProxyConfig {
        head_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    });
    let target = Target::new("t0".into(), backend);
    let route = |host: &str, https_only: bool| Route {
        service: host.split('.').next().unwrap_or_default().into(),
        host: host.into(),
        path_prefix: "/".into(),
        targets: vec![Arc::clone(&target)],
        cursor: Arc::default(),
        metrics: Arc::default(),
        maintenance: None,
        timeout: None,
        https_only,
    };
    proxy.publish(RouteTable::new([
        route("shop.test", true),
        route("api.test", false),
    ]));
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let https = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (plain_addr, https_addr) = (
        plain.local_addr().expect("addr"),
        https.local_addr().expect("addr"),
    );
    let serving = proxy.clone();
    tokio::spawn(async move { serving.serve(plain, std::future::pending()).await });
    let serving = proxy.clone();
    let config = server_config(certificates);
    tokio::spawn(async move {
        serving
            .serve_tls(https, config, std::future::pending())
            .await
    });
    Setup {
        plain: plain_addr,
        https: https_addr,
        proxy,
        ca_pem: pki.ca_pem,
    }
}

/// A TLS connection to `addr` asking for `host` by SNI and offering `alpn`,
/// that trusts only `ca_pem`.
async fn try_connect(
    addr: SocketAddr,
    host: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca");
    roots.add(ca).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(host.to_owned()).expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

/// The same, which has to succeed: a certificate the CA signed for `host`.
async fn connect(
    addr: SocketAddr,
    host: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    try_connect(addr, host, ca_pem, alpn)
        .await
        .expect("handshake with a certificate the CA signed for the host")
}

/// Writes `raw` and reads until the server closes.
async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S, raw: &str) -> String {
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn two_hosts_get_their_own_certificates_by_sni_and_the_service_hears_https() {
    let setup = start().await;
    for host in ["shop.test", "api.test"] {
        let tls = connect(setup.https, host, &setup.ca_pem, &[b"http/1.1"]).await;
        let got = exchange(
            tls,
            &format!("GET /x?y=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{host}: {got}");
        assert!(got.contains("x-forwarded-proto: https\n"), "{host}: {got}");
        assert!(
            got.lines().any(|l| l == format!("host: {host}")),
            "{host}: {got}"
        );
    }
}

#[tokio::test]
async fn a_host_without_a_certificate_fails_the_handshake() {
    let setup = start().await;
    // The server refuses (an alert), rather than showing a certificate of
    // another host, which the client would refuse itself.
    let shaken = try_connect(setup.https, "other.test", &setup.ca_pem, &[]).await;
    let error = shaken.expect_err("no handshake").to_string();
    assert!(error.contains("received fatal alert"), "{error}");
    // The listener serves on.
    let tls = connect(setup.https, "api.test", &setup.ca_pem, &[]).await;
    let got = exchange(
        tls,
        "GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn http2_is_spoken_over_tls_when_alpn_chooses_it() {
    let setup = start().await;
    let tls = connect(
        setup.https,
        "api.test",
        &setup.ca_pem,
        &[b"h2", b"http/1.1"],
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("https://api.test/h2")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        assert!(body.contains("host: api.test\n"), "{body}");
    }
}

#[tokio::test]
async fn an_https_only_route_redirects_plain_http_and_sends_hsts_over_https() {
    let setup = start().await;
    let plain = TcpStream::connect(setup.plain).await.expect("connect");
    let got = exchange(
        plain,
        "GET /cart?item=7 HTTP/1.1\r\nHost: shop.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 308"), "{got}");
    let location = format!(
        "location: https://shop.test:{}/cart?item=7\r\n",
        setup.https.port()
    );
    assert!(got.contains(&location), "{got}");
    // The general path (HTTP/1.0) redirects the same way.
    let plain = TcpStream::connect(setup.plain).await.expect("connect");
    let got = exchange(plain, "GET /cart HTTP/1.0\r\nHost: shop.test\r\n\r\n").await;
    assert!(got.contains(" 308 "), "{got}");
    assert!(
        got.to_lowercase().contains("location: https://shop.test:"),
        "{got}"
    );

    let tls = connect(setup.https, "shop.test", &setup.ca_pem, &[]).await;
    let got = exchange(
        tls,
        "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.contains("strict-transport-security: max-age=31536000\r\n"),
        "{got}"
    );
    // A route that is not HTTPS only is served on plain HTTP, and gets no
    // HSTS over HTTPS.
    let plain = TcpStream::connect(setup.plain).await.expect("connect");
    let got = exchange(
        plain,
        "GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let tls = connect(setup.https, "api.test", &setup.ca_pem, &[]).await;
    let got = exchange(
        tls,
        "GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!got.contains("strict-transport-security"), "{got}");
}

#[tokio::test]
async fn acme_challenges_are_answered_on_plain_http_while_they_are_set() {
    let setup = start().await;
    let ask = || async {
        let plain = TcpStream::connect(setup.plain).await.expect("connect");
        exchange(
            plain,
            "GET /.well-known/acme-challenge/tok-1 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
        )
        .await
    };
    setup.proxy.set_challenge("tok-1", Some("tok-1.thumbprint"));
    let got = ask().await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("\r\n\r\ntok-1.thumbprint"), "{got}");
    setup.proxy.set_challenge("tok-1", None);
    let got = ask().await;
    assert!(
        got.starts_with("HTTP/1.1 308"),
        "back to the route's own answer: {got}"
    );
}

#[tokio::test]
async fn a_tunnel_runs_over_tls() {
    let setup = start().await;
    let mut tls = connect(setup.https, "api.test", &setup.ca_pem, &[b"http/1.1"]).await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.expect("read");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tls.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed))
        .await
        .expect("echoed in time")
        .expect("read");
    assert_eq!(&echoed, b"ping");
}

#[tokio::test]
async fn a_tls_client_silent_after_its_handshake_is_let_go_after_the_head_timeout() {
    let setup = start().await;
    let started = std::time::Instant::now();
    let mut tls = connect(setup.https, "api.test", &setup.ca_pem, &[b"http/1.1"]).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), tls.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "still open after 8 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(5),
        "closed after {took:?}, head timeout 2 s"
    );
    assert_eq!(setup.proxy.refused().slow_heads, 1);
}
