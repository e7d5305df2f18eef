//! TLS termination: a certificate per host name, chosen by the client's
//! SNI, and HTTP/2 or HTTP/1.1 by ALPN. Certificates are swapped in whole
//! (an `ArcSwap` snapshot, as routes are), so a renewal never blocks a
//! handshake and a handshake never blocks a renewal.
//!
//! The proxy only serves certificates; where they come from (files named
//! in a service's spec, ACME) and where they are kept is its owner's
//! business.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates the proxy serves, by host name (lowercase).
#[derive(Debug, Default)]
pub struct Certificates {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    /// Serves `key` for `host` from the next handshake on.
    pub fn set(&self, host: &str, key: CertifiedKey) {
        let key = Arc::new(key);
        let host = host.to_ascii_lowercase();
        self.by_host.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(host.clone(), Arc::clone(&key));
            next
        });
    }

    /// The hosts that have a certificate.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.by_host.load().keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// The certificate for `name`.
    pub fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.by_host.load().get(&name).cloned()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (a client that dialled an address): nothing to go by.
        self.find(hello.server_name()?)
    }
}

/// A certificate chain and its private key, both PEM (the chain leaf
/// first, as every CA and ACME hands it out), checked to belong together.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the private key is not a PEM private key: {e}"))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the certificate and the key do not go together: {e}"))
}

/// Whether the leaf certificate of `key` names `host` (directly or by a
/// wildcard), so that a client that asks for `host` accepts it.
pub fn names(key: &CertifiedKey, host: &str) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The server side of TLS for `certificates`: TLS 1.2 and 1.3, HTTP/2 and
/// HTTP/1.1 offered by ALPN.
pub fn server_config(certificates: Arc<Certificates>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_host_gets_its_own_certificate() {
        let certs = Certificates::default();
        let (shop, shop_key) = pair(&["shop.test"]);
        let (any, any_key) = pair(&["*.apps.test"]);
        certs.set(
            "Shop.Test",
            certified_key(shop.as_bytes(), shop_key.as_bytes()).expect("shop"),
        );
        certs.set(
            "x.apps.test",
            certified_key(any.as_bytes(), any_key.as_bytes()).expect("wildcard"),
        );
        assert!(certs.find("shop.test").is_some());
        assert!(certs.find("SHOP.test.").is_some(), "case and a final dot");
        assert!(
            certs.find("y.apps.test").is_none(),
            "kept by host, not by name"
        );
        assert!(certs.find("other.test").is_none());
        let served = certs.find("shop.test").expect("shop");
        assert!(names(&served, "shop.test") && !names(&served, "other.test"));
        let wildcard = certs.find("x.apps.test").expect("wildcard");
        assert!(names(&wildcard, "x.apps.test") && !names(&wildcard, "apps.test"));
        assert_eq!(certs.hosts(), ["shop.test", "x.apps.test"]);
    }

    #[test]
    fn a_key_of_another_certificate_or_no_pem_is_refused_with_the_reason() {
        let (shop, _) = pair(&["shop.test"]);
        let (_, other_key) = pair(&["other.test"]);
        let mismatch = certified_key(shop.as_bytes(), other_key.as_bytes()).expect_err("mismatch");
        assert!(mismatch.contains("do not go together"), "{mismatch}");
        let none = certified_key(b"hello", other_key.as_bytes()).expect_err("no pem");
        assert!(none.contains("no certificate"), "{none}");
        let no_key = certified_key(shop.as_bytes(), b"nope").expect_err("no key");
        assert!(no_key.contains("private key"), "{no_key}");
    }
}
