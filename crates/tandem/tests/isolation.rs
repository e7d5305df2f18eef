//! Isolation (ARCHITECTURE.md, Isolation): a service and its build try,
//! from inside, what a hostile tenant would — read tandem's database and
//! keys, another service's release, log and environment; write into
//! another release; signal the agent and the server; talk to the agent's
//! socket — while a neighbour serves under load. Each attempt must be
//! refused, and the controls (its own temp and state directories, its own
//! release) must work, so the test cannot pass by nothing running at all.

mod util;

use std::time::Duration;

use util::{Env, assert_ok, wait_until};

/// Tries each attack named on the command line's mode (`run` or `build`)
/// and writes what happened as JSON: `{name: "refused: …" | "done"}`.
const ATTACK: &str = r#"
import json, os, signal, socket, sys
mode, out = sys.argv[1], sys.argv[2]
D = os.environ["DATA"]
V = os.environ["VICTIM_DIGEST"]
res = {}
def tr(name, f):
    try:
        f()
        res[name] = "done"
    except Exception as e:
        res[name] = "refused: %s" % e
def read(p):
    return lambda: open(p, "rb").read(1)
def write(p):
    def w():
        with open(p, "ab") as f:
            f.write(b"DEFACED")
    return w
def sock():
    # Connected, it asks for a shutdown with a guessed key, then without.
    for first in [b'{"op":"auth","key":"' + b"0" * 64 + b'"}\n', b""]:
        s = socket.socket(socket.AF_UNIX)
        s.connect(D + "/agent.sock")
        s.sendall(first + b'{"op":"shutdown","stop_instances":true}\n')
        answer = s.recv(4096)
        if b"error" in answer or not answer:
            raise Exception("answered %r" % answer)
tr("read database", read(D + "/tandem.db"))
tr("read database by a relative path", read("../../tandem.db"))
tr("write database", write(D + "/tandem.db"))
tr("read the admin token", read(D + "/admin.token"))
tr("read the store key", read(D + "/keys/store.key"))
tr("list the data directory", lambda: os.listdir(D))
tr("list the releases", lambda: os.listdir(D + "/artifacts"))
tr("read another release", read(D + "/artifacts/" + V + "/index.html"))
tr("write another release", write(D + "/artifacts/" + V + "/index.html"))
tr("list another service's logs", lambda: os.listdir(D + "/logs/victim"))
tr("read another's environment", read("/proc/%s/environ" % os.environ["VICTIM_PID"]))
tr("read the agent's environment", read("/proc/%s/environ" % os.environ["AGENT_PID"]))
tr("stop the agent", lambda: os.kill(int(os.environ["AGENT_PID"]), signal.SIGSTOP))
tr("stop the server", lambda: os.kill(int(os.environ["SERVER_PID"]), signal.SIGSTOP))
tr("talk to the agent's socket", sock)
tr("write /tmp", write("/tmp/tandem-isolation-test"))
tr("open a terminal", write("/dev/tty"))
tr("write shared memory", write("/dev/shm/tandem-isolation-test"))
# Controls: what is its own.
tr("own temp", write(os.environ["TMPDIR"] + "/x"))
if mode == "run":
    tr("own state", write(os.environ["STATE_DIRECTORY"] + "/x"))
    tr("own release", read("index.html"))
    tr("own stderr by its name", write("/dev/stderr"))
    tr("write own release", write("index.html"))
else:
    tr("own checkout", write("index.html"))
    tr("own home", write(os.environ["HOME"] + "/cache"))
res["uid"] = os.getuid()
res["withheld"] = [k for k in ("TANDEM_SECRETS_KEY", "SSH_AUTH_SOCK", "TANDEM_TOKEN") if k in os.environ]
with open(out, "w") as f:
    json.dump(res, f)
"#;

/// Whether the tests run as root (our uid, from /proc).
fn as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

const REFUSED: [&str; 17] = [
    "read database",
    "read database by a relative path",
    "write database",
    "read the admin token",
    "read the store key",
    "list the data directory",
    "list the releases",
    "read another release",
    "write another release",
    "list another service's logs",
    "read another's environment",
    "read the agent's environment",
    "stop the agent",
    "stop the server",
    "talk to the agent's socket",
    "open a terminal",
    "write shared memory",
];

fn check(report: &serde_json::Value, controls: &[&str], refused_too: &[&str], what: &str) {
    for name in REFUSED.iter().chain(refused_too) {
        let got = report[name].as_str().unwrap_or("missing");
        assert!(
            got.starts_with("refused"),
            "{what}: `{name}` was not refused: {got}\n{report:#}"
        );
    }
    for name in controls {
        assert_eq!(
            report[name], "done",
            "{what}: `{name}` (its own) should work\n{report:#}"
        );
    }
    assert_eq!(
        report["withheld"],
        serde_json::json!([]),
        "{what}: {report:#}"
    );
    let uid = report["uid"].as_u64().expect("uid");
    assert!(
        uid >= 1_900_000_000,
        "{what} ran as uid {uid}, not a service user"
    );
}

/// What the attacker is told: where everything is.
struct Targets {
    digest: String,
    victim_pid: u64,
    agent_pid: String,
    server_pid: u32,
}

/// Deploys `victim` (two instances, a secret in their environment) and
/// learns where its release, its first instance, the agent and the
/// server are.
fn deploy_victim(env: &Env) -> Targets {
    let victim = env.root.path().join("victim");
    std::fs::create_dir_all(&victim).expect("mkdir");
    std::fs::write(victim.join("index.html"), "the victim's page").expect("page");
    std::fs::write(
        victim.join("tandem.yaml"),
        "service:\n  name: victim\nrun:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n  instances: 2\n  env:\n    VICTIM_SECRET: s3cr3t-of-the-victim\nroute:\n  host: victim.test\n",
    )
    .expect("spec");
    assert_ok(&env.deploy(&victim));
    let victim_pid = env.instances("victim")[0]["pid"].as_u64().expect("pid");
    // Its secret is in its environment: an attack must not be refused for
    // want of something to read.
    assert!(
        String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{victim_pid}/environ")).expect("environ")
        )
        .contains("s3cr3t-of-the-victim")
    );
    Targets {
        digest: release_digest(env, "victim"),
        victim_pid,
        agent_pid: std::fs::read_to_string(env.data().join("agent.lock"))
            .expect("agent.lock")
            .trim()
            .to_owned(),
        server_pid: env.up.as_ref().expect("up").id(),
    }
}

fn release_digest(env: &Env, service: &str) -> String {
    let out = env.tandem(&["releases", service, "-o", "json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v[0]["digest"].as_str().expect("digest").to_owned()
}

/// Deploys `evil`, whose instance (and build, if `build`) runs [`ATTACK`]
/// against `t`; the instance's report, once written.
fn deploy_evil(env: &Env, t: &Targets, build: bool) -> serde_json::Value {
    let evil = env.root.path().join("evil");
    std::fs::create_dir_all(&evil).expect("mkdir");
    std::fs::write(evil.join("attack.py"), ATTACK).expect("attack");
    std::fs::write(evil.join("index.html"), "evil").expect("page");
    let vars = format!(
        "DATA={} VICTIM_DIGEST={} VICTIM_PID={} AGENT_PID={} SERVER_PID={}",
        env.data().display(),
        t.digest,
        t.victim_pid,
        t.agent_pid,
        t.server_pid
    );
    let build = if build {
        format!(
            "build:\n  - name: attack\n    run: {vars} python3 attack.py build build-report.json\n"
        )
    } else {
        String::new()
    };
    std::fs::write(
        evil.join("tandem.yaml"),
        format!(
            "service:\n  name: evil\n{build}run:\n  command: {vars} python3 attack.py run $STATE_DIRECTORY/report.json; exec python3 -m http.server $PORT --bind 127.0.0.1\n  state_dir: true\nroute:\n  host: evil.test\nhealth:\n  liveness: {{ exec: 'id -u > $STATE_DIRECTORY/probe-env; env >> $STATE_DIRECTORY/probe-env', interval: 1s }}\n"
        ),
    )
    .expect("spec");
    assert_ok(&env.deploy(&evil));
    let report = env.data().join("sandbox/state/evil/report.json");
    wait_until(Duration::from_secs(10), "the attack's report", || {
        serde_json::from_slice(&std::fs::read(&report).ok()?).ok()
    })
}

#[test]
fn a_hostile_service_and_its_build_reach_nothing_of_tandem_or_a_neighbour() {
    if !as_root() {
        eprintln!("skipped: switching users needs root (CI has it)");
        return;
    }
    // tandem's own credentials in its environment: no service process
    // (instance, probe, build) may get them.
    let env = Env::start_outside_tmp(&[
        ("TANDEM_SECRETS_KEY", &"ab".repeat(32)),
        ("SSH_AUTH_SOCK", "/operator/agent.sock"),
    ]);
    let targets = deploy_victim(&env);
    let load = util::Load::start(&env.proxy, "victim.test", 2);
    let run = deploy_evil(&env, &targets, true);
    let probe_env = env.data().join("sandbox/state/evil/probe-env");
    let probed = wait_until(Duration::from_secs(10), "the exec probe ran", || {
        std::fs::read_to_string(&probe_env)
            .ok()
            .filter(|s| s.contains("PORT="))
    });
    let probe_uid: u64 = probed
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("uid");
    assert!(probe_uid >= 1_900_000_000, "the probe ran as {probe_uid}");
    for withheld in ["TANDEM_SECRETS_KEY", "SSH_AUTH_SOCK", "TANDEM_TOKEN"] {
        assert!(
            !probed.contains(withheld),
            "the probe got {withheld}: {probed}"
        );
    }
    // The build's report is in its release; the instance's in its state.
    let evil_digest = release_digest(&env, "evil");
    let build: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.data()
                .join("artifacts")
                .join(&evil_digest)
                .join("build-report.json"),
        )
        .expect("the build's report"),
    )
    .expect("json");
    check(
        &build,
        &["own temp", "own checkout", "own home", "write /tmp"],
        &[],
        "the build",
    );
    check(
        &run,
        &[
            "own temp",
            "own state",
            "own release",
            "own stderr by its name",
            "write /tmp",
        ],
        &["write own release"],
        "the instance",
    );
    // Its /tmp was its own: nothing reached the machine's.
    assert!(
        !std::path::Path::new("/tmp/tandem-isolation-test").exists(),
        "a service wrote the machine's /tmp"
    );

    // Nothing was harmed: the agent runs (not stopped) and answers, the
    // victim serves its own page and lost no request.
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", targets.agent_pid)).expect("agent stat");
    let state = stat
        .rsplit(')')
        .next()
        .expect("stat")
        .split_whitespace()
        .next();
    assert_ne!(state, Some("T"), "the agent was stopped");
    assert_ok(&env.tandem(&["status"]));
    assert_eq!(env.get("victim.test", "/").1, "the victim's page");
    wait_until(Duration::from_secs(10), "the load to go on", || {
        (load.ok_so_far() > 200).then_some(())
    });
    let result = load.finish();
    assert_eq!(
        result.failed, 0,
        "the victim lost requests: {:?}",
        result.failures
    );
    assert!(result.ok > 50, "{} answered", result.ok);
}

#[test]
fn without_root_tandem_says_what_is_off_and_the_fence_still_keeps_a_service_out() {
    if !as_root() {
        eprintln!("skipped: becoming an unprivileged user needs root (CI has it)");
        return;
    }
    // tandem as `nobody`: no users to switch to, no control groups.
    const NOBODY: u32 = 65534;
    let mut env = Env::unstarted("", &[]);
    std::fs::create_dir_all(env.data()).expect("data");
    std::os::unix::fs::chown(env.data(), Some(NOBODY), Some(NOBODY)).expect("chown");
    env.as_user = Some(NOBODY);
    env.up_again();
    let said = env.said.join("\n");
    assert!(
        said.contains("isolation: users OFF: tandem runs as uid 65534, not root"),
        "{said}"
    );
    assert!(said.contains("isolation: limits OFF"), "{said}");
    assert!(said.contains("isolation: fence on: Landlock"), "{said}");

    let targets = deploy_victim(&env);
    let run = deploy_evil(&env, &targets, false);
    // The same user as tandem: only the fence (Landlock: files, signals),
    // the agent's key and its undumpable memory stand between them.
    assert_eq!(run["uid"], NOBODY, "{run:#}");
    // No mount namespace without root: /tmp is refused, not private.
    for name in REFUSED.iter().chain(&["write /tmp"]) {
        let got = run[name].as_str().unwrap_or("missing");
        assert!(
            got.starts_with("refused"),
            "`{name}` was not refused: {got}\n{run:#}"
        );
    }
    for name in [
        "own temp",
        "own state",
        "own release",
        "own stderr by its name",
    ] {
        assert_eq!(run[name], "done", "`{name}`\n{run:#}");
    }
    assert_ok(&env.tandem(&["status"]));
    assert_eq!(env.get("victim.test", "/").1, "the victim's page");
}

#[test]
fn a_service_filling_its_disk_is_stopped_at_its_limit_with_an_incident_while_a_neighbour_serves() {
    if !as_root() {
        eprintln!("skipped: the limits need root (CI has it)");
        return;
    }
    let env = Env::start();
    let web = env.app("web", "", "neighbour");
    assert_ok(&env.deploy(&web));
    let load = util::Load::start(&env.proxy, "web.test", 2);

    // A megabyte every 20 ms into its state directory, limited to 16 MiB.
    let filler = env.root.path().join("filler");
    std::fs::create_dir_all(&filler).expect("mkdir");
    std::fs::write(filler.join("index.html"), "filler").expect("page");
    std::fs::write(
        filler.join("tandem.yaml"),
        "service:\n  name: filler\nrun:\n  command: '(sleep 1; i=0; while head -c 1048576 /dev/zero > $STATE_DIRECTORY/f$i; do i=$((i+1)); sleep 0.02; done) & exec python3 -m http.server $PORT --bind 127.0.0.1'\n  instances: 1\n  state_dir: true\n  limits: { disk: 16Mi }\nroute:\n  host: filler.test\n",
    )
    .expect("spec");
    assert_ok(&env.deploy(&filler));
    let incident = wait_until(Duration::from_secs(30), "a disk-limit incident", || {
        let out = env.tandem(&["incidents", "-o", "json"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        all.as_array()?
            .iter()
            .find(|i| i["kind"] == "disk-limit" && i["service"] == "filler")
            .cloned()
    });
    let summary = incident["summary"].as_str().expect("summary");
    assert!(summary.contains("disk limit of 16Mi"), "{summary}");
    // Stopped before it had written much past its limit: at most two
    // seconds' worth (a check every 2 s, a megabyte every 20 ms or so).
    let state = env.data().join("sandbox/state/filler");
    let used: u64 = std::fs::read_dir(&state)
        .expect("state")
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        used < (16 + 120) << 20,
        "{} MiB in its state directory",
        used >> 20
    );
    let filler_status = &env.instances("filler")[0];
    assert!(
        filler_status["restarts"].as_u64().unwrap_or(0) >= 1,
        "{filler_status}"
    );
    wait_until(Duration::from_secs(10), "the load to go on", || {
        (load.ok_so_far() > 200).then_some(())
    });
    let result = load.finish();
    assert_eq!(
        result.failed, 0,
        "the neighbour lost requests: {:?}",
        result.failures
    );
    assert_ok(&env.tandem(&["status"]));
}
