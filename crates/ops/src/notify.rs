//! Telling people: every incident change goes to each channel that wants
//! it — a signed JSON webhook, a Slack-compatible incoming webhook, or
//! e-mail over SMTP — with retries and backoff, each attempt recorded.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tandem_store::{ChannelRow, IncidentRow, Store};

/// Attempts per delivery; waits double from `FIRST_RETRY` between them.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest a receiver may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Notifier {
    store: Store,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Notifier {
    pub fn new(store: Store) -> Self {
        Notifier {
            store,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `event` (`incident.opened`, `.acknowledged`, `.resolved`) of
    /// `incident` to every channel routed to it, each on its own task.
    pub async fn notify(&self, incident: &IncidentRow, event: &str) {
        let channels = match self.store.channels().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read channels; nobody is told");
                return;
            }
        };
        let tier = match self.store.service(&incident.service).await {
            Ok(Some(s)) => Some(s.tier),
            _ => None,
        };
        for ch in channels
            .into_iter()
            .filter(|c| routed(c, incident, tier.as_deref()))
        {
            let this = self.clone();
            let (incident, event) = (incident.clone(), event.to_owned());
            tokio::spawn(async move { this.deliver(ch, incident, event).await });
        }
    }

    async fn deliver(&self, ch: ChannelRow, incident: IncidentRow, event: String) {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let result = tokio::time::timeout(SEND_TIMEOUT, self.send(&ch, &incident, &event))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {SEND_TIMEOUT:?}")));
            let (ok, detail) = match &result {
                Ok(d) => (true, d.clone()),
                Err(e) => (false, e.clone()),
            };
            if let Err(e) = self
                .store
                .record_delivery(ch.id, incident.id, &event, attempt, ok, &detail)
                .await
            {
                tracing::warn!(error = %e, "cannot record a delivery attempt");
            }
            if ok {
                return;
            }
            tracing::warn!(channel = ch.id, incident = incident.id, attempt, %detail, "notification failed");
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }

    async fn send(
        &self,
        ch: &ChannelRow,
        incident: &IncidentRow,
        event: &str,
    ) -> Result<String, String> {
        match ch.kind.as_str() {
            "webhook" => {
                let body = serde_json::json!({
                    "event": event,
                    "incident": incident,
                    "sent_at": jiff::Timestamp::now().to_string(),
                })
                .to_string();
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
                let body = serde_json::json!({ "text": one_line(incident, event) }).to_string();
                self.post(
                    &ch.target,
                    vec![("content-type", "application/json".into())],
                    body,
                )
                .await
            }
            "email" => send_mail(ch, incident, event).await,
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

/// Whether `ch` wants to hear of `incident`: all, one service, or a tier.
fn routed(ch: &ChannelRow, incident: &IncidentRow, tier: Option<&str>) -> bool {
    ch.service.as_deref().is_none_or(|s| s == incident.service)
        && ch.tier.as_deref().is_none_or(|t| Some(t) == tier)
}

/// `hex(HMAC-SHA256(secret, body))`, as receivers check `X-Tandem-Signature`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn one_line(i: &IncidentRow, event: &str) -> String {
    let what = event.strip_prefix("incident.").unwrap_or(event);
    let env = i
        .env
        .as_deref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    format!(
        "[tandem] incident #{} {what}: {}{env} — {} [{}; release {}]",
        i.id,
        i.service,
        i.summary,
        i.severity,
        i.release.as_deref().unwrap_or("-")
    )
}

async fn send_mail(ch: &ChannelRow, incident: &IncidentRow, event: &str) -> Result<String, String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let smtp = ch.smtp.as_deref().ok_or("e-mail channel without --smtp")?;
    let (host, port) = smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--smtp {smtp} is not host:port"))?;
    let from = std::env::var("TANDEM_MAIL_FROM").unwrap_or_else(|_| "tandem@localhost".into());
    let mut body = one_line(incident, event);
    body.push_str(&format!(
        "\n\nservice: {}\nkind: {}\nseverity: {}\nstatus: {}\nopened: {}\nrelease: {}\nsuspected deployment: {}\n",
        incident.service,
        incident.kind,
        incident.severity,
        incident.status,
        incident.opened_at,
        incident.release.as_deref().unwrap_or("-"),
        incident.suspect_release.as_deref().unwrap_or("-"),
    ));
    let message = Message::builder()
        .from(
            from.parse()
                .map_err(|e| format!("from address {from}: {e}"))?,
        )
        .to(ch
            .target
            .parse()
            .map_err(|e| format!("address {}: {e}", ch.target))?)
        .subject(one_line(incident, event))
        .body(body)
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
