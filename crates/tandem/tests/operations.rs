//! End-to-end operations (issue 4): incidents opened and resolved by the
//! monitor, told to a real HTTP receiver (signature checked) and a real SMTP
//! server, and a crash-looping service that harms nobody else.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use util::{Env, Load, assert_ok, receiver, wait_until};

/// A tiny app: `/health` answers 200 while `$HEALTH_FILE` exists, else 503;
/// everything else `ok`, or 500 while `$HEALTH_FILE.errors` exists. Exits at once when `$CRASH_FILE` exists.
const APP: &str = r#"import http.server, os, sys
if os.path.exists(os.environ.get("CRASH_FILE", "/nonexistent")):
    print("crash file present; exiting", flush=True)
    sys.exit(3)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/health":
            code = 200 if os.path.exists(os.environ["HEALTH_FILE"]) else 503
        elif os.path.exists(os.environ["HEALTH_FILE"] + ".errors"):
            code = 500
        else:
            code = 200
        body = b"ok" if code == 200 else b"unhealthy"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Writes a service directory for [`APP`]; returns (dir, health file, crash file).
fn app(env: &Env, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = env.root.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let health = env.root.path().join(format!("{name}.healthy"));
    let crash = env.root.path().join(format!("{name}.crash"));
    std::fs::write(&health, "").expect("health file");
    std::fs::write(dir.join("app.py"), APP).expect("app");
    std::fs::write(
        dir.join("tandem.yaml"),
        format!(
            "service:\n  name: {name}\n  tier: critical\nrun:\n  command: exec python3 app.py\n  instances: 2\n  stop_timeout: 5s\n  env:\n    HEALTH_FILE: {}\n    CRASH_FILE: {}\nroute:\n  host: {name}.test\nhealth:\n  readiness: {{ http: /health, interval: 1s, timeout: 1s, failures: 1 }}\nrelease:\n  deploy_timeout: 20s\n  drain_timeout: 2s\n",
            health.display(),
            crash.display()
        ),
    )
    .expect("spec");
    (dir, health, crash)
}

/// Deploys [`app`] `name`, makes it unhealthy, and waits for its
/// `no-ready-instance` incident.
fn unhealthy(env: &Env, name: &str) -> serde_json::Value {
    let (dir, health, _) = app(env, name);
    assert_ok(&env.deploy(&dir));
    std::fs::remove_file(&health).expect("unhealthy");
    wait_until(Duration::from_secs(10), "an incident", || {
        incidents(env)
            .into_iter()
            .find(|i| i["kind"] == "no-ready-instance" && i["service"] == name)
    })
}

/// The `n`th notification a receiver got about services: the journal's
/// signed checkpoints, published to every unscoped webhook, are left out.
fn told(got: &std::sync::Mutex<Vec<util::Received>>, n: usize) -> Option<util::Received> {
    got.lock()
        .expect("lock")
        .iter()
        .filter(|r| !r.body.contains("\"event\":\"checkpoint.signed\""))
        .nth(n)
        .cloned()
}

fn incidents(env: &Env) -> Vec<serde_json::Value> {
    let out = env.tandem(&["incidents", "-o", "json"]);
    assert_ok(&out);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The Standard Webhooks signature of a notification, computed here on
/// its own: `v1,` base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")).
fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    use base64::Engine;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Checks a received notification as a receiver would: signed over its
/// id, time and body, sent just now.
fn assert_signed(r: &util::Received, secret: &str) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    assert!(id.starts_with("msg_"), "{id}");
    let sent: i64 = ts.parse().expect("seconds");
    assert!(
        (jiff::Timestamp::now().as_second() - sent).abs() < 300,
        "{ts}"
    );
    assert_eq!(
        r.header("webhook-signature"),
        Some(standard_signature(secret, id, ts, &r.body).as_str())
    );
    assert!(
        r.header("x-tandem-signature").is_none(),
        "the replayable one is gone"
    );
}

#[test]
fn failing_health_opens_an_incident_that_is_told_signed_and_resolves_on_recovery() {
    let env = Env::start();
    let (hook, got) = receiver();
    let out = env.tandem(&[
        "channels",
        "add",
        "webhook",
        &format!("http://{hook}/tandem"),
        "--secret",
        "hook-secret",
    ]);
    assert_ok(&out);
    let (slack, slack_got) = receiver();
    assert_ok(&env.tandem(&[
        "channels",
        "add",
        "slack",
        &format!("http://{slack}/services/T000/B000/XXXX"),
        "--service",
        "api",
    ]));
    let (dir, health, _) = app(&env, "api");
    assert_ok(&env.deploy(&dir));
    assert_eq!(env.get("api.test", "/").0, 200);

    std::fs::remove_file(&health).expect("make it unhealthy");
    let failing = Instant::now();
    let incident = wait_until(Duration::from_secs(10), "an incident", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["kind"] == "no-ready-instance")
    });
    eprintln!(
        "incident opened {:?} after health started failing",
        failing.elapsed()
    );
    assert_eq!(incident["service"], "api");
    assert_eq!(incident["status"], "open");
    assert_eq!(incident["severity"], "page");
    assert_eq!(incident["release"], "r1", "linked to the live release");
    assert_eq!(incident["suspect_release"], "r1", "deployed moments before");
    assert!(
        incident["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "{incident}"
    );

    let opened = wait_until(Duration::from_secs(10), "the opened notification", || {
        told(&got, 0)
    });
    assert_signed(&opened, "hook-secret");
    let body: serde_json::Value = serde_json::from_str(&opened.body).expect("json body");
    assert_eq!(body["event"], "incident.opened");
    assert_eq!(body["incident"]["id"], incident["id"]);
    let posted = wait_until(Duration::from_secs(10), "the Slack message", || {
        slack_got.lock().expect("lock").first().cloned()
    });
    let text: serde_json::Value = serde_json::from_str(&posted.body).expect("slack json");
    let text = text["text"].as_str().expect("a Slack `text`");
    assert!(
        text.contains(&format!("incident #{} opened: api", incident["id"])),
        "{text}"
    );

    std::fs::write(&health, "").expect("healthy again");
    let recovered = Instant::now();
    let resolved = wait_until(Duration::from_secs(15), "resolution", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["id"] == incident["id"] && i["status"] == "resolved")
    });
    eprintln!("resolved {:?} after health returned", recovered.elapsed());
    assert_eq!(resolved["resolved_by"], "system:monitor");
    let second = wait_until(Duration::from_secs(10), "the resolved notification", || {
        told(&got, 1)
    });
    assert_signed(&second, "hook-secret");
    assert_ne!(
        second.header("webhook-id"),
        opened.header("webhook-id"),
        "each notification has an id of its own"
    );
    let body: serde_json::Value = serde_json::from_str(&second.body).expect("json");
    assert_eq!(body["event"], "incident.resolved");

    // Every attempt is recorded; a resolved incident cannot be acknowledged.
    let id = incident["id"].as_i64().expect("id").to_string();
    let out = env.tandem(&["incidents", "ack", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let journal = String::from_utf8_lossy(&env.tandem(&["audit", "events"]).stdout).into_owned();
    assert!(journal.contains("incident.opened") && journal.contains("incident.resolved"));
    // Probe results stay in memory; the readiness changes are journaled.
    assert!(
        journal.contains("instance.unready") && journal.contains("instance.ready"),
        "{journal}"
    );
}

/// Python with aiosmtpd: `$TANDEM_TEST_PYTHON` (set by .ci/run), else python3.
fn smtp_python() -> String {
    std::env::var("TANDEM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Starts an aiosmtpd script and waits for its "ready".
fn start_smtpd(cmd: &mut std::process::Command) -> std::process::Child {
    let mut smtpd = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the SMTP server");
    let mut ready = String::new();
    BufReader::new(smtpd.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("read");
    if ready.trim() != "ready" {
        let mut err = String::new();
        let _ = smtpd.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!("aiosmtpd did not start (install it: .ci/run does): {err}");
    }
    smtpd
}

const SMTPD: &str = r#"import sys, time
from aiosmtpd.controller import Controller
class Keep:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], "a") as f:
            f.write("RCPT " + ",".join(envelope.rcpt_tos) + "\n")
            f.write(envelope.content.decode("utf8", "replace") + "\n=====\n")
        return "250 OK"
c = Controller(Keep(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

#[test]
fn incidents_reach_a_real_smtp_server_and_manual_ack_and_resolve_are_recorded() {
    let env = Env::start();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mailbox = env.root.path().join("mailbox");
    let script = env.root.path().join("smtpd.py");
    std::fs::write(&script, SMTPD).expect("script");
    let mut smtpd = start_smtpd(
        std::process::Command::new(smtp_python())
            .arg(&script)
            .arg(port.to_string())
            .arg(&mailbox),
    );
    assert_ok(&env.tandem(&[
        "channels",
        "add",
        "email",
        "oncall@example.test",
        "--smtp",
        &format!("127.0.0.1:{port}"),
        "--tier",
        "critical",
    ]));
    let incident = unhealthy(&env, "mail");
    let id = incident["id"].as_i64().expect("id").to_string();
    let mail = wait_until(Duration::from_secs(10), "the e-mail", || {
        std::fs::read_to_string(&mailbox)
            .ok()
            .filter(|m| m.contains("====="))
    });
    assert!(mail.contains("RCPT oncall@example.test"), "{mail}");
    assert!(mail.contains(&format!("incident #{id} opened")), "{mail}");
    assert!(mail.contains("release: r1"), "{mail}");

    assert_ok(&env.tandem(&["incidents", "ack", &id]));
    assert_ok(&env.tandem(&[
        "incidents",
        "resolve",
        &id,
        "--note",
        "restarted the database",
    ]));
    let row = incidents(&env)
        .into_iter()
        .find(|i| i["id"].as_i64().map(|n| n.to_string()) == Some(id.clone()))
        .expect("incident");
    assert_eq!(row["status"], "resolved");
    assert!(
        row["acknowledged_by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("user:")
    );
    assert!(
        row["resolved_by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("user:")
    );
    assert_eq!(row["note"], "restarted the database");
    let mails = wait_until(Duration::from_secs(10), "three e-mails", || {
        std::fs::read_to_string(&mailbox)
            .ok()
            .filter(|m| m.matches("=====").count() >= 3)
    });
    assert!(
        mails.contains("acknowledged") && mails.contains("resolved"),
        "{mails}"
    );
    let _ = smtpd.kill();
    let _ = smtpd.wait();
}

fn kill_instances(env: &Env, service: &str) {
    for i in env.instances(service) {
        if let Some(pid) = i["pid"].as_i64() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn a_crash_looping_service_backs_off_to_its_cap_raises_an_incident_and_harms_no_other() {
    let env = Env::start_with(&[("TANDEM_BACKOFF_CAP_MS", "800")]);
    let (steady, _, _) = app(&env, "steady");
    assert_ok(&env.deploy(&steady));
    let (crashy, _, crash) = app(&env, "crashy");
    assert_ok(&env.deploy(&crashy));
    let load = Load::start(&env.proxy, "steady.test", 4);

    std::fs::write(&crash, "").expect("crash from now on");
    kill_instances(&env, "crashy");
    let incident = wait_until(Duration::from_secs(20), "a crash-loop incident", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["kind"] == "crash-loop" && i["service"] == "crashy")
    });
    assert!(
        incident["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("crash-looping"),
        "{incident}"
    );
    // Backed off to the cap: restarts go on, about one per 800 ms, not faster.
    let restarts = |env: &Env| -> u64 {
        env.instances("crashy")
            .iter()
            .filter_map(|i| i["restarts"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let before = restarts(&env);
    std::thread::sleep(Duration::from_secs(4));
    let during = restarts(&env) - before;
    eprintln!("restarts in 4 s at the 800 ms cap: {during}");
    assert!((2..=7).contains(&during), "{during} restarts in 4 s");
    assert!(
        env.instances("crashy")
            .iter()
            .all(|i| i["crash_looping"] == true)
    );

    let r = load.finish();
    eprintln!("steady: requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(
        r.failed,
        0,
        "failed: {:?}",
        &r.failures[..r.failures.len().min(5)]
    );
    assert!(r.ok > 100);
    assert!(
        incidents(&env).iter().all(|i| i["service"] != "steady"),
        "the other service has no incident"
    );

    // Fixed: it stops crashing, gets ready, and the incident resolves.
    std::fs::remove_file(&crash).expect("no more crashes");
    let _ = Path::new(&crash);
    wait_until(Duration::from_secs(20), "readiness again", || {
        env.instances("crashy")
            .iter()
            .all(|i| i["ready"] == true)
            .then_some(())
    });
    assert_eq!(env.get("crashy.test", "/").0, 200);
}

#[test]
fn maintenance_is_announced_mutes_alerts_and_the_proxy_can_serve_a_maintenance_page() {
    let env = Env::start();
    let (hook, got) = receiver();
    assert_ok(&env.tandem(&["channels", "add", "webhook", &format!("http://{hook}/t")]));
    let (dir, health, _) = app(&env, "shop");
    let mut spec = std::fs::read_to_string(dir.join("tandem.yaml")).expect("spec");
    spec.push_str("slo:\n  - { name: availability, objective: 99.9%, window: calendar-month }\n  - { name: fast, objective: 99%, threshold: 300ms, window: 30d }\n");
    std::fs::write(dir.join("tandem.yaml"), spec).expect("spec");
    assert_ok(&env.deploy(&dir));

    // The maintenance page: 503 with Retry-After, nothing forwarded; then off.
    assert_ok(&env.tandem(&["maintenance", "on", "shop", "--retry-after", "120"]));
    let mut s = std::net::TcpStream::connect(&env.proxy).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("read");
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.to_ascii_lowercase().contains("retry-after: 120"),
        "{page}"
    );
    assert_eq!(
        env.status_json("shop")["services"][0]["maintenance_mode"],
        120
    );
    assert_ok(&env.tandem(&["maintenance", "off", "shop"]));
    assert_eq!(env.get("shop.test", "/").0, 200);

    // A window that covers now: announced, and a failing health opens nothing.
    let now = jiff::Timestamp::now();
    let from = (now - jiff::SignedDuration::from_secs(60)).to_string();
    let to = (now + jiff::SignedDuration::from_secs(3600)).to_string();
    assert_ok(&env.tandem(&[
        "maintenance",
        "add",
        "shop",
        "--from",
        &from,
        "--to",
        &to,
        "--reason",
        "database upgrade",
    ]));
    let announced = wait_until(Duration::from_secs(10), "the announcement", || {
        told(&got, 0)
    });
    let body: serde_json::Value = serde_json::from_str(&announced.body).expect("json");
    assert_eq!(body["event"], "maintenance.scheduled");
    assert_eq!(body["maintenance"]["reason"], "database upgrade");
    std::fs::remove_file(&health).expect("unhealthy");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        incidents(&env).is_empty(),
        "alerts are muted in maintenance: {:?}",
        incidents(&env)
    );

    // Bad input: a window that ends before it starts.
    let out = env.tandem(&[
        "maintenance",
        "add",
        "shop",
        "--from",
        &to,
        "--to",
        &from,
        "--reason",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Status shows each SLO with its attainment, budget and burn rates.
    let status = env.status_json("shop");
    let slos = status["services"][0]["slo"]
        .as_array()
        .expect("slo")
        .clone();
    assert_eq!(slos.len(), 2, "{status}");
    assert_eq!(slos[0]["name"], "availability");
    assert!((slos[0]["objective"].as_f64().expect("objective") - 0.999).abs() < 1e-12);
    assert_eq!(slos[1]["threshold_ms"], 300);
    for s in &slos {
        assert!(s["attainment"].as_f64().is_some() && s["budget_remaining"].as_f64().is_some());
        assert_eq!(s["burn_rates"].as_array().map(Vec::len), Some(5), "{s}");
    }
    let table = env.tandem(&["status", "shop"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("availability") && table.contains("maintenance #1"),
        "{table}"
    );
    // It was the window that held the incident back: cancelled, it opens.
    assert_ok(&env.tandem(&["maintenance", "rm", "1"]));
    wait_until(
        Duration::from_secs(10),
        "the incident once the window is gone",
        || {
            incidents(&env)
                .into_iter()
                .find(|i| i["kind"] == "no-ready-instance")
        },
    );
}

#[test]
fn a_service_answering_with_errors_opens_an_error_ratio_incident() {
    let env = Env::start();
    let (dir, health, _) = app(&env, "flaky");
    assert_ok(&env.deploy(&dir));
    let errors = PathBuf::from(format!("{}.errors", health.display()));
    std::fs::write(&errors, "").expect("errors from now on");
    for _ in 0..30 {
        assert_eq!(env.get("flaky.test", "/").0, 500);
    }
    let incident = wait_until(Duration::from_secs(10), "an error-ratio incident", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["kind"] == "error-ratio")
    });
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("with 5xx"), "{summary}");
    assert_eq!(incident["release"], "r1");
    assert!(
        incidents(&env)
            .iter()
            .all(|i| i["kind"] != "no-ready-instance"),
        "the instances stay ready; only their answers are wrong"
    );
}

/// The SLO of a service in `status -o json`.
fn slo_of(env: &Env, service: &str) -> serde_json::Value {
    env.status_json(service)["services"][0]["slo"][0].clone()
}

fn burn(slo: &serde_json::Value, window: &str) -> f64 {
    slo["burn_rates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b[0] == window)
        .and_then(|b| b[1].as_f64())
        .unwrap_or(f64::NAN)
}

/// Issue 17: the monitor rolls real minutes up, a quiet service that was
/// unready for seven seconds is judged by its probes (a fraction of one
/// minute, no page), and a service failing its requests burns its budget
/// and opens a `burn-rate` page — both through the running server, across
/// a real minute boundary.
#[test]
fn minutes_are_rolled_up_and_judge_a_quiet_blip_mildly_and_a_burning_service_with_a_page() {
    let env = Env::start();
    let slo = "slo:\n  - { name: availability, objective: 99.9%, window: calendar-month }\n";
    let (quiet, quiet_health, _) = app(&env, "quiet");
    let (burning, burning_health, _) = app(&env, "burning");
    for dir in [&quiet, &burning] {
        let spec = std::fs::read_to_string(dir.join("tandem.yaml")).expect("spec") + slo;
        std::fs::write(dir.join("tandem.yaml"), spec).expect("spec");
        assert_ok(&env.deploy(dir));
    }
    // The quiet one gets no request at all and is unready for about 7 s.
    std::fs::remove_file(&quiet_health).expect("unready");
    std::thread::sleep(Duration::from_secs(7));
    std::fs::write(&quiet_health, "").expect("ready again");
    // The burning one answers every request with 500.
    std::fs::write(format!("{}.errors", burning_health.display()), "").expect("errors");
    let load = Load::start(&env.proxy, "burning.test", 2);

    // Once the minute the blip ended in is over (readiness returns within
    // about a second), the monitor has stored it.
    std::thread::sleep(Duration::from_secs(2));
    let now = jiff::Timestamp::now().as_second();
    std::thread::sleep(Duration::from_secs((60 - now % 60 + 3) as u64));
    let quiet_slo = wait_until(
        Duration::from_secs(10),
        "the quiet service's minutes",
        || {
            let s = slo_of(&env, "quiet");
            let bad = s["total"].as_f64()? - s["good"].as_f64()?;
            (bad > 0.0).then_some(s)
        },
    );
    let page = wait_until(Duration::from_secs(150), "a burn-rate page", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["kind"] == "burn-rate" && i["service"] == "burning")
    });
    let r = load.finish();
    eprintln!(
        "quiet: {quiet_slo}\nburning: {}; load ok={} failed={}",
        page["summary"], r.ok, r.failed
    );
    let bad =
        quiet_slo["total"].as_f64().expect("total") - quiet_slo["good"].as_f64().expect("good");
    // About 7 of 60 looks (readiness needs up to a second either way).
    assert!((2.0 / 60.0..=12.0 / 60.0).contains(&bad), "{quiet_slo}");
    assert_eq!(quiet_slo["requests"], 0, "{quiet_slo}");
    assert!(
        quiet_slo["budget_remaining"].as_f64().expect("budget") > 0.99,
        "{quiet_slo}"
    );
    assert!(burn(&quiet_slo, "1h") < 14.4 / 4.0, "{quiet_slo}");
    assert!(quiet_slo["alert"].is_null(), "{quiet_slo}");
    assert!(
        incidents(&env)
            .iter()
            .all(|i| !(i["service"] == "quiet" && i["kind"] == "burn-rate")),
        "a quiet blip pages nobody: {:?}",
        incidents(&env)
    );

    assert_eq!(page["severity"], "page", "{page}");
    assert!(
        page["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("burns its error budget"),
        "{page}"
    );
    let burning_slo = slo_of(&env, "burning");
    assert!(
        burning_slo["requests"].as_u64().expect("requests") > 0,
        "{burning_slo}"
    );
    assert!(
        burning_slo["attainment"].as_f64().expect("attainment") < 0.5,
        "{burning_slo}"
    );
    assert!(
        burn(&burning_slo, "5m") > 14.4 && burn(&burning_slo, "1h") > 14.4,
        "{burning_slo}"
    );
    assert_eq!(burning_slo["alert"], "page", "{burning_slo}");
}

const HTTPS_RECEIVER: &str = r#"import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[4], "ab") as f:
            f.write((self.headers.get("webhook-id", "") + " " + self.headers.get("webhook-timestamp", "") + " " + self.headers.get("webhook-signature", "")).encode() + b"\n" + body + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// A CA and a `localhost` certificate it signed, made with the openssl CLI.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=tandem test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

#[test]
fn notifications_reach_an_https_receiver_trusted_through_ssl_cert_file() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(certs.path());
    let env = Env::start_with(&[("SSL_CERT_FILE", ca.to_str().expect("utf8"))]);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let got = env.root.path().join("received");
    let script = env.root.path().join("https_receiver.py");
    std::fs::write(&script, HTTPS_RECEIVER).expect("script");
    let mut receiver = std::process::Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(&got)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receiver");
    let mut ready = String::new();
    BufReader::new(receiver.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("read");
    assert_eq!(ready.trim(), "ready");
    assert_ok(&env.tandem(&[
        "channels",
        "add",
        "webhook",
        &format!("https://localhost:{port}/hook"),
        "--secret",
        "tls-secret",
    ]));
    let (dir, health, _) = app(&env, "secure");
    assert_ok(&env.deploy(&dir));
    std::fs::remove_file(&health).expect("unhealthy");
    // Each notification is two lines: its headers, its body (checkpoints
    // of the journal may come first).
    let received = wait_until(Duration::from_secs(15), "a notification over https", || {
        let text = std::fs::read_to_string(&got).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines
            .chunks(2)
            .find(|pair| pair.len() == 2 && pair[1].contains("\"incident.opened\""))
            .map(<[String]>::to_vec)
    });
    let (head, body) = (received[0].as_str(), received[1].as_str());
    let mut head = head.split(' ');
    let (id, ts, sig) = (
        head.next().expect("id"),
        head.next().expect("ts"),
        head.next().expect("sig"),
    );
    assert_eq!(sig, standard_signature("tls-secret", id, ts, body));
    assert!(body.contains("\"incident.opened\""), "{body}");
    let _ = receiver.kill();
    let _ = receiver.wait();
}

#[test]
fn an_unreachable_agent_is_an_incident_until_it_answers_again() {
    let env = Env::start();
    let (dir, _, _) = app(&env, "web");
    assert_ok(&env.deploy(&dir));
    let agent_pid = env.status_json("web")["agent"]["pid"]
        .as_i64()
        .expect("agent pid");
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &agent_pid.to_string()])
            .status();
    };
    // A hung agent: it holds its lock, so nobody starts another, and it
    // does not answer. (One that dies is started again by `up` at once.)
    signal("-STOP");
    let stopped = Instant::now();
    let incident = wait_until(
        Duration::from_secs(15),
        "an agent-unreachable incident",
        || {
            incidents(&env)
                .into_iter()
                .find(|i| i["kind"] == "agent-unreachable")
        },
    );
    eprintln!(
        "agent-unreachable incident {:?} after the agent stopped",
        stopped.elapsed()
    );
    assert_eq!(incident["service"], "tandem-agent");
    assert_eq!(incident["severity"], "page");
    signal("-CONT");
    wait_until(Duration::from_secs(15), "the incident resolved", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["id"] == incident["id"] && i["status"] == "resolved")
    });
    wait_until(Duration::from_secs(15), "web serving again", || {
        (env.get("web.test", "/").0 == 200).then_some(())
    });
    assert_eq!(
        env.status_json("web")["agent"]["pid"].as_i64(),
        Some(agent_pid),
        "the same agent"
    );
}

#[test]
fn a_live_release_that_runs_nowhere_is_an_incident_until_it_serves_again() {
    let mut env = Env::start();
    let (dir, _, crash) = app(&env, "web");
    assert_ok(&env.deploy(&dir));
    assert_ok(&env.tandem(&["down"]));
    // Now it cannot start: `up` tries to start it again, and fails.
    std::fs::write(&crash, "").expect("crash file");
    env.up_again();
    let started = Instant::now();
    let incident = wait_until(
        Duration::from_secs(30),
        "a no-ready-instance incident for web",
        || {
            incidents(&env)
                .into_iter()
                .find(|i| i["service"] == "web" && i["kind"] == "no-ready-instance")
        },
    );
    eprintln!(
        "incident {:?} after up: {}",
        started.elapsed(),
        incident["summary"]
    );
    assert_eq!(incident["severity"], "page");
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("no instance of it runs"), "{summary}");
    let out = env.tandem(&["audit", "events"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restore.failed"),
        "the failed start is journalled"
    );
    std::fs::remove_file(&crash).expect("remove crash file");
    assert_ok(&env.deploy(&dir));
    wait_until(Duration::from_secs(15), "the incident resolved", || {
        incidents(&env)
            .into_iter()
            .find(|i| i["id"] == incident["id"] && i["status"] == "resolved")
    });
}

#[test]
fn a_notification_to_a_receiver_that_is_down_survives_a_restart_and_arrives_once_with_its_id() {
    let mut env = Env::start();
    // The receiver's port, with nobody listening on it yet.
    let port = util::free_port();
    assert_ok(&env.tandem(&[
        "channels",
        "add",
        "webhook",
        &format!("http://127.0.0.1:{port}/hook"),
        "--secret",
        "outbox-secret",
    ]));
    let incident = unhealthy(&env, "down");
    let id = incident["id"].as_i64().expect("id").to_string();
    let show = |env: &Env| -> serde_json::Value {
        let out = env.tandem(&["incidents", "show", &id, "-o", "json"]);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).expect("json")
    };
    // It fails, is kept, and waits for its next try.
    let pending = wait_until(Duration::from_secs(15), "two failed attempts", || {
        let v = show(&env);
        let n = v["notifications"][0].clone();
        (n["attempts"].as_i64()? >= 2 && n["status"] == "pending").then_some(n)
    });
    let webhook_id = pending["webhook_id"].as_str().expect("id").to_owned();
    let text =
        String::from_utf8_lossy(&env.tandem(&["incidents", "show", &id]).stdout).into_owned();
    assert!(
        text.contains("incident.opened to channel")
            && text.contains("pending")
            && text.contains("failed"),
        "{text}"
    );

    // The server dies with it undelivered; the receiver comes up; a new
    // server delivers it, with the id it had.
    env.kill_up();
    let (_, got) = util::receiver_on(port);
    env.up_again();
    let received = wait_until(Duration::from_secs(30), "the notification", || {
        got.lock()
            .expect("lock")
            .iter()
            .find(|r| r.body.contains("incident.opened"))
            .map(|r| (r.header("webhook-id").map(str::to_owned), r.body.clone()))
    });
    assert_eq!(received.0.as_deref(), Some(webhook_id.as_str()));
    let delivered = wait_until(Duration::from_secs(10), "it recorded as delivered", || {
        let v = show(&env);
        (v["notifications"][0]["status"] == "delivered").then_some(v)
    });
    let attempts = delivered["deliveries"].as_array().expect("attempts");
    assert!(attempts.len() >= 3, "{delivered:#}");
    assert_eq!(attempts.last().expect("last")["ok"], true);
    // Delivered once: no second copy of it arrives.
    std::thread::sleep(Duration::from_secs(2));
    let copies = got
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.header("webhook-id") == Some(webhook_id.as_str()))
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn an_unacknowledged_page_is_repeated_and_escalated_until_someone_acknowledges_it() {
    let env = Env::start();
    let (oncall, first) = receiver();
    let (manager, second) = receiver();
    // The escalation target hears of nothing else (scoped to another
    // service); the first channel repeats every 2 s and escalates at 3 s.
    let out = env.tandem(&[
        "channels",
        "add",
        "webhook",
        &format!("http://{manager}/hook"),
        "--service",
        "someone-else",
        "-o",
        "json",
    ]);
    assert_ok(&out);
    let manager_id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["id"]
        .as_i64()
        .expect("id")
        .to_string();
    assert_ok(&env.tandem(&[
        "channels",
        "add",
        "webhook",
        &format!("http://{oncall}/hook"),
        "--repeat",
        "2s",
        "--escalate-after",
        "3s",
        "--escalate-to",
        &manager_id,
    ]));
    // Bad follow-ups are refused, naming what is wrong, and change nothing.
    for (args, said) in [
        (&["--repeat", "0s"][..], "repeat must be at least 1s"),
        (&["--repeat", "soon"][..], "repeat:"),
        (
            &["--escalate-after", "3s", "--escalate-to", "999"][..],
            "no channel 999 to escalate to",
        ),
    ] {
        let out = env.tandem(
            &[
                &["channels", "add", "webhook", "http://127.0.0.1:9/x"][..],
                args,
            ]
            .concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(said),
            "{out:?}"
        );
    }
    let listed = env.tandem(&["channels", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let incident = unhealthy(&env, "paged");
    let id = incident["id"].as_i64().expect("id").to_string();
    let events = |got: &std::sync::Arc<std::sync::Mutex<Vec<util::Received>>>, kind: &str| {
        got.lock()
            .expect("lock")
            .iter()
            .filter(|r| r.body.contains(&format!("\"event\":\"{kind}\"")))
            .count()
    };
    wait_until(
        Duration::from_secs(20),
        "two repeats and an escalation",
        || {
            (events(&first, "incident.repeated") >= 2 && events(&second, "incident.escalated") == 1)
                .then_some(())
        },
    );
    assert_eq!(events(&first, "incident.opened"), 1);
    assert_eq!(events(&second, "incident.opened"), 0, "scoped away");
    // Acknowledged: no more repeats, no second escalation.
    assert_ok(&env.tandem(&["incidents", "ack", &id]));
    std::thread::sleep(Duration::from_millis(500));
    let repeats = events(&first, "incident.repeated");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        events(&first, "incident.repeated"),
        repeats,
        "repeated after the ack"
    );
    assert_eq!(events(&second, "incident.escalated"), 1);
    assert_eq!(events(&first, "incident.acknowledged"), 1);
}

const TLS_SMTPD: &str = r#"import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
mode, port, cert, key, mailbox = sys.argv[1:6]
class Keep:
    async def handle_DATA(self, server, session, envelope):
        with open(mailbox, "a") as f:
            tls = server.transport.get_extra_info("ssl_object") is not None
            f.write("TLS %s RCPT %s\n" % (tls, ",".join(envelope.rcpt_tos)))
            f.write(envelope.content.decode("utf8", "replace") + "\n=====\n")
        return "250 OK"
def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b"alerts" and data.password == b"relay-s3cret"
    with open(mailbox, "a") as f:
        f.write("AUTH %s\n" % ok)
    return AuthResult(success=ok)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
if mode == "starttls":
    c = Controller(Keep(), hostname="127.0.0.1", port=int(port), tls_context=ctx,
                   require_starttls=True, authenticator=auth, auth_require_tls=True)
else:
    c = Controller(Keep(), hostname="127.0.0.1", port=int(port), ssl_context=ctx,
                   authenticator=auth, auth_require_tls=False)
c.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

#[test]
fn e_mail_goes_over_starttls_or_implicit_tls_with_a_login() {
    // A certificate for 127.0.0.1, trusted through SSL_CERT_FILE.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_file, key_file) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    std::fs::write(&cert_file, cert.pem()).expect("cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("key");
    let env = Env::start_with(&[("SSL_CERT_FILE", cert_file.to_str().expect("utf-8"))]);
    // A login without TLS is refused: the password would cross in clear.
    let out = env.set_secret_with(
        &[
            "channels",
            "add",
            "email",
            "a@example.test",
            "--smtp",
            "192.0.2.1:25",
            "--smtp-tls",
            "none",
            "--smtp-user",
            "alerts",
        ],
        "relay-s3cret",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only over TLS"));

    let mut relays = Vec::new();
    for mode in ["starttls", "tls"] {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mailbox = dir.path().join(format!("{mode}.mbox"));
        let script = dir.path().join("tls_smtpd.py");
        std::fs::write(&script, TLS_SMTPD).expect("script");
        let smtpd = start_smtpd(
            std::process::Command::new(smtp_python())
                .arg(&script)
                .args([mode, &port.to_string()])
                .arg(&cert_file)
                .arg(&key_file)
                .arg(&mailbox),
        );
        let out = env.set_secret_with(
            &[
                "channels",
                "add",
                "email",
                &format!("{mode}@example.test"),
                "--smtp",
                &format!("127.0.0.1:{port}"),
                "--smtp-tls",
                mode,
                "--smtp-user",
                "alerts",
            ],
            "relay-s3cret",
        );
        assert_ok(&out);
        relays.push((mode, mailbox, smtpd));
    }
    // The password is the channel's secret: never shown.
    let listed = env.tandem(&["channels", "-o", "json"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("relay-s3cret"));

    let incident = unhealthy(&env, "mailed");
    for (mode, mailbox, mut smtpd) in relays {
        let mail = wait_until(Duration::from_secs(15), "the e-mail", || {
            std::fs::read_to_string(&mailbox)
                .ok()
                .filter(|m| m.contains("====="))
        });
        assert!(mail.contains("AUTH True"), "{mode}: {mail}");
        assert!(
            mail.contains(&format!("TLS True RCPT {mode}@example.test")),
            "{mode}: {mail}"
        );
        assert!(
            mail.contains(&format!("incident #{} opened", incident["id"])),
            "{mode}: {mail}"
        );
        let _ = smtpd.kill();
        let _ = smtpd.wait();
    }
}
