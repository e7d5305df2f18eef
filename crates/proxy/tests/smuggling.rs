//! Request smuggling (desync): requests whose framing a front end and a
//! back end could read differently (RFC 9112 §6.1, §6.3, §11.2), sent
//! through the proxy to a real hyper backend that records every request it
//! receives. Whatever the proxy does with each — forward it with one
//! unambiguous framing, or refuse it with a 400 and close — the request
//! hidden inside must never reach the backend as a request of its own, and
//! the next client must get its own answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tandem_proxy::{Proxy, ProxyConfig, Route, RouteTable, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What is hidden in each attack.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";

/// A backend that records `METHOD path host=H (body bytes)` for every
/// request it gets, on connections kept alive, and answers with the path.
async fn start_recording_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        let len = body.as_ref().map(Bytes::len).unwrap_or(0);
                        let path = parts.uri.path().to_owned();
                        let host = parts
                            .headers
                            .get_all("host")
                            .iter()
                            .fold(String::new(), |all, h| all + h.to_str().unwrap_or("?"));
                        log.lock()
                            .expect("log")
                            .push(format!("{} {path} host={host} ({len})", parts.method));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The proxy with one route, `app.test`, to `backend`; its address and the
/// route's request counters.
async fn start_proxy(backend: SocketAddr) -> (SocketAddr, Arc<tandem_proxy::RequestMetrics>) {
    let metrics = Arc::new(tandem_proxy::RequestMetrics::default());
    let proxy = Proxy::new(ProxyConfig {
        client_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    });
    proxy.publish(RouteTable::new([Route {
        service: "app".into(),
        host: "app.test".into(),
        path_prefix: "/".into(),
        // One target, so every request shares the upstream connections a
        // smuggled request would poison.
        targets: vec![Target::new("t0".into(), backend)],
        cursor: Arc::default(),
        metrics: Arc::clone(&metrics),
        maintenance: None,
        timeout: None,
        https_only: false,
    }]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { proxy.serve(listener, std::future::pending()).await });
    (addr, metrics)
}

/// Writes `raw` on a fresh connection and reads what comes back until the
/// proxy closes the connection or is quiet for a while.
async fn send(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A POST with `head` (header lines, each ending in CRLF) and `body`.
fn post(head: &str, body: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: app.test\r\n{head}\r\n{body}").into_bytes()
}

/// What the proxy must answer to an attack.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// 400 (501 for a transfer coding it does not take), nothing
    /// forwarded.
    Refused,
    /// One 200: forwarded once, with one framing.
    Forwarded,
    /// Either, as the general path's HTTP parser (hyper) decides.
    Either,
}

/// Every attack, by name: the bytes a client sends and what must come of
/// them.
fn attacks() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let n = HIDDEN.len();
    // The chunked body "0\r\n\r\n" with HIDDEN behind it: a reader by
    // Content-Length takes HIDDEN as body, a reader by chunks as the next
    // request.
    let cl_te_body = format!("0\r\n\r\n{HIDDEN}");
    let cl_te = |te: &str| {
        let head = format!("Content-Length: {}\r\n{te}", cl_te_body.len());
        post(&head, &cl_te_body)
    };
    // One chunk holding HIDDEN: a reader by chunks takes it as body, a
    // reader by Content-Length: 4 as the next request after "2c\r\n".
    let te_cl_body = format!("{n:x}\r\n{HIDDEN}\r\n0\r\n\r\n");
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    let with_cl = |head: &str| post(&format!("{head}\r\n"), HIDDEN);
    let raw = |text: String| text.into_bytes();
    vec![
        ("CL.TE", cl_te("Transfer-Encoding: chunked\r\n"), Either),
        (
            "TE.CL",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                &te_cl_body,
            ),
            Either,
        ),
        (
            "TE.CL, TE first",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &te_cl_body,
            ),
            Either,
        ),
        (
            "TE: xchunked",
            cl_te("Transfer-Encoding: xchunked\r\n"),
            Refused,
        ),
        (
            "TE: chunked, then TE: x",
            cl_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"),
            Refused,
        ),
        (
            "TE: x, then TE: chunked",
            cl_te("Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n"),
            Either,
        ),
        (
            "TE: identity, chunked",
            cl_te("Transfer-Encoding: identity, chunked\r\n"),
            Either,
        ),
        // A peer naming the framing in `Connection` must not make the proxy
        // drop it while forwarding the body: the body would be the next
        // request on a shared upstream connection.
        (
            "Connection: content-length",
            with_cl(&format!(
                "Connection: content-length\r\nContent-Length: {n}"
            )),
            Forwarded,
        ),
        (
            "Connection: keep-alive, CONTENT-LENGTH",
            with_cl(&format!(
                "Connection: keep-alive, CONTENT-LENGTH\r\nContent-Length: {n}"
            )),
            Forwarded,
        ),
        (
            "content-length named in a second Connection",
            with_cl(&format!(
                "Connection: keep-alive\r\nContent-Length: {n}\r\nConnection: content-length"
            )),
            Forwarded,
        ),
        (
            "Connection: transfer-encoding",
            post(
                "Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n",
                &format!("{n:x}\r\n{HIDDEN}\r\n0\r\n\r\n"),
            ),
            Forwarded,
        ),
        (
            "TE: gzip, chunked",
            cl_te("Transfer-Encoding: gzip, chunked\r\n"),
            Refused,
        ),
        (
            "TE: chunked on two lines",
            cl_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            Refused,
        ),
        (
            "TE: Chunked",
            cl_te("Transfer-Encoding: Chunked\r\n"),
            Either,
        ),
        (
            "TE after a tab",
            cl_te("Transfer-Encoding:\tchunked\r\n"),
            Either,
        ),
        (
            "TE after a vertical tab",
            cl_te("Transfer-Encoding:\x0bchunked\r\n"),
            Refused,
        ),
        (
            "TE, space before the colon",
            cl_te("Transfer-Encoding : chunked\r\n"),
            Refused,
        ),
        (
            "TE folded onto a header",
            cl_te("X-A: b\r\n Transfer-Encoding: chunked\r\n"),
            Refused,
        ),
        (
            "TE's value folded",
            cl_te("Transfer-Encoding:\r\n chunked\r\n"),
            Refused,
        ),
        (
            "TE's line ending in a bare LF",
            cl_te("Transfer-Encoding: chunked\n"),
            Either,
        ),
        (
            "TE behind a NUL",
            cl_te("X-A: b\0\r\nTransfer-Encoding: chunked\r\n"),
            Refused,
        ),
        (
            "CL: 0, then CL: n",
            with_cl(&format!("Content-Length: 0\r\nContent-Length: {n}")),
            Refused,
        ),
        (
            "CL: n, then CL: 0",
            with_cl(&format!("Content-Length: {n}\r\nContent-Length: 0")),
            Refused,
        ),
        (
            "CL: n, 0",
            with_cl(&format!("Content-Length: {n}, 0")),
            Refused,
        ),
        ("CL: +n", with_cl(&format!("Content-Length: +{n}")), Refused),
        (
            "CL in hex",
            with_cl(&format!("Content-Length: 0x{n:x}")),
            Refused,
        ),
        (
            "CL with trailing junk",
            with_cl(&format!("Content-Length: {n}x")),
            Refused,
        ),
        (
            "CL past u64",
            with_cl("Content-Length: 18446744073709551617"),
            Refused,
        ),
        (
            "bare LF line ends",
            raw(format!(
                "POST / HTTP/1.1\nHost: app.test\nContent-Length: {n}\n\n{HIDDEN}"
            )),
            Either,
        ),
        (
            "a GET with a body",
            raw(format!(
                "GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length: {n}\r\n\r\n{HIDDEN}"
            )),
            Forwarded,
        ),
        (
            "chunk size past u64",
            chunked(&format!("1000000000000000{n:x}\r\n{HIDDEN}\r\n0\r\n\r\n")),
            Refused,
        ),
        (
            "chunk size in 0x",
            chunked(&format!("0x{n:x}\r\n{HIDDEN}\r\n0\r\n\r\n")),
            Refused,
        ),
        (
            "chunk extension ending in a bare LF",
            chunked(&format!("0;x\n\r\n{HIDDEN}")),
            Refused,
        ),
        (
            "last chunk without its CRLF",
            chunked(&format!("0\r\n{HIDDEN}")),
            Refused,
        ),
        (
            "HTTP/1.0 with TE: chunked",
            raw(format!(
                "POST / HTTP/1.0\r\nHost: app.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{cl_te_body}",
                cl_te_body.len()
            )),
            Refused,
        ),
        (
            "two Hosts",
            raw(format!(
                "GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\nContent-Length: {n}\r\n\r\n{HIDDEN}"
            )),
            Refused,
        ),
    ]
}

#[tokio::test]
async fn no_hidden_request_reaches_the_backend_and_no_answer_goes_to_the_wrong_client() {
    let (backend, seen) = start_recording_backend().await;
    let (proxy, metrics) = start_proxy(backend).await;
    let mut report = Vec::new();
    for (name, raw, expect) in attacks() {
        seen.lock().expect("log").clear();
        let answer = send(proxy, &raw).await;
        // A client after the attack, on a connection of its own: it must
        // get the answer to its own request.
        let victim = send(
            proxy,
            b"GET /victim HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let backend_saw = seen.lock().expect("log").clone();
        let status = answer.lines().next().unwrap_or("(nothing)").to_owned();
        report.push(format!("{name}: {status} -> backend {backend_saw:?}"));
        assert!(
            !backend_saw.iter().any(|r| r.contains("/smuggled")),
            "{name}: the hidden request reached the backend: {backend_saw:?}\nanswer: {answer}"
        );
        assert!(
            victim.starts_with("HTTP/1.1 200") && victim.ends_with("/victim"),
            "{name}: the next client got {victim:?}"
        );
        // Refused, or forwarded once with the whole of it as its body.
        let refused = (status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.1 501"))
            && backend_saw.len() == 1;
        let forwarded = status.starts_with("HTTP/1.1 200")
            && answer.matches("HTTP/1.1 ").count() == 1
            && backend_saw.len() == 2;
        let ok = match expect {
            Expect::Refused => refused,
            Expect::Forwarded => forwarded,
            Expect::Either => refused || forwarded,
        };
        assert!(
            ok,
            "{name}: expected {expect:?}, answered {answer:?}, backend saw {backend_saw:?}"
        );
    }
    eprintln!("{}", report.join("\n"));
    // What the clients got wrong does not count against the service.
    let counted = metrics.snapshot().classes;
    assert_eq!(counted[4], 0, "no 5xx: {counted:?}");
}

#[tokio::test]
async fn an_absolute_form_request_goes_by_its_authority_and_the_service_sees_that_host() {
    let (backend, seen) = start_recording_backend().await;
    let (proxy, _) = start_proxy(backend).await;
    let answer = send(
        proxy,
        b"GET http://app.test/abs HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        *seen.lock().expect("log"),
        ["GET /abs host=app.test (0)"],
        "routed by app.test, so the service is told app.test"
    );
    let elsewhere = send(
        proxy,
        b"GET http://other.test/abs HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(elsewhere.starts_with("HTTP/1.1 404"), "{elsewhere}");
    assert_eq!(seen.lock().expect("log").len(), 1, "nothing more forwarded");
}

/// What a backend hides behind a response of its own: a second response
/// that a proxy reading the first one's framing differently would give to
/// the next request on that connection — another client's.
const HIDDEN_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";

/// A raw backend: answers a request for `/first` with `first` and any
/// other with `victim` (`Content-Length` framed). With `later`, what
/// `first` hides is written 50 ms after the rest, so that it is not read
/// with the response but waits in the socket.
async fn start_lying_backend(first: String, later: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let first = first.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    // The requests here have no bodies: one per head.
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        let line = String::from_utf8_lossy(&head);
                        let answer = match line.split(' ').nth(1) {
                            Some("/first") => first.clone(),
                            _ => "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nvictim".to_owned(),
                        };
                        let (now, then) = match answer.find(HIDDEN_RESPONSE) {
                            Some(at) if later => answer.split_at(at),
                            _ => (answer.as_str(), ""),
                        };
                        if stream.write_all(now.as_bytes()).await.is_err() {
                            return;
                        }
                        if !then.is_empty() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if stream.write_all(then.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_response_framed_two_ways_never_reaches_another_request() {
    let hidden_len = HIDDEN_RESPONSE.len();
    let te_body = format!("0\r\n\r\n{HIDDEN_RESPONSE}");
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "CL.TE",
            "GET",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{te_body}",
                te_body.len()
            ),
        ),
        (
            "two Content-Lengths",
            "GET",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: {hidden_len}\r\n\r\n{HIDDEN_RESPONSE}"
            ),
        ),
        (
            "Content-Length with junk",
            "GET",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 0x\r\n\r\n{HIDDEN_RESPONSE}"),
        ),
        (
            "a body after a HEAD's answer",
            "HEAD",
            format!("HTTP/1.1 200 OK\r\nContent-Length: {hidden_len}\r\n\r\n{HIDDEN_RESPONSE}"),
        ),
        (
            "a body after a 204",
            "GET",
            format!("HTTP/1.1 204 No Content\r\n\r\n{HIDDEN_RESPONSE}"),
        ),
        (
            "a body after a 304",
            "GET",
            format!("HTTP/1.1 304 Not Modified\r\n\r\n{HIDDEN_RESPONSE}"),
        ),
        (
            "Connection: content-length",
            "GET",
            format!(
                "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok{HIDDEN_RESPONSE}"
            ),
        ),
        (
            "Connection: transfer-encoding",
            "GET",
            format!(
                "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{HIDDEN_RESPONSE}"
            ),
        ),
        (
            "more than its Content-Length",
            "GET",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok{HIDDEN_RESPONSE}"),
        ),
    ];
    let mut report = Vec::new();
    // The hidden part also comes late for the one response whose own
    // framing is ambiguous. After a response framed one way only, a
    // response nobody asked for that comes late cannot be told from the
    // answer to the next request, by any proxy.
    let variants = cases.iter().flat_map(|case| {
        let late = (case.0 == "CL.TE").then_some((case, true));
        std::iter::once((case, false)).chain(late)
    });
    // HTTP/1.1 takes the fast path; HTTP/1.0 the general one (hyper's
    // client upstream, with its own pool), which HTTP/2 clients take too.
    let variants = variants.flat_map(|v| [(v, "1.1"), (v, "1.0")]);
    for (((name, method, first), later), version) in variants {
        let backend = start_lying_backend(first.clone(), later).await;
        let (proxy, _) = start_proxy(backend).await;
        // With a request of its own behind it, on the same connection.
        let request = format!(
            "{method} /first HTTP/{version}\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n\
             GET /own HTTP/{version}\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        );
        let answer = send(proxy, request.as_bytes()).await;
        // Until what was hidden has come.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let name = format!(
            "{name}{}, HTTP/{version}",
            if later { ", hidden part later" } else { "" }
        );
        // The next clients, each on a connection of its own, so that the
        // proxy may give them the first request's upstream connection.
        for _ in 0..3 {
            let next =
                format!("GET /next HTTP/{version}\r\nHost: app.test\r\nConnection: close\r\n\r\n");
            let next = send(proxy, next.as_bytes()).await;
            assert!(
                !next.contains("smuggled"),
                "{name}: a later client got the hidden response: {next:?}"
            );
            assert!(
                next.starts_with("HTTP/1.") && next.contains(" 200 ") && next.ends_with("victim"),
                "{name}: a later client got {next:?}"
            );
        }
        let status = answer.lines().next().unwrap_or("(nothing)").to_owned();
        report.push(format!("{name}: the first client got {status}"));
        // Its own second request got its own answer, if any: a proxy that
        // gave up on the first closes the connection.
        let bodies = read_as_a_client(&answer, *method == "HEAD");
        let own = match bodies.as_slice() {
            [_] => true,
            [_, second] => second == "victim",
            _ => false,
        };
        assert!(
            own && !bodies
                .iter()
                .any(|b| b.contains("HTTP/1.") || b.contains("smuggled")),
            "{name}: the first client got {answer:?}, which it reads as {bodies:?}"
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// The bodies of the responses in `answer`, read one after another as a
/// client reads them: by `Content-Length`, by chunks, or to the end. The
/// first answers a HEAD when `head`.
fn read_as_a_client(answer: &str, head: bool) -> Vec<String> {
    let mut rest = answer.as_bytes();
    let mut bodies = Vec::new();
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(rest) else {
            bodies.push(format!("(unreadable: {:?})", String::from_utf8_lossy(rest)));
            break;
        };
        let value = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let status = resp.code.unwrap_or(0);
        let after = &rest[head_len..];
        let no_body = (head && bodies.is_empty()) || status == 204 || status == 304;
        let (body, used) = if no_body {
            (Vec::new(), 0)
        } else if value("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                let Some(eol) = after[at..].windows(2).position(|w| w == b"\r\n") else {
                    break (body, after.len());
                };
                let size = std::str::from_utf8(&after[at..at + eol])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                    .unwrap_or(0);
                at += eol + 2;
                if size == 0 {
                    break (body, (at + 2).min(after.len()));
                }
                let end = (at + size).min(after.len());
                body.extend_from_slice(&after[at..end]);
                at = (end + 2).min(after.len());
            }
        } else if let Some(n) = value("content-length").and_then(|n| n.parse::<usize>().ok()) {
            let n = n.min(after.len());
            (after[..n].to_vec(), n)
        } else {
            (after.to_vec(), after.len())
        };
        bodies.push(String::from_utf8_lossy(&body).into_owned());
        rest = &after[used..];
    }
    bodies
}

#[tokio::test]
async fn an_oversized_head_is_refused_and_nothing_forwarded() {
    let (backend, seen) = start_recording_backend().await;
    let (proxy, _) = start_proxy(backend).await;
    let big_value = "x".repeat(1024 * 1024);
    let too_long = format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big_value}\r\n\r\n");
    let too_many = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect::<String>()
    );
    for (name, raw) in [("a 1 MiB header", too_long), ("200 headers", too_many)] {
        let answer = send(proxy, raw.as_bytes()).await;
        eprintln!("{name}: {:?}", answer.lines().next());
        assert!(
            answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"),
            "{name}: {answer:?}"
        );
    }
    assert!(seen.lock().expect("log").is_empty(), "nothing forwarded");
}
