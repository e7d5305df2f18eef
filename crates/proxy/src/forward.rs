//! Header rules for forwarding: hop-by-hop headers are dropped in both
//! directions (RFC 9110 §7.6.1), `X-Forwarded-*` are set, and an upgrade
//! request keeps exactly the headers the upgrade needs.

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

/// Hop-by-hop headers, plus `Upgrade` (restored on its own for upgrades),
/// as text: the one list, from which the `HeaderName`s below are made.
/// `Trailer` is not one: it announces the message's trailer fields end to
/// end (RFC 9110 §6.6.2), and hyper sends only the trailers it names.
/// `HTTP2-Settings` belongs to an h2c upgrade, which is never forwarded.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "http2-settings",
    "transfer-encoding",
    "upgrade",
];

static HOP_BY_HOP: [HeaderName; 9] = {
    let n = HOP_BY_HOP_NAMES;
    [
        HeaderName::from_static(n[0]),
        HeaderName::from_static(n[1]),
        HeaderName::from_static(n[2]),
        HeaderName::from_static(n[3]),
        HeaderName::from_static(n[4]),
        HeaderName::from_static(n[5]),
        HeaderName::from_static(n[6]),
        HeaderName::from_static(n[7]),
        HeaderName::from_static(n[8]),
    ]
};

const FORWARDING: [(&str, Forwarding); 11] = [
    ("x-forwarded-for", Forwarding::For),
    ("x-forwarded-proto", Forwarding::Proto),
    ("x-forwarded-host", Forwarding::Host),
    ("forwarded", Forwarding::Rfc7239),
    ("x-real-ip", Forwarding::RealIp),
    // What frameworks also read a client's scheme, port or address from.
    ("x-forwarded-ssl", Forwarding::Other),
    ("x-forwarded-scheme", Forwarding::Other),
    ("x-forwarded-port", Forwarding::Other),
    ("x-forwarded-prefix", Forwarding::Other),
    ("x-forwarded-server", Forwarding::Other),
    ("front-end-https", Forwarding::Other),
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(FORWARDING[0].0);
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(FORWARDING[1].0);
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static(FORWARDING[2].0);
static FORWARDED: HeaderName = HeaderName::from_static(FORWARDING[3].0);

/// `name` equals the lower-case `known` in any case; the length is
/// compared first, which rules out almost every header at once.
fn is(known: &str, name: &str) -> bool {
    known.len() == name.len() && known.eq_ignore_ascii_case(name)
}

/// Whether `name`, in any case, is one of the hop-by-hop headers (for
/// code that holds names as text, like the HTTP/1.1 fast path).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP_NAMES.iter().any(|known| is(known, name))
}

/// Whether a header a peer names in `Connection` is to be dropped at this
/// hop. The message's framing (`Content-Length`, `Transfer-Encoding`) and
/// its `Host` never are: the proxy frames each message it sends itself,
/// and a peer that could remove a length while its body is forwarded would
/// make the body the next request on a shared upstream connection (request
/// smuggling), or the next response the rest of this one.
pub fn droppable_by_connection(name: &str) -> bool {
    !(is("content-length", name) || is("transfer-encoding", name) || is("host", name))
}

/// The headers that tell a service where a request came from: set by the
/// proxy, and taken from a client only when it is a trusted proxy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Forwarding {
    For,
    Proto,
    Host,
    /// RFC 7239's `Forwarded`.
    Rfc7239,
    RealIp,
    /// Another header a framework reads the client's scheme, port or
    /// address from: dropped from clients, kept from trusted proxies.
    Other,
}

/// Which of the forwarding headers `name` is, in any case and with `_`
/// for `-` (CGI, WSGI and PHP servers read `X_Forwarded_For` as
/// `X-Forwarded-For`).
pub fn forwarded(name: &str) -> Option<Forwarding> {
    FORWARDING
        .iter()
        .find(|(known, _)| {
            known.len() == name.len()
                && known
                    .bytes()
                    .zip(name.bytes())
                    .all(|(k, n)| k == n.to_ascii_lowercase() || (k == b'-' && n == b'_'))
        })
        .map(|&(_, which)| which)
}

/// The client end of a connection, as the forwarding headers describe it
/// to a service.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its address as text (`X-Forwarded-For`).
    pub ip: String,
    /// One of the operator's trusted proxies (`--trusted-proxies`): the
    /// forwarding headers it sends are kept and extended. Anyone else's
    /// are replaced, so that a client cannot claim another address,
    /// scheme or host.
    pub trusted: bool,
    /// `http` or `https`: how the client reached the proxy.
    pub proto: &'static str,
}

impl Peer {
    /// The `for=` element this hop adds to a trusted `Forwarded` (RFC 7239
    /// §6: an IPv6 address bracketed and quoted).
    pub fn forwarded_element(&self) -> String {
        if self.ip.contains(':') {
            format!("for=\"[{}]\"", self.ip)
        } else {
            format!("for={}", self.ip)
        }
    }
}

/// Whether `host` is a `Host` value a request may carry: a name, an IPv4
/// address or a bracketed IPv6 address, and at most one `:port` of digits
/// (RFC 9110 §7.2, RFC 3986 §3.2.2). Anything else (`x:abc`, spaces, a
/// second colon, a userinfo) is refused, not guessed at.
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        None => return false,
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ok {
                    return false;
                }
                match &host[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&b""[..], port),
                    _ => return false,
                }
            }
            None => return false,
        },
        Some(_) => match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon + 1..]),
            None => (host, &b""[..]),
        },
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    name_ok && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// The `Upgrade` value when the message asks for a protocol upgrade
/// (`Connection: upgrade` plus `Upgrade: …`, as for WebSocket).
///
/// An upgrade to `h2c` is not one: it would turn the connection into a
/// tunnel to the service past the proxy's routing and headers (h2c
/// smuggling), so the request goes on as plain HTTP/1.1 without it.
pub fn upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(UPGRADE)?;
    let h2c = value.to_str().map_or(true, |v| {
        v.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    if h2c {
        return None;
    }
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| value.clone())
}

/// Removes hop-by-hop headers, including those named in `Connection`.
/// Most messages have none: one pass over the names finds that out without
/// hashing or parsing a name per candidate.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| droppable_by_connection(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Framed by its chunks, which hyper frames anew: a Content-Length it
    // carries as well is not its length (RFC 9112 §6.3).
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets the forwarding headers and `Host`. From a trusted proxy,
/// `X-Forwarded-For` (every line of it, joined) and `Forwarded` are
/// extended with this hop and its `X-Forwarded-Proto`, `-Host` and
/// `X-Real-IP` kept; from anyone else all five are replaced by what this
/// proxy knows (`X-Real-IP` and `Forwarded` dropped). `Host` becomes
/// `host`, the host the request was routed by: for HTTP/2 its
/// `:authority`, for an absolute-form request-target its authority, which
/// replaces any `Host` the client sent (RFC 9110 §7.2), so the service sees
/// the host its route was chosen by.
pub fn add_forwarded(headers: &mut HeaderMap, peer: &Peer, host: &HeaderValue) {
    let joined = |name: &HeaderName, headers: &HeaderMap| {
        let all: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    };
    // A client's claims go, and so does any `_` spelling (no proxy sends
    // one; servers that read it as the `-` one would believe it).
    let claims: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            forwarded(name.as_str()).is_some() && (!peer.trusted || name.as_str().contains('_'))
        })
        .cloned()
        .collect();
    for name in claims {
        headers.remove(name);
    }
    let (prior_for, prior_forwarded) = match peer.trusted {
        true => (
            joined(&X_FORWARDED_FOR, headers),
            joined(&FORWARDED, headers),
        ),
        false => {
            undeclare_forwarding_trailers(headers);
            (None, None)
        }
    };
    headers.remove(&FORWARDED);
    let xff = match prior_for {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.ip)).ok(),
        None => HeaderValue::from_str(&peer.ip).ok(),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if let Some(prior) = prior_forwarded {
        let extended = format!("{prior}, {}", peer.forwarded_element());
        if let Ok(v) = HeaderValue::from_str(&extended) {
            headers.insert(FORWARDED.clone(), v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = HeaderValue::from_static(peer.proto);
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    headers.insert(HOST, host.clone());
}

/// Takes forwarding headers out of the trailers a client declares
/// (`Trailer`), which hyper sends on: they would reach the service after
/// the body, past the replacement above.
fn undeclare_forwarding_trailers(headers: &mut HeaderMap) {
    let Some(declared) = headers.get(TRAILER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let kept: Vec<&str> = declared
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && forwarded(name).is_none())
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(value) if !kept.is_empty() => {
            headers.insert(TRAILER, value);
        }
        _ => {
            headers.remove(TRAILER);
        }
    }
}

/// Puts back the two headers an upgrade needs.
pub fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(upgrade(&h).is_none());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn a_content_length_beside_transfer_encoding_goes_with_it() {
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "alone, it stays");
    }

    #[test]
    fn keeps_upgrade_value() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade(&h), Some(HeaderValue::from_static("websocket")));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn an_upgrade_to_h2c_is_not_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        assert!(upgrade(&h).is_none());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn names_are_recognised_in_any_case() {
        assert!(is_hop_by_hop("Transfer-Encoding") && is_hop_by_hop("TE"));
        assert!(!is_hop_by_hop("te2") && !is_hop_by_hop("accept"));
        assert_eq!(forwarded("X-Forwarded-For"), Some(Forwarding::For));
        assert_eq!(forwarded("x-forwarded-host"), Some(Forwarding::Host));
        assert_eq!(forwarded("X_Forwarded_For"), Some(Forwarding::For));
        assert_eq!(forwarded("x-forwarded-port"), Some(Forwarding::Other));
        assert_eq!(forwarded("x-forwarded-fox"), None);
        assert_eq!(forwarded("accept"), None);
    }

    fn claimed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert("x_forwarded_for", HeaderValue::from_static("10.0.0.3"));
        h.insert("x-forwarded-ssl", HeaderValue::from_static("on"));
        h.insert(
            "trailer",
            HeaderValue::from_static("x-forwarded-for, x-checksum"),
        );
        h
    }

    fn peer(ip: &str, trusted: bool) -> Peer {
        Peer {
            ip: ip.into(),
            trusted,
            proto: "http",
        }
    }

    #[test]
    fn a_clients_forwarding_headers_are_replaced() {
        let mut h = claimed();
        add_forwarded(
            &mut h,
            &peer("127.0.0.1", false),
            &HeaderValue::from_static("shop.test"),
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "shop.test");
        assert_eq!(h["host"], "shop.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
        assert_eq!(
            h["trailer"], "x-checksum",
            "no forwarding header as a trailer"
        );
        assert_eq!(h.len(), 5, "{h:?}");
    }

    #[test]
    fn a_trusted_proxys_forwarding_headers_are_kept_and_extended() {
        let mut h = claimed();
        add_forwarded(
            &mut h,
            &peer("::1", true),
            &HeaderValue::from_static("shop.test"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, ::1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["forwarded"], "for=10.0.0.1, for=\"[::1]\"");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.test");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert_eq!(h["host"], "shop.test");
    }

    #[test]
    fn framing_and_host_are_never_dropped_for_being_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("content-length, Host, x-a"),
        );
        h.append(CONNECTION, HeaderValue::from_static("TRANSFER-ENCODING"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert(HOST, HeaderValue::from_static("shop.test"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[CONTENT_LENGTH], "12");
        assert_eq!(h[HOST], "shop.test");
    }

    #[test]
    fn a_host_is_a_name_or_address_and_a_port_of_digits() {
        for good in [
            "shop.test",
            "shop.test:8080",
            "shop.test.",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "xn--bcher-kva.test",
            "a_b",
            "shop.test:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "", "x:abc", "x:1:2", "x y", "u@x", "[::1", "[::1]x", "[]", "x/y", "x:123456",
            "[::1]:a", "x\0",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
