//! A route's HTTPS certificate from files beside its spec
//! (`route.tls: { cert, key }`): read when the spec is registered (a
//! deploy, a pipeline's release; `Engine::register` has checked that the
//! hosts are this service's alone) and installed in the agent for every
//! host the service serves on, so that the agent, which keeps them, serves
//! them by SNI. A file that cannot be read, or a certificate that does not
//! load or name its hosts, is bad input and changes nothing.

use std::path::Path;

use tandem_core::journal::NewEvent;
use tandem_core::spec::{Spec, Tls, TlsPath};

use crate::placement::Placement;
use crate::{Engine, EngineError};

/// Largest certificate or key file read.
const MAX_PEM: u64 = 1024 * 1024;

impl Engine {
    /// Installs the certificate `spec` names in files under `dir` for each
    /// of its hosts, journalled (`certificate.installed`) where it differs
    /// from what the agent serves. Nothing for a spec without one.
    pub(crate) async fn install_certificate_files(
        &self,
        spec: &Spec,
        dir: &Path,
        actor: &str,
    ) -> Result<(), EngineError> {
        let Some(Tls::Files { cert, key }) = &spec.route.tls else {
            return Ok(());
        };
        let chain = read_pem(dir, "cert", cert)?;
        let key = read_pem(dir, "key", key)?;
        let served = self.agent.certificates().await?;
        for place in Placement::all(spec) {
            let host = place.route.host.as_str();
            let same = served
                .iter()
                .any(|c| c.host == host && fingerprint(&c.chain_pem) == fingerprint(&chain));
            if same {
                continue;
            }
            self.agent
                .set_certificate(host, &chain, &key)
                .await
                .map_err(|e| EngineError::BadInput(format!("route.tls of {host}: {e}")))?;
            let event = NewEvent::new(actor, "certificate.installed")
                .subject("service", spec.service.name.as_str())
                .payload(serde_json::json!({
                    "host": host,
                    "source": "file",
                    "cert": cert.as_str(),
                }));
            self.store.append(event).await?;
        }
        Ok(())
    }
}

/// The PEM text of `path` under `dir`, which it may not leave (through a
/// symbolic link either).
fn read_pem(dir: &Path, field: &str, path: &TlsPath) -> Result<String, EngineError> {
    let bad =
        |why: String| EngineError::BadInput(format!("route.tls.{field}: {}: {why}", path.as_str()));
    let root = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
    let file = root
        .join(path.as_str())
        .canonicalize()
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !file.starts_with(&root) {
        return Err(bad("it leads outside the spec's directory".into()));
    }
    let meta = std::fs::metadata(&file).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_PEM {
        return Err(bad(format!("larger than {} KiB", MAX_PEM / 1024)));
    }
    std::fs::read_to_string(&file).map_err(|e| bad(format!("cannot read it: {e}")))
}

/// A chain's identity whatever its PEM layout: SHA-256 over the DER of its
/// certificates in order.
pub(crate) fn fingerprint(chain_pem: &str) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes()).flatten() {
        if pem.label == "CERTIFICATE" {
            hash.update(&pem.contents);
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_the_same_whatever_its_pem_layout() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["shop.test".to_owned()]).expect("params");
        let pem = params.self_signed(&key).expect("cert").pem();
        let spaced = format!("\n\n{}\n\n", pem.replace('\n', "\r\n"));
        assert_eq!(fingerprint(&pem), fingerprint(&spaced));
        let other = rcgen::generate_simple_self_signed(vec!["shop.test".into()]).expect("cert");
        assert_ne!(fingerprint(&pem), fingerprint(&other.cert.pem()));
    }
}
