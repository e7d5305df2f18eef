//! Journal events and their hash chain.
//!
//! An event's hash is the SHA-256 of the RFC 8785 (JCS) canonical JSON of
//! the object `{actor, kind, payload, prev, seq, subject, ts}`; `prev` is the
//! previous event's hash (64 zeros for the first event). Any verifier that can
//! canonicalise JSON recomputes the same bytes. This encoding is frozen: signed
//! checkpoints will sign `(seq, hash)` pairs of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event before it is appended: the caller's part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// `user:<name>`, `token:<id>` or `system:<component>`.
    pub actor: String,
    /// Dotted, past tense: `release.started`, `service.created`, …
    pub kind: String,
    /// Ids the event is about: `service`, `release`, `run`, `incident`.
    pub subject: BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

impl NewEvent {
    pub fn new(actor: impl Into<String>, kind: impl Into<String>) -> Self {
        NewEvent {
            actor: actor.into(),
            kind: kind.into(),
            subject: BTreeMap::new(),
            payload: serde_json::Value::Object(Default::default()),
        }
    }
    pub fn subject(mut self, key: &str, id: impl Into<String>) -> Self {
        self.subject.insert(key.into(), id.into());
        self
    }
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = payload;
        self
    }
}

/// An event as it stands in the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// UTC, RFC 3339 with milliseconds: `2026-11-26T07:11:43.123Z`.
    pub ts: String,
    pub actor: String,
    pub kind: String,
    pub subject: BTreeMap<String, String>,
    pub payload: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

/// The bytes an event's hash covers.
pub fn canonical_bytes(
    seq: u64,
    ts: &str,
    new: &NewEvent,
    prev: &str,
) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::json!({
        "actor": new.actor,
        "kind": new.kind,
        "payload": new.payload,
        "prev": prev,
        "seq": seq,
        "subject": new.subject,
        "ts": ts,
    });
    serde_json_canonicalizer::to_vec(&body)
}

/// The bytes an event's hash covers, from the event as it stands: the
/// same as [`canonical_bytes`] without copying the event (verifying a
/// million events is mostly this). The top-level keys are ASCII, so their
/// RFC 8785 order is fixed; each value is canonicalised on its own.
pub fn event_bytes(e: &Event) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut field = |key: &str, value: &dyn erased::Canon| -> Result<(), serde_json::Error> {
        out.push(if out.is_empty() { b'{' } else { b',' });
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        value.write(&mut out)
    };
    field("actor", &e.actor.as_str())?;
    field("kind", &e.kind.as_str())?;
    field("payload", &&e.payload)?;
    field("prev", &e.prev.as_str())?;
    field("seq", &e.seq)?;
    field("subject", &&e.subject)?;
    field("ts", &e.ts.as_str())?;
    out.push(b'}');
    Ok(out)
}

mod erased {
    /// A value written in RFC 8785 form.
    pub trait Canon {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    }

    impl Canon for &str {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            // serde_json escapes a string exactly as RFC 8785 does.
            serde_json::to_writer(&mut *out, self)
        }
    }

    impl Canon for u64 {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            out.extend_from_slice(self.to_string().as_bytes());
            Ok(())
        }
    }

    impl Canon for &serde_json::Value {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            super::canonical_value(self, out)
        }
    }

    impl Canon for &std::collections::BTreeMap<String, String> {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            let mut entries: Vec<(&String, &String)> = self.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                serde_json::to_writer(&mut *out, v)?;
            }
            out.push(b'}');
            Ok(())
        }
    }
}

/// Writes `v` in RFC 8785 form: object keys in UTF-16 order, strings as
/// serde_json escapes them (the same rules), integers as they are, and
/// any other number as the canonicaliser writes it (ECMAScript's form).
pub fn canonical_value(v: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) if u < 1 << 53 => out.extend_from_slice(u.to_string().as_bytes()),
            (_, Some(i)) if i.unsigned_abs() < 1 << 53 => {
                out.extend_from_slice(i.to_string().as_bytes())
            }
            _ => serde_json_canonicalizer::to_writer(n, &mut *out)?,
        },
        Value::String(s) => serde_json::to_writer(&mut *out, s)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let in_order = |a: &&String, b: &&String| a.encode_utf16().cmp(b.encode_utf16());
            let write = |entries: &mut dyn Iterator<Item = (&String, &Value)>,
                         out: &mut Vec<u8>|
             -> Result<(), serde_json::Error> {
                out.push(b'{');
                for (i, (k, item)) in entries.enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k)?;
                    out.push(b':');
                    canonical_value(item, out)?;
                }
                out.push(b'}');
                Ok(())
            };
            // Most objects come in order already: no copy to sort then.
            let sorted = map
                .keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| in_order(&a, &b).is_le());
            if sorted {
                write(&mut map.iter(), out)?;
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| in_order(&a.0, &b.0));
                write(&mut entries.into_iter(), out)?;
            }
        }
    }
    Ok(())
}

/// The first number in `v` that RFC 8785 cannot hash exactly: an integer
/// beyond ±2^53 is hashed as the nearest double, so two such values could
/// share a hash. The journal refuses them (write them as strings).
pub fn inexact_number(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            let exact = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= 1 << 53,
                (_, Some(i)) => i.unsigned_abs() <= 1 << 53,
                _ => true, // a float is a double already
            };
            (!exact).then(|| n.to_string())
        }
        Value::Array(items) => items.iter().find_map(inexact_number),
        Value::Object(map) => map.values().find_map(inexact_number),
        _ => None,
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// A 32-byte hash from 64 hex digits, without allocating.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// The bytes of lowercase or uppercase hex; `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a `+` sign.
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Seals `new` as event `seq` after `prev`.
pub fn seal(seq: u64, ts: String, new: NewEvent, prev: &str) -> Result<Event, serde_json::Error> {
    let hash = sha256_hex(&canonical_bytes(seq, &ts, &new, prev)?);
    Ok(Event {
        seq,
        ts,
        actor: new.actor,
        kind: new.kind,
        subject: new.subject,
        payload: new.payload,
        prev: prev.to_string(),
        hash,
    })
}

/// Why a chain does not verify, naming the first broken link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event {seq}: sequence gap, expected {expected}")]
    Gap { seq: u64, expected: u64 },
    #[error("event {seq}: prev is {found} but event {} has hash {expected}", seq - 1)]
    BrokenLink {
        seq: u64,
        expected: String,
        found: String,
    },
    #[error("event {seq}: content does not match its hash (stored {stored}, computed {computed})")]
    Altered {
        seq: u64,
        stored: String,
        computed: String,
    },
    #[error("event {seq}: cannot be encoded: {reason}")]
    Unencodable { seq: u64, reason: String },
}

/// Walks a chain incrementally; feed events in sequence order.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: u64,
    prev: String,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            prev: GENESIS.to_string(),
        }
    }
}

impl Verifier {
    pub fn push(&mut self, e: &Event) -> Result<(), ChainError> {
        if e.seq != self.expected_seq {
            return Err(ChainError::Gap {
                seq: e.seq,
                expected: self.expected_seq,
            });
        }
        if e.prev != self.prev {
            return Err(ChainError::BrokenLink {
                seq: e.seq,
                expected: self.prev.clone(),
                found: e.prev.clone(),
            });
        }
        let bytes = event_bytes(e).map_err(|err| ChainError::Unencodable {
            seq: e.seq,
            reason: err.to_string(),
        })?;
        let computed = sha256_hex(&bytes);
        if computed != e.hash {
            return Err(ChainError::Altered {
                seq: e.seq,
                stored: e.hash.clone(),
                computed,
            });
        }
        self.expected_seq += 1;
        self.prev = e.hash.clone();
        Ok(())
    }

    /// Number of events verified so far.
    pub fn verified(&self) -> u64 {
        self.expected_seq - 1
    }

    /// Hash of the last verified event.
    pub fn head(&self) -> &str {
        &self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Event> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let e = seal(
                    seq,
                    format!("2026-11-26T07:00:0{seq}.000Z"),
                    NewEvent::new("system:test", "thing.happened")
                        .subject("service", "shop")
                        .payload(serde_json::json!({"n": seq, "ratio": 0.5})),
                    &prev,
                )
                .expect("seal");
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn canonical_bytes_sort_keys_and_have_no_whitespace() {
        let new = NewEvent::new("user:ann", "x.y")
            .subject("service", "s")
            .payload(serde_json::json!({"b": 1, "a": [true, null]}));
        let bytes = canonical_bytes(7, "2026-01-01T00:00:00.000Z", &new, GENESIS).expect("encode");
        let text = String::from_utf8(bytes).expect("utf8");
        assert_eq!(
            text,
            format!(
                r#"{{"actor":"user:ann","kind":"x.y","payload":{{"a":[true,null],"b":1}},"prev":"{GENESIS}","seq":7,"subject":{{"service":"s"}},"ts":"2026-01-01T00:00:00.000Z"}}"#
            )
        );
    }

    #[test]
    fn intact_chain_verifies() {
        let mut v = Verifier::default();
        for e in &chain(5) {
            v.push(e).expect("verifies");
        }
        assert_eq!(v.verified(), 5);
    }

    #[test]
    fn altered_payload_is_named() {
        let mut events = chain(4);
        events[2].payload = serde_json::json!({"n": 99});
        let mut v = Verifier::default();
        let err = events
            .iter()
            .try_for_each(|e| v.push(e))
            .expect_err("detects");
        assert!(matches!(err, ChainError::Altered { seq: 3, .. }), "{err}");
    }

    #[test]
    fn rehashed_event_breaks_the_next_link() {
        let mut events = chain(4);
        events[1].actor = "user:mallory".into();
        let new = NewEvent {
            actor: events[1].actor.clone(),
            kind: events[1].kind.clone(),
            subject: events[1].subject.clone(),
            payload: events[1].payload.clone(),
        };
        events[1].hash =
            sha256_hex(&canonical_bytes(2, &events[1].ts, &new, &events[1].prev).expect("encode"));
        let mut v = Verifier::default();
        let err = events
            .iter()
            .try_for_each(|e| v.push(e))
            .expect_err("detects");
        assert!(
            matches!(err, ChainError::BrokenLink { seq: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn deleted_event_is_a_gap() {
        let mut events = chain(4);
        events.remove(1);
        let mut v = Verifier::default();
        let err = events
            .iter()
            .try_for_each(|e| v.push(e))
            .expect_err("detects");
        assert_eq!(
            err,
            ChainError::Gap {
                seq: 3,
                expected: 2
            }
        );
    }

    /// Properties over generated chains: what the store keeps (an event
    /// as JSON text, read back) verifies, and a changed payload is named
    /// at its event.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value: numbers of every kind (large integers, floats,
        /// negative zero), any text, nested arrays and objects.
        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(serde_json::Value::from),
                ".*".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::btree_map(".*", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn a_chain_read_back_from_json_text_verifies_and_a_changed_payload_is_named(
                payloads in proptest::collection::vec(json(), 1..8),
                actor in ".*",
                change in any::<prop::sample::Index>(),
                replacement in json(),
            ) {
                let mut prev = GENESIS.to_string();
                let mut stored = Vec::new();
                for (i, payload) in payloads.into_iter().enumerate() {
                    let new = NewEvent::new(actor.clone(), "thing.happened").payload(payload);
                    let e = seal(i as u64 + 1, "2026-11-26T07:00:00.000Z".into(), new, &prev)
                        .expect("seal");
                    prev = e.hash.clone();
                    stored.push(serde_json::to_string(&e).expect("store"));
                }
                let read: Vec<Event> = stored
                    .iter()
                    .map(|text| serde_json::from_str(text).expect("read back"))
                    .collect();
                let mut v = Verifier::default();
                for e in &read {
                    prop_assert!(v.push(e).is_ok(), "{:?}", v.push(e));
                }
                let k = change.index(read.len());
                let mut altered = read.clone();
                let before = serde_json_canonicalizer::to_vec(&altered[k].payload).expect("c");
                let after = serde_json_canonicalizer::to_vec(&replacement).expect("c");
                prop_assume!(before != after);
                altered[k].payload = replacement;
                let mut v = Verifier::default();
                let err = altered.iter().try_for_each(|e| v.push(e));
                prop_assert!(
                    matches!(err, Err(ChainError::Altered { seq, .. }) if seq == k as u64 + 1),
                    "{err:?}"
                );
            }
        }
    }

    #[test]
    fn event_bytes_are_the_canonical_bytes_without_a_copy() {
        for (payload, subject) in [
            (
                serde_json::json!({ "b": 1, "a": [1.5, "x\u{1f}\"", null], "é": { "z": true } }),
                "svc",
            ),
            (serde_json::json!("plain"), "\u{10000}\u{e000}"),
            (serde_json::json!({ "\u{e000}": 1, "\u{10000}": 2 }), "x"),
        ] {
            let new = NewEvent::new("user:ann", "thing.done")
                .subject("service", subject)
                .subject("\u{10000}", "a")
                .subject("\u{e000}", "b")
                .payload(payload);
            let e =
                seal(42, "2026-12-08T00:00:00.000Z".into(), new.clone(), GENESIS).expect("seal");
            assert_eq!(
                event_bytes(&e).expect("bytes"),
                canonical_bytes(42, &e.ts, &new, GENESIS).expect("canonical")
            );
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            "\\PC{0,8}|[\\x00-\\x1f\"\\\\\u{7f}\u{e000}\u{10000}]{0,4}"
                .prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[a-z\u{e000}\u{10000}é]{0,3}", inner), 0..4)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn our_canonical_form_is_the_canonicalizers(v in arbitrary_json()) {
            let mut ours = Vec::new();
            canonical_value(&v, &mut ours).expect("ours");
            let theirs = serde_json_canonicalizer::to_vec(&v).expect("theirs");
            proptest::prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        }
    }

    #[test]
    fn unhex32_reads_a_hash_and_nothing_else() {
        let h = sha256_hex(b"x");
        assert_eq!(unhex32(&h).map(|b| b.to_vec()), unhex(&h));
        assert_eq!(unhex32(&h.to_uppercase()).map(|b| b.to_vec()), unhex(&h));
        for bad in [
            "",
            &h[..63],
            &format!("{}g", &h[..63]),
            &format!("{h}00"),
            &format!("+{}", &h[1..]),
        ] {
            assert_eq!(unhex32(bad), None, "{bad}");
        }
    }

    #[test]
    fn integers_a_double_cannot_hold_are_found() {
        assert_eq!(
            inexact_number(&serde_json::json!({ "a": [1, 2.5, 9007199254740992_u64] })),
            None
        );
        assert_eq!(
            inexact_number(&serde_json::json!({ "a": { "b": 9007199254740993_u64 } })),
            Some("9007199254740993".into())
        );
        assert!(inexact_number(&serde_json::json!([-9007199254740993_i64])).is_some());
    }
}
