//! The certificates the proxy serves over HTTPS, kept in `<data>/tls/`: one
//! owner-only file per host, its chain and then its key (PEM), written
//! whole and renamed into place. They are loaded when the agent starts, so
//! a restarted or upgraded agent serves the same certificates; the control
//! plane installs new ones (from a service's files, or ACME) with
//! `SetCertificate`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_core::protocol::CertificateInfo;
use tandem_proxy::tls::{self, Certificates};

pub struct CertStore {
    dir: PathBuf,
    certificates: Arc<Certificates>,
}

impl CertStore {
    /// The store of `data_dir`, with every certificate found in it loaded
    /// (one that no longer loads is logged and left out).
    pub fn open(data_dir: &Path) -> CertStore {
        let dir = data_dir.join("tls");
        let store = CertStore {
            dir,
            certificates: Arc::default(),
        };
        let Ok(entries) = std::fs::read_dir(&store.dir) else {
            return store;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(host) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| tls::certified_key(&pem, &pem));
            match loaded {
                Ok(key) => store.certificates.set(host, key),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "certificate not loaded")
                }
            }
        }
        store
    }

    /// What the proxy serves from.
    pub fn certificates(&self) -> Arc<Certificates> {
        Arc::clone(&self.certificates)
    }

    /// Serves `chain_pem` and `key_pem` for `host` from the next handshake
    /// on, and keeps them for the agents after this one. Nothing changes
    /// when they do not load, or cannot be kept.
    pub fn install(&self, host: &str, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let host = file_host(host)?;
        if chain_pem.contains("PRIVATE KEY") || key_pem.contains("CERTIFICATE") {
            return Err(
                "the chain holds a private key, or the key a certificate: give each its own PEM"
                    .into(),
            );
        }
        let mut pem = chain_pem.trim_end().to_owned();
        pem.push('\n');
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        // Checked as it is kept, so that a later agent loads the same.
        let key = tls::certified_key(pem.as_bytes(), pem.as_bytes())?;
        if !tls::names(&key, &host) {
            return Err(format!(
                "the certificate does not name {host}: a client asking for {host} would refuse it"
            ));
        }
        self.write(&host, pem.as_bytes())
            .map_err(|e| format!("cannot keep the certificate in {}: {e}", self.dir.display()))?;
        self.certificates.set(&host, key);
        Ok(())
    }

    /// Every certificate served, with its chain (never its key).
    pub fn list(&self) -> Vec<CertificateInfo> {
        self.certificates
            .hosts()
            .into_iter()
            .filter_map(|host| {
                let pem = std::fs::read_to_string(self.dir.join(format!("{host}.pem"))).ok()?;
                Some(CertificateInfo {
                    chain_pem: certificate_blocks(&pem),
                    host,
                })
            })
            .collect()
    }

    fn write(&self, host: &str, pem: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        crate::files::write_private(&self.dir.join(format!("{host}.pem")), pem)
    }
}

/// `host` as a file name: a host name's letters, digits, dots and dashes
/// only, so that no name reaches outside the directory.
fn file_host(host: &str) -> Result<String, String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let fits = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('.')
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if fits {
        Ok(host)
    } else {
        Err(format!(
            "`{host}` is not a host name a certificate can be kept for"
        ))
    }
}

/// The `CERTIFICATE` blocks of a PEM text.
fn certificate_blocks(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = String::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push_str(&rest[start..end]);
        out.push('\n');
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn an_installed_certificate_is_served_kept_owner_only_and_loaded_again() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = CertStore::open(data.path());
        let (chain, key) = pair("shop.test");
        store.install("Shop.Test", &chain, &key).expect("install");
        assert!(store.certificates().find("shop.test").is_some());
        let file = data.path().join("tls/shop.test.pem");
        let mode = std::fs::metadata(&file).expect("kept").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let listed = store.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].host, "shop.test");
        assert_eq!(listed[0].chain_pem.trim(), chain.trim());
        assert!(
            !listed[0].chain_pem.contains("PRIVATE KEY"),
            "never the key"
        );

        let again = CertStore::open(data.path());
        assert!(
            again.certificates().find("shop.test").is_some(),
            "loaded at start"
        );
    }

    #[test]
    fn a_bad_certificate_or_host_changes_nothing() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = CertStore::open(data.path());
        let (chain, _) = pair("shop.test");
        let (_, other_key) = pair("other.test");
        let err = store
            .install("shop.test", &chain, &other_key)
            .expect_err("mismatch");
        assert!(err.contains("do not go together"), "{err}");
        let (chain, key) = pair("x.test");
        let err = store
            .install("y.test", &chain, &key)
            .expect_err("another name");
        assert!(err.contains("does not name y.test"), "{err}");
        let combined = format!("{key}{chain}");
        let err = store
            .install("x.test", &combined, &key)
            .expect_err("a key in the chain");
        assert!(err.contains("its own PEM"), "{err}");
        for host in ["../x", "a/b", "", ".x", "a..b", "*.x"] {
            assert!(store.install(host, &chain, &key).is_err(), "{host:?}");
        }
        assert!(store.certificates().hosts().is_empty());
        assert!(!data.path().join("tls").exists() || store.list().is_empty());
    }
}
