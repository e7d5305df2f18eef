//! Bad input: every class of malformed spec gives file:line:column, exit
//! code 2, and changes nothing (issue 2).

mod util;

use util::{Env, assert_ok};

const GOOD: &str = "service:\n  name: web\nrun:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\nroute:\n  host: web.test\n";

fn check_rejected(env: &Env, yaml: &str, expect_loc: &str, expect_msg: &str) {
    let dir = env.root.path().join("bad");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tandem.yaml"), yaml).expect("write");
    let events_before = env.tandem(&["audit", "verify", "-o", "json"]);
    for args in [
        vec!["validate", dir.to_str().expect("utf8")],
        vec!["deploy", "--dir", dir.to_str().expect("utf8")],
    ] {
        let out = env.tandem(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let file = dir.join("tandem.yaml");
        assert!(
            stderr.contains(&format!("{}:{expect_loc}", file.display())),
            "{args:?} names file:line:col {expect_loc}: {stderr}"
        );
        assert!(stderr.contains(expect_msg), "{args:?}: {stderr}");
    }
    let events_after = env.tandem(&["audit", "verify", "-o", "json"]);
    assert_eq!(
        events_before.stdout, events_after.stdout,
        "nothing was recorded"
    );
    let services = env.tandem(&["services", "-o", "json"]);
    assert_eq!(
        String::from_utf8_lossy(&services.stdout).trim(),
        "[]",
        "no service was created"
    );
}

#[test]
fn malformed_specs_are_located_and_change_nothing() {
    let env = Env::start();
    check_rejected(
        &env,
        "service:\n  name: web\n run: x\n",
        "3:2",
        "did not find expected key",
    );
    check_rejected(
        &env,
        &GOOD.replace("  host: web.test", "  host: web.test\n  hots: x"),
        "7:3",
        "did you mean `host`?",
    );
    check_rejected(
        &env,
        &format!("{GOOD}release:\n  drain_timeout: 30\n"),
        "8:18",
        "has no unit",
    );
    check_rejected(
        &env,
        &GOOD.replace("name: web", "name: Web_App"),
        "2:9",
        "only lowercase letters",
    );
    check_rejected(
        &env,
        "service:\n  name: web\nroute:\n  host: web.test\n",
        "3:1",
        "missing field `run`",
    );
}

#[test]
fn valid_spec_validates_and_schema_prints() {
    let env = Env::start();
    let dir = env.root.path().join("ok");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tandem.yaml"), GOOD).expect("write");
    assert_ok(&env.tandem(&["validate", dir.to_str().expect("utf8")]));
    let schema = env.tandem(&["schema"]);
    assert_ok(&schema);
    let v: serde_json::Value = serde_json::from_slice(&schema.stdout).expect("json schema");
    assert!(v["properties"]["run"].is_object());
}

#[test]
fn unknown_service_and_bad_usage_exit_2() {
    let env = Env::start();
    let out = env.tandem(&["releases", "nope"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.tandem(&["deploy"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.tandem(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn second_up_a_busy_address_and_an_unwritable_data_dir_are_refused() {
    let env = Env::start();
    let refused = |api: &str, data: &std::path::Path, expect: &str| {
        let out = std::process::Command::new(util::bin())
            .args([
                "up",
                "--api-addr",
                api,
                "--proxy-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
    };
    refused("127.0.0.1:0", &env.data(), "already runs");
    let other = tempfile::tempdir().expect("tempdir");
    refused(&env.api, other.path(), &env.api);
    // Under a regular file no directory can be made, even by root.
    let file = other.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    refused(
        "127.0.0.1:0",
        &file.join("data"),
        "cannot create data directory",
    );
}

#[test]
fn an_oversized_spec_is_refused_without_being_read_whole() {
    let env = Env::start();
    // A 30 MB value in run.env, as tried from outside.
    let spec = GOOD.replace(
        "run:\n  command:",
        &format!(
            "run:\n  env: {{ BLOB: {} }}\n  command:",
            "x".repeat(30 * 1024 * 1024)
        ),
    );
    let started = std::time::Instant::now();
    check_rejected(&env, &spec, "1:1", "larger than 256 KiB");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn shell_completions_load_and_the_manual_page_renders() {
    let completions = std::process::Command::new(util::bin())
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(completions.status.success());
    // Loaded into a real bash, they complete `tandem`'s subcommands.
    let script = std::env::temp_dir().join(format!("tandem-completion-{}", std::process::id()));
    std::fs::write(&script, &completions.stdout).expect("script");
    let bash = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(tandem dep) && COMP_CWORD=1 && _tandem tandem dep tandem && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("bash");
    let _ = std::fs::remove_file(&script);
    let offered = String::from_utf8_lossy(&bash.stdout);
    assert!(
        offered.lines().any(|l| l == "deploy"),
        "{offered:?} {bash:?}"
    );

    let man = std::process::Command::new(util::bin())
        .arg("man")
        .output()
        .expect("man");
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH tandem 1"), "{page}");
    // groff renders it without a warning.
    let mut groff = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff");
    use std::io::Write;
    groff
        .stdin
        .take()
        .expect("stdin")
        .write_all(&man.stdout)
        .expect("feed groff");
    let out = groff.wait_with_output().expect("groff");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_list_is_its_noun_alone_or_with_ls_and_says_the_same() {
    let env = Env::start();
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    for (alone, with_ls) in [
        (vec!["incidents"], vec!["incidents", "ls"]),
        (
            vec!["incidents", "--open"],
            vec!["incidents", "ls", "--open"],
        ),
        (vec!["channels"], vec!["channels", "ls"]),
        (vec!["pipelines"], vec!["pipelines", "ls"]),
        (vec!["pipelines", "web"], vec!["pipelines", "ls", "web"]),
        (vec!["maintenance"], vec!["maintenance", "ls"]),
        (vec!["maintenance", "web"], vec!["maintenance", "ls", "web"]),
        (vec!["secrets", "web"], vec!["secrets", "ls", "web"]),
    ] {
        for fmt in [&[][..], &["-o", "json"][..]] {
            let a = env.tandem(&[&alone[..], fmt].concat());
            let b = env.tandem(&[&with_ls[..], fmt].concat());
            assert_ok(&a);
            assert_ok(&b);
            assert_eq!(a.stdout, b.stdout, "{alone:?} and {with_ls:?} differ");
        }
    }
    let out = env.tandem(&["secrets"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tandem secrets SERVICE"));
}

#[test]
fn audit_verify_through_the_cli_fails_on_a_tampered_journal_naming_the_event() {
    let env = Env::start();
    let dir = env.app("web", "", "v1");
    assert_ok(&env.deploy(&dir));
    assert_ok(&env.tandem(&["audit", "verify"]));
    // Someone with the database file rewrites who did something.
    let db = env.data().join("tandem.db");
    let tamper = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('DROP TRIGGER IF EXISTS events_no_update')\n\
             c.execute(\"UPDATE events SET actor = 'user:mallory' WHERE seq = 2\")\n\
             c.commit()\n",
        )
        .arg(&db)
        .output()
        .expect("python3");
    assert!(tamper.status.success(), "{tamper:?}");
    let out = env.tandem(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("event 2: content does not match its hash"),
        "{said}"
    );
}
