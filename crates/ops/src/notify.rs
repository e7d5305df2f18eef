//! Telling people: every incident change goes to each channel that wants
//! it — a signed JSON webhook, a Slack-compatible incoming webhook, or
//! e-mail over SMTP — with retries and backoff, each attempt recorded.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tandem_core::signature::sign;
use tandem_store::{ChannelRow, IncidentRow, MaintenanceRow, Store};

/// Attempts per delivery; waits double from `FIRST_RETRY` between them.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest a receiver may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct Notifier {
    store: Store,
    http: Client<Https, Full<Bytes>>,
}

impl Notifier {
    /// Receivers are reached over http or https; https trusts the system's
    /// roots (and `SSL_CERT_FILE` / `SSL_CERT_DIR`, as OpenSSL does).
    pub fn new(store: Store) -> Self {
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system TLS roots; https receivers will fail");
                let config = rustls_config_without_roots();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        Notifier {
            store,
            http: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// Sends `event` (`incident.opened`, `.acknowledged`, `.resolved`) of
    /// `incident` to every channel routed to it, each on its own task.
    pub async fn notify(&self, incident: &IncidentRow, event: &str) {
        self.send_all(Notice::incident(incident, event)).await;
    }

    /// Tells the service's channels that a pipeline run failed (`event`
    /// is its `run.failed`).
    pub async fn run_failed(&self, event: &tandem_core::journal::Event) {
        self.send_all(Notice::run_failed(event)).await;
    }

    /// Announces a scheduled maintenance window.
    pub async fn announce(&self, window: &MaintenanceRow) {
        self.send_all(Notice::maintenance(window)).await;
    }

    async fn send_all(&self, notice: Notice) {
        let channels = match self.store.channels().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read channels; nobody is told");
                return;
            }
        };
        let tier = match self.store.service(&notice.service).await {
            Ok(Some(s)) => Some(s.tier),
            _ => None,
        };
        for ch in channels
            .into_iter()
            .filter(|c| routed(c, &notice.service, tier.as_deref()))
        {
            let this = self.clone();
            let notice = notice.clone();
            tokio::spawn(async move { this.deliver(ch, notice).await });
        }
    }

    async fn deliver(&self, ch: ChannelRow, notice: Notice) {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let result = tokio::time::timeout(SEND_TIMEOUT, self.send(&ch, &notice))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {SEND_TIMEOUT:?}")));
            let (ok, detail) = match &result {
                Ok(d) => (true, d.clone()),
                Err(e) => (false, e.clone()),
            };
            if let Err(e) = self
                .store
                .record_delivery(ch.id, notice.incident, &notice.event, attempt, ok, &detail)
                .await
            {
                tracing::warn!(error = %e, "cannot record a delivery attempt");
            }
            if ok {
                return;
            }
            tracing::warn!(channel = ch.id, event = %notice.event, attempt, %detail, "notification failed");
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }

    async fn send(&self, ch: &ChannelRow, notice: &Notice) -> Result<String, String> {
        match ch.kind.as_str() {
            "webhook" => {
                let mut body = notice.json.clone();
                body["event"] = serde_json::json!(notice.event);
                body["sent_at"] = serde_json::json!(jiff::Timestamp::now().to_string());
                let body = body.to_string();
                let mut headers = vec![("content-type", "application/json".to_owned())];
                if let Some(secret) = &ch.secret {
                    headers.push((
                        "x-tandem-signature",
                        format!("sha256={}", sign(secret, body.as_bytes())),
                    ));
                }
                self.post(&ch.target, headers, body).await
            }
            "slack" => {
                let body = serde_json::json!({ "text": notice.line }).to_string();
                let headers = vec![("content-type", "application/json".into())];
                self.post(&ch.target, headers, body).await
            }
            "email" => send_mail(ch, notice).await,
            other => Err(format!("unknown channel kind {other}")),
        }
    }

    async fn post(
        &self,
        url: &str,
        headers: Vec<(&str, String)>,
        body: String,
    ) -> Result<String, String> {
        let mut req = http::Request::post(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .header("user-agent", concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request for {url}: {e}"))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(format!("HTTP {}", status.as_u16()))
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }
}

/// Whether `ch` wants to hear about `service`: all, one service, or a tier.
fn routed(ch: &ChannelRow, service: &str, tier: Option<&str>) -> bool {
    ch.service.as_deref().is_none_or(|s| s == service)
        && ch.tier.as_deref().is_none_or(|t| Some(t) == tier)
}

/// One thing to tell: the JSON a webhook gets, the line Slack and an
/// e-mail subject get, and an e-mail body.
#[derive(Clone, Debug)]
struct Notice {
    /// The incident it is about (0: a maintenance announcement, a failed
    /// run).
    incident: i64,
    service: String,
    event: String,
    json: serde_json::Value,
    line: String,
    text: String,
}

impl Notice {
    fn incident(i: &IncidentRow, event: &str) -> Notice {
        let what = event.strip_prefix("incident.").unwrap_or(event);
        let env = i
            .env
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let line = format!(
            "[tandem] incident #{} {what}: {}{env} — {} [{}; release {}]",
            i.id,
            i.service,
            i.summary,
            i.severity,
            i.release.as_deref().unwrap_or("-")
        );
        let text = format!(
            "{line}\n\nservice: {}\nkind: {}\nseverity: {}\nstatus: {}\nopened: {}\nrelease: {}\nsuspected deployment: {}\n",
            i.service,
            i.kind,
            i.severity,
            i.status,
            i.opened_at,
            i.release.as_deref().unwrap_or("-"),
            i.suspect_release.as_deref().unwrap_or("-"),
        );
        Notice {
            incident: i.id,
            service: i.service.clone(),
            event: event.to_owned(),
            json: serde_json::json!({ "incident": i }),
            line,
            text,
        }
    }

    fn run_failed(e: &tandem_core::journal::Event) -> Notice {
        let service = e.subject.get("service").cloned().unwrap_or_default();
        let run = e.subject.get("run").cloned().unwrap_or_default();
        let p = &e.payload;
        let commit = p["commit"].as_str().unwrap_or("");
        let reason = p["reason"].as_str().unwrap_or("(no reason recorded)");
        let line = format!(
            "[tandem] run #{run} of {service} failed: {reason} [commit {}]",
            &commit[..12.min(commit.len())]
        );
        let text = format!(
            "{line}\n\nservice: {service}\nrun: {run}\ncommit: {commit}\nauthor: {}\nsee: tandem pipelines logs {run}\n",
            p["author"].as_str().unwrap_or("-")
        );
        Notice {
            incident: 0,
            service: service.clone(),
            event: "run.failed".into(),
            json: serde_json::json!({ "run": {
                "id": run, "service": service, "commit": commit,
                "author": p["author"], "reason": reason, "seq": e.seq,
            }}),
            line,
            text,
        }
    }

    fn maintenance(m: &MaintenanceRow) -> Notice {
        let line = format!(
            "[tandem] maintenance of {} scheduled from {} to {}: {}",
            m.service, m.starts_at, m.ends_at, m.reason
        );
        Notice {
            incident: 0,
            service: m.service.clone(),
            event: "maintenance.scheduled".into(),
            json: serde_json::json!({ "maintenance": m }),
            text: format!("{line}\n\nscheduled by {}\n", m.created_by),
            line,
        }
    }
}

async fn send_mail(ch: &ChannelRow, notice: &Notice) -> Result<String, String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let smtp = ch.smtp.as_deref().ok_or("e-mail channel without --smtp")?;
    let (host, port) = smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--smtp {smtp} is not host:port"))?;
    let from = std::env::var("TANDEM_MAIL_FROM").unwrap_or_else(|_| "tandem@localhost".into());
    let message = Message::builder()
        .from(
            from.parse()
                .map_err(|e| format!("from address {from}: {e}"))?,
        )
        .to(ch
            .target
            .parse()
            .map_err(|e| format!("address {}: {e}", ch.target))?)
        .subject(notice.line.clone())
        .body(notice.text.clone())
        .map_err(|e| format!("cannot build the message: {e}"))?;
    // Plain SMTP to the relay the operator named (usually local).
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(SEND_TIMEOUT))
        .build();
    let response = transport
        .send(message)
        .await
        .map_err(|e| format!("smtp {smtp}: {e}"))?;
    Ok(format!("SMTP {}", response.code()))
}

fn rustls_config_without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}
