//! Issue 18: the journal's record checkable from outside. Signed
//! checkpoints kept by a witness (a copy of the witness file) prove that
//! the journal of later still extends them; a database rewritten
//! consistently from some event on (every hash recomputed, so the hash
//! chain alone holds) is caught, and where it diverges is named.

mod util;

use std::path::Path;
use std::process::Output;

use util::{Env, assert_ok};

/// Rewrites the journal in `db` as someone holding the file could:
/// `alter` gives event `k` another actor, `delete` removes it and renumbers
/// the ones after, `swap` exchanges it with the next; every later hash is recomputed (JCS as tandem hashes),
/// so the chain verifies again.
const REWRITE: &str = r#"
import hashlib, json, sqlite3, sys
db, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
c.execute("DROP TRIGGER IF EXISTS events_no_update")
c.execute("DROP TRIGGER IF EXISTS events_no_delete")
rows = c.execute("SELECT seq, ts, actor, kind, subject, payload, prev, hash FROM events WHERE seq >= ? ORDER BY seq", (k,)).fetchall()
c.execute("DELETE FROM events WHERE seq >= ?", (k,))
if mode == "delete":
    rows = rows[1:]
if mode == "swap":
    rows[0], rows[1] = rows[1], rows[0]
prev = c.execute("SELECT hash FROM events WHERE seq = ?", (k - 1,)).fetchone()
prev = prev[0] if prev else "0" * 64
for i, (seq, ts, actor, kind, subject, payload, _, _) in enumerate(rows):
    seq = k + i
    if mode == "alter" and i == 0:
        actor = "user:mallory"
    body = {"actor": actor, "kind": kind, "payload": json.loads(payload), "prev": prev,
            "seq": seq, "subject": json.loads(subject), "ts": ts}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = hashlib.sha256(canon.encode()).hexdigest()
    c.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (seq, ts, actor, kind, subject, payload, prev, h))
    prev = h
c.commit()
"#;

fn rewrite(db: &Path, mode: &str, k: u64) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(REWRITE)
        .arg(db)
        .arg(mode)
        .arg(k.to_string())
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A signed checkpoint of the journal now: (the note, its size).
fn checkpoint(env: &Env) -> (String, u64) {
    let out = env.tandem(&["audit", "checkpoint"]);
    assert_ok(&out);
    let note = String::from_utf8_lossy(&out.stdout).into_owned();
    let size = note
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("a size line");
    (note, size)
}

#[test]
fn a_witness_copy_of_signed_checkpoints_catches_a_consistent_rewrite_and_names_where() {
    let mut env = Env::start();
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));

    let key = env.tandem(&["keys", "show"]);
    assert_ok(&key);
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    assert!(
        key.starts_with("tandem/") && key.splitn(3, '+').count() == 3,
        "{key}"
    );

    let (first, size1) = checkpoint(&env);
    assert!(
        first.contains(&format!(
            "\n\n— {} ",
            key.split('+').next().unwrap_or_default()
        )),
        "{first}"
    );
    // Unchanged journal: the same checkpoint again.
    assert_eq!(checkpoint(&env).0, first);
    assert_ok(&env.deploy(&env.app("web", "", "v2")));
    let (second, size2) = checkpoint(&env);
    assert!(size2 > size1 + 2, "{size1} then {size2}");

    // The witness file beside the database holds both, readable by all;
    // a witness copies it away.
    let witness = env.data().join("checkpoints.log");
    let kept = std::fs::read_to_string(&witness).expect("witness file");
    assert!(kept.contains(&first) && kept.contains(&second), "{kept}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&witness)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "{mode:o}");
    let copy = env.root.path().join("witness-copy.log");
    std::fs::write(&copy, &kept).expect("copy");

    let verify = |env: &Env| {
        env.tandem(&[
            "audit",
            "verify",
            "--checkpoint",
            copy.to_str().expect("utf-8"),
            "--key",
            &key,
        ])
    };
    let out = verify(&env);
    assert_ok(&out);
    // Proven against a checkpoint signed now, not the server's word.
    assert!(
        !said(&out).contains("signs no checkpoint"),
        "{}",
        said(&out)
    );
    // (The server signs one of its own at its first start too.)
    assert!(
        said(&out).contains(&format!("(largest: {size2} events)")),
        "{}",
        said(&out)
    );

    // Checked with another key of the same name (someone else's secret):
    // refused as not signed by it.
    let name = key.split('+').next().expect("name");
    let stranger = tandem_proof::checkpoint::LogKey::from_seed(name, &[9; 32])
        .expect("key")
        .verifier_key()
        .to_owned();
    let out = env.tandem(&[
        "audit",
        "verify",
        "--checkpoint",
        copy.to_str().expect("utf-8"),
        "--key",
        &stranger,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("is not signed by"), "{}", said(&out));

    // Rewrites the stopped server's database, starts it again, and
    // returns what verifying against the witness copy says (it fails,
    // while the hash chain alone holds: every hash was recomputed).
    // Each rewrite starts from the journal as the witness saw it: the
    // database files as they were, put back before each.
    env.kill_up();
    let pristine = env.root.path().join("pristine");
    std::fs::create_dir_all(&pristine).expect("mkdir");
    let files = ["tandem.db", "tandem.db-wal", "tandem.db-shm"];
    for f in files {
        let _ = std::fs::copy(env.data().join(f), pristine.join(f));
    }
    let mut rewritten = |mode: &str, k: u64| {
        for f in files {
            let _ = std::fs::remove_file(env.data().join(f));
            let _ = std::fs::copy(pristine.join(f), env.data().join(f));
        }
        rewrite(&env.data().join("tandem.db"), mode, k);
        env.up_again();
        assert_ok(&env.tandem(&["audit", "verify"]));
        let out = verify(&env);
        assert_eq!(out.status.code(), Some(1), "{}", said(&out));
        // With no fresh signed checkpoint to prove against, it says so.
        assert!(
            said(&out).contains("signs no checkpoint now"),
            "{}",
            said(&out)
        );
        // And the server does not sign the rewritten journal.
        let signed = env.tandem(&["audit", "checkpoint"]);
        assert_ne!(signed.status.code(), Some(0), "{}", said(&signed));
        assert!(
            said(&signed).contains("no longer extends"),
            "{}",
            said(&signed)
        );
        env.kill_up();
        said(&out)
    };

    // An event after the first checkpoint deleted, the rest renumbered:
    // the first checkpoint holds, the second does not.
    let told = rewritten("delete", size1 + 2);
    assert!(
        told.contains(&format!("diverges from the checkpoint of {size2} events"))
            && told.contains(&format!("events 1..={size1} are as signed"))
            && told.contains(&format!("an event in {}..={size2}", size1 + 1)),
        "{told}"
    );

    // Two events after the first checkpoint exchanged (reordered), every
    // hash recomputed: the first checkpoint still holds, the second not.
    let told = rewritten("swap", size1 + 1);
    assert!(
        told.contains(&format!("diverges from the checkpoint of {size2} events"))
            && told.contains(&format!("events 1..={size1} are as signed")),
        "{told}"
    );

    // An event inside the first checkpoint given another actor: caught at
    // the first checkpoint.
    let told = rewritten("alter", size1 - 1);
    assert!(
        told.contains(&format!("diverges from the checkpoint of {size1} events"))
            && told.contains(&format!("..={size1} was changed, removed or reordered")),
        "{told}"
    );
}

#[test]
fn checkpoints_are_signed_as_the_journal_grows_and_published_to_webhook_witnesses() {
    let env = Env::start_with(&[("TANDEM_CHECKPOINT_EVERY", "1")]);
    let (hook, got) = util::receiver();
    assert_ok(&env.tandem(&[
        "channels",
        "add",
        "webhook",
        &format!("http://{hook}/witness"),
        "--secret",
        "witness-secret",
    ]));
    assert_ok(&env.deploy(&env.app("web", "", "v1")));
    let key = env.tandem(&["keys", "show"]);
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();

    // Nobody asked: the journal grew, so within seconds a checkpoint of
    // it is signed, written to the witness file and sent to the webhook.
    let last = env.tandem(&["audit", "events", "-o", "json"]);
    let size = String::from_utf8_lossy(&last.stdout).lines().count() as u64;
    let published = util::wait_until(
        std::time::Duration::from_secs(20),
        "a published checkpoint",
        || {
            got.lock()
                .expect("lock")
                .iter()
                .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                .filter(|b| b["event"] == "checkpoint.signed")
                .find(|b| b["checkpoint"]["size"].as_u64() >= Some(size))
        },
    );
    let note = published["checkpoint"]["note"].as_str().expect("note");
    let checkpoint =
        tandem_proof::checkpoint::open(note, &key).expect("signed by the installation");
    assert!(checkpoint.size >= size);
    assert_eq!(
        tandem_core::journal::hex(&checkpoint.root),
        published["checkpoint"]["root"].as_str().expect("root")
    );
    let witness = std::fs::read_to_string(env.data().join("checkpoints.log")).expect("witness");
    assert!(witness.contains(note), "{witness}");
    // The webhook is signed like any other notification.
    let request = got
        .lock()
        .expect("lock")
        .iter()
        .find(|r| r.body.contains("checkpoint.signed"))
        .map(|r| r.headers.clone())
        .expect("received");
    assert!(
        request
            .iter()
            .any(|(k, v)| k == "webhook-signature" && v.starts_with("v1,")),
        "{request:?}"
    );
}

/// Writes a service of `customer` whose readiness is the file `ok` in its
/// state directory; returns its directory.
fn customer_app(env: &Env, name: &str, customer: &str) -> std::path::PathBuf {
    let dir = env.root.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("tandem.yaml"),
        format!(
            "service:\n  name: {name}\n  customer: {customer}\n  tier: critical\nrun:\n  command: cd $STATE_DIRECTORY && touch ok && exec python3 -m http.server $PORT --bind 127.0.0.1\n  state_dir: true\nroute:\n  host: {name}.test\nhealth:\n  readiness: {{ http: /ok, interval: 200ms, failures: 1 }}\nrelease:\n  deploy_timeout: 20s\n"
        ),
    )
    .expect("spec");
    dir
}

fn python() -> String {
    std::env::var("TANDEM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn a_customers_bundle_verifies_offline_twice_and_recomputes_the_servers_report_byte_for_byte() {
    let env = Env::start();
    for (id, name) in [("acme", "ACME Corp"), ("globex", "Globex")] {
        assert_ok(&env.tandem(&["customers", "add", id, "--name", name]));
    }
    let contract = env.root.path().join("contract.yaml");
    std::fs::write(
        &contract,
        "notice: 72h\nobjectives:\n  - { tier: critical, objective: 99.9% }\ncredits:\n  - { below: 99.9%, credit: 10% }\n",
    )
    .expect("contract");
    assert_ok(&env.tandem(&[
        "customers",
        "contract",
        "acme",
        "--file",
        contract.to_str().expect("utf-8"),
    ]));
    // Bad input: said where, exit 2, nothing set.
    let bad = env.root.path().join("bad.yaml");
    std::fs::write(&bad, "notice: 72h\nobjectives: []\n").expect("bad");
    let out = env.tandem(&[
        "customers",
        "contract",
        "acme",
        "--file",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("at least one"), "{}", said(&out));

    assert_ok(&env.deploy(&customer_app(&env, "shop", "acme")));
    assert_ok(&env.deploy(&customer_app(&env, "other", "globex")));
    // An incident of acme's: unready until the file is back.
    let ok = env.data().join("sandbox/state/shop/ok");
    std::fs::remove_file(&ok).expect("unready");
    let incidents = || {
        let out = env.tandem(&["incidents", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    util::wait_until(std::time::Duration::from_secs(15), "an incident", || {
        incidents()
            .as_array()?
            .iter()
            .find(|i| i["service"] == "shop")
            .cloned()
    });
    std::fs::write(&ok, "").expect("ready again");
    util::wait_until(std::time::Duration::from_secs(15), "its resolution", || {
        incidents()
            .as_array()?
            .iter()
            .find(|i| i["service"] == "shop" && i["status"] == "resolved")
            .cloned()
    });
    // And a maintenance window, announced now for an hour from now.
    let now = jiff::Timestamp::now();
    let (from, to) = (
        (now + jiff::SignedDuration::from_hours(1)).to_string(),
        (now + jiff::SignedDuration::from_hours(2)).to_string(),
    );
    assert_ok(&env.tandem(&[
        "maintenance",
        "add",
        "shop",
        "--from",
        &from,
        "--to",
        &to,
        "--reason",
        "upgrade",
    ]));

    let key = env.tandem(&["keys", "show"]);
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    let month = now
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m")
        .to_string();
    let bundle = env.root.path().join("acme.json");
    let bundle_arg = bundle.to_str().expect("utf-8");
    let sla = |format: &str, extra: &[&str]| {
        let mut args = vec![
            "report",
            "sla",
            "--customer",
            "acme",
            "--month",
            &month,
            "-o",
            format,
        ];
        args.extend_from_slice(extra);
        env.tandem(&args)
    };
    let out = sla("json", &["--bundle", bundle_arg]);
    assert_ok(&out);
    let server = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    let report: serde_json::Value = serde_json::from_str(&server).expect("json");
    let shop = &report["services"][0];
    assert_eq!(shop["service"], "shop", "{report}");
    assert_eq!(
        report["services"].as_array().map(Vec::len),
        Some(1),
        "acme's only: {report}"
    );
    assert_eq!(shop["objective"], 0.999);
    let incident = &shop["incidents"][0];
    assert_eq!(incident["kind"], "no-ready-instance", "{report}");
    assert!(
        incident["duration_s"].as_i64().is_some() && incident["resolved_at"].is_string(),
        "{report}"
    );
    assert_eq!(
        shop["maintenance"][0]["excluded"], false,
        "announced an hour ahead, notice 72h: {report}"
    );

    // Offline, with the key alone: verified, and the same report, byte for byte.
    let out = env.tandem(&["verify", bundle_arg, "--key", &key, "--sla", &month]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), server);
    assert!(said(&out).contains("unaltered"), "{}", said(&out));
    // The second verifier, of ~200 lines of Python, agrees.
    let py = |file: &str| {
        std::process::Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../contrib/verify_bundle.py"
            ))
            .arg(file)
            .arg("--key")
            .arg(&key)
            .output()
            .expect("python")
    };
    let out = py(bundle_arg);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // Nothing of globex's in it but hashes.
    let text = std::fs::read_to_string(&bundle).expect("bundle");
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("bundle json");
    let events = parsed["events"].as_array().expect("events");
    assert!(events.len() > 5, "{}", events.len());
    assert!(
        !text.contains("globex") && !text.contains("other.test"),
        "another customer's data leaked"
    );
    assert!(
        events
            .iter()
            .all(|e| e["subject"]["service"] == "shop" || e["subject"]["customer"] == "acme")
    );

    // Altered, the bundle fails both verifiers, naming the event.
    let mut altered = parsed.clone();
    altered["events"][1]["actor"] = serde_json::json!("user:mallory");
    let seq = altered["events"][1]["seq"].clone();
    let tampered = env.root.path().join("tampered.json");
    std::fs::write(&tampered, altered.to_string()).expect("write");
    let out = env.tandem(&["verify", tampered.to_str().expect("utf-8"), "--key", &key]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("event {seq}")),
        "{}",
        said(&out)
    );
    let out = py(tampered.to_str().expect("utf-8"));
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("event {seq}")),
        "{}",
        said(&out)
    );
    // A dropped event: the proof no longer gives the signed root.
    let mut dropped = parsed.clone();
    dropped["events"].as_array_mut().expect("events").remove(2);
    std::fs::write(&tampered, dropped.to_string()).expect("write");
    let out = env.tandem(&["verify", tampered.to_str().expect("utf-8"), "--key", &key]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert_eq!(py(tampered.to_str().expect("utf-8")).status.code(), Some(1));

    // A PDF whose text holds the figures (read back by pdftotext).
    let out = sla("pdf", &[]);
    assert_ok(&out);
    assert!(out.stdout.starts_with(b"%PDF-"), "not a PDF");
    let pdf = env.root.path().join("acme.pdf");
    std::fs::write(&pdf, &out.stdout).expect("pdf");
    let text = std::process::Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils)");
    let text = String::from_utf8_lossy(&text.stdout);
    let availability = format!(
        "{:.4}%",
        shop["availability"].as_f64().expect("availability") * 100.0
    );
    for want in [
        "SLA report: acme".to_string(),
        format!("Availability: {availability}"),
        "Objective: 99.9000%".into(),
        "no-ready-instance".into(),
        "announced too late".into(),
    ] {
        assert!(text.contains(&want), "{want:?} in the PDF's text:\n{text}");
    }

    // HTML with SVG charts, CSV.
    let out = sla("html", &[]);
    assert_ok(&out);
    let html = String::from_utf8_lossy(&out.stdout);
    assert!(
        html.contains("<svg") && html.contains("no-ready-instance"),
        "{html}"
    );
    let out = sla("csv", &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("customer,month,service"));
    // Change evidence: shop's release went live from a directory, so no
    // run and no approval — flagged; globex's is not in acme's rows.
    let out = env.tandem(&[
        "report",
        "changes",
        "--customer",
        "acme",
        "--month",
        &month,
        "-o",
        "csv",
    ]);
    assert_ok(&out);
    let rows = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 2, "{rows}");
    assert!(
        lines[1].starts_with("shop,r1,") && lines[1].ends_with(",true,false"),
        "{rows}"
    );
    let out = env.tandem(&["report", "changes", "--customer", "acme", "--month", &month]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("UNAPPROVED"),
        "{}",
        said(&out)
    );

    // An unknown customer is said so (exit 2), and -o csv elsewhere is refused.
    let out = env.tandem(&["report", "sla", "--customer", "initech", "--month", &month]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("no customer initech"), "{}", said(&out));
    let out = env.tandem(&["status", "-o", "csv"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
}
