//! Faults from outside, against the real binary: a full disk under the
//! data directory (a small tmpfs: these tests need root, as CI has).

mod util;

use std::time::Duration;

use util::{Env, assert_ok, receiver, wait_until};

fn secret_names(env: &Env, service: &str) -> Vec<String> {
    let out = env.tandem(&["secrets", "ls", service, "-o", "json"]);
    assert_ok(&out);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_full_disk_fails_writes_is_an_incident_and_health_says_so_until_there_is_room() {
    let mut env = Env::start_on_small_disk("24m");
    let (hook, got) = receiver();
    assert_ok(&env.tandem(&["channels", "add", "webhook", &format!("http://{hook}/t")]));
    let dir = env.app("shop", "", "shop");
    assert_ok(&env.deploy(&dir));
    assert_eq!(env.api_get("/api/v1/health").0, 200);

    let filler = env.fill_disk();
    let value = "v".repeat(60 * 1024);
    let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
    for i in 0..12 {
        let name = format!("S{i}");
        let out = env.set_secret("shop", &name, &value);
        if out.status.success() {
            acknowledged.push(name);
        } else {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                err.contains("full") && err.contains("nothing was changed"),
                "{err}"
            );
            refused.push(name);
        }
    }
    assert!(!refused.is_empty(), "every write succeeded on a full disk");

    // Health reports the fault; the channels are told at once, although
    // the incident cannot be recorded yet.
    let (code, body) = env.api_get("/api/v1/health");
    assert_eq!(code, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["storage"]["kind"], "full", "{health}");
    wait_until(
        Duration::from_secs(10),
        "the channels told of the storage fault",
        || {
            got.lock()
                .expect("lock")
                .iter()
                .any(|r| r.body.contains("storage-fault") && r.body.contains("incident.opened"))
                .then_some(())
        },
    );

    // Room again: the store notices by itself, the incident is on the
    // record and resolved, and writes work.
    std::fs::remove_file(&filler).expect("make room");
    wait_until(Duration::from_secs(10), "health back to 200", || {
        (env.api_get("/api/v1/health").0 == 200).then_some(())
    });
    let out = env.tandem(&["incidents", "-o", "json"]);
    assert_ok(&out);
    let incidents: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let storage = incidents
        .as_array()
        .expect("array")
        .iter()
        .find(|i| i["kind"] == "storage-fault")
        .cloned()
        .unwrap_or_else(|| panic!("no storage incident: {incidents}"));
    assert_eq!(storage["service"], "tandem-store");
    assert_eq!(storage["status"], "resolved", "{storage}");
    wait_until(
        Duration::from_secs(10),
        "the channels told it resolved",
        || {
            got.lock()
                .expect("lock")
                .iter()
                .any(|r| r.body.contains("storage-fault") && r.body.contains("incident.resolved"))
                .then_some(())
        },
    );
    assert_ok(&env.set_secret("shop", "AFTER", "v"));
    acknowledged.push("AFTER".into());

    // After a restart: everything acknowledged is there, nothing refused
    // is, and the journal is whole.
    env.kill_up();
    env.up_again();
    let names = secret_names(&env, "shop");
    for name in &acknowledged {
        assert!(
            names.contains(name),
            "{name} was acknowledged and is gone: {names:?}"
        );
    }
    for name in &refused {
        assert!(
            !names.contains(name),
            "{name} was refused and is there: {names:?}"
        );
    }
    assert_ok(&env.tandem(&["audit", "verify"]));
    assert_eq!(env.get("shop.test", "/").0, 200);
}
