//! Certificates over ACME (RFC 8555) for routes that ask for them
//! (`route.tls: acme`), with HTTP-01 challenges answered by the proxy.
//!
//! The control plane is the ACME client (instant-acme): every
//! `check_every` it looks at each host a service's spec asks a certificate
//! for, in every environment, and orders one when the agent serves none
//! or one that expires within `renew_before`. The agent answers the
//! challenge on plain HTTP (`AcmeChallenge`) while the order runs, then
//! serves and keeps the certificate (`SetCertificate`); its key never
//! leaves the two. Each outcome is journalled (`certificate.installed`,
//! `certificate.failed`, without key material); a host that failed is
//! tried again after a doubling wait (5 minutes up to 6 hours, under
//! Let's Encrypt's limit on failed validations). The ACME
//! account is kept in `<data>/acme/account.json` (owner-only), and made
//! again when the server no longer knows it.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tandem_core::journal::NewEvent;
use tandem_core::spec::{Spec, Tls};

use crate::Engine;
use crate::certs::fingerprint;
use crate::placement::Placement;

/// Where and how certificates are ordered.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    /// A contact address for the account (expiry notices).
    pub email: Option<String>,
    /// A PEM root to trust for the directory's own HTTPS (a test CA such
    /// as pebble's); the system's roots otherwise.
    pub ca_file: Option<PathBuf>,
    pub check_every: Duration,
    /// A certificate closer than this to its end is renewed.
    pub renew_before: Duration,
}

const ACTOR: &str = "system:acme";
/// Let's Encrypt allows 5 failed validations per host an hour: 5, 10,
/// 20, 40 minutes stay under it.
const FIRST_RETRY: Duration = Duration::from_secs(5 * 60);
const LAST_RETRY: Duration = Duration::from_secs(6 * 3600);

impl Engine {
    /// Keeps the certificates of `route.tls: acme` hosts, for ever (run it
    /// on a task of its own).
    pub async fn keep_acme_certificates(self, config: AcmeConfig) {
        let mut waits: HashMap<String, (Instant, Duration)> = HashMap::new();
        let mut account: Option<Account> = None;
        loop {
            for host in self.hosts_needing_certificates(&config).await {
                if waits.get(&host).is_some_and(|(at, _)| Instant::now() < *at) {
                    continue;
                }
                let obtained = self.obtain(&config, &mut account, &host).await;
                match obtained {
                    Ok(()) => {
                        waits.remove(&host);
                    }
                    Err(error) => {
                        let wait = waits
                            .get(&host)
                            .map_or(FIRST_RETRY, |(_, w)| (*w * 2).min(LAST_RETRY));
                        waits.insert(host.clone(), (Instant::now() + wait, wait));
                        tracing::warn!(%host, %error, retry_in_s = wait.as_secs(), "no ACME certificate");
                        let event =
                            NewEvent::new(ACTOR, "certificate.failed").payload(serde_json::json!({
                                "host": host,
                                "source": "acme",
                                "error": error,
                                "retry_in_s": wait.as_secs(),
                            }));
                        if let Err(e) = self.store.append(event).await {
                            tracing::warn!(error = %e, "could not journal the ACME failure");
                        }
                    }
                }
            }
            tokio::time::sleep(config.check_every).await;
        }
    }

    /// The hosts that ask for an ACME certificate and have none that lasts
    /// beyond `renew_before`.
    async fn hosts_needing_certificates(&self, config: &AcmeConfig) -> Vec<String> {
        let Ok(services) = self.store.services().await else {
            return Vec::new();
        };
        let mut wanted: Vec<String> = services
            .into_iter()
            .filter_map(|s| serde_json::from_value::<Spec>(s.spec).ok())
            .filter(|spec| spec.route.tls == Some(Tls::Acme))
            .flat_map(|spec| Placement::all(&spec).into_iter().map(|p| p.route.host))
            .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return wanted;
        }
        let Ok(served) = self.agent.certificates().await else {
            return Vec::new();
        };
        let horizon = SystemTime::now() + config.renew_before;
        let issued = Issued::read(&self.data_dir);
        wanted.retain(|host| {
            let Some(cert) = served.iter().find(|c| &c.host == host) else {
                return true;
            };
            // One this loop did not issue (put there by hand, say) is
            // replaced: `tls: acme` means the ACME server's.
            let ours = issued.0.get(host) == Some(&fingerprint(&cert.chain_pem));
            let lasts = not_after(&cert.chain_pem);
            !ours || lasts.is_none_or(|end| end <= horizon)
        });
        wanted
    }

    /// Orders and installs a certificate for `host`.
    async fn obtain(
        &self,
        config: &AcmeConfig,
        account: &mut Option<Account>,
        host: &str,
    ) -> Result<(), String> {
        let mut tried_new_account = false;
        loop {
            let current = match account {
                Some(a) => a.clone(),
                None => {
                    let a = load_or_create_account(&self.data_dir, config).await?;
                    *account = Some(a.clone());
                    a
                }
            };
            match self.order(&current, host).await {
                Ok(()) => return Ok(()),
                // The server forgot the account (a test server restarted,
                // say): a new one, once.
                Err(e) if e.contains("accountDoesNotExist") && !tried_new_account => {
                    tried_new_account = true;
                    *account = None;
                    let _ = std::fs::remove_file(account_file(&self.data_dir));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn order(&self, account: &Account, host: &str) -> Result<(), String> {
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut tokens = Vec::new();
        let answered = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or("the ACME server offers no HTTP-01 challenge")?;
                let key_authorization = challenge.key_authorization();
                self.agent
                    .acme_challenge(&challenge.token, Some(key_authorization.as_str()))
                    .await
                    .map_err(|e| format!("the proxy cannot answer the challenge: {e}"))?;
                tokens.push(challenge.token.clone());
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("challenge: {e}"))?;
            }
            let status = order
                .poll_ready(&RetryPolicy::default())
                .await
                .map_err(|e| format!("validation: {e}"))?;
            if status != OrderStatus::Ready {
                return Err(format!("the order ended {status:?}"));
            }
            let key_pem = order
                .finalize()
                .await
                .map_err(|e| format!("finalize: {e}"))?;
            let chain_pem = order
                .poll_certificate(&RetryPolicy::default())
                .await
                .map_err(|e| format!("certificate: {e}"))?;
            Ok::<_, String>((chain_pem, key_pem))
        }
        .await;
        for token in &tokens {
            let _ = self.agent.acme_challenge(token, None).await;
        }
        let (chain_pem, key_pem) = answered?;
        self.agent
            .set_certificate(host, &chain_pem, &key_pem)
            .await
            .map_err(|e| format!("the agent refused the certificate: {e}"))?;
        let mut issued = Issued::read(&self.data_dir);
        issued.0.insert(host.to_owned(), fingerprint(&chain_pem));
        issued
            .write(&self.data_dir)
            .map_err(|e| format!("cannot note the certificate as issued: {e}"))?;
        let expires = not_after(&chain_pem).map(|t| {
            jiff::Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        });
        let event = NewEvent::new(ACTOR, "certificate.installed").payload(serde_json::json!({
            "host": host,
            "source": "acme",
            "not_after": expires,
        }));
        self.store
            .append(event)
            .await
            .map_err(|e| format!("journal: {e}"))?;
        tracing::info!(%host, "ACME certificate installed");
        Ok(())
    }
}

fn account_file(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("account.json")
}

/// The account kept for `config.directory`, or a new one (kept).
async fn load_or_create_account(data_dir: &Path, config: &AcmeConfig) -> Result<Account, String> {
    let builder = || match &config.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let builder = builder().map_err(|e| format!("ACME client: {e}"))?;
    let file = account_file(data_dir);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(kept) = serde_json::from_str::<KeptAccount>(&text)
        && kept.directory == config.directory
    {
        return builder
            .from_credentials(kept.credentials)
            .await
            .map_err(|e| format!("ACME account: {e}"));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("ACME account at {}: {e}", config.directory))?;
    let kept = KeptAccount {
        directory: config.directory.clone(),
        credentials,
    };
    keep_account(&file, &kept).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(account)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn keep_account(file: &Path, kept: &KeptAccount) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(kept).map_err(std::io::Error::other)?;
    write_private(file, &text)
}

/// Writes `bytes` to `file` whole (a temporary file renamed into place),
/// owner-only, in an owner-only directory.
fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = file.with_extension("tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// The chains this loop issued, by host (their SHA-256), in
/// `<data>/acme/issued.json`: a certificate served for an ACME host that
/// is not among them is replaced.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Issued(std::collections::BTreeMap<String, String>);

impl Issued {
    fn file(data_dir: &Path) -> PathBuf {
        data_dir.join("acme").join("issued.json")
    }

    fn read(data_dir: &Path) -> Issued {
        std::fs::read(Issued::file(data_dir))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_private(&Issued::file(data_dir), &text)
    }
}

/// When the leaf certificate of a PEM chain stops being valid.
pub fn not_after(chain_pem: &str) -> Option<SystemTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let seconds = cert.validity().not_after.timestamp();
    let seconds = u64::try_from(seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_end_is_read_from_its_leaf() {
        let mut params =
            rcgen::CertificateParams::new(vec!["shop.test".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let end = not_after(&cert.pem()).expect("parsed");
        let expected = jiff::Timestamp::from_second(1_936_742_400).expect("ts");
        assert_eq!(jiff::Timestamp::try_from(end).expect("ts"), expected);
        assert_eq!(not_after("no pem"), None);
    }
}
