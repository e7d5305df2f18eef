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
/// the ones after; every later hash is recomputed (JCS as tandem hashes),
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
        key.starts_with("tandem/") && key.split('+').count() == 3,
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
    // (The server signs one of its own at its first start too.)
    assert!(
        said(&out).contains(&format!("(largest: {size2} events)")),
        "{}",
        said(&out)
    );

    // Signed by someone else (a key of the same name, another secret): refused.
    let stranger = format!(
        "{}+{}",
        key.rsplit_once('+').expect("key").0,
        "AWlR+9oqbYUOH7bL8yqrRlGKqFpcpUmUPcd6DsdzLZpo"
    );
    let out = env.tandem(&[
        "audit",
        "verify",
        "--checkpoint",
        copy.to_str().expect("utf-8"),
        "--key",
        &stranger,
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", said(&out));

    // Rewrites the stopped server's database, starts it again, and
    // returns what verifying against the witness copy says (it fails,
    // while the hash chain alone holds: every hash was recomputed).
    let mut rewritten = |mode: &str, k: u64| {
        env.kill_up();
        rewrite(&env.data().join("tandem.db"), mode, k);
        env.up_again();
        assert_ok(&env.tandem(&["audit", "verify"]));
        let out = verify(&env);
        assert_eq!(out.status.code(), Some(1), "{}", said(&out));
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
