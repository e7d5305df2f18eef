//! End-to-end continuous delivery (issue 3): real bare git repositories,
//! pushes found by polling and by signed webhooks, pipeline runs, and load
//! on production the whole time.

mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::{Env, Load, assert_ok, wait_until};

/// A bare "origin" and a working clone that commits and pushes to it.
struct Repo {
    origin: PathBuf,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.test")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.test")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Repo {
    fn new(root: &Path, spec: &str) -> Repo {
        let origin = root.join("origin.git");
        let work = root.join("checkout");
        std::fs::create_dir_all(&origin).expect("mkdir");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&origin, &["init", "--quiet", "--bare", "-b", "main"]);
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(
            &work,
            &["remote", "add", "origin", origin.to_str().expect("utf8")],
        );
        std::fs::write(work.join("tandem.yaml"), spec).expect("write spec");
        Repo { origin, work }
    }

    /// Writes `files`, commits them and pushes `branch`; returns the commit.
    fn push(&self, branch: &str, message: &str, files: &[(&str, &str)]) -> String {
        for (name, text) in files {
            std::fs::write(self.work.join(name), text).expect("write");
        }
        git(&self.work, &["checkout", "--quiet", "-B", branch]);
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

const SPEC: &str = "service:\n  name: shop\n  owner: team-shop\nbuild:\n  - { name: stamp, run: \"echo built $TANDEM_COMMIT > built.txt\" }\ntest:\n  - { name: unit, run: \"sh check.sh\" }\nrun:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n  instances: 2\n  stop_timeout: 5s\nroute:\n  host: shop.test\nrelease:\n  deploy_timeout: 15s\n  drain_timeout: 5s\n";

const PASSING: &str = "test -f index.html && echo tests passed\n";

fn runs(env: &Env) -> Vec<serde_json::Value> {
    let out = env.tandem(&["pipelines", "shop", "-o", "json"]);
    assert_ok(&out);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("runs json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until some run satisfies `done`; returns it.
fn wait_for(
    env: &Env,
    within: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(within, what, || runs(env).into_iter().find(|r| done(r)))
}

/// Waits until the run of `commit` has finished; returns it.
fn wait_for_run(env: &Env, commit: &str, within: Duration) -> serde_json::Value {
    wait_for(env, within, &format!("a finished run of {commit}"), |r| {
        r["commit"] == commit
            && ["succeeded", "failed", "cancelled", "superseded", "rejected"]
                .contains(&r["status"].as_str().unwrap_or_default())
    })
}

/// `tandem services add <origin> <args>`, which must succeed.
fn register(env: &Env, repo: &Repo, args: &[&str]) -> std::process::Output {
    let mut all = vec!["services", "add", repo.origin.to_str().expect("utf8")];
    all.extend_from_slice(args);
    let out = env.tandem(&all);
    assert_ok(&out);
    out
}

fn events(env: &Env) -> Vec<serde_json::Value> {
    let out = env.tandem(&["audit", "events", "-o", "json"]);
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn pushes_flow_to_production_by_registration_and_polling_and_a_failing_test_stops_one() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), SPEC);
    let c1 = repo.push(
        "main",
        "first page",
        &[("index.html", "v1"), ("check.sh", PASSING)],
    );
    let out = register(&env, &repo, &["--poll-interval", "300ms"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("registered shop"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let run = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "register");
    assert_eq!(run["author"], "Ada Lovelace <ada@example.test>");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));
    assert_eq!(
        env.get("shop.test", "/built.txt"),
        (200, format!("built {c1}\n")),
        "build steps run in the checkout with TANDEM_COMMIT"
    );

    let load = Load::start(&env.proxy, "shop.test", 4);
    let pushed = Instant::now();
    let c2 = repo.push("main", "second page", &[("index.html", "v2")]);
    let run = wait_for_run(&env, &c2, Duration::from_secs(60));
    eprintln!("push to live by polling: {:?}", pushed.elapsed());
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "poll");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v2".into()));
    let stages: Vec<&str> = run["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(stages, ["checkout", "build", "test", "release", "deploy"]);

    let c3 = repo.push(
        "main",
        "break the tests",
        &[
            ("index.html", "v3"),
            (
                "check.sh",
                "echo 'assertion failed: expected v2 layout' >&2; exit 1\n",
            ),
        ],
    );
    let run = wait_for_run(&env, &c3, Duration::from_secs(60));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["stage"], "test");
    let id = run["id"].as_i64().expect("id").to_string();
    let out = env.tandem(&["pipelines", "logs", &id]);
    assert_ok(&out);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("assertion failed: expected v2 layout"),
        "{log}"
    );
    assert_eq!(
        env.get("shop.test", "/index.html"),
        (200, "v2".into()),
        "production is unchanged"
    );

    // The same commit is not built twice by polling; a retry is explicit.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        runs(&env)
            .iter()
            .filter(|r| r["commit"] == c3.as_str())
            .count(),
        1
    );

    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = load.finish();
    eprintln!("requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(
        r.failed,
        0,
        "failed: {:?}",
        &r.failures[..r.failures.len().min(5)]
    );
    assert!(r.ok > 100, "only {} requests", r.ok);

    // Every stage is in the journal with its commit and author.
    let journal = events(&env);
    let stage_events: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("run.stage."))
        })
        .collect();
    assert!(stage_events.len() >= 8 * 2 + 3, "{stage_events:?}");
    for e in &stage_events {
        assert_eq!(
            e["payload"]["author"], "Ada Lovelace <ada@example.test>",
            "{e}"
        );
        assert!(e["payload"]["committed_at"].is_string(), "{e}");
        assert!(e["payload"]["commit"].is_string(), "{e}");
    }
    let succeeded = journal
        .iter()
        .find(|e| e["kind"] == "run.succeeded" && e["payload"]["commit"] == c2.as_str())
        .expect("run.succeeded of the second commit");
    assert!(
        succeeded["payload"]["lead_time_ms"].as_i64().is_some(),
        "{succeeded}"
    );
    assert_ok(&env.tandem(&["audit", "verify"]));

    // Issue 18: the second commit traced from its hash to production, and
    // from its release back to the same tree.
    let out = env.tandem(&["trace", &c2[..10]]);
    assert_ok(&out);
    let tree = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("commit {c2} by Ada Lovelace <ada@example.test>"),
        "stage test succeeded".into(),
        "release r2".into(),
        "release.succeeded in production".into(),
    ] {
        assert!(tree.contains(&line), "{line:?} in\n{tree}");
    }
    let by_release = env.tandem(&["trace", "shop/r2", "-o", "json"]);
    assert_ok(&by_release);
    let by_release: serde_json::Value = serde_json::from_slice(&by_release.stdout).expect("json");
    assert_eq!(by_release["commit"], c2.as_str());
    assert_eq!(by_release["runs"][0]["status"], "succeeded", "{by_release}");
    // A failed run made no release and no deployment: in its trace alone.
    let failed = env.tandem(&["trace", &c3, "-o", "json"]);
    let failed: serde_json::Value = serde_json::from_slice(&failed.stdout).expect("json");
    assert_eq!(failed["runs"][0]["status"], "failed", "{failed}");
    assert!(failed["runs"][0]["release"].is_null(), "{failed}");
    // DORA over the same journal: two deployments, each with a lead time
    // from its commit, none failed.
    let dora = env.tandem(&["report", "dora", "--service", "shop", "-o", "json"]);
    assert_ok(&dora);
    let dora: serde_json::Value = serde_json::from_slice(&dora.stdout).expect("json");
    let shop = &dora["services"][0];
    assert_eq!(
        (shop["deployments"].as_u64(), shop["lead_times"].as_u64()),
        (Some(2), Some(2)),
        "{dora}"
    );
    assert!(
        shop["lead_time_median_s"]
            .as_f64()
            .is_some_and(|s| s > 0.0 && s < 600.0),
        "{dora}"
    );
    assert_eq!(shop["failed_deployments"], 0, "{dora}");
    assert_eq!(shop["lead_time_band"], "elite", "{dora}");
    assert_ok(&env.tandem(&["report", "dora"]));
}

type Header = (&'static str, String);

/// POSTs `body` to the API with `headers`: (status, body).
fn post(api: &str, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(api).expect("connect api");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// A push payload as the provider documents it (the fields tandem reads and
/// the usual company).
fn payload(provider: &str, branch: &str, before: &str, after: &str) -> String {
    let commit = serde_json::json!({
        "id": after,
        "message": "a change",
        "timestamp": "2026-11-26T10:00:00Z",
        "author": { "name": "Ada Lovelace", "email": "ada@example.test" },
    });
    let v = match provider {
        "gitlab" => serde_json::json!({
            "object_kind": "push",
            "event_name": "push",
            "before": before,
            "after": after,
            "ref": format!("refs/heads/{branch}"),
            "checkout_sha": after,
            "user_name": "Ada Lovelace",
            "project": { "name": "shop", "default_branch": "main" },
            "commits": [commit],
            "total_commits_count": 1,
        }),
        _ => serde_json::json!({
            "ref": format!("refs/heads/{branch}"),
            "before": before,
            "after": after,
            "repository": { "full_name": "acme/shop", "default_branch": "main" },
            "pusher": { "name": "ada", "email": "ada@example.test" },
            "commits": [commit],
            "head_commit": commit,
        }),
    };
    v.to_string()
}

fn sign(secret: &str, body: &str) -> String {
    tandem_delivery::hooks::sign(secret, body.as_bytes())
}

#[test]
fn signed_webhooks_from_github_gitlab_and_gitea_start_runs_and_bad_ones_get_401() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), SPEC);
    let c1 = repo.push(
        "main",
        "first",
        &[("index.html", "v1"), ("check.sh", PASSING)],
    );
    register(
        &env,
        &repo,
        &["--webhook-secret", "s3cret", "--poll-interval", "1h"],
    );
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let load = Load::start(&env.proxy, "shop.test", 2);

    let mut before = c1;
    for (n, provider) in ["github", "gitlab", "gitea"].into_iter().enumerate() {
        let version = format!("v{}", n + 2);
        let after = repo.push("main", &version, &[("index.html", &version)]);
        let body = payload(provider, "main", &before, &after);
        let path = format!("/api/v1/services/shop/hooks/{provider}");
        let (event, good, bad): (Vec<Header>, Header, Header) = match provider {
            "github" => (
                vec![
                    ("X-GitHub-Event", "push".into()),
                    ("X-GitHub-Delivery", "d-1".into()),
                ],
                (
                    "X-Hub-Signature-256",
                    format!("sha256={}", sign("s3cret", &body)),
                ),
                (
                    "X-Hub-Signature-256",
                    format!("sha256={}", sign("wrong", &body)),
                ),
            ),
            "gitlab" => (
                vec![("X-Gitlab-Event", "Push Hook".into())],
                ("X-Gitlab-Token", "s3cret".into()),
                ("X-Gitlab-Token", "wrong".into()),
            ),
            _ => (
                vec![
                    ("X-Gitea-Event", "push".into()),
                    ("X-Gitea-Delivery", "d-3".into()),
                ],
                ("X-Gitea-Signature", sign("s3cret", &body)),
                ("X-Gitea-Signature", sign("wrong", &body)),
            ),
        };
        let runs_before = runs(&env).len();
        let (status, answer) = post(&env.api, &path, &event, &body);
        assert_eq!(status, 401, "{provider} without a signature: {answer}");
        let mut with_bad = event.clone();
        with_bad.push(bad);
        let (status, answer) = post(&env.api, &path, &with_bad, &body);
        assert_eq!(status, 401, "{provider} with a bad signature: {answer}");
        assert_eq!(
            runs(&env).len(),
            runs_before,
            "a refused delivery starts nothing"
        );

        let mut with_good = event.clone();
        with_good.push(good);
        let pushed = Instant::now();
        let (status, answer) = post(&env.api, &path, &with_good, &body);
        assert_eq!(status, 202, "{provider}: {answer}");
        assert!(answer.contains("\"run\""), "{provider}: {answer}");
        let run = wait_for_run(&env, &after, Duration::from_secs(60));
        eprintln!("push to live by {provider} webhook: {:?}", pushed.elapsed());
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["trigger"], format!("webhook:{provider}"));
        assert_eq!(env.get("shop.test", "/index.html"), (200, version.clone()));

        // The same delivery again starts nothing.
        let (status, answer) = post(&env.api, &path, &with_good, &body);
        assert_eq!(status, 202, "{answer}");
        assert!(answer.contains("already has a run"), "{answer}");
        before = after;
    }

    // A push to another branch, and an event that is not a push: ignored.
    let other = repo.push("feature", "elsewhere", &[("index.html", "feature")]);
    let body = payload("github", "feature", &before, &other);
    let headers = vec![
        ("X-GitHub-Event", "push".to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", sign("s3cret", &body)),
        ),
    ];
    let (status, answer) = post(
        &env.api,
        "/api/v1/services/shop/hooks/github",
        &headers,
        &body,
    );
    assert_eq!(
        (status, answer.contains("ignored")),
        (202, true),
        "{answer}"
    );
    let ping = r#"{"zen":"Keep it logically awesome."}"#;
    let headers = vec![
        ("X-GitHub-Event", "ping".to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", sign("s3cret", ping)),
        ),
    ];
    let (status, answer) = post(
        &env.api,
        "/api/v1/services/shop/hooks/github",
        &headers,
        ping,
    );
    assert_eq!(
        (status, answer.contains("ignored")),
        (202, true),
        "{answer}"
    );
    assert!(runs(&env).iter().all(|r| r["commit"] != other.as_str()));

    let r = load.finish();
    eprintln!("requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(
        r.failed,
        0,
        "failed: {:?}",
        &r.failures[..r.failures.len().min(5)]
    );
}

/// A spec whose build sleeps `seconds` when the commit has a `slow` file.
fn slow_build_spec() -> String {
    SPEC.replace(
        "run: \"echo built $TANDEM_COMMIT > built.txt\"",
        "run: \"sh build.sh\"",
    )
}

const BUILD_SH: &str =
    "if [ -f slow ]; then echo building slowly; sleep $(cat slow); fi; echo built\n";

/// Waits until the run of `commit` is in `stage`.
fn wait_for_stage(env: &Env, commit: &str, stage: &str) -> serde_json::Value {
    wait_for(
        env,
        Duration::from_secs(30),
        &format!("the run reaching {stage}"),
        |r| r["commit"] == commit && r["stage"] == stage,
    )
}

#[test]
fn a_run_interrupted_by_a_control_plane_crash_is_marked_and_completes_after_restart() {
    let mut env = Env::start();
    let repo = Repo::new(env.root.path(), &slow_build_spec());
    let c1 = repo.push(
        "main",
        "first",
        &[
            ("index.html", "v1"),
            ("check.sh", PASSING),
            ("build.sh", BUILD_SH),
        ],
    );
    register(&env, &repo, &["--poll-interval", "300ms"]);
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let load = Load::start(&env.proxy, "shop.test", 4);
    let c2 = repo.push("main", "second", &[("index.html", "v2"), ("slow", "2")]);
    // Kill the control plane while the build step runs.
    wait_for_stage(&env, &c2, "build");
    env.kill_up();
    env.up_again();
    let all = runs(&env);
    let first = all
        .iter()
        .find(|r| r["commit"] == c2.as_str() && r["retry_of"].is_null())
        .expect("the interrupted run");
    assert_eq!(first["status"], "interrupted", "{first}");
    assert!(
        runs(&env).iter().any(|r| r["retry_of"] == first["id"]),
        "the interrupted run is queued again"
    );
    let again = wait_for(
        &env,
        Duration::from_secs(60),
        "the requeued run done",
        |r| {
            if r["retry_of"] != first["id"] {
                return false;
            }
            assert!(
                !["failed", "cancelled", "interrupted"]
                    .contains(&r["status"].as_str().unwrap_or("")),
                "{r}"
            );
            r["status"] == "succeeded"
        },
    );
    assert_eq!(again["trigger"], "recovery");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v2".into()));
    let r = load.finish();
    eprintln!("requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(
        r.failed,
        0,
        "failed: {:?}",
        &r.failures[..r.failures.len().min(5)]
    );
    assert!(
        events(&env).iter().any(|e| e["kind"] == "run.interrupted"),
        "the interruption is in the journal"
    );
}

/// shop registered (polled every 300 ms) with `build_sh` as its build,
/// its first commit live.
fn first_run_with_build(env: &Env, build_sh: &str) -> Repo {
    let repo = Repo::new(env.root.path(), &slow_build_spec());
    let c1 = repo.push(
        "main",
        "first",
        &[
            ("index.html", "v1"),
            ("check.sh", PASSING),
            ("build.sh", build_sh),
        ],
    );
    register(env, &repo, &["--poll-interval", "300ms"]);
    assert_eq!(
        wait_for_run(env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    repo
}

#[test]
fn a_cancelled_run_leaves_no_process_and_a_removed_service_stops_serving() {
    let env = Env::start();
    let repo = first_run_with_build(&env, BUILD_SH);
    // 4711 marks the sleep so the test can look for it.
    let c2 = repo.push("main", "slow", &[("index.html", "v2"), ("slow", "4711")]);
    let run = wait_for_stage(&env, &c2, "build");
    let id = run["id"].as_i64().expect("id").to_string();
    let started = Instant::now();
    let out = env.tandem(&["pipelines", "cancel", &id]);
    assert_ok(&out);
    let run = wait_for_run(&env, &c2, Duration::from_secs(5));
    eprintln!("cancelled in {:?}", started.elapsed());
    assert_eq!(run["status"], "cancelled", "{run}");
    let left = Command::new("pgrep")
        .args(["-f", "sleep 4711"])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "the step's process group is gone: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));
    // Retry runs the same commit again (and cancel it again at once).
    let out = env.tandem(&["pipelines", "retry", &id, "-o", "json"]);
    assert_ok(&out);
    let retry: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(retry["commit"], c2.as_str());
    assert_eq!(retry["retry_of"].as_i64(), run["id"].as_i64());
    let retry_id = retry["id"].as_i64().expect("id").to_string();
    assert_ok(&env.tandem(&["pipelines", "cancel", &retry_id]));

    assert_ok(&env.tandem(&["services", "rm", "shop"]));
    assert_eq!(
        env.get("shop.test", "/index.html").0,
        404,
        "the route is gone"
    );
    let out = env.tandem(&["services", "-o", "json"]);
    assert_ok(&out);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(services.as_array().map(Vec::len), Some(0), "{services}");
    assert_eq!(env.tandem(&["status", "shop"]).status.code(), Some(2));
    let agent_state = std::fs::read_to_string(env.data().join("agent-state.json")).expect("state");
    assert!(
        !agent_state.contains("\"shop\""),
        "the agent runs nothing of shop: {agent_state}"
    );
    assert!(events(&env).iter().any(|e| e["kind"] == "service.removed"));
    let out = env.tandem(&["services", "rm", "shop"]);
    assert_eq!(out.status.code(), Some(2), "removing it twice is bad input");
}

/// The CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime: fields 14 and 15 of the line, in clock ticks.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[test]
fn a_run_cancelled_while_its_artifact_is_stored_stops_that_work() {
    let env = Env::start();
    let repo = first_run_with_build(
        &env,
        "if [ -f huge ]; then truncate -s 4G big.bin; fi; echo built\n",
    );
    // The build makes a 4 GiB file of holes: long to digest and copy.
    let c2 = repo.push("main", "huge", &[("index.html", "v2"), ("huge", "")]);
    let run = wait_for_stage(&env, &c2, "release");
    std::thread::sleep(Duration::from_millis(500));
    let id = run["id"].as_i64().expect("id").to_string();
    assert_ok(&env.tandem(&["pipelines", "cancel", &id]));
    let run = wait_for_run(&env, &c2, Duration::from_secs(5));
    assert_eq!(run["status"], "cancelled", "{run}");
    // The digest stopped: the server is idle, not reading 4 GiB.
    let server = env.up.as_ref().expect("up").id();
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(server);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(server) - before;
    assert!(
        used < 1.0,
        "the server used {used:.2} s of CPU in 3 s after the cancel"
    );
    let partial: Vec<_> = std::fs::read_dir(env.data().join("artifacts"))
        .expect("artifacts")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));
}

const SMOKE: &str = "import os, urllib.request\nreq = urllib.request.Request('http://' + os.environ['TANDEM_PROXY'] + '/index.html', headers={'Host': os.environ['TANDEM_HOST']})\nbody = urllib.request.urlopen(req, timeout=5).read().decode()\nprint('smoke', os.environ['TANDEM_ENV'], body)\n";

#[test]
fn staging_serves_each_push_while_production_waits_for_a_recorded_approval() {
    let env = Env::start();
    let spec = format!(
        "{SPEC}verify:\n  - {{ name: smoke, run: \"python3 smoke.py\" }}\nenvironments:\n  staging: {{ auto_deploy: true, route: {{ host: staging.shop.test }} }}\n  production: {{ promote: manual, approvals: 1 }}\n"
    );
    let repo = Repo::new(env.root.path(), &spec);
    let c1 = repo.push(
        "main",
        "first",
        &[
            ("index.html", "v1"),
            ("check.sh", PASSING),
            ("smoke.py", SMOKE),
        ],
    );
    register(&env, &repo, &["--poll-interval", "300ms"]);
    let first = wait_for_status(&env, &c1, "waiting-approval");
    assert_eq!(
        env.get("staging.shop.test", "/index.html"),
        (200, "v1".into())
    );
    assert_eq!(
        env.get("shop.test", "/index.html").0,
        404,
        "nothing in production yet"
    );
    let id = first["id"].as_i64().expect("id").to_string();
    let log = String::from_utf8_lossy(&env.tandem(&["pipelines", "logs", &id]).stdout).into_owned();
    assert!(
        log.contains("smoke staging v1"),
        "verify ran against staging: {log}"
    );
    assert_ok(&env.tandem(&["approve", &id]));
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    let load = Load::start(&env.proxy, "shop.test", 4);
    let c2 = repo.push("main", "second", &[("index.html", "v2")]);
    let second = wait_for_status(&env, &c2, "waiting-approval");
    assert_eq!(
        env.get("staging.shop.test", "/index.html"),
        (200, "v2".into())
    );
    assert_eq!(
        env.get("shop.test", "/index.html"),
        (200, "v1".into()),
        "production waits for the approval"
    );
    let status = env.status_json("shop");
    assert_eq!(status["services"][0]["environments"][0]["env"], "staging");
    assert_eq!(status["services"][0]["live_release"], "r1");
    let id = second["id"].as_i64().expect("id").to_string();
    let out = env.tandem(&["approve", &id]);
    assert_ok(&out);
    let run = wait_for_run(&env, &c2, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v2".into()));
    let stages: Vec<(String, String)> = run["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().into(),
                s["status"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "checkout",
            "build",
            "test",
            "release",
            "deploy:staging",
            "verify:staging",
            "approval:production",
            "deploy:production",
            "verify:production"
        ]
    );
    let r = load.finish();
    eprintln!("requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(
        r.failed,
        0,
        "failed: {:?}",
        &r.failures[..r.failures.len().min(5)]
    );

    let journal = events(&env);
    let approval = journal
        .iter()
        .find(|e| e["kind"] == "run.approved" && e["payload"]["commit"] == c2.as_str())
        .expect("the approval is in the journal");
    let me = approval["actor"].as_str().expect("actor");
    assert!(me.starts_with("user:") && me.len() > 5, "{approval}");
    assert_eq!(approval["payload"]["approver"], me);
    assert_eq!(approval["payload"]["env"], "production");
    assert_eq!(
        approval["payload"]["author"],
        "Ada Lovelace <ada@example.test>"
    );

    // A push whose verify fails in staging: staging goes back to the
    // release it ran, production never sees it.
    let c3 = repo.push(
        "main",
        "third, with a smoke test that fails",
        &[
            ("index.html", "v3"),
            ("smoke.py", "import sys\nsys.exit('smoke: v3 is not fit')\n"),
        ],
    );
    let third = wait_for_run(&env, &c3, Duration::from_secs(60));
    assert_eq!(third["status"], "failed", "{third}");
    let reason = third["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("staging rolled back to r2"), "{reason}");
    assert_eq!(
        env.get("staging.shop.test", "/index.html"),
        (200, "v2".into())
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v2".into()));
}

#[test]
fn a_failed_verify_rolls_production_back_to_the_release_it_ran() {
    let env = Env::start();
    // SMOKE, and a page that says "broken" fails it.
    let smoke = format!(
        "{SMOKE}import sys\nsys.exit('smoke: the page is broken' if 'broken' in body else 0)\n"
    );
    let spec = format!("{SPEC}verify:\n  - {{ name: smoke, run: \"python3 smoke.py\" }}\n");
    let repo = Repo::new(env.root.path(), &spec);
    let c1 = repo.push(
        "main",
        "good",
        &[
            ("index.html", "v1"),
            ("check.sh", PASSING),
            ("smoke.py", smoke.as_str()),
        ],
    );
    register(&env, &repo, &["--poll-interval", "300ms"]);
    let first = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    let load = Load::start(&env.proxy, "shop.test", 4);
    let c2 = repo.push(
        "main",
        "passes its tests, breaks the page",
        &[("index.html", "broken")],
    );
    let run = wait_for_run(&env, &c2, Duration::from_secs(90));
    let r = load.finish();
    assert_eq!(run["status"], "failed", "{run}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("smoke") && reason.contains("production rolled back to r1"),
        "{reason}"
    );
    assert_eq!(
        env.get("shop.test", "/index.html"),
        (200, "v1".into()),
        "the release it ran before serves again"
    );
    assert_eq!(env.status_json("shop")["services"][0]["live_release"], "r1");
    let stages: Vec<(&str, &str)> = run["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        &stages[stages.len() - 3..],
        [
            ("deploy", "succeeded"),
            ("verify", "failed"),
            ("rollback", "succeeded")
        ],
        "{run}"
    );
    let journal = events(&env);
    let rolled_back = journal
        .iter()
        .find(|e| e["kind"] == "rollback.succeeded")
        .expect("the rollback is in the journal");
    assert_eq!(rolled_back["actor"], "system:pipeline", "{rolled_back}");
    eprintln!(
        "verify rollback under load: ok={} failed={}",
        r.ok, r.failed
    );
    assert_eq!(r.failed, 0, "{:?}", &r.failures[..r.failures.len().min(5)]);
    assert!(r.ok > 50, "load ran: {}", r.ok);
}

/// Waits until the run of `commit` is in `status`; fails at once if it ends.
fn wait_for_status(env: &Env, commit: &str, status: &str) -> serde_json::Value {
    wait_for(
        env,
        Duration::from_secs(60),
        &format!("the run of {commit} {status}"),
        |r| {
            if r["commit"] != commit {
                return false;
            }
            assert!(
                !["failed", "cancelled", "superseded"]
                    .contains(&r["status"].as_str().unwrap_or("")),
                "{r}"
            );
            r["status"] == status
        },
    )
}

#[test]
fn secrets_reach_instances_and_steps_and_are_masked_everywhere_else() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start();
    let value = "s3cr3t-Value-8842";
    let spec = SPEC
        .replace(
            "command: exec python3 -m http.server $PORT --bind 127.0.0.1",
            // Its release is read-only: what it writes goes to its state.
            "command: echo \"token=$API_TOKEN\" > $STATE_DIRECTORY/token.txt && exec python3 -m http.server $PORT --bind 127.0.0.1 --directory $STATE_DIRECTORY",
        )
        .replace(
            "  instances: 2\n",
            "  instances: 2\n  secrets: [API_TOKEN]\n  state_dir: true\n",
        );
    let repo = Repo::new(env.root.path(), &spec);
    let check = "echo \"testing with $API_TOKEN\"; test -n \"$API_TOKEN\"\n";
    let c1 = repo.push(
        "main",
        "needs a secret",
        &[("index.html", "v1"), ("check.sh", check)],
    );
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(run["status"], "failed", "{run}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("API_TOKEN") && reason.contains("tandem secrets set shop API_TOKEN"),
        "{reason}"
    );

    let mut set = Command::new(util::bin())
        .args(["secrets", "set", "shop", "API_TOKEN"])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", env.token())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    set.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{value}\n").as_bytes())
        .expect("write value");
    assert!(set.wait().expect("wait").success());
    let id = run["id"].as_i64().expect("id").to_string();
    let out = env.tandem(&["pipelines", "retry", &id, "-o", "json"]);
    assert_ok(&out);
    let retry: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let retry_id = retry["id"].as_i64().expect("id");
    let run = wait_for(&env, Duration::from_secs(60), "the retry finished", |r| {
        r["id"] == retry_id && r["status"] != "queued" && r["status"] != "running"
    });
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        env.get("shop.test", "/token.txt"),
        (200, format!("token={value}\n")),
        "the instances got the secret"
    );
    let log = env.tandem(&["pipelines", "logs", &retry_id.to_string()]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("testing with ***"),
        "the step got it, the log masks it: {log}"
    );
    assert!(!log.contains(value), "{log}");

    let out = env.tandem(&["secrets", "ls", "shop", "-o", "json"]);
    assert_ok(&out);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("API_TOKEN") && !listed.contains(value),
        "{listed}"
    );
    let journal = env.tandem(&["audit", "events", "-o", "json"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(journal.contains("secret.set"), "setting it is journaled");
    assert!(!journal.contains(value), "the value is not");
    // The database's WAL and shared memory hold its pages too.
    for file in [
        "tandem.db",
        "tandem.db-wal",
        "tandem.db-shm",
        "agent-state.json",
    ] {
        let mode = std::fs::metadata(env.data().join(file))
            .expect(file)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is owner-only");
    }
}

#[test]
fn a_repository_whose_spec_is_too_large_is_refused_without_reading_it() {
    let env = Env::start();
    let root = tempfile::tempdir().expect("tempdir");
    // A spec with 300 KiB of comment: valid YAML, too large to take.
    let huge = format!("{SPEC}# {}\n", "x".repeat(300 * 1024));
    let repo = Repo::new(root.path(), &huge);
    repo.push("main", "a large spec", &[("index.html", "v1")]);
    let out = env.tandem(&["services", "add", repo.origin.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tandem.yaml at the head of main")
            && stderr.contains("larger than 256 KiB"),
        "{stderr}"
    );
    let services = env.tandem(&["services", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&services.stdout).trim(), "[]");
}

/// A spec with no steps: runs are quick, so orders of runs are cheap to try.
const QUICK_SPEC: &str = "service:\n  name: shop\nrun:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n  instances: 1\n  stop_timeout: 5s\nroute:\n  host: shop.test\nrelease:\n  deploy_timeout: 15s\n  drain_timeout: 1s\n";

/// A signed GitHub push webhook for `after`.
fn github_push(env: &Env, before: &str, after: &str) -> u16 {
    let body = payload("github", "main", before, after);
    let headers = vec![
        ("X-GitHub-Event", "push".to_owned()),
        ("X-GitHub-Delivery", format!("d-{after}")),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", sign("s3cret", &body)),
        ),
    ];
    post(
        &env.api,
        "/api/v1/services/shop/hooks/github",
        &headers,
        &body,
    )
    .0
}

/// No run of the service is queued, running or waiting.
fn settled(env: &Env) -> bool {
    runs(env).iter().all(|r| {
        [
            "succeeded",
            "failed",
            "cancelled",
            "superseded",
            "interrupted",
        ]
        .contains(&r["status"].as_str().unwrap_or_default())
    })
}

/// A permutation of 0..n from a seed (a small LCG: no dependency).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order
}

#[test]
fn webhooks_for_ten_commits_in_any_order_end_with_the_head_in_production() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let mut before = repo.push("main", "v0", &[("index.html", "v0")]);
    register(
        &env,
        &repo,
        &["--webhook-secret", "s3cret", "--poll-interval", "1h"],
    );
    assert_eq!(
        wait_for_run(&env, &before, Duration::from_secs(60))["status"],
        "succeeded"
    );
    // TANDEM_ORDER_TRIALS=100 for the issue's acceptance run; CI tries 3.
    let trials: u64 = std::env::var("TANDEM_ORDER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for trial in 0..trials {
        let commits: Vec<(String, String)> = (1..=10)
            .map(|n| {
                let body = format!("t{trial}-v{n}");
                let sha = repo.push("main", &body, &[("index.html", &body)]);
                (sha, body)
            })
            .collect();
        let order = shuffled(commits.len(), trial);
        // All at once, in this order of sending.
        std::thread::scope(|s| {
            for &i in &order {
                let (sha, prev) = (commits[i].0.clone(), before.clone());
                let env = &env;
                s.spawn(move || assert_eq!(github_push(env, &prev, &sha), 202));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let head = commits.last().expect("ten").1.clone();
        wait_until(Duration::from_secs(60), "the head in production", || {
            (settled(&env) && env.get("shop.test", "/index.html") == (200, head.clone()))
                .then_some(())
        });
        before = commits.last().expect("ten").0.clone();
        eprintln!("trial {trial}: order {order:?}: production on the head");
    }
    // A late webhook for an old commit changes nothing.
    let old = runs(&env).last().expect("a run")["commit"]
        .as_str()
        .expect("sha")
        .to_owned();
    github_push(&env, &old, &old);
    std::thread::sleep(Duration::from_secs(2));
    wait_until(Duration::from_secs(30), "settled", || {
        settled(&env).then_some(())
    });
    let head = format!("t{}-v10", trials - 1);
    assert_eq!(env.get("shop.test", "/index.html"), (200, head));
}

#[test]
fn a_branch_forced_back_to_an_older_commit_is_deployed_and_journalled() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "300ms"]);
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let c2 = repo.push("main", "v2", &[("index.html", "v2")]);
    assert_eq!(
        wait_for_run(&env, &c2, Duration::from_secs(60))["status"],
        "succeeded"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v2".into()));
    git(
        &repo.work,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("{c1}:main"),
        ],
    );
    wait_until(Duration::from_secs(30), "v1 back in production", || {
        (settled(&env) && env.get("shop.test", "/index.html") == (200, "v1".into())).then_some(())
    });
    let moved: Vec<_> = events(&env)
        .into_iter()
        .filter(|e| e["kind"] == "run.head_moved_back")
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["payload"]["from"], c2.as_str());
    assert_eq!(moved[0]["payload"]["to"], c1.as_str());
    // And it stays there: nothing moves production forward again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));
}

#[test]
fn a_push_during_a_git_server_outage_is_deployed_once_the_server_is_back() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    register(
        &env,
        &repo,
        &["--webhook-secret", "s3cret", "--poll-interval", "300ms"],
    );
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    // The git server goes away (its path with it); a push reaches it
    // there, and its webhook reaches tandem, which cannot fetch.
    let down = repo.origin.with_extension("down");
    std::fs::rename(&repo.origin, &down).expect("outage");
    std::fs::write(repo.work.join("index.html"), "v2").expect("write");
    git(&repo.work, &["commit", "--quiet", "-am", "v2"]);
    git(
        &repo.work,
        &["push", "--quiet", down.to_str().expect("utf8"), "main"],
    );
    let c2 = git(&repo.work, &["rev-parse", "HEAD"]);
    assert_eq!(github_push(&env, &c1, &c2), 202);
    let failed = wait_for_run(&env, &c2, Duration::from_secs(30));
    assert_eq!(failed["status"], "failed", "{failed}");
    std::fs::rename(&down, &repo.origin).expect("back");
    wait_until(
        Duration::from_secs(30),
        "v2 in production after the outage",
        || (env.get("shop.test", "/index.html") == (200, "v2".into())).then_some(()),
    );
}

fn pids_of(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn steps_a_killed_server_left_running_are_killed_when_it_starts_again() {
    let mut env = Env::start();
    let repo = first_run_with_build(&env, BUILD_SH);
    let c2 = repo.push("main", "slow", &[("index.html", "v2"), ("slow", "4713")]);
    wait_for_stage(&env, &c2, "build");
    // This server's step (another test's could match the pattern).
    let mark = format!(
        "TANDEM_STEP_OF={}",
        std::fs::canonicalize(env.data()).expect("data").display()
    );
    let old = wait_until(Duration::from_secs(10), "the step's sleep", || {
        let pids: Vec<u32> = pids_of("sleep 4713")
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/environ"))
                    .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == mark.as_bytes()))
            })
            .collect();
        (!pids.is_empty()).then_some(pids)
    });
    env.kill_up();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        old.iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()),
        "the step outlives the killed server (which is what is fixed at the next start)"
    );
    env.up_again();
    wait_until(Duration::from_secs(10), "the orphaned step killed", || {
        old.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    // The recovery run sleeps again; end it.
    let again = wait_for(&env, Duration::from_secs(20), "the recovery run", |r| {
        r["commit"] == c2.as_str() && r["trigger"] == "recovery"
    });
    let id = again["id"].as_i64().expect("id").to_string();
    let _ = env.tandem(&["pipelines", "cancel", &id]);
}

#[test]
fn approvals_are_carried_to_the_run_that_replaces_one_interrupted_mid_deploy() {
    let mut env = Env::start();
    let spec = format!(
        "{QUICK_SPEC}environments:\n  staging: {{ route: {{ host: staging.shop.test }} }}\n  production: {{ promote: manual, approvals: 1 }}\n"
    );
    let repo = Repo::new(env.root.path(), &spec);
    let c1 = repo.push("main", "first", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "300ms"]);
    let first = wait_for_status(&env, &c1, "waiting-approval");
    let id = first["id"].as_i64().expect("id");
    // The next server pauses before each switch: the approved run is
    // caught in its production deploy, where the server is killed.
    env.kill_up();
    env.vars
        .push(("TANDEM_FAULT_PAUSE".into(), "before-switch:60000".into()));
    env.up_again();
    assert_ok(&env.tandem(&["approve", &id.to_string()]));
    wait_for(
        &env,
        Duration::from_secs(30),
        "the production deploy",
        |r| r["id"] == id && r["stage"] == "deploy:production",
    );
    std::thread::sleep(Duration::from_millis(500));
    env.kill_up();
    env.vars.clear();
    env.up_again();
    let again = wait_for(
        &env,
        Duration::from_secs(60),
        "the recovery run's end",
        |r| {
            r["retry_of"] == id
                && r["status"]
                    .as_str()
                    .is_some_and(|s| s != "queued" && s != "running")
        },
    );
    assert_eq!(
        again["status"], "succeeded",
        "asked for approval again: {again}"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));
    assert!(
        events(&env)
            .iter()
            .any(|e| e["kind"] == "run.approvals_carried")
    );
}

/// Peak resident memory of a process so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_step_printing_300_mb_without_a_newline_leaves_the_servers_memory_alone() {
    let env = Env::start();
    let dir = env.app(
        "chatty",
        "build:\n  - { name: flood, run: \"head -c 300000000 /dev/zero | tr '\\\\0' x\" }\n",
        "chatty",
    );
    let server = env.up.as_ref().expect("up").id();
    // The server's own peak once it has served a deploy's worth of work.
    let warm = env.app("warm", "", "warm");
    assert_ok(&env.deploy(&warm));
    let before = peak_rss_kib(server);
    let out = env.deploy(&dir);
    assert_ok(&out);
    let after = peak_rss_kib(server);
    eprintln!(
        "300 MB without a newline: server peak RSS {before} KiB -> {after} KiB; the client got {} bytes",
        out.stdout.len() + out.stderr.len()
    );
    assert!(
        after < before + 50 * 1024,
        "peak RSS grew from {before} to {after} KiB"
    );
    assert_eq!(env.get("chatty.test", "/").0, 200);
}

#[test]
fn a_promotion_can_be_rejected_with_a_reason_and_stays_rejected() {
    let env = Env::start();
    let spec = format!("{QUICK_SPEC}environments:\n  production: {{ promote: manual }}\n");
    let repo = Repo::new(env.root.path(), &spec);
    let c1 = repo.push("main", "first", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "300ms"]);
    let run = wait_for_status(&env, &c1, "waiting-approval");
    let id = run["id"].as_i64().expect("id").to_string();
    assert_eq!(
        env.tandem(&["reject", &id]).status.code(),
        Some(2),
        "a reason is required"
    );
    assert_eq!(
        env.tandem(&["reject", &id, "--reason", " "]).status.code(),
        Some(2)
    );
    let out = env.tandem(&["reject", &id, "--reason", "breaks the invoice export"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("breaks the invoice export"));
    let rejected = wait_for_run(&env, &c1, Duration::from_secs(5));
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    assert_ne!(
        env.tandem(&["approve", &id]).status.code(),
        Some(0),
        "approving it after is refused"
    );
    let event = events(&env)
        .into_iter()
        .find(|e| e["kind"] == "run.rejected")
        .expect("run.rejected in the journal");
    assert_eq!(event["payload"]["reason"], "breaks the invoice export");
    assert!(
        event["payload"]["by"]
            .as_str()
            .is_some_and(|b| b.starts_with("user:"))
    );
    // The poller does not bring the rejected head back.
    std::thread::sleep(Duration::from_secs(2));
    let of_c1 = runs(&env)
        .iter()
        .filter(|r| r["commit"] == c1.as_str())
        .count();
    assert_eq!(of_c1, 1);
    assert_eq!(env.get("shop.test", "/index.html").0, 404);
}

#[test]
fn deploy_ref_takes_a_tag_and_an_unknown_ref_is_bad_input() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    git(&repo.work, &["tag", "v1.0.0", &c1]);
    git(&repo.work, &["push", "--quiet", "origin", "v1.0.0"]);
    let c2 = repo.push("main", "v2", &[("index.html", "v2")]);
    register(&env, &repo, &["--poll-interval", "1h"]);
    assert_eq!(
        wait_for_run(&env, &c2, Duration::from_secs(60))["status"],
        "succeeded"
    );
    // A person deploys the tag: an explicit move back, allowed.
    let out = env.tandem(&["deploy", "shop", "--ref", "v1.0.0", "-o", "json"]);
    assert_ok(&out);
    wait_until(Duration::from_secs(30), "the tag in production", || {
        (settled(&env) && env.get("shop.test", "/index.html") == (200, "v1".into())).then_some(())
    });
    let out = env.tandem(&["deploy", "shop", "--ref", "no-such-ref"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.tandem(&["deploy", "shop", "--ref", "--upload-pack=touch /tmp/x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_failed_run_and_an_unreachable_repository_are_told_not_only_logged() {
    let env = Env::start_with(&[("TANDEM_REPO_DOWN_AFTER", "2")]);
    let (hook, got) = util::receiver();
    assert_ok(&env.tandem(&["channels", "add", "webhook", &format!("http://{hook}/t")]));
    let repo = Repo::new(env.root.path(), SPEC);
    let c1 = repo.push(
        "main",
        "first",
        &[("index.html", "v1"), ("check.sh", PASSING)],
    );
    register(&env, &repo, &["--poll-interval", "300ms"]);
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );

    // A failing test: the run fails, and the channels hear of it.
    let c2 = repo.push(
        "main",
        "broken",
        &[("check.sh", "echo the tests fail; exit 1\n")],
    );
    let failed = wait_for_run(&env, &c2, Duration::from_secs(60));
    assert_eq!(failed["status"], "failed");
    wait_until(Duration::from_secs(10), "the failed run told", || {
        got.lock()
            .expect("lock")
            .iter()
            .any(|r| r.body.contains("\"run.failed\"") && r.body.contains(&c2))
            .then_some(())
    });

    // The git server goes away: `services` says so at once, and after a
    // while (2 s here, 10 min by default) it is an incident.
    let down = repo.origin.with_extension("down");
    std::fs::rename(&repo.origin, &down).expect("outage");
    wait_until(
        Duration::from_secs(10),
        "services to say unreachable",
        || {
            let out = env.tandem(&["services"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("UNREACHABLE")
                .then_some(())
        },
    );
    let incident = wait_until(
        Duration::from_secs(15),
        "a repo-unreachable incident",
        || {
            let out = env.tandem(&["incidents", "-o", "json"]);
            let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            all.as_array()?
                .iter()
                .find(|i| i["kind"] == "repo-unreachable" && i["status"] == "open")
                .cloned()
        },
    );
    assert_eq!(incident["service"], "shop");
    std::fs::rename(&down, &repo.origin).expect("back");
    wait_until(Duration::from_secs(15), "the incident resolved", || {
        let out = env.tandem(&["incidents", "-o", "json"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        all.as_array()?
            .iter()
            .any(|i| i["kind"] == "repo-unreachable" && i["status"] == "resolved")
            .then_some(())
    });
    let out = env.tandem(&["services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(services[0]["repo"]["poll_error"].is_null(), "{services}");
    assert!(services[0]["repo"]["polled_at"].is_string(), "{services}");
}

#[test]
fn a_commit_cannot_loosen_or_drop_its_own_gate_and_an_admin_can_change_the_policy() {
    let env = Env::start();
    let gated = format!(
        "{QUICK_SPEC}environments:\n  staging: {{ route: {{ host: staging.shop.test }} }}\n  production: {{ promote: manual, approvals: 1 }}\n"
    );
    let loosened = format!(
        "{QUICK_SPEC}environments:\n  staging: {{ route: {{ host: staging.shop.test }} }}\n  production: {{}}\n"
    );
    let repo = Repo::new(env.root.path(), &gated);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "300ms"]);
    let out = env.tandem(&["services", "policy", "shop", "-o", "json"]);
    assert_ok(&out);
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let production = policy
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["env"] == "production")
        .cloned()
        .expect("production's policy, from the registered spec");
    assert_eq!(production["approvals"], 1);
    let r1 = wait_for_status(&env, &c1, "waiting-approval");
    assert_ok(&env.tandem(&["approve", &r1["id"].to_string()]));
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );

    // The commit drops its approval: the gate holds all the same.
    let c2 = repo.push(
        "main",
        "loosen",
        &[("index.html", "v2"), ("tandem.yaml", &loosened)],
    );
    let r2 = wait_for_status(&env, &c2, "waiting-approval");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));
    assert_ok(&env.tandem(&[
        "reject",
        &r2["id"].to_string(),
        "--reason",
        "a gate removed",
    ]));
    // The commit drops staging: not released.
    let c3 = repo.push(
        "main",
        "drop",
        &[("index.html", "v3"), ("tandem.yaml", QUICK_SPEC)],
    );
    let r3 = wait_for_run(&env, &c3, Duration::from_secs(60));
    assert_eq!(r3["status"], "failed", "{r3}");
    assert!(
        r3["reason"]
            .as_str()
            .unwrap_or("")
            .contains("requires environment staging"),
        "{r3}"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    // Only named approvers count.
    assert_ok(&env.tandem(&[
        "services",
        "policy",
        "shop",
        "--env",
        "production",
        "--approvers",
        "alice",
    ]));
    let c4 = repo.push(
        "main",
        "v4",
        &[("index.html", "v4"), ("tandem.yaml", &gated)],
    );
    let r4 = wait_for_status(&env, &c4, "waiting-approval");
    let out = env.tandem(&["approve", &r4["id"].to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not approve"),
        "{out:?}"
    );

    // An admin loosens the policy; the journal says who and what it was.
    assert_ok(&env.tandem(&[
        "services",
        "policy",
        "shop",
        "--env",
        "staging",
        "--optional",
    ]));
    assert_ok(&env.tandem(&[
        "services",
        "policy",
        "shop",
        "--env",
        "production",
        "--approvals",
        "0",
        "--approvers",
        "",
    ]));
    let c5 = repo.push(
        "main",
        "v5",
        &[("index.html", "v5"), ("tandem.yaml", QUICK_SPEC)],
    );
    assert_eq!(
        wait_for_run(&env, &c5, Duration::from_secs(60))["status"],
        "succeeded"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v5".into()));
    let set: Vec<_> = events(&env)
        .into_iter()
        .filter(|e| e["kind"] == "policy.set")
        .collect();
    assert!(
        set.iter().any(|e| e["subject"]["env"] == "production"
            && e["payload"]["approvals"] == 0
            && e["payload"]["before"]["approvals"] == 1),
        "{set:?}"
    );
}

#[test]
fn two_services_of_one_monorepo_are_each_built_from_their_directory() {
    let env = Env::start();
    let root = env.root.path().join("mono");
    std::fs::create_dir_all(&root).expect("mkdir");
    let repo = Repo::new(&root, "");
    std::fs::remove_file(repo.work.join("tandem.yaml")).expect("no top spec");
    for name in ["shop", "cart"] {
        let dir = repo.work.join("services").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("tandem.yaml"),
            QUICK_SPEC
                .replace("name: shop", &format!("name: {name}"))
                .replace("host: shop.test", &format!("host: {name}.test")),
        )
        .expect("spec");
    }
    let c1 = repo.push(
        "main",
        "both",
        &[
            ("services/shop/index.html", "shop v1"),
            ("services/cart/index.html", "cart v1"),
        ],
    );
    for name in ["shop", "cart"] {
        let out = env.tandem(&[
            "services",
            "add",
            repo.origin.to_str().expect("utf8"),
            "--path",
            &format!("services/{name}/"),
            "--poll-interval",
            "300ms",
        ]);
        assert_ok(&out);
    }
    for (name, body) in [("shop", "shop v1"), ("cart", "cart v1")] {
        wait_until(Duration::from_secs(60), &format!("{name} serving"), || {
            (env.get(&format!("{name}.test"), "/index.html") == (200, body.into())).then_some(())
        });
    }
    let _ = c1;
    // The release holds the service's directory, not the whole repository.
    let out = env.tandem(&["releases", "cart", "-o", "json"]);
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let digest = releases[0]["digest"].as_str().expect("digest").to_owned();
    let files: Vec<String> = std::fs::read_dir(env.data().join("artifacts").join(digest))
        .expect("artifact")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.contains(&"index.html".to_owned()) && !files.contains(&"services".to_owned()),
        "{files:?}"
    );
    let bad = env.tandem(&[
        "services",
        "add",
        repo.origin.to_str().expect("utf8"),
        "--path",
        "../etc",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_repository_url_with_a_token_in_it_is_refused_and_the_token_shown_nowhere() {
    let env = Env::start();
    let out = env.tandem(&[
        "services",
        "add",
        "https://ann:tok3n-5ecret@127.0.0.1:9/acme/shop.git",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds a password"), "{stderr}");
    assert!(!stderr.contains("tok3n-5ecret"), "{stderr}");
    let journal = String::from_utf8_lossy(&env.tandem(&["audit", "events", "-o", "json"]).stdout)
        .into_owned();
    assert!(!journal.contains("tok3n-5ecret"));
    let services =
        String::from_utf8_lossy(&env.tandem(&["services", "-o", "json"]).stdout).into_owned();
    assert_eq!(services.trim(), "[]");
}

/// A git smart-HTTP server (git http-backend) that wants Basic auth with
/// `token` as the password, serving the repositories under `root`.
const GIT_HTTP: &str = r#"
import base64, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ROOT, PORTFILE = sys.argv[1], sys.argv[2]
TOKEN = os.environ.pop("GIT_HTTP_TOKEN")
BACKEND = os.path.join(subprocess.check_output(["git", "--exec-path"]).decode().strip(), "git-http-backend")
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
    def any(self):
        body = self.body()
        auth = self.headers.get("Authorization", "")
        user, password = "", None
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        if password != TOKEN:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                   QUERY_STRING=query, REQUEST_METHOD=self.command, REMOTE_USER=user,
                   REMOTE_ADDR="127.0.0.1", CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run([BACKEND], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)
    do_GET = do_POST = any
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(PORTFILE, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
"#;

/// Every file under `dir` (recursively) that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_repository_token_works_and_appears_nowhere() {
    const TOKEN: &str = "tok-S3cret-4f9b2c7e";
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    let port_file = env.root.path().join("git-http.port");
    // The token reaches it in its environment: its command line is
    // searched below, like every other.
    let server = Command::new("python3")
        .arg("-c")
        .arg(GIT_HTTP)
        .arg(env.root.path())
        .arg(&port_file)
        .env("GIT_HTTP_TOKEN", TOKEN)
        .spawn()
        .expect("git http server");
    let _server = KillOnDrop(server);
    let port = wait_until(Duration::from_secs(10), "the git server", || {
        std::fs::read_to_string(&port_file)
            .ok()
            .filter(|p| !p.is_empty())
    });
    let url = format!("http://127.0.0.1:{port}/origin.git");

    // Without the token: refused, nothing registered.
    let out = env.tandem(&["services", "add", &url]);
    assert_ne!(out.status.code(), Some(0), "registered without the token");

    let mut add = Command::new(util::bin())
        .args([
            "services",
            "add",
            &url,
            "--token-from-stdin",
            "--poll-interval",
            "300ms",
        ])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", env.token())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("services add");
    add.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{TOKEN}\n").as_bytes())
        .expect("token");
    let out = add.wait_with_output().expect("wait");
    assert_ok(&out);
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let c2 = repo.push("main", "v2", &[("index.html", "v2")]);
    // Polled and fetched with the token; meanwhile no process shows it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.get("shop.test", "/index.html") != (200, "v2".into()) {
        assert!(Instant::now() < deadline, "v2 never went live");
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                assert!(
                    !cmdline.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                    "a command line shows the token: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c2;
    assert_secret_nowhere(&env, TOKEN);
}

/// `secret` is in no file of the data directory and no API answer that
/// shows services, runs or the journal.
fn assert_secret_nowhere(env: &Env, secret: &str) {
    assert_eq!(
        files_holding(&env.data(), secret.as_bytes()),
        Vec::<PathBuf>::new()
    );
    for path in [
        "/api/v1/services",
        "/api/v1/events?limit=10000",
        "/api/v1/runs",
    ] {
        let (status, body) = env.api_get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(secret), "{path} shows the secret");
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_repository_using_git_lfs_is_refused_rather_than_its_pointers_shipped() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
    let c1 = repo.push(
        "main",
        "lfs",
        &[
            ("index.html", "v1"),
            (
                ".gitattributes",
                "*.bin filter=lfs diff=lfs merge=lfs -text\n",
            ),
            ("model.bin", pointer),
        ],
    );
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(run["status"], "failed", "{run}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("Git LFS") && reason.contains("model.bin"),
        "{reason}"
    );
    assert_eq!(
        env.get("shop.test", "/index.html").0,
        404,
        "nothing released"
    );
}

/// Whether this machine can run an SSH server for the tests (CI installs
/// openssh-server and runs as root, the user sshd logs in as here).
fn sshd_available() -> bool {
    Path::new("/usr/sbin/sshd").exists()
        && std::fs::metadata("/root").is_ok()
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn keygen(file: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tandem-test", "-f"])
        .arg(file)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_deploy_key_reaches_the_repository_over_ssh_and_appears_nowhere() {
    if !sshd_available() {
        eprintln!("skipped: needs /usr/sbin/sshd and root (CI has both)");
        return;
    }
    let mut env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    let ssh = env.root.path().join("ssh");
    std::fs::create_dir_all(&ssh).expect("mkdir");
    keygen(&ssh.join("host"));
    keygen(&ssh.join("deploy"));
    let key = std::fs::read_to_string(ssh.join("deploy")).expect("key");
    // A line from the middle of the key: what would betray it anywhere.
    let secret_line = key.lines().nth(2).expect("key body").to_owned();
    std::fs::copy(ssh.join("deploy.pub"), ssh.join("authorized")).expect("cp");
    let port = util::free_port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile none\n",
        d = ssh.display()
    );
    std::fs::write(ssh.join("sshd_config"), config).expect("config");
    std::fs::create_dir_all("/run/sshd").expect("privsep dir");
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(ssh.join("sshd_config"))
        .stderr(std::fs::File::create(ssh.join("sshd.log")).expect("log"))
        .spawn()
        .expect("sshd");
    let _sshd = KillOnDrop(sshd);
    wait_until(Duration::from_secs(10), "sshd listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("ssh://root@127.0.0.1:{port}{}", repo.origin.display());

    // Without the key: refused, nothing registered.
    let out = env.tandem(&["services", "add", &url]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "registered without a key: {out:?}"
    );

    // A key for an HTTP URL is bad input.
    let out = env.tandem(&[
        "services",
        "add",
        "http://127.0.0.1:1/x.git",
        "--ssh-key",
        ssh.join("deploy").to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = env.tandem(&[
        "services",
        "add",
        &url,
        "--poll-interval",
        "1h",
        "--ssh-key",
        ssh.join("deploy").to_str().expect("utf8"),
    ]);
    assert_ok(&out);
    // The key file the server was given can go: it keeps its own copy.
    std::fs::remove_file(ssh.join("deploy")).expect("rm key");
    let run = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    // A later commit is fetched over SSH with the same key; every
    // process's arguments are searched while it is.
    let c2 = repo.push("main", "v2", &[("index.html", "v2")]);
    assert_ok(&env.tandem(&["deploy", "shop", "--ref", "main"]));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let text = String::from_utf8_lossy(&cmdline);
                assert!(!text.contains(&secret_line), "the key in a command line");
            }
        }
        if runs(&env)
            .iter()
            .any(|r| r["commit"] == c2 && r["status"] == "succeeded")
        {
            break;
        }
        assert!(Instant::now() < until, "v2 never deployed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v2".into()));

    // The host key was learnt; no private key file outlived its command,
    // and one a killed server left is removed when it starts again.
    let git_dir = env.data().join("git");
    assert!(
        std::fs::read_to_string(git_dir.join("known_hosts"))
            .is_ok_and(|k| k.contains("ssh-ed25519")),
        "known_hosts"
    );
    let key_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(&git_dir)
            .expect("git dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".key-"))
            .map(|e| e.path())
            .collect()
    };
    assert_eq!(key_dirs(), Vec::<PathBuf>::new());
    env.kill_up();
    std::fs::create_dir_all(git_dir.join(".key-left")).expect("mkdir");
    std::fs::write(git_dir.join(".key-left/id"), &key).expect("a left key");
    env.up_again();
    wait_until(Duration::from_secs(10), "the left key removed", || {
        key_dirs().is_empty().then_some(())
    });
    assert_secret_nowhere(&env, &secret_line);
    assert!(
        events(&env)
            .iter()
            .any(|e| e["kind"] == "repo.credential_set" && e["payload"]["kind"] == "ssh-key"),
        "the credential's setting is journalled, without it"
    );
}

#[test]
fn submodules_are_checked_out_from_the_real_remote_by_relative_urls() {
    let env = Env::start();
    // The library beside the application's origin: `../lib.git` from it.
    let lib = Repo {
        origin: env.root.path().join("lib.git"),
        work: env.root.path().join("lib"),
    };
    std::fs::create_dir_all(&lib.origin).expect("mkdir");
    std::fs::create_dir_all(&lib.work).expect("mkdir");
    git(&lib.origin, &["init", "--quiet", "--bare", "-b", "main"]);
    git(&lib.work, &["init", "--quiet", "-b", "main"]);
    git(
        &lib.work,
        &[
            "remote",
            "add",
            "origin",
            lib.origin.to_str().expect("utf8"),
        ],
    );
    lib.push("main", "lib v1", &[("greeting.txt", "from the library")]);

    let spec = QUICK_SPEC.to_owned()
        + "build:\n  - { name: vendor, run: \"cp vendor/lib/greeting.txt index.html\" }\n";
    let repo = Repo::new(env.root.path(), &spec);
    // `../lib.git` from the application's origin, as its developers add it.
    git(
        &repo.work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "--quiet",
            "add",
            "../lib.git",
            "vendor/lib",
        ],
    );
    let c1 = repo.push("main", "with lib", &[]);
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        env.get("shop.test", "/index.html"),
        (200, "from the library".into())
    );
}

#[test]
fn git_lfs_objects_are_fetched_and_the_files_released_not_their_pointers() {
    if Command::new("git")
        .args(["lfs", "version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("skipped: needs git-lfs (CI installs it)");
        return;
    }
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    git(&repo.work, &["lfs", "install", "--local"]);
    // Git LFS knows no bare paths: the working clone pushes by URL.
    let url = format!("file://{}", repo.origin.display());
    git(&repo.work, &["remote", "set-url", "origin", &url]);
    let content = "a large model ".repeat(1000);
    std::fs::write(
        repo.work.join(".gitattributes"),
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    )
    .expect("gitattributes");
    let c1 = repo.push(
        "main",
        "lfs",
        &[("index.html", "v1"), ("model.bin", &content)],
    );
    let stored = git(&repo.origin, &["show", &format!("{c1}:model.bin")]);
    assert!(
        stored.starts_with("version https://git-lfs"),
        "a pointer in git"
    );
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_run(&env, &c1, Duration::from_secs(60));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(env.get("shop.test", "/model.bin"), (200, content));

    // A commit naming its own LFS store (this server's files, say) is
    // refused, not followed.
    let c2 = repo.push(
        "main",
        "elsewhere",
        &[(".lfsconfig", "[lfs]\n\turl = file:///etc\n")],
    );
    let out = env.tandem(&["deploy", "shop", "--ref", "main"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let run = wait_for_run(&env, &c2, Duration::from_secs(60));
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(".lfsconfig"),
        "{run}"
    );
}

/// `KEY=value` pairs of a process's environment.
fn environ(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn secrets_are_sealed_everywhere_on_disk_and_an_environment_takes_its_own_value() {
    use std::os::unix::fs::PermissionsExt;
    // The key kept off the disk: it must not reach the services either.
    let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let env = Env::start_with(&[("TANDEM_SECRETS_KEY", key)]);
    let (wide, staging) = ("wide-S3cret-7731", "staging-S3cret-4409");
    // Set before the service exists, so its first run finds them.
    assert_ok(&env.set_secret("shop", "API_TOKEN", wide));
    assert_ok(&env.set_secret_with(
        &["secrets", "set", "shop", "API_TOKEN", "--env", "staging"],
        staging,
    ));

    // The instances print their secret: the agent masks it as it writes.
    let spec = SPEC
        .replace(
            "command: exec python3 -m http.server $PORT --bind 127.0.0.1",
            "command: echo \"token=$API_TOKEN env=$TANDEM_ENV\" && exec python3 -m http.server $PORT --bind 127.0.0.1",
        )
        .replace(
            "  instances: 2\n",
            "  instances: 1\n  secrets: [API_TOKEN]\n  env: { DATABASE_URL: db-of-production, SHARED: both }\n",
        )
        // Staging's own database (environments.<env>.env over run.env).
        + "environments:\n  staging: { auto_deploy: true, route: { host: staging.shop.test }, env: { DATABASE_URL: db-of-staging } }\n  production: {}\n";
    let repo = Repo::new(env.root.path(), &spec);
    // The service-wide value, known by its start (the whole value in the
    // repository would be on disk in the release).
    let check = "echo \"testing with $API_TOKEN\"; test \"${API_TOKEN%%-*}\" = wide\n";
    let c1 = repo.push(
        "main",
        "needs a secret",
        &[("index.html", "v1"), ("check.sh", check)],
    );
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_run(&env, &c1, Duration::from_secs(90));
    assert_eq!(run["status"], "succeeded", "{run}");

    // Each environment's instances got its value, and TANDEM_ENV.
    let status = env.status_json("shop");
    let svc = &status["services"][0];
    let pids_of = |instances: &serde_json::Value| -> Vec<u64> {
        instances
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["pid"].as_u64())
            .collect()
    };
    let mut seen = Vec::new();
    // Environments before production, then production: the service's own.
    let mut places: Vec<(String, serde_json::Value)> = svc["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .map(|e| {
            (
                e["env"].as_str().expect("env").to_owned(),
                e["instances"].clone(),
            )
        })
        .collect();
    if !places.iter().any(|(n, _)| n == "production") {
        places.push(("production".into(), svc["instances"].clone()));
    }
    for (name, instances) in places {
        let expected = if name == "staging" { staging } else { wide };
        let pids = pids_of(&instances);
        assert!(!pids.is_empty(), "{name} runs: {status}");
        for pid in pids {
            let vars = environ(pid);
            assert!(
                vars.contains(&format!("API_TOKEN={expected}")),
                "{name}: {vars:?}"
            );
            assert!(
                vars.contains(&format!("TANDEM_ENV={name}")),
                "{name}: {vars:?}"
            );
            assert!(
                vars.contains(&format!("DATABASE_URL=db-of-{name}"))
                    && vars.contains(&"SHARED=both".to_owned()),
                "{name}: {vars:?}"
            );
            assert!(
                !vars
                    .iter()
                    .any(|v| v.contains(key) || v.starts_with("TANDEM_TOKEN")),
                "{name} sees tandem's own settings: {vars:?}"
            );
        }
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["production", "staging"]);

    let logs = env.tandem(&["logs", "shop"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("token=*** env=production"), "{logs}");

    // Not a byte of either value on disk: database, WAL, the agent's state
    // and its copy, instance and run logs, checkouts.
    for value in [wide, staging] {
        assert_eq!(
            files_holding(&env.data(), value.as_bytes()),
            Vec::<PathBuf>::new(),
            "{value} in clear"
        );
        for path in [
            "/api/v1/services",
            "/api/v1/events?limit=10000",
            "/api/v1/runs",
            "/api/v1/status",
            "/api/v1/services/shop/secrets",
            "/api/v1/services/shop/logs",
        ] {
            let (status, body) = env.api_get(path);
            assert_eq!(status, 200, "{path}: {body}");
            assert!(!body.contains(value), "{path} shows a secret");
        }
        let journal = env.tandem(&["audit", "events", "-o", "json"]);
        assert!(!String::from_utf8_lossy(&journal.stdout).contains(value));
    }
    assert!(
        !env.data().join("keys/store.key").exists(),
        "with TANDEM_SECRETS_KEY no key file is written"
    );
    let mode = |p: PathBuf| std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
    // Services' users pass through it to their releases; no one lists it.
    assert_eq!(mode(env.data()), 0o711, "the data directory");
    let log_dir = env.data().join("logs");
    for entry in std::fs::read_dir(log_dir.join("shop"))
        .expect("logs")
        .flatten()
    {
        assert_eq!(mode(entry.path()), 0o600, "{}", entry.path().display());
    }
}

#[test]
fn a_directory_naming_a_repository_service_cannot_go_around_its_pipeline() {
    let env = Env::start();
    let repo = Repo::new(env.root.path(), QUICK_SPEC);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "1h"]);
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    // A directory of someone's own, saying it is shop.
    let dir = env.root.path().join("impostor");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tandem.yaml"), QUICK_SPEC).expect("spec");
    std::fs::write(dir.join("index.html"), "impostor").expect("page");
    let dir_arg = dir.to_str().expect("utf8");

    let out = env.tandem(&["deploy", "--dir", dir_arg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("by its pipeline and gates"),
        "{out:?}"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    // An engineer may not force it; an admin may, and it is journalled.
    assert_ok(&env.tandem(&["users", "add", "erin", "--role", "engineer"]));
    let token = env.tandem(&["tokens", "create", "--user", "erin"]);
    assert_ok(&token);
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let out = Command::new(util::bin())
        .args(["deploy", "--dir", dir_arg, "--force"])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", &token)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only an admin"));
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    assert_ok(&env.tandem(&["deploy", "--dir", dir_arg, "--force"]));
    assert_eq!(
        env.get("shop.test", "/index.html"),
        (200, "impostor".into())
    );
    let forced = events(&env)
        .into_iter()
        .find(|e| e["kind"] == "deploy.forced")
        .expect("deploy.forced");
    assert_eq!(forced["actor"], "user:admin");
    // The events of the deploy (its own task) name the token too.
    let admin_id = env.token().split('_').nth(1).expect("id").to_owned();
    let all = events(&env);
    let released = all
        .iter()
        .rfind(|e| e["kind"] == "release.succeeded" && e["actor"] == "user:admin")
        .expect("release.succeeded by the admin");
    assert_eq!(
        released["payload"]["via_token"],
        admin_id.as_str(),
        "{released}"
    );
    assert_eq!(
        forced["payload"]["via_token"],
        admin_id.as_str(),
        "{forced}"
    );
}

/// A token for a new user of `role` (and `extra` flags).
fn user_token(env: &Env, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["users", "add", name, "--role", role];
    args.extend_from_slice(extra);
    assert_ok(&env.tandem(&args));
    let out = env.tandem(&["tokens", "create", "--user", name]);
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn as_user(env: &Env, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(util::bin())
        .args(args)
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", token)
        .output()
        .expect("run tandem")
}

#[test]
fn production_asking_both_sides_needs_a_supplier_and_a_customer_and_never_the_author() {
    let env = Env::start();
    let spec = QUICK_SPEC.replace("  name: shop\n", "  name: shop\n  customer: acme\n")
        + "environments:\n  staging: { auto_deploy: true, route: { host: staging.shop.test } }\n  production: { promote: manual, approvals: 1, approvers: both }\n";
    assert_ok(&env.tandem(&["customers", "add", "acme", "--name", "ACME AG"]));
    assert_ok(&env.tandem(&["customers", "add", "globex", "--name", "Globex"]));
    // Ada writes the commits (see `git`); Erin is another engineer.
    let ada = user_token(&env, "ada", "engineer", &["--email", "ADA@example.test"]);
    let erin = user_token(&env, "erin", "engineer", &[]);
    let carl = user_token(&env, "carl", "customer-approver", &["--customer", "acme"]);
    let gina = user_token(&env, "gina", "customer-approver", &["--customer", "globex"]);

    let repo = Repo::new(env.root.path(), &spec);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_status(&env, &c1, "waiting-approval");
    let id = run["id"].as_i64().expect("id").to_string();

    // The author: four eyes.
    let out = as_user(&env, &ada, &["approve", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("four eyes"),
        "{out:?}"
    );
    // Another customer's approver: the run does not exist for her.
    let out = as_user(&env, &gina, &["approve", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no run"),
        "{out:?}"
    );
    // The supplier's half: still waiting for the customer.
    assert_ok(&as_user(&env, &erin, &["approve", &id]));
    std::thread::sleep(Duration::from_millis(500));
    let now = runs(&env)
        .into_iter()
        .find(|r| r["commit"] == c1)
        .expect("run");
    assert_eq!(now["status"], "waiting-approval", "{now}");
    assert_eq!(env.get("shop.test", "/index.html").0, 404);
    // The customer's half: it goes.
    assert_ok(&as_user(&env, &carl, &["approve", &id]));
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    assert_eq!(env.get("shop.test", "/index.html"), (200, "v1".into()));

    let all = events(&env);
    let approved: Vec<(String, String)> = all
        .iter()
        .filter(|e| e["kind"] == "run.approved")
        .map(|e| {
            (
                e["payload"]["approver"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["payload"]["organisation"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        approved,
        [
            ("user:erin".to_owned(), "supplier".to_owned()),
            ("user:carl".to_owned(), "acme".to_owned())
        ]
    );
    let promoting = all
        .iter()
        .find(|e| e["kind"] == "run.promoting")
        .expect("run.promoting");
    let names: Vec<&str> = promoting["payload"]["approvers"]
        .as_array()
        .expect("approvers")
        .iter()
        .filter_map(|a| a["approver"].as_str())
        .collect();
    assert_eq!(names, ["user:erin", "user:carl"]);
}

#[test]
fn production_asking_its_customer_promotes_only_on_its_customers_approval() {
    let env = Env::start();
    let spec = QUICK_SPEC.replace("  name: shop\n", "  name: shop\n  customer: acme\n")
        + "environments:\n  staging: { auto_deploy: true, route: { host: staging.shop.test } }\n  production: { promote: manual, approvals: 1, approvers: customer }\n";
    assert_ok(&env.tandem(&["customers", "add", "acme", "--name", "ACME AG"]));
    let erin = user_token(&env, "erin", "engineer", &[]);
    let carl = user_token(&env, "carl", "customer-approver", &["--customer", "acme"]);
    let repo = Repo::new(env.root.path(), &spec);
    let c1 = repo.push("main", "v1", &[("index.html", "v1")]);
    register(&env, &repo, &["--poll-interval", "1h"]);
    let run = wait_for_status(&env, &c1, "waiting-approval");
    let id = run["id"].as_i64().expect("id").to_string();
    // The supplier's engineer, and the admin: not theirs to give.
    for out in [
        as_user(&env, &erin, &["approve", &id]),
        env.tandem(&["approve", &id]),
    ] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("asks its customer's approval"),
            "{out:?}"
        );
    }
    assert_eq!(env.get("shop.test", "/index.html").0, 404);
    assert_ok(&as_user(&env, &carl, &["approve", &id]));
    assert_eq!(
        wait_for_run(&env, &c1, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let promoting = events(&env)
        .into_iter()
        .find(|e| e["kind"] == "run.promoting")
        .expect("run.promoting");
    assert_eq!(
        promoting["payload"]["approvers"],
        serde_json::json!([{ "approver": "user:carl", "organisation": "acme" }])
    );
}
