//! End-to-end: the real binary releases real processes behind the real proxy
//! while a load generator counts every failed request (issue 2).

mod util;

use std::time::{Duration, Instant};

use util::{Env, Load, assert_ok, bin, open_files_limit};

const DEPLOY: &str = "release:\n  deploy_timeout: 15s\n  drain_timeout: 5s\n";

#[test]
fn ten_deploys_and_a_rollback_under_load_fail_no_request() {
    let (env, app) = web_serving("v0");
    let load = Load::start(&env.proxy, "web.test", 8);
    for v in 1..=10 {
        std::fs::write(app.join("index.html"), format!("v{v}")).expect("write");
        assert_ok(&env.deploy(&app));
        assert_eq!(env.get("web.test", "/index.html"), (200, format!("v{v}")));
    }
    assert_ok(&env.tandem(&["rollback", "web"]));
    assert_eq!(env.get("web.test", "/index.html"), (200, "v9".to_string()));
    // Keep load on the rolled-back release for a moment too.
    let until = Instant::now() + Duration::from_secs(1);
    while load.ok_so_far() < 2_000 || Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = load.finish();
    eprintln!("requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(
        r.failed,
        0,
        "failed requests: {:?}",
        &r.failures[..r.failures.len().min(10)]
    );
    assert!(r.ok >= 2_000, "only {} requests", r.ok);
    // Only the live release runs.
    let instances = env.instances("web");
    assert_eq!(instances.len(), 2);
    assert!(
        instances.iter().all(|i| i["release"] == "r10"),
        "{instances:?}"
    );
}

#[test]
fn deploys_and_a_rollback_under_posts_and_slow_requests_cut_none() {
    let env = Env::start();
    let dir = env.deploy_mixed("v0");
    // POSTs with bodies (never retried by the proxy) and requests that
    // take 1.5 s, in flight across every switch, beside plain GETs.
    let load = Load::start_mixed(&env.proxy, "mixed.test", 2);
    for v in 1..=4 {
        std::fs::write(dir.join("index.html"), format!("v{v}")).expect("write");
        assert_ok(&env.deploy(&dir));
    }
    assert_ok(&env.tandem(&["rollback", "mixed"]));
    std::thread::sleep(Duration::from_secs(2));
    let r = load.finish();
    eprintln!(
        "mixed load across 4 deploys and a rollback: {:?}, failed={}",
        r.by_ask, r.failed
    );
    assert_eq!(r.failed, 0, "{:?}", &r.failures[..r.failures.len().min(10)]);
    for ask in ["Get", "Post", "Slow"] {
        assert!(
            r.by_ask.get(ask).copied().unwrap_or(0) >= 5,
            "{ask}: {:?}",
            r.by_ask
        );
    }
}

#[test]
fn release_that_never_gets_ready_fails_in_time_and_leaves_the_old_one_serving() {
    let (env, _) = web_serving("good");
    let bad = env.root.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(
        bad.join("tandem.yaml"),
        "service:\n  name: web\nrun:\n  command: echo booting; sleep 600\n  instances: 2\nroute:\n  host: web.test\nrelease:\n  deploy_timeout: 2s\n",
    )
    .expect("write");
    let load = Load::start(&env.proxy, "web.test", 2);
    let started = Instant::now();
    let out = env.deploy(&bad);
    let took = started.elapsed();
    let r = load.finish();
    eprintln!(
        "failed release ended after {took:?} (deploy_timeout 2s); requests ok={} failed={}",
        r.ok, r.failed
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not become ready"), "{stderr}");
    assert!(
        stderr.contains("booting"),
        "the log tail is shown: {stderr}"
    );
    assert!(took < Duration::from_secs(2 + 5), "took {took:?}");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert_eq!(
        env.get("web.test", "/index.html"),
        (200, "good".to_string())
    );
    let instances = env.instances("web");
    assert!(
        instances.iter().all(|i| i["release"] == "r1"),
        "nothing of r2 runs: {instances:?}"
    );
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", "sleep 600"])
        .output()
        .expect("pgrep");
    assert!(
        sleeping.stdout.is_empty(),
        "failed release left processes: {}",
        String::from_utf8_lossy(&sleeping.stdout)
    );
    let releases = env.tandem(&["releases", "web", "-o", "json"]);
    let releases: serde_json::Value = serde_json::from_slice(&releases.stdout).expect("json");
    assert_eq!(releases[0]["status"], "failed");
}

#[test]
fn an_app_listening_where_tandem_does_not_look_is_told_where_it_listens() {
    let env = Env::start();
    let app = env.root.path().join("elsewhere");
    std::fs::create_dir_all(&app).expect("mkdir");
    let other = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    // A fixed port instead of $PORT, then $PORT on an address 127.0.0.1
    // does not reach.
    let mut cases = vec![(
        format!("python3 -m http.server {other} --bind 127.0.0.1"),
        format!("listens on 127.0.0.1:{other} instead: run.command must listen on $PORT"),
    )];
    if ipv6 {
        cases.push((
            "python3 -m http.server $PORT --bind ::1".to_owned(),
            "which tandem cannot reach at 127.0.0.1:".to_owned(),
        ));
    }
    for (command, told) in cases {
        std::fs::write(
            app.join("tandem.yaml"),
            format!("service: {{ name: elsewhere }}\nrun: {{ command: '{command}' }}\nroute: {{ host: elsewhere.test }}\nrelease: {{ deploy_timeout: 2s }}\n"),
        )
        .expect("write");
        let out = env.deploy(&app);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not ready within 2s"), "{stderr}");
        assert!(stderr.contains(&told), "{command}: {stderr}");
    }
}

#[test]
fn the_journal_is_read_whole_a_page_at_a_time() {
    let (env, app) = web_serving("v1");
    std::fs::write(app.join("index.html"), "v2").expect("write");
    assert_ok(&env.deploy(&app));
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = env.tandem(args);
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect()
    };
    let whole = lines(&["audit", "events", "-o", "json"]);
    let seqs: Vec<u64> = whole.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.len() > 6,
        "two deploys make more than two pages of 3: {seqs:?}"
    );
    // The monitor may append (instance.ready, …) while this reads; the
    // journal only grows, so a later read runs on from an earlier one.
    let runs_on = |later: &[serde_json::Value], earlier: &[serde_json::Value], from: u64| {
        later.len() >= earlier.len()
            && later[..earlier.len()] == *earlier
            && later.iter().zip(from..).all(|(e, seq)| e["seq"] == seq)
    };
    assert!(runs_on(&whole, &[], 1), "{seqs:?}");
    // Pages of 3, and of exactly the journal's length: nothing lost or
    // doubled at a page's edge.
    for page in ["3", &seqs.len().to_string()] {
        let paged = lines(&["audit", "events", "-o", "json", "--page", page]);
        assert!(runs_on(&paged, &whole, 1), "page {page}: {paged:?}");
    }
    let after = lines(&[
        "audit", "events", "-o", "json", "--page", "3", "--after", "4",
    ]);
    assert!(runs_on(&after, &whole[4..], 5), "{after:?}");
    // A reader that stops after the first line ends the command quietly.
    let mut reader = std::process::Command::new(util::bin())
        .args(["audit", "events", "-o", "json", "--page", "1"])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", env.token())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(reader.stdout.take().expect("stdout")),
        &mut first,
    )
    .expect("read a line");
    assert!(first.starts_with("{\"seq\":1,"), "{first}");
    let out = reader.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    // For people, a table: a row per event, the kind and subject in columns.
    let out = env.tandem(&["audit", "events", "--page", "3"]);
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("SEQ") && rows[0].contains("KIND"),
        "{table}"
    );
    assert!(rows.len() > whole.len(), "{table}");
    assert!(
        rows[1..]
            .iter()
            .zip(1..)
            .all(|(row, seq)| row.split_whitespace().next() == Some(seq.to_string().as_str())),
        "a row per event, in order: {table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("release.succeeded") && r.contains("release=r2 service=web")),
        "{table}"
    );
}

#[test]
fn following_logs_shows_every_new_line_once_even_when_lines_are_alike() {
    let (env, _) = web_serving("v1");
    let mut follower = std::process::Command::new(util::bin())
        .args(["logs", "web", "-f", "-n", "0"])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", env.token())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = follower.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if line.contains("\"GET /index.html HTTP/1.1\" 200") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // Its first ask (nothing shown with -n 0, but where each log ends).
    std::thread::sleep(Duration::from_millis(1500));
    // http.server logs each request alike, to the second: 300 lines that
    // cannot be told apart by their text.
    const REQUESTS: usize = 300;
    for _ in 0..REQUESTS {
        assert_eq!(env.get("web.test", "/index.html").0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.load(std::sync::atomic::Ordering::SeqCst) < REQUESTS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), REQUESTS);
}

#[test]
fn sigkill_of_the_control_plane_drops_no_request_and_a_new_up_reattaches() {
    let (mut env, app) = web_serving("before");
    let load = Load::start(&env.proxy, "web.test", 4);
    std::thread::sleep(Duration::from_millis(300));
    env.kill_up();
    std::thread::sleep(Duration::from_millis(700));
    env.up_again();
    std::fs::write(app.join("index.html"), "after").expect("write");
    assert_ok(&env.deploy(&app));
    std::thread::sleep(Duration::from_millis(300));
    let r = load.finish();
    eprintln!(
        "control-plane kill: requests ok={} failed={}",
        r.ok, r.failed
    );
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(r.ok > 100, "load ran: {}", r.ok);
    assert_eq!(
        env.get("web.test", "/index.html"),
        (200, "after".to_string())
    );
    let verify = env.tandem(&["audit", "verify"]);
    assert_ok(&verify);
}

#[test]
fn sigkill_of_one_instance_drops_no_request_and_it_is_replaced() {
    let (env, _) = web_serving("steady");
    let before = env.instances("web");
    let victim = before[0]["pid"].as_u64().expect("pid") as i32;
    let load = Load::start(&env.proxy, "web.test", 4);
    std::thread::sleep(Duration::from_millis(300));
    nix_kill(victim);
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    let replaced = loop {
        let now = env.instances("web");
        let ready = now.iter().filter(|i| i["ready"] == true).count();
        if ready == 2 && now.iter().all(|i| i["pid"].as_u64() != Some(victim as u64)) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("replacement ready {:?} after SIGKILL", killed_at.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    let r = load.finish();
    eprintln!("instance kill: requests ok={} failed={}", r.ok, r.failed);
    assert!(
        replaced,
        "instance was not replaced: {:?}",
        env.instances("web")
    );
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(env.instances("web").iter().any(|i| i["restarts"] == 1));
}

#[test]
fn upgrading_the_agent_in_place_drops_no_request_and_restarts_no_instance() {
    let (env, app) = web_serving("steady");
    let before = pids(&env);
    let old_agent = agent_pid(&env);
    let counted_at_start = route_2xx(&env);
    let load = Load::start(&env.proxy, "web.test", 4);
    std::thread::sleep(Duration::from_millis(300));
    let counted_before = route_2xx(&env);
    let upgraded = Instant::now();
    let out = env.tandem(&["upgrade-agent"]);
    assert_ok(&out);
    eprintln!(
        "upgrade-agent took {:?}: {}",
        upgraded.elapsed(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let new_agent = agent_pid(&env);
    assert_ne!(new_agent, old_agent, "a new agent answers");
    // The request counters go on from the old agent's.
    let counted_after = route_2xx(&env);
    assert!(
        counted_after >= counted_before && counted_before > 0,
        "{counted_before} before, {counted_after} after"
    );
    // The old agent leaves once its clients have moved over.
    util::wait_until(Duration::from_secs(10), "the old agent to exit", || {
        (!util::process_alive(old_agent as u32)).then_some(())
    });
    let moved_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pids(&env), before, "the same instances run on");
    assert!(
        env.instances("web")
            .iter()
            .all(|i| i["ready"] == true && i["restarts"] == 0),
        "{:?}",
        env.instances("web")
    );
    // The new agent reads the instances' output: python logs this request.
    the_instances_log_a_request(&env, "/index.html?after-upgrade");
    // And releases as before, even with another upgrade in the middle of
    // the deploy: the deploy's requests are asked again of the agent that
    // serves, and the adopted instances are drained and stopped.
    std::fs::write(app.join("index.html"), "after").expect("write");
    let spec = std::fs::read_to_string(app.join("tandem.yaml")).expect("spec");
    std::fs::write(
        app.join("tandem.yaml"),
        spec.replace("command: exec python3", "command: sleep 1; exec python3"),
    )
    .expect("write spec");
    let second_agent = agent_pid(&env);
    std::thread::scope(|s| {
        let deploying = s.spawn(|| env.deploy(&app));
        std::thread::sleep(Duration::from_millis(500));
        assert_ok(&env.tandem(&["upgrade-agent"]));
        assert_ok(&deploying.join().expect("join"));
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = load.finish();
    util::wait_until(Duration::from_secs(10), "the second agent to exit", || {
        (!util::process_alive(second_agent as u32)).then_some(())
    });
    eprintln!(
        "agent upgrade: requests ok={} failed={} connections opened={} (old agent gone {:?} after the upgrade)",
        r.ok,
        r.failed,
        r.connects,
        moved_at.duration_since(upgraded)
    );
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    // Every request is counted exactly once, whichever agent served it:
    // the load's and the one that looked into the log.
    assert_eq!(
        route_2xx(&env) - counted_at_start,
        r.ok + 1,
        "requests counted across two agent upgrades"
    );
    // Each client's connection moved from agent to agent: none was closed.
    assert_eq!(r.connects, 4, "one connection per client, kept throughout");
    assert!(r.ok > 100, "load ran: {}", r.ok);
    assert_eq!(env.get("web.test", "/index.html").1, "after");
    for pid in before {
        assert!(
            !util::process_alive(pid as u32),
            "old instance {pid} stopped"
        );
    }
}

#[test]
fn the_new_agent_has_the_old_ones_environment_not_the_upgrading_shells() {
    let env = Env::start_with(&[("TANDEM_TEST_MARK", "from-up")]);
    let app = env.app("web", DEPLOY, "v1");
    assert_ok(&env.deploy(&app));
    let old_agent = agent_pid(&env);
    let old = environ(old_agent);
    assert!(old.contains("TANDEM_TEST_MARK=from-up"), "{old:?}");
    let out = std::process::Command::new(util::bin())
        .arg("upgrade-agent")
        .env("TANDEM_DATA_DIR", env.data())
        .env("TANDEM_TEST_MARK", "from-the-shell")
        .env("TANDEM_ONLY_IN_THE_SHELL", "1")
        .output()
        .expect("run upgrade-agent");
    assert_ok(&out);
    let new_agent = agent_pid(&env);
    assert_ne!(new_agent, old_agent);
    // All of the old agent's, but the socket `up` passed it at its start.
    let expected: std::collections::BTreeSet<String> = old
        .into_iter()
        .filter(|v| !v.starts_with("TANDEM_PROXY_FD="))
        .collect();
    assert_eq!(environ(new_agent), expected);
    // And so are the instances it starts.
    std::fs::write(app.join("index.html"), "v2").expect("write");
    assert_ok(&env.deploy(&app));
    for pid in pids(&env) {
        let theirs = environ(pid);
        assert!(theirs.contains("TANDEM_TEST_MARK=from-up"), "{theirs:?}");
        assert!(!theirs.contains("TANDEM_ONLY_IN_THE_SHELL=1"), "{theirs:?}");
    }
}

#[test]
fn an_upgrade_to_a_binary_that_is_no_agent_fails_at_once_and_the_agent_serves_on() {
    use std::io::{BufRead, BufReader, Write};
    let (env, app) = web_serving("v1");
    let old_agent = agent_pid(&env);
    let asked = Instant::now();
    let mut socket =
        std::os::unix::net::UnixStream::connect(env.data().join("agent.sock")).expect("connect");
    writeln!(socket, "{}", util::agent_auth(&env.data())).expect("key");
    writeln!(socket, r#"{{"op":"upgrade","exe":"/bin/false"}}"#).expect("ask");
    let mut answer = String::new();
    let mut reader = BufReader::new(&socket);
    reader.read_line(&mut answer).expect("key taken");
    assert!(answer.contains("\"ok\""), "{answer}");
    answer.clear();
    reader.read_line(&mut answer).expect("answer");
    assert!(
        answer.contains("\"error\"") && answer.contains("exited before it took over"),
        "{answer}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(agent_pid(&env), old_agent, "the same agent answers");
    assert_eq!(env.get("web.test", "/index.html"), (200, "v1".into()));
    // It still takes changes: it went back to serving.
    std::fs::write(app.join("index.html"), "v2").expect("write");
    assert_ok(&env.deploy(&app));
    assert_eq!(env.get("web.test", "/index.html"), (200, "v2".into()));
}

#[test]
fn after_down_and_up_the_live_release_serves_again() {
    let (mut env, _) = web_serving("v1");
    let before = pids(&env);
    assert_ok(&env.tandem(&["down"]));
    for pid in &before {
        assert!(!util::process_alive(*pid as u32), "instance {pid} stopped");
    }
    env.up_again();
    util::wait_until(Duration::from_secs(20), "web to serve again", || {
        (env.get("web.test", "/index.html") == (200, "v1".to_string())).then_some(())
    });
    let instances = env.instances("web");
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(
        instances.iter().all(|i| i["ready"] == true),
        "{instances:?}"
    );
    let out = env.tandem(&["audit", "events"]);
    let journal = String::from_utf8_lossy(&out.stdout);
    assert!(
        journal.contains("restore.started") && journal.contains("restore.succeeded"),
        "{journal}"
    );
}

#[test]
fn an_agent_that_died_with_its_state_file_lost_is_given_its_services_again() {
    let (env, _) = web_serving("v1");
    let before = pids(&env);
    let agent = agent_pid(&env) as u32;
    // The agent and its instances die, and its state goes with them.
    nix_kill(agent as i32);
    for pid in &before {
        nix_kill(*pid as i32);
    }
    std::fs::remove_file(env.data().join("agent-state.json")).expect("remove state file");
    util::wait_until(Duration::from_secs(20), "web to serve again", || {
        (env.get("web.test", "/index.html") == (200, "v1".to_string())).then_some(())
    });
    assert_ne!(agent_pid(&env) as u32, agent, "a new agent");
    let now = pids(&env);
    assert_eq!(now.len(), 2);
    assert!(now.iter().all(|p| !before.contains(p)), "new instances");
    let out = env.tandem(&["audit", "events"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("restore.succeeded"));
}

#[test]
fn a_route_another_service_holds_is_refused_and_changes_nothing() {
    let (env, _) = web_serving("web's");
    // Another service on the same host and path prefix.
    let other = env.app("other", DEPLOY, "other's");
    let spec = std::fs::read_to_string(other.join("tandem.yaml")).expect("spec");
    std::fs::write(
        other.join("tandem.yaml"),
        spec.replace("host: other.test", "host: web.test"),
    )
    .expect("write spec");
    let out = env.deploy(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("route web.test/ of other is web's already"),
        "{stderr}"
    );
    let services = env.tandem(&["services", "-o", "json"]);
    assert!(
        !String::from_utf8_lossy(&services.stdout).contains("\"other\""),
        "not registered"
    );
    assert_eq!(env.get("web.test", "/index.html"), (200, "web's".into()));
    // The same host under another path prefix is its own route.
    std::fs::write(
        other.join("tandem.yaml"),
        spec.replace("host: other.test", "host: web.test\n  path_prefix: /other/"),
    )
    .expect("write spec");
    std::fs::create_dir_all(other.join("other")).expect("mkdir");
    std::fs::write(other.join("other/index.html"), "other's").expect("write");
    assert_ok(&env.deploy(&other));
    assert_eq!(
        env.get("web.test", "/other/index.html"),
        (200, "other's".into())
    );
    assert_eq!(env.get("web.test", "/index.html"), (200, "web's".into()));
}

#[test]
fn a_strategy_not_built_yet_is_said_not_ignored() {
    let env = Env::start();
    let app = env.app(
        "web",
        "release:\n  strategy: canary\n  steps:\n    - weight: 50\n    - weight: 100\n  deploy_timeout: 15s\n",
        "v1",
    );
    let validated = env.tandem(&["validate", app.to_str().expect("utf-8")]);
    assert_ok(&validated);
    let said = String::from_utf8_lossy(&validated.stderr);
    assert!(
        said.contains("release.strategy canary is not built yet"),
        "{said}"
    );
    let deployed = env.deploy(&app);
    assert_ok(&deployed);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&deployed.stdout),
        String::from_utf8_lossy(&deployed.stderr)
    );
    assert!(said.contains("releases go blue/green"), "{said}");
    let journal = env.tandem(&["audit", "events", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&journal.stdout).contains("\"asked_strategy\":\"canary\""),
        "journalled"
    );
    assert_eq!(env.get("web.test", "/index.html"), (200, "v1".into()));
}

/// A process's environment, `NAME=value` each.
fn environ(pid: u64) -> std::collections::BTreeSet<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("read environ")
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn nix_kill(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn metrics_and_logs_account_for_every_proxied_request() {
    let (env, _) = web_serving("counted");
    for _ in 0..50 {
        assert_eq!(env.get("web.test", "/index.html").0, 200);
    }
    let metrics = http_get(&env, "/metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"tandem_route_requests_total{service="web",class="2xx"}"#))
        .unwrap_or_else(|| panic!("no 2xx line for web in:\n{metrics}"));
    assert_eq!(line.rsplit(' ').next(), Some("50"), "{line}");
    let per_instance: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tandem_target_requests_total{service=\"web\"")
                && l.contains("class=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(per_instance, 50, "{metrics}");
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let max = gauge("tandem_proxy_connections_max");
    assert!((1..=10_000).contains(&max), "{max}");
    assert!(gauge("tandem_proxy_connections") <= max);
    // Sized from the agent's open-files limit: three quarters of it after
    // 256 kept back (the rest for upstream connections), at most the
    // configured 10,000.
    let status: serde_json::Value =
        serde_json::from_str(&http_get(&env, "/api/v1/status")).expect("status json");
    let agent_pid = status["agent"]["pid"].as_u64().expect("agent pid");
    let (soft, _) = open_files_limit(u32::try_from(agent_pid).expect("pid"));
    assert_eq!(max, (soft.saturating_sub(256) / 4 * 3).min(10_000));
    // python's http.server logs each request to stderr, which the agent keeps.
    let logs = env.tandem(&["logs", "web", "-n", "200"]);
    assert_ok(&logs);
    let logged = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .filter(|l| l.contains("\"GET /index.html "))
        .count();
    assert_eq!(logged, 50);
}

/// `tandem up` with the python service `web` deployed, serving `body`.
fn web_serving(body: &str) -> (Env, std::path::PathBuf) {
    let env = Env::start();
    let app = env.app("web", DEPLOY, body);
    assert_ok(&env.deploy(&app));
    (env, app)
}

/// The agent's pid, as the server sees it.
fn agent_pid(env: &Env) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&http_get(env, "/api/v1/status")).expect("status json");
    status["agent"]["pid"].as_u64().expect("agent pid")
}

/// The web service's instance pids.
fn pids(env: &Env) -> Vec<u64> {
    env.instances("web")
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .collect()
}

/// A GET through the proxy shows up in the instances' log (python's
/// http.server logs every request), read by whichever agent runs them.
fn the_instances_log_a_request(env: &Env, path: &str) {
    assert_eq!(env.get("web.test", path).0, 200);
    util::wait_until(Duration::from_secs(5), "the request in the log", || {
        let logs = env.tandem(&["logs", "web", "-n", "20"]);
        String::from_utf8_lossy(&logs.stdout)
            .contains(&format!("GET {path}"))
            .then_some(())
    });
}

/// The web service's 2xx count on the agent's metrics.
fn route_2xx(env: &Env) -> u64 {
    let metrics = http_get(env, "/metrics");
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"tandem_route_requests_total{service="web",class="2xx"} "#)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A plain HTTP/1.1 GET; returns the body.
/// GET `path` of the API as the first admin: the body.
fn http_get(env: &Env, path: &str) -> String {
    env.api_get(path).1
}

#[test]
fn an_agent_whose_successor_never_confirms_serves_on_as_before() {
    use std::io::{Read, Write};
    let (env, app) = web_serving("steady");
    let before = pids(&env);
    // A would-be successor that asks, takes the offer and goes away.
    let mut link = std::os::unix::net::UnixStream::connect(env.data().join("agent.sock"))
        .expect("connect agent socket");
    link.write_all(format!("{}\n", util::agent_auth(&env.data())).as_bytes())
        .expect("key");
    let mut taken = [0u8; 15];
    link.read_exact(&mut taken).expect("key taken");
    assert_eq!(&taken, b"{\"result\":\"ok\"}");
    let mut newline = [0u8; 1];
    link.read_exact(&mut newline).expect("newline");
    link.write_all(b"{\"op\":\"handover\"}\n").expect("ask");
    let mut offer = [0u8; 5];
    link.read_exact(&mut offer).expect("offer");
    assert_eq!(&offer, b"OFFER");
    // While the offer is open a change waits: the agent refuses it, the
    // server asks again, and it takes effect once the agent serves on.
    let (out, took) = std::thread::scope(|s| {
        let change = s.spawn(|| {
            let asked = Instant::now();
            (env.tandem(&["maintenance", "on", "web"]), asked.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        drop(link);
        change.join().expect("join")
    });
    assert_ok(&out);
    assert!(took >= Duration::from_millis(400), "it waited: {took:?}");
    assert_eq!(env.get("web.test", "/index.html").0, 503, "maintenance on");
    assert_ok(&env.tandem(&["maintenance", "off", "web"]));
    // The agent takes its instances back: the same processes, their output
    // read again, and releases work.
    util::wait_until(Duration::from_secs(5), "the agent to serve on", || {
        let logs = env.tandem(&["logs", "web", "-n", "20"]);
        logs.status.success().then_some(())
    });
    the_instances_log_a_request(&env, "/index.html?after-offer");
    assert_eq!(pids(&env), before);
    std::fs::write(app.join("index.html"), "after").expect("write");
    assert_ok(&env.deploy(&app));
    assert_eq!(env.get("web.test", "/index.html").1, "after");
}

#[test]
fn an_agent_that_dies_is_started_again_and_takes_its_instances_back() {
    let (env, app) = web_serving("steady");
    let before = pids(&env);
    let agent = agent_pid(&env) as u32;
    let load = Load::start(&env.proxy, "web.test", 4);
    std::thread::sleep(Duration::from_millis(300));
    nix_kill(agent as i32);
    let killed = Instant::now();
    util::wait_until(Duration::from_secs(5), "the agent to die", || {
        (!util::process_alive(agent)).then_some(())
    });
    // Nothing of the instances went with it: their output is a FIFO they
    // hold both ends of, not a pipe into the agent.
    for pid in &before {
        assert!(
            util::process_alive(*pid as u32),
            "instance {pid} outlived the agent"
        );
    }
    // The server `tandem up` runs starts the agent again, which takes the
    // instances over.
    util::wait_until(
        Duration::from_secs(10),
        "a new agent with the instances ready",
        || {
            let now = env.instances("web");
            (!now.is_empty() && now.iter().all(|i| i["ready"] == true)).then_some(())
        },
    );
    eprintln!("agent killed: serving again after {:?}", killed.elapsed());
    assert_ne!(agent_pid(&env) as u32, agent);
    let served_before = load.ok_so_far();
    std::thread::sleep(Duration::from_millis(300));
    let r = load.finish();
    eprintln!(
        "agent kill: requests ok={} failed={} {:?}",
        r.ok, r.failed, r.failures
    );
    // What was in flight in the dead agent is lost, one request a client
    // connection at most; nobody is refused: `up` held the listening
    // socket, and clients waited in its backlog for the new agent.
    assert!(r.failed <= 4, "{:?}", r.failures);
    assert!(
        r.failures.iter().all(|f| !f.starts_with("connect")),
        "{:?}",
        r.failures
    );
    assert!(r.ok > served_before, "served after the restart");
    let events = env.tandem(&["audit", "events", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&events.stdout).contains("agent.restarted"),
        "journalled"
    );
    assert_eq!(pids(&env), before, "the same processes");
    assert!(
        env.instances("web").iter().all(|i| i["restarts"] == 0),
        "{:?}",
        env.instances("web")
    );
    the_instances_log_a_request(&env, "/index.html?after-crash");
    std::fs::write(app.join("index.html"), "after").expect("write");
    assert_ok(&env.deploy(&app));
    assert_eq!(env.get("web.test", "/index.html").1, "after");
    for pid in before {
        assert!(
            !util::process_alive(pid as u32),
            "old instance {pid} stopped"
        );
    }
}

/// A service that upgrades any request asking for `Upgrade: echo` to a
/// byte echo (as a WebSocket server would to its protocol).
const ECHO_SERVER: &str = r#"
import os, socket, threading, time
def serve(c):
    data = b""
    while b"\r\n\r\n" not in data:
        more = c.recv(4096)
        if not more:
            return
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    if b"upgrade: echo" in head.lower():
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n" + rest)
        while True:
            more = c.recv(4096)
            if not more:
                break
            c.sendall(more)
    else:
        if head.startswith(b"GET /slow"):
            time.sleep(2)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn a_connection_busy_through_two_quick_upgrades_moves_on_to_the_newest_agent() {
    use std::io::{BufRead, BufReader, Read, Write};
    let env = Env::start();
    let mut client = echo_serving(&env);
    let ask = |client: &mut BufReader<std::net::TcpStream>, path: &str| {
        write!(
            client.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: echo.test\r\n\r\n"
        )
        .expect("write");
    };
    let answer = |client: &mut BufReader<std::net::TcpStream>| -> String {
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if client.read_line(&mut head).unwrap_or(0) == 0 {
                return format!("connection ended after {head:?}");
            }
        }
        let mut body = [0u8; 2];
        client.read_exact(&mut body).expect("body");
        head.lines().next().unwrap_or_default().to_owned()
    };
    // The first agent is busy with this request (2 s) through both upgrades.
    ask(&mut client, "/slow");
    let first = agent_pid(&env);
    assert_ok(&env.tandem(&["upgrade-agent"]));
    let second = agent_pid(&env);
    assert_ok(&env.tandem(&["upgrade-agent"]));
    let third = agent_pid(&env);
    assert!(
        first != second && second != third,
        "{first} {second} {third}"
    );
    assert_eq!(answer(&mut client), "HTTP/1.1 200 OK");
    // The connection went from the first agent to the second, which waited
    // for it before it handed over, and on to the third.
    ask(&mut client, "/after");
    assert_eq!(answer(&mut client), "HTTP/1.1 200 OK");
    for pid in [first, second] {
        util::wait_until(Duration::from_secs(10), "the older agents to exit", || {
            (!util::process_alive(pid as u32)).then_some(())
        });
    }
    ask(&mut client, "/last");
    assert_eq!(
        answer(&mut client),
        "HTTP/1.1 200 OK",
        "served by the third"
    );
}

/// Deploys a service of one instance of `ECHO_SERVER`; a client
/// connection to it through the proxy.
fn echo_serving(env: &Env) -> std::io::BufReader<std::net::TcpStream> {
    let app = env.app("echo", DEPLOY, "");
    std::fs::write(app.join("echo.py"), ECHO_SERVER).expect("write server");
    let spec = std::fs::read_to_string(app.join("tandem.yaml")).expect("spec");
    let spec = spec
        .replace(
            "exec python3 -m http.server $PORT --bind 127.0.0.1",
            "exec python3 echo.py",
        )
        .replace("instances: 2", "instances: 1");
    std::fs::write(app.join("tandem.yaml"), spec).expect("write spec");
    assert_ok(&env.deploy(&app));
    let stream = std::net::TcpStream::connect(&env.proxy).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::BufReader::new(stream)
}

#[test]
fn a_tunnel_stays_open_across_agent_upgrades() {
    use std::io::{BufRead, Read, Write};
    let env = Env::start();
    let mut tunnel = echo_serving(&env);
    tunnel
        .get_mut()
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .expect("write");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(tunnel.read_line(&mut head).expect("read") > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut echo = |what: &str| {
        tunnel.get_mut().write_all(what.as_bytes()).expect("write");
        let mut back = vec![0u8; what.len()];
        tunnel.read_exact(&mut back).expect("the echo comes back");
        assert_eq!(String::from_utf8_lossy(&back), what);
    };
    echo("before");
    for round in ["first", "second"] {
        let old_agent = agent_pid(&env);
        let upgraded = Instant::now();
        assert_ok(&env.tandem(&["upgrade-agent"]));
        // The old agent would wait for the tunnel to close (at most 30 s);
        // it leaves at once because the tunnel moved.
        util::wait_until(Duration::from_secs(10), "the old agent to exit", || {
            (!util::process_alive(old_agent as u32)).then_some(())
        });
        eprintln!(
            "{round} upgrade: old agent gone after {:?}",
            upgraded.elapsed()
        );
        echo(&format!("after the {round} upgrade"));
    }
}

#[test]
fn a_secret_with_a_nul_byte_is_refused_at_set_and_changes_nothing() {
    use std::io::Write;
    let env = Env::start();
    let mut set = std::process::Command::new(util::bin())
        .args(["secrets", "set", "web", "TOKEN"])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_TOKEN", env.token())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    set.stdin
        .take()
        .expect("stdin")
        .write_all(b"ab\0cd")
        .expect("write");
    let out = set.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("NUL byte"), "{stderr}");
    let listed = env.tandem(&["secrets", "ls", "web", "-o", "json"]);
    assert_ok(&listed);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "[]",
        "nothing stored"
    );
}

#[test]
fn a_rollback_to_a_release_that_never_went_live_is_refused_unless_forced() {
    let (env, _) = web_serving("good");
    let bad = env.root.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(
        bad.join("tandem.yaml"),
        "service:\n  name: web\nrun:\n  command: sleep 600\nroute:\n  host: web.test\nrelease:\n  deploy_timeout: 1s\n",
    )
    .expect("write");
    assert_eq!(env.deploy(&bad).status.code(), Some(1), "r2 fails");
    let out = env.tandem(&["rollback", "web", "--to", "r2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("r2 never went live (failed)"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    let journal = env.tandem(&["audit", "events", "-o", "json"]);
    assert!(!String::from_utf8_lossy(&journal.stdout).contains("rollback.started"));
    assert_eq!(
        env.get("web.test", "/index.html"),
        (200, "good".to_string())
    );
    // Forced, it is tried (and fails again, leaving r1 serving), and the
    // journal says who forced it.
    let out = env.tandem(&["rollback", "web", "--to", "r2", "--force"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal = env.tandem(&["audit", "events", "-o", "json"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(journal.contains("rollback.forced"), "{journal}");
    assert_eq!(
        env.get("web.test", "/index.html"),
        (200, "good".to_string())
    );
}

#[test]
fn old_releases_lose_their_files_but_the_live_one_and_its_rollback_target_keep_them() {
    let env = util::Env::start_with(&[("TANDEM_KEEP_RELEASES", "2")]);
    let app = env.app("web", DEPLOY, "v1");
    for v in 1..=5 {
        std::fs::write(app.join("index.html"), format!("v{v}")).expect("write");
        assert_ok(&env.deploy(&app));
    }
    let artifacts = std::fs::read_dir(env.data().join("artifacts"))
        .expect("artifacts")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(
        artifacts, 2,
        "r5 (live) and r4 (newest, its rollback target) keep their files"
    );
    let out = env.tandem(&["releases", "web", "-o", "json"]);
    assert_ok(&out);
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pruned: Vec<i64> = releases
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| !r["pruned_at"].is_null())
        .filter_map(|r| r["number"].as_i64())
        .collect();
    assert_eq!(pruned, [3, 2, 1]);
    let out = env.tandem(&["rollback", "web", "--to", "r2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed by retention"));
    assert_ok(&env.tandem(&["rollback", "web"]));
    assert_eq!(env.get("web.test", "/index.html"), (200, "v4".into()));
    let events = String::from_utf8_lossy(&env.tandem(&["audit", "events", "-o", "json"]).stdout)
        .into_owned();
    assert!(events.contains("release.pruned"));
    assert_ok(&env.tandem(&["audit", "verify"]));
}

#[test]
fn deploy_colours_its_terminal_unless_no_color_clicolor_or_a_dumb_term_says_not() {
    let env = Env::start();
    let dir = env.app("tty", "", "v1");
    // On a pseudo-terminal (script(1)), as a person at a terminal runs it.
    let on_a_terminal = |vars: &[(&str, &str)]| -> String {
        let cmd = format!("{} deploy --dir {}", bin().display(), dir.display());
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("TANDEM_SERVER", format!("http://{}", env.api))
            .env("TANDEM_DATA_DIR", env.data())
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR")
            .envs(vars.iter().copied())
            .output()
            .expect("script");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(&[]);
    assert!(coloured.contains("\x1b[32m✓"), "{coloured:?}");
    for off in [("NO_COLOR", "1"), ("CLICOLOR", "0"), ("TERM", "dumb")] {
        std::fs::write(dir.join("index.html"), format!("{off:?}")).expect("page");
        let plain = on_a_terminal(&[off]);
        assert!(plain.contains("is live"), "{off:?}: {plain:?}");
        for sgr in ["\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[1m"] {
            assert!(!plain.contains(sgr), "{off:?} still colours: {plain:?}");
        }
    }
    // A log file is no terminal: the agent's has no colour codes.
    let log = std::fs::read_to_string(env.data().join("agent.log")).expect("agent.log");
    assert!(log.contains("INFO") && !log.contains('\x1b'), "{log}");
}

#[test]
fn a_second_deploy_of_a_service_says_it_waits_for_the_first() {
    let env = Env::start();
    // A build that takes a while: the second deploy arrives during it.
    let dir = env.app("slow", "build:\n  - { name: wait, run: sleep 3 }\n", "v1");
    std::thread::scope(|s| {
        let first = s.spawn(|| env.deploy(&dir));
        std::thread::sleep(Duration::from_millis(800));
        let second = env.deploy(&dir);
        assert_ok(&second);
        let said = String::from_utf8_lossy(&second.stderr);
        assert!(
            said.contains("another release of slow is in progress; waiting for it to end"),
            "{said}"
        );
        assert_ok(&first.join().expect("first"));
    });
}

/// Deploys `name` with `run` and a liveness probe `probe` that passes
/// while `$STATE_DIRECTORY/alive` exists; removes it and returns the
/// instance as restarted, after checking a passing probe restarted nothing.
fn restarted_by_liveness(env: &Env, name: &str, run: &str, probe: &str) -> serde_json::Value {
    let dir = env.root.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("index.html"), "alive").expect("page");
    std::fs::write(
        dir.join("tandem.yaml"),
        format!("service:\n  name: {name}\nrun:\n  command: {run}\n  state_dir: true\nroute:\n  host: {name}.test\nhealth:\n  liveness: {probe}\n"),
    )
    .expect("spec");
    assert_ok(&env.deploy(&dir));
    let before = env.instances(name)[0].clone();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env.instances(name)[0]["restarts"],
        before["restarts"],
        "a passing probe restarts nothing"
    );
    std::fs::remove_file(env.data().join(format!("sandbox/state/{name}/alive"))).expect("rm");
    let restarted = util::wait_until(Duration::from_secs(10), "a restart", || {
        let now = env.instances(name)[0].clone();
        (now["restarts"].as_u64() > before["restarts"].as_u64()).then_some(now)
    });
    assert_ne!(restarted["pid"], before["pid"]);
    restarted
}

#[test]
fn a_failing_exec_liveness_probe_restarts_its_instance() {
    let env = Env::start();
    // The probe is the service's own command, run as the instance is.
    let restarted = restarted_by_liveness(
        &env,
        "lively",
        "touch $STATE_DIRECTORY/alive; exec python3 -m http.server $PORT --bind 127.0.0.1",
        "{ exec: 'test -f $STATE_DIRECTORY/alive', interval: 200ms, failures: 2 }",
    );
    let why = restarted["last_exit"].as_str().unwrap_or_default();
    assert!(why.contains("liveness failed 2 times"), "{restarted}");
    // It made its file again and serves on.
    util::wait_until(Duration::from_secs(10), "serving again", || {
        (env.get("lively.test", "/").1 == "alive").then_some(())
    });
}

#[test]
fn a_failing_http_liveness_probe_restarts_its_instance() {
    let env = Env::start();
    // It serves its state directory: `/alive` answers 200 while the file
    // is there, 404 once it is gone.
    let restarted = restarted_by_liveness(
        &env,
        "alive",
        "cd $STATE_DIRECTORY && touch alive && exec python3 -m http.server $PORT --bind 127.0.0.1",
        "{ http: /alive, interval: 200ms, failures: 3 }",
    );
    let why = restarted["last_exit"].as_str().unwrap_or_default();
    assert!(why.contains("liveness failed 3 times"), "{restarted}");
    assert!(
        why.contains("404"),
        "the probe says what it saw: {restarted}"
    );
}
