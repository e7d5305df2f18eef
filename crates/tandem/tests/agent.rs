//! The agent process on its own.

use std::process::Command;
use std::time::Duration;

mod util;
use util::{Env, assert_ok, bin, open_files_limit, wait_until};

#[test]
fn the_agent_raises_its_open_files_limit_to_the_hard_one() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    // Started the way a login shell would leave it: a low soft limit.
    let mut agent = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"ulimit -S -n 512 && exec "$0" agent --data-dir "$1" --proxy-addr 127.0.0.1:0"#)
        .arg(bin())
        .arg(&data)
        .spawn()
        .expect("spawn agent");
    wait_until(Duration::from_secs(10), "the agent's socket", || {
        data.join("agent.sock").exists().then_some(())
    });
    let (soft, hard) = open_files_limit(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(soft > 512, "soft limit still {soft}");
    assert_eq!(soft, hard.min(1 << 20), "raised to the hard limit");
}

#[test]
fn upgrading_an_agent_that_cannot_hand_over_says_so_and_changes_nothing() {
    use std::io::{BufRead, BufReader, Write};
    let root = tempfile::tempdir().expect("tempdir");
    // How a real agent refuses a request it does not know (as one from
    // before `upgrade-agent` refuses `handover`): asked of a running one.
    let real = root.path().join("real");
    let mut agent = Command::new(bin())
        .args(["agent", "--proxy-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&real)
        .spawn()
        .expect("spawn agent");
    wait_until(Duration::from_secs(10), "the agent's socket", || {
        real.join("agent.sock").exists().then_some(())
    });
    let refusal = {
        let conn =
            std::os::unix::net::UnixStream::connect(real.join("agent.sock")).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answers = BufReader::new(conn.try_clone().expect("clone")).lines();
        writeln!(&conn, "{}", util::agent_auth(&real)).expect("key");
        assert!(
            answers
                .next()
                .expect("an answer")
                .expect("read")
                .contains("ok")
        );
        writeln!(&conn, r#"{{"op":"handover_from_the_future"}}"#).expect("ask");
        answers.next().expect("an answer").expect("read")
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(refusal.contains("bad request"), "{refusal}");

    let data = root.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    // An agent from before `upgrade-agent`: it answers what it knows and
    // refuses the rest with the real agent's words.
    let old = std::os::unix::net::UnixListener::bind(data.join("agent.sock")).expect("bind");
    std::thread::spawn(move || {
        for conn in old.incoming().flatten() {
            // Line after line, as the real handler (it knows no `auth`
            // either, and answers the request behind it all the same).
            let reader = BufReader::new(conn.try_clone().expect("clone"));
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let answer = if line.contains("\"hello\"") {
                    r#"{"result":"hello","version":1,"pid":4242,"proxy_addr":"127.0.0.1:1","started_at_ms":0}"#
                } else {
                    refusal.as_str()
                };
                let _ = writeln!(&conn, "{answer}");
            }
        }
    });
    let out = Command::new(bin())
        .args(["upgrade-agent", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run upgrade-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("too old to hand over"), "{stderr}");
    assert!(
        data.join("agent.sock").exists(),
        "the old agent's socket is left alone"
    );
    assert!(
        !data.join("agent.lock").exists()
            || std::fs::read_to_string(data.join("agent.lock"))
                .unwrap_or_default()
                .is_empty(),
        "the new agent took no lock"
    );
}

#[test]
fn the_agent_serves_on_a_socket_systemd_passes_it() {
    use std::io::{BufRead, BufReader, Read, Write};
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    // What systemd's socket activation does: a listening socket at fd 3,
    // LISTEN_FDS=1 and LISTEN_PID naming the process that execs the agent.
    const ACTIVATE: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], [sys.argv[1], "agent", "--data-dir", sys.argv[2], "--proxy-addr", sys.argv[3]])
"#;
    let mut agent = Command::new("python3")
        .args(["-c", ACTIVATE])
        .arg(bin())
        .arg(&data)
        // Not an address of this machine: binding it would fail.
        .arg("192.0.2.1:80")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the activator");
    let mut port = String::new();
    BufReader::new(agent.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("port");
    wait_until(Duration::from_secs(10), "the agent's socket", || {
        data.join("agent.sock").exists().then_some(())
    });
    let mut client =
        std::net::TcpStream::connect(("127.0.0.1", port.trim().parse::<u16>().expect("port")))
            .expect("connect to the passed socket");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: nothing.test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "the proxy answered: {answer}"
    );
}

#[test]
fn the_shipped_systemd_unit_is_valid_and_runs_up_with_flags_it_knows() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/systemd/tandem.service");
    let unit = std::fs::read_to_string(&shipped).expect("read the unit");
    for needed in [
        "KillMode=process",
        "Restart=on-failure",
        "LimitNOFILE=",
        "Type=notify",
        "Environment=TANDEM_LOG=",
    ] {
        assert!(unit.contains(needed), "{needed} in {}", shipped.display());
    }
    // Hardened as far as the agent's work allows: 5 or lower.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&shipped)
        .output()
        .expect("systemd-analyze security");
    let said = String::from_utf8_lossy(&out.stdout);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split("exposure level for tandem.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    assert!(score <= 5.0, "exposure {score}: {said}");
    // systemd's own check, with this build's binary where the unit expects
    // the installed one (it checks that the command is executable).
    let root = tempfile::tempdir().expect("tempdir");
    let here = root.path().join("tandem.service");
    let binary = bin();
    std::fs::write(
        &here,
        unit.replace("/usr/local/bin/tandem", binary.to_str().expect("utf-8")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&here)
        .output()
        .expect("systemd-analyze (Debian: apt-get install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // And `tandem` takes the command line it runs.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/tandem "))
        .expect("ExecStart runs /usr/local/bin/tandem");
    let out = Command::new(&binary)
        .args(exec.split_whitespace())
        .arg("--help")
        .output()
        .expect("run tandem");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The prometheus_client parser (PyPI) on `text`: one line per sample,
/// `family name labels value`; fails the test when it refuses the text.
fn parse_exposition(text: &str) -> Vec<String> {
    const PARSE: &str = r#"import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(family.name, s.name, labels, s.value)
"#;
    let python = std::env::var("TANDEM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python with prometheus_client (make test installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// GET /metrics from `addr`.
fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

#[test]
fn the_agent_serves_valid_metrics_of_every_service_also_while_the_server_is_stopped() {
    let metrics = format!("127.0.0.1:{}", util::free_port());
    let mut env = util::Env::start_with(&[("TANDEM_AGENT_METRICS_ADDR", &metrics)]);
    for name in ["shop", "cart"] {
        let app = env.app(name, "", name);
        util::assert_ok(&env.deploy(&app));
        assert_eq!(env.get(&format!("{name}.test"), "/index.html").0, 200);
    }
    assert_eq!(env.get("nobody.test", "/").0, 404);
    let samples = parse_exposition(&scrape(&metrics).expect("the agent's /metrics"));
    for wanted in [
        "tandem_route_requests tandem_route_requests_total class=2xx,service=shop 1",
        "tandem_route_requests tandem_route_requests_total class=2xx,service=cart 1",
        "tandem_route_request_duration_seconds tandem_route_request_duration_seconds_count service=cart 1",
        "tandem_proxy_refused tandem_proxy_refused_total reason=unknown_host 1",
    ] {
        assert!(
            samples.iter().any(|s| s == wanted),
            "{wanted} in {samples:#?}"
        );
    }
    let targets = samples
        .iter()
        .filter(|s| s.starts_with("tandem_target_requests tandem_target_requests_total"))
        .count();
    assert_eq!(targets, 4 * 5, "2 instances of 2 services, 5 classes each");

    // The data plane reports on itself with the control plane gone.
    env.kill_up();
    assert_eq!(env.get("shop.test", "/index.html").0, 200);
    let samples = parse_exposition(&scrape(&metrics).expect("still served"));
    assert!(
        samples
            .iter()
            .any(|s| s
                == "tandem_route_requests tandem_route_requests_total class=2xx,service=shop 2"),
        "{samples:#?}"
    );
}

#[test]
fn the_agent_starts_and_serves_when_its_log_cannot_be_written() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let port = util::free_port();
    // /dev/full answers every write with ENOSPC: the agent's log on a full
    // disk. Logging at debug makes it write a lot.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut agent = Command::new(bin())
        .args(["agent", "--data-dir"])
        .arg(&data)
        .args(["--proxy-addr", &format!("127.0.0.1:{port}")])
        .env("TANDEM_LOG", "debug")
        .stderr(full)
        .spawn()
        .expect("spawn the agent");
    wait_until(Duration::from_secs(10), "the agent's socket", || {
        data.join("agent.sock").exists().then_some(())
    });
    for _ in 0..20 {
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: nothing.test\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "the proxy answered: {answer}"
        );
    }
    let alive = agent.try_wait().expect("try_wait").is_none();
    let _ = agent.kill();
    let status = agent.wait().expect("wait");
    assert!(alive, "the agent died: {status}");
}

#[test]
fn the_agents_own_log_is_rotated_while_it_runs_and_can_be_json() {
    // A small threshold, so that a few releases' lines pass it.
    let env = Env::start_with(&[
        ("TANDEM_LOG_ROTATE_BYTES", "1024"),
        ("TANDEM_LOG_FORMAT", "json"),
    ]);
    let agent = std::fs::read_to_string(env.data().join("agent.lock")).expect("lock");
    let dir = env.app("web", "", "v0");
    for i in 1..=6 {
        std::fs::write(dir.join("index.html"), format!("v{i}")).expect("page");
        assert_ok(&env.deploy(&dir));
    }
    let log = env.data().join("agent.log");
    let rotated = env.data().join("agent.log.1");
    assert!(
        rotated.exists(),
        "agent.log was not rotated while the agent ran"
    );
    let now = std::fs::read_to_string(&log).expect("agent.log");
    assert!(
        now.len() < 1024 + 2048,
        "agent.log holds {} bytes",
        now.len()
    );
    // The same agent wrote both: it was not restarted to rotate.
    assert_eq!(
        std::fs::read_to_string(env.data().join("agent.lock")).expect("lock"),
        agent
    );
    let before = std::fs::read_to_string(&rotated).expect("agent.log.1");
    for line in before.lines().chain(now.lines()).filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn up_tells_systemd_it_is_ready_and_no_service_can_speak_for_it() {
    // systemd's notification socket, played by the test.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let env = Env::start_with(&[("NOTIFY_SOCKET", path.to_str().expect("utf-8"))]);
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    let said = String::from_utf8_lossy(&buf[..n]);
    assert!(said.starts_with("READY=1\n"), "{said}");
    assert!(said.contains("STATUS=serving: api"), "{said}");
    // The agent and the services it runs do not get the socket.
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    let agent = std::fs::read_to_string(env.data().join("agent.lock")).expect("lock");
    let instance = env.instances("web")[0]["pid"].as_u64().expect("pid");
    for pid in [agent.trim().to_owned(), instance.to_string()] {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(
            !String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET"),
            "{pid} got NOTIFY_SOCKET"
        );
    }
}
