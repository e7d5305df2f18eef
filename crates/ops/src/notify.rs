//! Telling people: every incident change (and failed run, announced
//! maintenance) goes to each channel that wants it — a signed JSON
//! webhook, a Slack-compatible incoming webhook, or e-mail over SMTP —
//! through a durable outbox: a notification is written to the store
//! before anyone is told (`Notifier::send_all`), and a dispatcher
//! (`Notifier::dispatch`) sends what is due, retrying with backoff from
//! one second to ten minutes for a day, across restarts of the server.
//! Each attempt is recorded among the incident's deliveries. Webhooks are
//! signed as Standard Webhooks are: `webhook-id` (the same on every retry,
//! so a receiver can drop repeats), `webhook-timestamp`, and
//! `webhook-signature` over `id.timestamp.body`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tandem_core::signature::webhook_signature;
use tandem_store::{ChannelRow, IncidentRow, MaintenanceRow, NewNotice, OutboxRow, Store};

/// The first retry's wait; each further one doubles, up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(600);
/// How long after it was queued a notification is given up.
const GIVE_UP: Duration = Duration::from_secs(24 * 3600);
/// Longest a receiver may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a notification taken for sending is not taken again (a
/// server that died sending it: due again after this).
const LEASE: Duration = Duration::from_secs(60);
/// Notifications taken at once, and sent at once.
const BATCH: i64 = 64;
const AT_ONCE: usize = 16;
/// How often the outbox is looked at when nothing wakes the dispatcher.
const POLL: Duration = Duration::from_secs(1);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct Notifier {
    store: Store,
    http: Client<Https, Full<Bytes>>,
    /// Rung when something is queued.
    wake: Arc<tokio::sync::Notify>,
}

/// What a queued notification sends, fixed when it is queued: every retry
/// sends the same bytes.
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    service: String,
    /// The webhook's JSON body.
    body: String,
    /// Slack's text and an e-mail's subject.
    line: String,
    /// An e-mail's body.
    text: String,
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
            wake: Arc::default(),
        }
    }

    /// Queues `event` (`incident.opened`, `.acknowledged`, `.resolved`) of
    /// `incident` for every channel routed to it.
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

    /// Publishes a signed checkpoint of the journal to every webhook
    /// channel not scoped to a service or tier: witnesses outside the
    /// installation (the receiver keeps what it got; the checkpoint is
    /// public, and the webhook is signed like any other).
    pub async fn publish_checkpoint(&self, checkpoint: &tandem_store::CheckpointRow) {
        let channels = match self.store.channels().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read channels; the checkpoint is not published");
                return;
            }
        };
        let to: Vec<ChannelRow> = channels
            .into_iter()
            .filter(|c| c.kind == "webhook" && c.service.is_none() && c.tier.is_none())
            .collect();
        self.queue(&Notice::checkpoint(checkpoint), &to).await;
    }

    /// Queues `notice` for each channel that wants it, in one write, and
    /// wakes the dispatcher.
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
        let to: Vec<ChannelRow> = channels
            .into_iter()
            .filter(|c| routed(c, &notice.service, tier.as_deref()))
            .collect();
        self.queue(&notice, &to).await;
    }

    /// Tells again, for each open page nobody has acknowledged, the
    /// channels that repeat (every `repeat_s`), and escalates it once to a
    /// channel's `escalate_to` (`escalate_after_s` after it opened). Called
    /// by the monitor every second; what was sent is read from the outbox,
    /// so a restarted server neither repeats early nor escalates twice.
    pub async fn follow_up(&self, open: &[IncidentRow]) {
        let pages: Vec<&IncidentRow> = open
            .iter()
            .filter(|i| i.status == "open" && i.severity == "page")
            .collect();
        if pages.is_empty() {
            return;
        }
        let Ok(channels) = self.store.channels().await else {
            return;
        };
        let now = jiff::Timestamp::now();
        let age = |ts: &str| {
            ts.parse::<jiff::Timestamp>()
                .map(|t| now.duration_since(t).as_secs())
                .unwrap_or(0)
        };
        for incident in pages {
            let Ok(sent) = self.store.outbox_of(incident.id).await else {
                continue;
            };
            let tier = match self.store.service(&incident.service).await {
                Ok(Some(s)) => Some(s.tier),
                _ => None,
            };
            for ch in channels
                .iter()
                .filter(|c| routed(c, &incident.service, tier.as_deref()))
            {
                if let Some(every) = ch.repeat_s {
                    let last = sent
                        .iter()
                        .filter(|n| n.channel == ch.id)
                        .map(|n| n.created_at.as_str())
                        .max();
                    if last.is_some_and(|l| age(l) >= every) {
                        let notice = Notice::incident(incident, "incident.repeated");
                        self.queue(&notice, std::slice::from_ref(ch)).await;
                    }
                }
                if let (Some(after), Some(to)) = (ch.escalate_after_s, ch.escalate_to)
                    && age(&incident.opened_at) >= after
                    && !sent
                        .iter()
                        .any(|n| n.channel == to && n.event == "incident.escalated")
                    && let Some(target) = channels.iter().find(|c| c.id == to)
                {
                    let notice = Notice::incident(incident, "incident.escalated");
                    self.queue(&notice, std::slice::from_ref(target)).await;
                }
            }
        }
    }

    /// Queues `notice` for the channels `to`, in one write, and wakes the
    /// dispatcher.
    async fn queue(&self, notice: &Notice, to: &[ChannelRow]) {
        let mut body = notice.json.clone();
        body["event"] = serde_json::json!(notice.event);
        body["occurred_at"] = serde_json::json!(tandem_store::now_ts());
        let queued = Queued {
            service: notice.service.clone(),
            body: body.to_string(),
            line: notice.line.clone(),
            text: notice.text.clone(),
        };
        let queued = serde_json::to_string(&queued).unwrap_or_default();
        let rows: Vec<(i64, String)> = to.iter().map(|c| (c.id, webhook_id())).collect();
        if rows.is_empty() {
            return;
        }
        let notices: Vec<NewNotice> = rows
            .iter()
            .map(|(channel, id)| NewNotice {
                webhook_id: id,
                channel: *channel,
                incident: notice.incident,
                event: &notice.event,
                notice: &queued,
            })
            .collect();
        match self.store.enqueue(&notices).await {
            Ok(()) => self.wake.notify_one(),
            Err(e) => {
                // A store that cannot write (a full disk: the very incident
                // to tell) must not silence the channels: sent from memory,
                // a few tries, unrecorded.
                tracing::error!(error = %e, event = %notice.event, "cannot queue notifications; sending them unrecorded");
                for (channel, webhook_id) in rows {
                    let Some(ch) = to.iter().find(|c| c.id == channel).cloned() else {
                        continue;
                    };
                    let row = OutboxRow {
                        id: 0,
                        webhook_id,
                        channel,
                        incident: notice.incident,
                        event: notice.event.clone(),
                        notice: String::new(),
                        status: "pending".into(),
                        attempts: 0,
                        next_at: String::new(),
                        last_detail: None,
                        created_at: String::new(),
                        done_at: None,
                    };
                    let (this, queued) = (self.clone(), serde_json::from_str::<Queued>(&queued));
                    if let Ok(queued) = queued {
                        tokio::spawn(async move { this.unrecorded(ch, row, queued).await });
                    }
                }
            }
        }
    }

    /// Up to five tries of a notification the store could not keep.
    async fn unrecorded(&self, ch: ChannelRow, row: OutboxRow, queued: Queued) {
        for attempt in 1..=5 {
            let sent = tokio::time::timeout(SEND_TIMEOUT, self.send(&ch, &row, &queued)).await;
            if matches!(sent, Ok(Ok(_))) {
                return;
            }
            tracing::warn!(channel = ch.id, event = %row.event, attempt, "unrecorded notification failed");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Sends what is due, for as long as the server runs: at most
    /// [`AT_ONCE`] at a time, each taken with a lease so that a server
    /// that dies mid-send leaves it due again.
    pub async fn dispatch(self) {
        let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
        loop {
            let taken = match self
                .store
                .take_due(&tandem_store::ts_in(LEASE), BATCH)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            let full = taken.len() as i64 == BATCH;
            // The channels once a pass, not once a notification. Unreadable:
            // the leases end and the rows are due again.
            let channels = match taken.is_empty() {
                true => Vec::new(),
                false => match self.store.channels().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read channels; trying again later");
                        continue;
                    }
                },
            };
            for row in taken {
                let Some(channel) = channels.iter().find(|c| c.id == row.channel).cloned() else {
                    // Removed: given up, recorded.
                    self.attempt(row, None).await;
                    continue;
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.attempt(row, Some(channel)).await;
                    drop(slot);
                });
            }
            if !full {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// One attempt at `row`, recorded: delivered, due again after its
    /// backoff, or given up a day after it was queued.
    /// `channel` is `None` when it was removed.
    async fn attempt(&self, row: OutboxRow, channel: Option<ChannelRow>) {
        let result = match (&channel, serde_json::from_str::<Queued>(&row.notice)) {
            (None, _) => Err("the channel was removed".to_owned()),
            (_, Err(e)) => Err(format!("unreadable notification: {e}")),
            (Some(ch), Ok(queued)) => {
                tokio::time::timeout(SEND_TIMEOUT, self.send(ch, &row, &queued))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {SEND_TIMEOUT:?}")))
            }
        };
        let attempt = row.attempts + 1;
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        let given_up = channel.is_none()
            || row
                .created_at
                .parse::<jiff::Timestamp>()
                .is_ok_and(|at| jiff::Timestamp::now().duration_since(at).unsigned_abs() > GIVE_UP);
        let next = (!ok && !given_up).then(|| tandem_store::ts_in(backoff(attempt)));
        if !ok {
            tracing::warn!(channel = row.channel, event = %row.event, attempt, %detail, retry_at = ?next, "notification failed");
        }
        if let Err(e) = self
            .store
            .attempted(&row, ok, &detail, next.as_deref())
            .await
        {
            tracing::warn!(error = %e, "cannot record a delivery attempt; it is sent again when its lease ends");
        }
    }

    async fn send(
        &self,
        ch: &ChannelRow,
        row: &OutboxRow,
        queued: &Queued,
    ) -> Result<String, String> {
        match ch.kind.as_str() {
            "webhook" => {
                let now = jiff::Timestamp::now().as_second();
                let mut headers = vec![
                    ("content-type", "application/json".to_owned()),
                    ("webhook-id", row.webhook_id.clone()),
                    ("webhook-timestamp", now.to_string()),
                ];
                if let Some(secret) = &ch.secret {
                    headers.push((
                        "webhook-signature",
                        webhook_signature(secret, &row.webhook_id, now, queued.body.as_bytes()),
                    ));
                }
                self.post(&ch.target, headers, queued.body.clone()).await
            }
            "slack" => {
                let body = serde_json::json!({ "text": queued.line }).to_string();
                let headers = vec![("content-type", "application/json".into())];
                self.post(&ch.target, headers, body).await
            }
            "email" => send_mail(ch, &queued.line, &queued.text).await,
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

/// The wait before attempt `attempt + 1`: 1 s, 2 s, 4 s, … up to 10 min.
fn backoff(attempt: i64) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

/// A new notification's identity: `msg_` and 128 random bits.
fn webhook_id() -> String {
    let mut bytes = [0u8; 16];
    tandem_seal::random_bytes(&mut bytes);
    format!("msg_{}", tandem_core::journal::hex(&bytes))
}

/// Whether `ch` wants to hear about `service`: all, one service, or a tier.
fn routed(ch: &ChannelRow, service: &str, tier: Option<&str>) -> bool {
    ch.service.as_deref().is_none_or(|s| s == service)
        && ch.tier.as_deref().is_none_or(|t| Some(t) == tier)
}

/// One thing to tell: the JSON a webhook gets, the line Slack and an
/// e-mail subject get, and an e-mail body.
#[derive(Debug)]
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

    fn checkpoint(c: &tandem_store::CheckpointRow) -> Notice {
        let line = format!(
            "[tandem] journal checkpoint: {} events, root {}",
            c.size, c.root
        );
        Notice {
            incident: 0,
            service: String::new(),
            event: "checkpoint.signed".into(),
            json: serde_json::json!({ "checkpoint": c }),
            text: format!("{line}\n\n{}", c.note),
            line,
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

async fn send_mail(ch: &ChannelRow, subject: &str, text: &str) -> Result<String, String> {
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
        .subject(subject.to_owned())
        .body(text.to_owned())
        .map_err(|e| format!("cannot build the message: {e}"))?;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    // TLS as the channel says (the system's roots, and SSL_CERT_FILE):
    // STARTTLS required, or TLS from the first byte; plain only if asked
    // (a relay on this machine).
    let tls = || TlsParameters::new(host.to_owned()).map_err(|e| format!("smtp {smtp}: TLS: {e}"));
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(SEND_TIMEOUT));
    builder = match ch.smtp_tls.as_deref().unwrap_or("none") {
        "starttls" => builder.tls(Tls::Required(tls()?)),
        "tls" => builder.tls(Tls::Wrapper(tls()?)),
        _ => builder,
    };
    if let (Some(user), Some(password)) = (&ch.smtp_user, &ch.secret) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let transport = builder.build();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(service: Option<&str>, tier: Option<&str>) -> ChannelRow {
        ChannelRow {
            id: 1,
            kind: "webhook".into(),
            target: "http://127.0.0.1:9/".into(),
            secret: None,
            smtp: None,
            service: service.map(str::to_owned),
            tier: tier.map(str::to_owned),
            created_at: String::new(),
            repeat_s: None,
            escalate_after_s: None,
            escalate_to: None,
            smtp_tls: None,
            smtp_user: None,
        }
    }

    #[test]
    fn a_scoped_channel_hears_only_of_its_service_or_tier() {
        let all = channel(None, None);
        let shop = channel(Some("shop"), None);
        let critical = channel(None, Some("critical"));
        assert!(routed(&all, "shop", Some("standard")));
        assert!(routed(&shop, "shop", Some("standard")));
        assert!(!routed(&shop, "cart", Some("critical")));
        assert!(routed(&critical, "cart", Some("critical")));
        assert!(!routed(&critical, "shop", Some("standard")));
        assert!(!routed(&critical, "gone", None), "a service without a tier");
    }

    #[test]
    fn retries_back_off_from_a_second_to_ten_minutes() {
        let waits: Vec<u64> = (1..=12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff(i64::MAX), MAX_RETRY);
        assert!(webhook_id().starts_with("msg_") && webhook_id().len() == 36);
        assert_ne!(webhook_id(), webhook_id());
    }
}
