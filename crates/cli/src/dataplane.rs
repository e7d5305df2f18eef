//! The data plane's settings on the command line (`up` and `agent`).
//!
//! `up` hands them to the agent it starts as environment variables, not as
//! arguments: an agent's successor (`upgrade-agent`) is started by the
//! running agent with that agent's environment, so the settings carry over
//! every upgrade without anyone repeating them.

use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use tandem_proxy::ProxyConfig;

#[derive(Args, Clone, Debug)]
pub struct DataPlaneArgs {
    /// Address the proxy serves HTTPS on (off unless given): routes with
    /// `tls` in their spec get their certificates there, by SNI.
    #[arg(long, env = TLS_ADDR, value_parser = crate::listen_addr)]
    pub proxy_tls_addr: Option<std::net::SocketAddr>,
    /// Address the agent serves its own Prometheus metrics on (GET
    /// /metrics; off unless given): the proxy's figures, also while the
    /// server is stopped.
    #[arg(long, env = METRICS_ADDR, value_parser = crate::listen_addr)]
    pub agent_metrics_addr: Option<std::net::SocketAddr>,
    /// Proxies in front of this one (addresses or CIDR blocks, comma
    /// separated): their X-Forwarded-* and Forwarded headers are kept and
    /// extended. Everyone else's are replaced.
    #[arg(long, env = TRUSTED_PROXIES, value_delimiter = ',', value_parser = cidr)]
    pub trusted_proxies: Vec<IpNet>,
    /// How long a request head may take to arrive whole (then 408).
    #[arg(long, env = HEAD_TIMEOUT, default_value = "10s", value_parser = duration)]
    pub proxy_head_timeout: Duration,
    /// Client connections one address may hold open at once (trusted
    /// proxies are not limited); more are answered 429.
    #[arg(long, env = PER_CLIENT, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,
}

const TLS_ADDR: &str = "TANDEM_PROXY_TLS_ADDR";
const METRICS_ADDR: &str = "TANDEM_AGENT_METRICS_ADDR";
const TRUSTED_PROXIES: &str = "TANDEM_TRUSTED_PROXIES";
const HEAD_TIMEOUT: &str = "TANDEM_PROXY_HEAD_TIMEOUT";
const PER_CLIENT: &str = "TANDEM_MAX_CONNECTIONS_PER_CLIENT";

impl DataPlaneArgs {
    /// The proxy's configuration with these settings.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            trusted_proxies: self.trusted_proxies.clone(),
            head_timeout: self.proxy_head_timeout,
            max_connections_per_client: self.max_connections_per_client as usize,
            ..ProxyConfig::default()
        }
    }

    /// The environment that gives an agent these settings: each variable
    /// with its value, or `None` for one to remove.
    pub fn env(&self) -> Vec<(&'static str, Option<String>)> {
        let trusted: Vec<String> = self.trusted_proxies.iter().map(IpNet::to_string).collect();
        vec![
            (TLS_ADDR, self.proxy_tls_addr.map(|a| a.to_string())),
            (METRICS_ADDR, self.agent_metrics_addr.map(|a| a.to_string())),
            (
                TRUSTED_PROXIES,
                Some(trusted.join(",")).filter(|t| !t.is_empty()),
            ),
            (
                HEAD_TIMEOUT,
                Some(format!("{}ms", self.proxy_head_timeout.as_millis())),
            ),
            (
                PER_CLIENT,
                Some(self.max_connections_per_client.to_string()),
            ),
        ]
    }

    /// Gives `command` (an agent) these settings.
    pub fn pass_to(&self, command: &mut std::process::Command) {
        for (name, value) in self.env() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
    }
}

/// The control plane's settings for certificates over ACME (`up` and
/// `server`).
#[derive(Args, Clone, Debug)]
pub struct AcmeArgs {
    /// The ACME server's directory URL: routes with `tls: acme` get
    /// certificates from it (HTTP-01, answered on the proxy's plain port).
    #[arg(long, env = "TANDEM_ACME_DIRECTORY", value_parser = https_url)]
    pub acme_directory: Option<String>,
    /// Contact address of the ACME account.
    #[arg(long, env = "TANDEM_ACME_EMAIL", requires = "acme_directory")]
    pub acme_email: Option<String>,
    /// A PEM root certificate to trust for the ACME server's own HTTPS (a
    /// test CA); the system's roots otherwise.
    #[arg(long, env = "TANDEM_ACME_CA_FILE", requires = "acme_directory")]
    pub acme_ca_file: Option<std::path::PathBuf>,
}

impl AcmeArgs {
    /// The ACME client's configuration, when a directory is given.
    pub fn config(&self) -> Option<tandem_engine::acme::AcmeConfig> {
        let every = std::env::var("TANDEM_ACME_CHECK_EVERY")
            .ok()
            .and_then(|v| duration(&v).ok())
            .unwrap_or(Duration::from_secs(60));
        Some(tandem_engine::acme::AcmeConfig {
            directory: self.acme_directory.clone()?,
            email: self.acme_email.clone(),
            ca_file: self.acme_ca_file.clone(),
            check_every: every,
            renew_before: Duration::from_secs(30 * 24 * 3600),
        })
    }
}

fn https_url(value: &str) -> Result<String, String> {
    match value.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
            Ok(value.to_owned())
        }
        _ => Err("expected the ACME directory's https:// URL, e.g. https://acme-v02.api.letsencrypt.org/directory".into()),
    }
}

/// A CIDR block, or one address (a block of one).
fn cidr(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value
        .parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| {
            format!(
                "`{value}` is neither an IP address nor a CIDR block such as 10.0.0.0/8 or fd00::/8"
            )
        })
}

pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    let parsed: tandem_core::units::Duration = value.parse()?;
    match parsed.as_millis() {
        0 => Err("must be more than 0".to_owned()),
        _ => Ok(parsed.to_std()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        assert_eq!(
            cidr("10.1.2.3/8").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(cidr("::1").map(|n| n.to_string()), Ok("::1/128".into()));
        assert_eq!(
            cidr(" 192.0.2.7 ").map(|n| n.to_string()),
            Ok("192.0.2.7/32".into())
        );
        let bad = cidr("10.0.0.0/33").expect_err("prefix too long");
        assert!(bad.contains("CIDR block"), "{bad}");
        assert!(cidr("proxy.test").is_err());
    }

    #[test]
    fn the_environment_gives_back_the_same_settings() {
        let args = DataPlaneArgs {
            proxy_tls_addr: Some("127.0.0.1:8443".parse().expect("addr")),
            agent_metrics_addr: Some("127.0.0.1:9464".parse().expect("addr")),
            trusted_proxies: vec![cidr("10.0.0.0/8").expect("cidr"), cidr("::1").expect("ip")],
            proxy_head_timeout: Duration::from_millis(2_500),
            max_connections_per_client: 7,
        };
        let env: std::collections::HashMap<_, _> = args
            .env()
            .into_iter()
            .map(|(k, v)| (k, v.expect("set")))
            .collect();
        let trusted: Vec<IpNet> = env[TRUSTED_PROXIES]
            .split(',')
            .map(|v| cidr(v).expect("cidr"))
            .collect();
        assert_eq!(trusted, args.trusted_proxies);
        assert_eq!(duration(&env[HEAD_TIMEOUT]), Ok(args.proxy_head_timeout));
        assert_eq!(env[PER_CLIENT], "7");
        assert_eq!(env[TLS_ADDR], "127.0.0.1:8443");
        assert_eq!(env[METRICS_ADDR], "127.0.0.1:9464");
        assert!(duration("0s").is_err());
    }
}
