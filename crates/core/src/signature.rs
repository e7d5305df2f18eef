//! HMAC-SHA256 signatures in hex, as push webhooks arrive signed and as
//! tandem signs its own notifications.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::journal::{hex, unhex};

/// `hex(HMAC-SHA256(secret, body))`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    hex(&mac(secret, body).finalize().into_bytes())
}

/// Whether `signature` (hex) is `body`'s HMAC under `secret`, compared in
/// constant time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    unhex(signature.trim())
        .is_some_and(|expected| mac(secret, body).verify_slice(&expected).is_ok())
}

fn mac(secret: &str, body: &[u8]) -> Hmac<Sha256> {
    keyed(secret.as_bytes(), body)
}

fn keyed(key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac
}

/// The key of a Standard Webhooks secret: `whsec_<base64>` is the bytes
/// it encodes (as the specification's libraries take it); any other
/// secret its own bytes.
fn webhook_key(secret: &str) -> Vec<u8> {
    use base64::Engine;
    secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// The `webhook-signature` header of a notification, as the Standard
/// Webhooks specification signs: `v1,` and the base64 HMAC-SHA256 of
/// `{webhook-id}.{webhook-timestamp}.{body}`. The id and the time are
/// signed, so a captured notification cannot be sent again as another or
/// later one.
pub fn webhook_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = keyed(&webhook_key(secret), &signed).finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// What a receiver checks: one of the space-separated `v1,` signatures in
/// `header` matches, and `timestamp` is within `tolerance` seconds of
/// `now` (both Unix seconds).
pub fn verify_webhook(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance: i64,
) -> bool {
    use subtle::ConstantTimeEq;
    if (now - timestamp).abs() > tolerance {
        return false;
    }
    let expected = webhook_signature(secret, id, timestamp, body);
    header
        .split_whitespace()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_are_signed_as_the_standard_webhooks_reference_does() {
        // The specification's own example (standard-webhooks, README):
        // secret, id, timestamp and payload, and the signature it gives.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        let sig = webhook_signature(secret, id, ts, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify_webhook(
            secret,
            id,
            ts,
            body,
            &format!("v1,x {sig}"),
            ts + 10,
            300
        ));
        // Another id, another time, another body, too late: refused.
        assert!(!verify_webhook(
            secret,
            "msg_other",
            ts,
            body,
            &sig,
            ts,
            300
        ));
        assert!(!verify_webhook(secret, id, ts + 1, body, &sig, ts, 300));
        assert!(!verify_webhook(secret, id, ts, b"{}", &sig, ts, 300));
        assert!(!verify_webhook(secret, id, ts, body, &sig, ts + 301, 300));
    }

    #[test]
    fn matches_rfc_4231_test_case_2_and_rejects_any_change() {
        // RFC 4231, test case 2: key "Jefe".
        let sig = sign("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify("Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify("jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify("Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify("Jefe", b"what do ya want for nothing?", "zz"));
    }
}
