//! Header rules for forwarding: hop-by-hop headers are dropped in both
//! directions (RFC 9110 §7.6.1), `X-Forwarded-*` are set, and an upgrade
//! request keeps exactly the headers the upgrade needs.

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING,
    UPGRADE,
};

/// Hop-by-hop headers, plus `Upgrade` (restored on its own for upgrades),
/// as text: the one list, from which the `HeaderName`s below are made.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
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

const X_FORWARDED: [(&str, Forwarded); 3] = [
    ("x-forwarded-for", Forwarded::For),
    ("x-forwarded-proto", Forwarded::Proto),
    ("x-forwarded-host", Forwarded::Host),
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(X_FORWARDED[0].0);
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(X_FORWARDED[1].0);
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static(X_FORWARDED[2].0);

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

/// The `X-Forwarded-*` headers the proxy sets itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Forwarded {
    For,
    Proto,
    Host,
}

/// Which `X-Forwarded-*` header `name` is, in any case.
pub fn forwarded(name: &str) -> Option<Forwarded> {
    X_FORWARDED
        .iter()
        .find(|(known, _)| is(known, name))
        .map(|&(_, which)| which)
}

/// The `Upgrade` value when the message asks for a protocol upgrade
/// (`Connection: upgrade` plus `Upgrade: …`, as for WebSocket).
pub fn upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(UPGRADE)?;
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
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
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

/// Sets `X-Forwarded-For` (appended), `-Proto` and `-Host`, and `Host` to
/// `host`, the host the request was routed by: for HTTP/2 its
/// `:authority`, for an absolute-form request-target its authority, which
/// replaces any `Host` the client sent (RFC 9110 §7.2), so the service sees
/// the host its route was chosen by.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, host: &HeaderValue) {
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => {
            let ip = client_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    headers.insert(HOST, host.clone());
    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
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
    fn names_are_recognised_in_any_case() {
        assert!(is_hop_by_hop("Transfer-Encoding") && is_hop_by_hop("TE"));
        assert!(!is_hop_by_hop("te2") && !is_hop_by_hop("accept"));
        assert_eq!(forwarded("X-Forwarded-For"), Some(Forwarded::For));
        assert_eq!(forwarded("x-forwarded-host"), Some(Forwarded::Host));
        assert_eq!(forwarded("x-forwarded-port"), None);
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            &HeaderValue::from_static("127.0.0.1"),
            &HeaderValue::from_static("shop.test"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "shop.test");
        assert_eq!(h["host"], "shop.test");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
