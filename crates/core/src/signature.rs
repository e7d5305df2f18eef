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
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

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
