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

#[test]
fn a_backup_taken_under_load_restores_elsewhere_with_its_journal_secrets_and_services() {
    let env = Env::start();
    let dir = env.app("shop", "", "shop v1");
    let spec = std::fs::read_to_string(dir.join("tandem.yaml")).expect("spec");
    let spec = spec.replace("run:\n", "run:\n  secrets: [TOKEN]\n");
    std::fs::write(dir.join("tandem.yaml"), spec).expect("spec");
    assert_ok(&env.set_secret("shop", "TOKEN", "s3cret"));
    assert_ok(&env.deploy(&dir));

    let load = util::Load::start(&env.proxy, "shop.test", 2);
    let file = env.root.path().join("backup.tar");
    let out = env.tandem(&["backup", file.to_str().expect("utf8")]);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("journal of"), "{said}");
    let result = load.finish();
    assert_eq!(
        result.failed, 0,
        "requests failed during the backup: {:?}",
        result.failures
    );
    assert!(result.ok > 0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)
        .expect("backup")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "a backup holds secrets: mode {mode:o}");
    // Asking again for the same file changes nothing.
    let again = env.tandem(&["backup", file.to_str().expect("utf8")]);
    assert_eq!(again.status.code(), Some(2));

    // Into a directory that is not empty: refused, nothing changed.
    let mut copy = Env::unstarted("", &[]);
    std::fs::create_dir_all(copy.data()).expect("mkdir");
    std::fs::write(copy.data().join("mine"), "keep").expect("write");
    let refused = env.tandem(&[
        "restore",
        file.to_str().expect("utf8"),
        "--data-dir",
        copy.data().to_str().expect("utf8"),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert_eq!(std::fs::read_dir(copy.data()).expect("dir").count(), 1);
    std::fs::remove_file(copy.data().join("mine")).expect("rm");

    let restored = env.tandem(&[
        "restore",
        file.to_str().expect("utf8"),
        "--data-dir",
        copy.data().to_str().expect("utf8"),
    ]);
    assert_ok(&restored);
    // People and their tokens come back with the database: the first
    // server's admin token works on the restored one.
    std::fs::copy(
        env.data().join("admin.token"),
        copy.data().join("admin.token"),
    )
    .expect("the admin's token");
    // The restored server, beside the first one: the journal verifies, the
    // secret is there, and the service comes back from its artifact.
    copy.up_again();
    assert_ok(&copy.tandem(&["audit", "verify"]));
    let out = copy.tandem(&["secrets", "ls", "shop", "-o", "json"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("TOKEN"));
    wait_until(
        Duration::from_secs(30),
        "the restored service serves",
        || {
            let (code, body) = copy.get("shop.test", "/");
            (code == 200 && body.contains("shop v1")).then_some(())
        },
    );
    let events = copy.tandem(&["audit", "events", "-o", "json"]);
    assert!(String::from_utf8_lossy(&events.stdout).contains("restore.succeeded"));
}

#[test]
fn scheduled_backups_keep_the_newest_and_each_restores() {
    let env = Env::start_with(&[("TANDEM_BACKUP_EVERY", "1s"), ("TANDEM_BACKUP_KEEP", "2")]);
    let dir = env.app("shop", "", "shop");
    assert_ok(&env.deploy(&dir));
    let backups = env.data().join("backups");
    let count = || {
        std::fs::read_dir(&backups)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("tandem-"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(15), "two scheduled backups", || {
        (count() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(), 2, "more than --backup-keep were kept");
    let mut newest: Vec<_> = std::fs::read_dir(&backups)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar"))
        .collect();
    newest.sort();
    let into = env.root.path().join("restored");
    assert_ok(&env.tandem(&[
        "restore",
        newest.last().expect("one").to_str().expect("utf8"),
        "--data-dir",
        into.to_str().expect("utf8"),
    ]));
}

/// A process's open file descriptors and peak resident memory (KiB).
fn fds_and_peak_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, peak)
}

#[test]
fn the_api_bounds_connections_slow_heads_and_requests_in_flight() {
    let env = Env::start_with(&[
        ("TANDEM_API_MAX_CONNECTIONS", "64"),
        ("TANDEM_API_MAX_REQUESTS", "8"),
        ("TANDEM_API_HEAD_TIMEOUT", "1s"),
    ]);
    let dir = env.app("shop", "", "shop");
    assert_ok(&env.deploy(&dir));
    let server = env.up.as_ref().expect("up").id();

    // 300 connections that send half a head and stop: they hold at most
    // 64 slots, each for a second, and the server's descriptors stay few.
    use std::io::{Read, Write};
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = std::net::TcpStream::connect(&env.api).expect("connect");
        let _ = s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: localhost\r\n");
        slow.push(s);
    }
    let started = std::time::Instant::now();
    let (code, _) = env.api_get("/api/v1/health");
    assert_eq!(code, 200);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a request waited {:?} behind slow heads",
        started.elapsed()
    );
    let (fds, _) = fds_and_peak_rss(server);
    assert!(fds < 64 + 100, "the server holds {fds} descriptors");
    std::thread::sleep(Duration::from_secs(2));
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        // Closed (perhaps after a 408), never left open.
        let _ = s.read_to_end(&mut rest);
    }
    drop(slow);

    // 1,000 status calls at once: each is answered, 200 or a clean 503
    // with Retry-After, never a 500; memory stays small.
    let request = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        env.token()
    );
    let answers: Vec<(u16, bool)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = std::net::TcpStream::connect(&env.api).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(60)))
                        .expect("timeout");
                    s.write_all(request.as_bytes()).expect("write");
                    let mut text = String::new();
                    let _ = s.read_to_string(&mut text);
                    let code = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    (code, text.to_ascii_lowercase().contains("retry-after: 1"))
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    let ok = answers.iter().filter(|(c, _)| *c == 200).count();
    let busy = answers.iter().filter(|(c, r)| *c == 503 && *r).count();
    assert_eq!(
        ok + busy,
        1000,
        "answers other than 200 and 503 + Retry-After: {:?}",
        answers
            .iter()
            .filter(|(c, r)| !(*c == 200 || (*c == 503 && *r)))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(ok > 0, "no status call got through");
    let (_, peak_kib) = fds_and_peak_rss(server);
    assert!(peak_kib < 512 * 1024, "the server peaked at {peak_kib} KiB");
    eprintln!(
        "1,000 status calls: {ok} answered, {busy} told to retry; server peak RSS {peak_kib} KiB"
    );
}

/// Process-group leaders marked as instances of the agent of `data`.
fn marked_instances(data: &std::path::Path) -> Vec<(u32, String)> {
    let dir = std::fs::canonicalize(data).expect("data dir");
    let mark = format!("TANDEM_AGENT_DIR={}", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, f)| f.split_whitespace().collect())
            .unwrap_or_default();
        let leader = fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pid);
        if leader && fields.first() != Some(&"Z") && vars.contains(&mark) {
            let id = vars
                .iter()
                .find_map(|v| v.strip_prefix("TANDEM_INSTANCE="))
                .unwrap_or_default()
                .to_owned();
            found.push((pid, id));
        }
    }
    found.sort();
    found
}

fn agent_pid(env: &Env) -> u32 {
    let (_, body) = env.api_get("/api/v1/status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status");
    status["agent"]["pid"].as_u64().expect("agent pid") as u32
}

fn instance_pids(env: &Env, service: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = env
        .instances(service)
        .iter()
        .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
        .collect();
    pids.sort();
    pids
}

/// A process marked as an instance of `data`'s agent that no group has.
fn ghost(data: &std::path::Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/bin/sh")
        .args(["-c", "exec sleep 300"])
        .env("TANDEM_INSTANCE", "ghost-r9-1")
        .env(
            "TANDEM_AGENT_DIR",
            std::fs::canonicalize(data).expect("dir"),
        )
        .env("PORT", "1")
        .process_group(0)
        .spawn()
        .expect("spawn ghost")
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn gone(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

#[test]
fn a_torn_agent_state_file_runs_no_instance_twice_and_instances_nobody_claims_are_stopped() {
    let env = Env::start_with(&[("TANDEM_UNCLAIMED_GRACE_MS", "3000")]);
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    let before = instance_pids(&env, "web");
    assert_eq!(before.len(), 2);
    assert_eq!(marked_instances(&env.data()).len(), 2);
    let mut stray = ghost(&env.data());

    // The state file torn in half, then the agent killed: its successor
    // finds the instances by their marks and the server's restore takes
    // them over instead of starting two more.
    // Both the file and its copy.
    for name in ["agent-state.json", "agent-state.json.bak"] {
        let state = env.data().join(name);
        let text = std::fs::read(&state).expect("state");
        std::fs::write(&state, &text[..text.len() / 2]).expect("tear");
    }
    let agent = agent_pid(&env);
    kill9(agent);
    wait_until(Duration::from_secs(30), "web served by a new agent", || {
        let (code, body) = env.get("web.test", "/");
        (code == 200 && body == "v1" && agent_pid(&env) != agent).then_some(())
    });
    wait_until(
        Duration::from_secs(10),
        "the ghost stopped after the grace",
        || gone(&mut stray).then_some(()),
    );
    assert_eq!(
        instance_pids(&env, "web"),
        before,
        "the same processes, taken over"
    );
    let marked: Vec<u32> = marked_instances(&env.data())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(marked, before, "instances running besides the served ones");
}

#[test]
fn a_torn_state_file_is_restored_from_its_copy_by_the_agent_itself() {
    let env = Env::start();
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    let before = instance_pids(&env, "web");
    let state = env.data().join("agent-state.json");
    let text = std::fs::read(&state).expect("state");
    std::fs::write(&state, &text[..text.len() / 3]).expect("tear");
    let agent = agent_pid(&env);
    kill9(agent);
    wait_until(Duration::from_secs(30), "web served by a new agent", || {
        (env.get("web.test", "/") == (200, "v1".into()) && agent_pid(&env) != agent).then_some(())
    });
    assert_eq!(instance_pids(&env, "web"), before);
    // The agent brought its routes back itself: the server restored nothing.
    let events = env.tandem(&["audit", "events", "-o", "json"]);
    assert!(!String::from_utf8_lossy(&events.stdout).contains("restore.started"));
}

#[test]
fn an_instance_of_no_saved_group_is_stopped_when_the_agent_restarts() {
    let env = Env::start();
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    let before = instance_pids(&env, "web");
    let mut stray = ghost(&env.data());
    let agent = agent_pid(&env);
    kill9(agent);
    wait_until(Duration::from_secs(30), "a new agent", || {
        (env.get("web.test", "/").0 == 200 && agent_pid(&env) != agent).then_some(())
    });
    wait_until(Duration::from_secs(10), "the ghost stopped", || {
        gone(&mut stray).then_some(())
    });
    assert_eq!(instance_pids(&env, "web"), before);
}

#[test]
fn a_release_that_fails_because_its_agent_was_killed_does_not_run_on_under_the_next_agent() {
    let env = Env::start();
    let dir = env.app("web", "release:\n  deploy_timeout: 30s\n", "v1");
    assert_ok(&env.deploy(&dir));
    // v2 takes seconds to listen: the agent dies while the deploy waits.
    let spec = std::fs::read_to_string(dir.join("tandem.yaml")).expect("spec");
    std::fs::write(
        dir.join("tandem.yaml"),
        spec.replace("command: exec python3", "command: sleep 4; exec python3"),
    )
    .expect("spec");
    std::fs::write(dir.join("index.html"), "v2").expect("body");
    let deploy = {
        let (api, data, dir) = (env.api.clone(), env.data(), dir);
        std::thread::spawn(move || {
            std::process::Command::new(util::bin())
                .args(["deploy", "--dir", dir.to_str().expect("utf8")])
                .env("TANDEM_SERVER", format!("http://{api}"))
                .env("TANDEM_DATA_DIR", data)
                .output()
                .expect("deploy")
        })
    };
    let r2: Vec<u32> = wait_until(Duration::from_secs(20), "r2's instances", || {
        let pids: Vec<u32> = env
            .instances("web")
            .iter()
            .filter(|i| i["release"] == "r2")
            .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    kill9(agent_pid(&env));
    let out = deploy.join().expect("deploy thread");
    assert!(!out.status.success(), "the deploy cannot have succeeded");
    wait_until(Duration::from_secs(40), "r2 stopped, r1 serving", || {
        let releases: Vec<String> = env
            .instances("web")
            .iter()
            .filter_map(|i| i["release"].as_str().map(str::to_owned))
            .collect();
        let r2_alive = r2
            .iter()
            .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        (releases.iter().all(|r| r == "r1") && !r2_alive).then_some(())
    });
    assert_eq!(env.get("web.test", "/"), (200, "v1".into()));
}

#[test]
fn down_stops_a_server_that_is_digesting_a_huge_tree_at_once() {
    let mut env = Env::start();
    let dir = env.app("huge", "", "huge");
    // 4 GiB of holes: cheap to make, long to read and digest.
    let big = std::fs::File::create(dir.join("big.bin")).expect("create");
    big.set_len(4 << 30).expect("set_len");
    let deploy = {
        let (api, token, dir) = (env.api.clone(), env.token(), dir);
        std::thread::spawn(move || {
            std::process::Command::new(util::bin())
                .args(["deploy", "--dir", dir.to_str().expect("utf8")])
                .env("TANDEM_SERVER", format!("http://{api}"))
                .env("TANDEM_TOKEN", token)
                .output()
                .expect("deploy")
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let asked = std::time::Instant::now();
    let out = std::process::Command::new(util::bin())
        .args(["down", "--data-dir"])
        .arg(env.data())
        .output()
        .expect("down");
    assert_ok(&out);
    let mut up = env.up.take().expect("up");
    wait_until(Duration::from_secs(15), "the server to exit", || {
        up.try_wait().expect("wait").map(|_| ())
    });
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the server took {:?} to stop",
        asked.elapsed()
    );
    let _ = deploy.join();
    // Nothing of the huge file was stored.
    let stored: u64 = walk_size(&env.data().join("artifacts"));
    assert!(
        stored < 1 << 20,
        "{stored} bytes of artifacts after an abandoned deploy"
    );
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let meta = e.metadata().expect("meta");
            if meta.is_dir() {
                walk_size(&e.path())
            } else {
                use std::os::unix::fs::MetadataExt;
                meta.blocks() * 512
            }
        })
        .sum()
}

/// `mixed` serving v1 under a mixed load, then `tandem up` again paused at
/// `point` of every release; v2 deploying in the background.
fn a_release_paused_at(
    point: &str,
) -> (
    Env,
    util::Load,
    std::thread::JoinHandle<std::process::Output>,
) {
    let mut env = Env::start();
    let dir = env.deploy_mixed("v1");
    env.kill_up();
    env.vars
        .push(("TANDEM_FAULT_PAUSE".into(), format!("{point}:60000")));
    env.up_again();
    let load = util::Load::start_mixed(&env.proxy, "mixed.test", 1);
    std::fs::write(dir.join("index.html"), "v2").expect("body");
    let deploy = {
        let (api, token) = (env.api.clone(), env.token());
        std::thread::spawn(move || {
            std::process::Command::new(util::bin())
                .args(["deploy", "--dir", dir.to_str().expect("utf8")])
                .env("TANDEM_SERVER", format!("http://{api}"))
                .env("TANDEM_TOKEN", token)
                .output()
                .expect("deploy")
        })
    };
    (env, load, deploy)
}

fn releases_running(env: &Env, service: &str) -> Vec<String> {
    let mut r: Vec<String> = env
        .instances(service)
        .iter()
        .filter_map(|i| i["release"].as_str().map(str::to_owned))
        .collect();
    r.dedup();
    r
}

fn release_status(env: &Env, service: &str, number: u64) -> serde_json::Value {
    let out = env.tandem(&["releases", service, "-o", "json"]);
    assert_ok(&out);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    all.as_array()
        .expect("array")
        .iter()
        .find(|r| r["number"] == number)
        .cloned()
        .expect("release")
}

#[test]
fn a_server_killed_between_ready_and_switch_leaves_the_old_release_serving_and_stops_the_new() {
    let (mut env, load, deploy) = a_release_paused_at("before-switch");
    wait_until(
        Duration::from_secs(20),
        "r2 ready, not yet switched",
        || {
            let ready = env
                .instances("mixed")
                .iter()
                .filter(|i| i["release"] == "r2" && i["ready"] == true)
                .count();
            (ready == 2).then_some(())
        },
    );
    env.kill_up();
    let _ = deploy.join();
    env.vars.clear();
    env.up_again();
    wait_until(Duration::from_secs(20), "only r1 running", || {
        (releases_running(&env, "mixed") == ["r1"]).then_some(())
    });
    let r2 = release_status(&env, "mixed", 2);
    assert_eq!(r2["status"], "failed", "{r2}");
    assert_eq!(env.get("mixed.test", "/index.html"), (200, "v1".into()));
    std::thread::sleep(Duration::from_secs(2));
    let r = load.finish();
    eprintln!(
        "killed before the switch: {:?}, failed={}",
        r.by_ask, r.failed
    );
    assert_eq!(r.failed, 0, "{:?}", &r.failures[..r.failures.len().min(10)]);
    assert_ok(&env.tandem(&["audit", "verify"]));
}

#[test]
fn a_server_killed_between_switch_and_stop_leaves_the_new_release_live_and_stops_the_old() {
    let (mut env, load, deploy) = a_release_paused_at("before-stop");
    wait_until(
        Duration::from_secs(20),
        "traffic on r2, r1 still running",
        || {
            let (_, body) = env.get("mixed.test", "/index.html");
            (body == "v2" && releases_running(&env, "mixed").contains(&"r1".to_owned()))
                .then_some(())
        },
    );
    env.kill_up();
    let _ = deploy.join();
    env.vars.clear();
    env.up_again();
    wait_until(Duration::from_secs(20), "only r2 running", || {
        (releases_running(&env, "mixed") == ["r2"]).then_some(())
    });
    assert_eq!(release_status(&env, "mixed", 2)["status"], "live");
    assert_eq!(release_status(&env, "mixed", 1)["status"], "retired");
    std::thread::sleep(Duration::from_secs(2));
    let r = load.finish();
    eprintln!(
        "killed between switch and stop: {:?}, failed={}",
        r.by_ask, r.failed
    );
    assert_eq!(r.failed, 0, "{:?}", &r.failures[..r.failures.len().min(10)]);
    assert_ok(&env.tandem(&["audit", "verify"]));
}

#[test]
fn a_stopped_agent_is_replaced_and_its_instances_serve_on_under_the_next() {
    let env = Env::start();
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    let before = instance_pids(&env, "web");
    let agent = agent_pid(&env);
    // What a service could do today (issue 16 takes that away): freeze it.
    let status = std::process::Command::new("kill")
        .args(["-STOP", &agent.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let stopped_at = std::time::Instant::now();
    wait_until(Duration::from_secs(30), "web served by a new agent", || {
        let (code, body) = env.get("web.test", "/");
        (code == 200 && body == "v1" && agent_pid(&env) != agent).then_some(())
    });
    let took = stopped_at.elapsed();
    assert!(
        !std::path::Path::new(&format!("/proc/{agent}")).exists()
            || std::fs::read_to_string(format!("/proc/{agent}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the stopped agent is gone"
    );
    assert_eq!(
        instance_pids(&env, "web"),
        before,
        "the same instances, taken over"
    );
    let events = env.tandem(&["audit", "events", "-o", "json"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("\"agent.replaced\"") && l.contains("stopped")),
        "journalled"
    );
    eprintln!("a stopped agent was replaced and serving again within {took:?}");
}

/// Whether this machine lets tandem limit instances with cgroups (root,
/// and memory/pids/cpu controllers; CI has both).
fn cgroups_usable() -> bool {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = std::path::Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
    (v1 || v2)
        && std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Processes marked as instance `id` (an instance's children inherit its
/// mark).
fn processes_of(id: &str) -> usize {
    let mark = format!("TANDEM_INSTANCE={id}");
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == mark.as_bytes()))
        })
        .count()
}

#[test]
fn a_fork_bomb_stops_at_its_pids_limit_and_a_memory_hog_is_killed_while_a_neighbour_serves() {
    if !cgroups_usable() {
        eprintln!("skipped: needs root and cgroups (CI has both)");
        return;
    }
    let env = Env::start();
    let web = env.app("web", "", "v1");
    assert_ok(&env.deploy(&web));
    let load = util::Load::start(&env.proxy, "web.test", 2);

    // 200 sleepers asked for once it serves, 20 processes allowed.
    let bomb = env.root.path().join("bomb");
    std::fs::create_dir_all(&bomb).expect("mkdir");
    std::fs::write(
        bomb.join("tandem.yaml"),
        "service:\n  name: bomb\nrun:\n  command: '(sleep 1; exec python3 bomb.py) & exec python3 -m http.server $PORT --bind 127.0.0.1'\n  instances: 1\n  limits: { pids: 20 }\nroute:\n  host: bomb.test\n",
    )
    .expect("spec");
    std::fs::write(
        bomb.join("bomb.py"),
        "import subprocess\nfor i in range(200):\n    try:\n        subprocess.Popen(['sleep', '120'])\n    except OSError:\n        pass\n",
    )
    .expect("bomb");
    std::fs::write(bomb.join("index.html"), "still here").expect("page");
    assert_ok(&env.deploy(&bomb));
    let id = env.instances("bomb")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    std::thread::sleep(Duration::from_secs(3));
    let held = processes_of(&id);
    assert!(held <= 20, "{held} processes of {id}, limit 20");
    assert!(
        held >= 10,
        "{held} processes: the sleepers did start up to the limit"
    );

    // A hog of 300 MB in a 64 MiB instance: killed.
    let hog = env.root.path().join("hog");
    std::fs::create_dir_all(&hog).expect("mkdir");
    // Its exit status, in its state directory (the only place it may write
    // beside its temp).
    let said = env.data().join("sandbox/state/hog/exit");
    std::fs::write(
        hog.join("tandem.yaml"),
        "service:\n  name: hog\nrun:\n  command: '(sleep 1; python3 -c \"x = bytearray(300 * 1024 * 1024); import time; time.sleep(60)\"; echo $? > $STATE_DIRECTORY/exit) & exec python3 -m http.server $PORT --bind 127.0.0.1'\n  instances: 1\n  state_dir: true\n  limits: { memory: 64Mi }\nroute:\n  host: hog.test\n",
    )
    .expect("spec");
    std::fs::write(hog.join("index.html"), "hog").expect("page");
    assert_ok(&env.deploy(&hog));
    let code = wait_until(Duration::from_secs(20), "the hog killed", || {
        std::fs::read_to_string(&said)
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert_eq!(code.trim(), "137", "killed by SIGKILL (the OOM killer)");

    let result = load.finish();
    assert_eq!(
        result.failed, 0,
        "the neighbour lost requests: {:?}",
        result.failures
    );
    assert!(result.ok > 100, "{} answered", result.ok);
    // The agent answers on.
    assert_ok(&env.tandem(&["status"]));
}
