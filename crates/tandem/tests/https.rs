//! End-to-end HTTPS: `tandem up --proxy-tls-addr`, certificates from a
//! spec's files and from a real ACME server (Debian's pebble, Let's
//! Encrypt's test server), checked with curl and a TLS load generator.

mod util;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::{Env, Load, assert_ok, free_port, wait_until};

/// A CA, and a certificate it signed for each host, written as
/// `<dir>/<host>.crt` and `<dir>/<host>.key`. Returns the CA's PEM.
fn certificates(dir: &Path, hosts: &[&str]) -> String {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    // Names of their own: a leaf whose issuer reads like its subject looks
    // self-signed to OpenSSL.
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tandem test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    for host in hosts {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *host);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        std::fs::write(dir.join(format!("{host}.crt")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{host}.key")), key.serialize_pem()).expect("write");
    }
    ca_cert.pem()
}

/// curl over HTTPS to `host` on 127.0.0.1:`port` trusting `ca`:
/// (HTTP version, status, body).
fn curl(ca: &Path, host: &str, port: u16, path: &str) -> (String, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("https://{host}:{port}{path}"),
        ])
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {host}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = text.rsplit_once('\n').expect("curl's -w line");
    let (version, code) = last.split_once(' ').expect("version and code");
    (
        version.to_owned(),
        code.parse().expect("code"),
        body.to_owned(),
    )
}

#[test]
fn certificates_from_files_serve_two_hosts_by_sni_http2_and_deploys_and_an_agent_upgrade_under_https_load()
 {
    let https_port = free_port();
    let tls_addr = format!("127.0.0.1:{https_port}");
    let env = Env::start_with(&[("TANDEM_PROXY_TLS_ADDR", &tls_addr)]);
    let tls = "  tls: { cert: cert/HOST.crt, key: cert/HOST.key }\n";
    let shop = env.app(
        "shop",
        &format!("{}  https_only: true\n", tls.replace("HOST", "shop.test")),
        "shop v1",
    );
    let api = env.app("api", &tls.replace("HOST", "api.test"), "api v1");
    let ca_pem = {
        std::fs::create_dir_all(shop.join("cert")).expect("mkdir");
        std::fs::create_dir_all(api.join("cert")).expect("mkdir");
        let ca = certificates(&shop.join("cert"), &["shop.test", "api.test"]);
        for ext in ["crt", "key"] {
            let name = format!("api.test.{ext}");
            std::fs::rename(shop.join("cert").join(&name), api.join("cert").join(&name))
                .expect("move");
        }
        ca
    };
    let ca = env.root.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("write");
    assert_ok(&env.deploy(&shop));
    assert_ok(&env.deploy(&api));

    // Two hosts on one port, each with its own certificate (by SNI),
    // spoken HTTP/2 (by ALPN) where the client offers it.
    for (host, body) in [("shop.test", "shop v1"), ("api.test", "api v1")] {
        let (version, status, got) = curl(&ca, host, https_port, "/index.html");
        assert_eq!((version.as_str(), status, got.as_str()), ("2", 200, body));
    }
    // The HTTPS-only one redirects plain HTTP.
    let mut plain = std::net::TcpStream::connect(&env.proxy).expect("connect");
    use std::io::{Read, Write};
    write!(
        plain,
        "GET /index.html HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    plain.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer.contains(&format!(
            "location: https://shop.test:{https_port}/index.html"
        )),
        "{answer}"
    );
    // The journal says which certificates were installed, and nothing of
    // their keys.
    let events = env.tandem(&["audit", "events", "-o", "json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert_eq!(
        events.matches("certificate.installed").count(),
        2,
        "{events}"
    );
    assert!(!events.contains("PRIVATE KEY"));
    // The key stays out of the release: the service cannot read or serve
    // it; the certificate, public, goes with the rest of the tree.
    let artifacts: Vec<_> = std::fs::read_dir(env.data().join("artifacts"))
        .expect("artifacts")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!artifacts.is_empty());
    for release in &artifacts {
        let certs = release.join("cert");
        assert!(!certs.join("api.test.key").exists() && !certs.join("shop.test.key").exists());
    }
    assert!(
        artifacts
            .iter()
            .any(|r| r.join("cert/api.test.crt").exists())
    );

    // Releases under HTTPS load: no request fails.
    let load = Load::start_on(&util::tls(&tls_addr, "api.test", &ca_pem), "api.test", 4);
    for v in 2..=4 {
        std::fs::write(api.join("index.html"), format!("api v{v}")).expect("write");
        assert_ok(&env.deploy(&api));
        let (_, _, got) = curl(&ca, "api.test", https_port, "/index.html");
        assert_eq!(got, format!("api v{v}"));
    }
    // The agent upgraded in place: the HTTPS socket and the certificates
    // go on in the new agent (TLS clients are asked to reconnect).
    let before = load.ok_so_far();
    assert_ok(&env.tandem(&["upgrade-agent"]));
    wait_until(
        Duration::from_secs(20),
        "load over HTTPS after the upgrade",
        || (load.ok_so_far() >= before + 200).then_some(()),
    );
    let (_, _, got) = curl(&ca, "shop.test", https_port, "/index.html");
    assert_eq!(got, "shop v1");
    wait_until(Duration::from_secs(20), "load over HTTPS", || {
        (load.ok_so_far() >= 500).then_some(())
    });
    let r = load.finish();
    eprintln!("https requests ok={} failed={}", r.ok, r.failed);
    assert_eq!(r.failed, 0, "{:?}", &r.failures[..r.failures.len().min(10)]);
    // A certificate deployed again unchanged is not installed again.
    let events = env.tandem(&["audit", "events", "-o", "json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert_eq!(events.matches("certificate.installed").count(), 2);
}

#[test]
fn a_certificate_file_outside_the_spec_or_not_naming_the_host_is_refused_and_changes_nothing() {
    let https_port = free_port();
    let env = Env::start_with(&[("TANDEM_PROXY_TLS_ADDR", &format!("127.0.0.1:{https_port}"))]);
    let outside = env.app("out", "  tls: { cert: ../secret.crt, key: k.key }\n", "x");
    let out = env.deploy(&outside);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaves the spec's directory"));

    // A link inside the directory to a file outside it (a key the server
    // can read, say) is followed no further than the directory.
    let linked = env.app(
        "linked",
        "  tls: { cert: c/site.crt, key: c/site.key }\n",
        "x",
    );
    std::fs::create_dir_all(linked.join("c")).expect("mkdir");
    certificates(env.root.path(), &["linked.test"]);
    for ext in ["crt", "key"] {
        std::os::unix::fs::symlink(
            env.root.path().join(format!("linked.test.{ext}")),
            linked.join(format!("c/site.{ext}")),
        )
        .expect("link");
    }
    let out = env.deploy(&linked);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("leads outside the spec's directory"),
        "{stderr}"
    );

    let wrong = env.app(
        "wrong",
        "  tls: { cert: c/other.test.crt, key: c/other.test.key }\n",
        "x",
    );
    std::fs::create_dir_all(wrong.join("c")).expect("mkdir");
    certificates(&wrong.join("c"), &["other.test"]);
    let out = env.deploy(&wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not name wrong.test"), "{stderr}");
    let services = env.tandem(&["services", "-o", "json"]);
    assert!(
        !String::from_utf8_lossy(&services.stdout).contains("wrong"),
        "nothing registered"
    );

    // A host another service serves (on any path) is not this one's to
    // certify: its clients would be shown a certificate it chose.
    let owner = env.app("owner", "", "owner");
    assert_ok(&env.deploy(&owner));
    let thief = env.root.path().join("thief");
    std::fs::create_dir_all(thief.join("c")).expect("mkdir");
    certificates(&thief.join("c"), &["owner.test"]);
    std::fs::write(
        thief.join("tandem.yaml"),
        "service: { name: thief }\nrun: { command: \"exec python3 -m http.server $PORT --bind 127.0.0.1\" }\n\
         route:\n  host: owner.test\n  path_prefix: /x\n  tls: { cert: c/owner.test.crt, key: c/owner.test.key }\n",
    )
    .expect("write");
    let out = env.deploy(&thief);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("owner serves owner.test too"), "{stderr}");
    assert!(
        !env.data().join("tls/owner.test.pem").exists(),
        "nothing installed"
    );
}

/// pebble and its DNS, stopped when dropped.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    /// The PEM of pebble's own HTTPS certificate (for the directory).
    ca_file: std::path::PathBuf,
    management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts pebble validating HTTP-01 challenges on `http_port`, with a DNS
/// server that answers 127.0.0.1 for every name.
fn start_pebble(dir: &Path, http_port: u16) -> Pebble {
    for tool in ["pebble", "pebble-challtestsrv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: apt-get install pebble (make test does)"
        );
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let ca_file = dir.join("pebble.crt");
    std::fs::write(&ca_file, cert.pem()).expect("write");
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).expect("write");
    let (dns, dns_mgmt, listen, management) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": ca_file,
        "privateKey": dir.join("pebble.key"),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).expect("write");
    let dns_server = Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv6",
            "",
            "-defaultIPv4",
            "127.0.0.1",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{dns_mgmt}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv");
    let pebble = Command::new("pebble")
        .args(["-config"])
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble");
    let started = Pebble {
        children: vec![dns_server, pebble],
        directory: format!("https://127.0.0.1:{listen}/dir"),
        ca_file,
        management,
    };
    wait_until(
        Duration::from_secs(10),
        "pebble and its DNS listening",
        || {
            std::net::TcpStream::connect(("127.0.0.1", listen)).ok()?;
            std::net::TcpStream::connect(("127.0.0.1", dns_mgmt)).ok()
        },
    );
    started
}

#[test]
fn an_acme_certificate_is_obtained_from_pebble_and_served() {
    let (http_port, https_port) = (free_port(), free_port());
    let scratch = tempfile::tempdir().expect("tempdir");
    let pebble = start_pebble(scratch.path(), http_port);
    let tls_addr = format!("127.0.0.1:{https_port}");
    let ca_file = pebble.ca_file.display().to_string();
    let env = Env::start_on(
        &format!("127.0.0.1:{http_port}"),
        &[
            ("TANDEM_PROXY_TLS_ADDR", &tls_addr),
            ("TANDEM_ACME_DIRECTORY", &pebble.directory),
            ("TANDEM_ACME_CA_FILE", &ca_file),
            ("TANDEM_ACME_CHECK_EVERY", "1s"),
        ],
    );
    let app = env.app("shop", "  tls: acme\n", "served over ACME");
    assert_ok(&env.deploy(&app));

    // The issued chain's root, from pebble's management interface.
    let root = Command::new("curl")
        .args([
            "-sSk",
            &format!("https://127.0.0.1:{}/roots/0", pebble.management),
        ])
        .output()
        .expect("curl");
    assert!(root.status.success());
    let roots = scratch.path().join("roots.pem");
    std::fs::write(&roots, &root.stdout).expect("write");
    let served = std::time::Instant::now() + Duration::from_secs(60);
    let (version, status, body) = wait_until(
        Duration::from_secs(61),
        "an ACME certificate served",
        || {
            if std::time::Instant::now() > served {
                let events = env.tandem(&["audit", "events", "-o", "json"]);
                panic!(
                    "no certificate; the journal:\n{}",
                    String::from_utf8_lossy(&events.stdout)
                );
            }
            let out = Command::new("curl")
                .args(["-s", "--http2", "--max-time", "5", "--cacert"])
                .arg(&roots)
                .args([
                    "--resolve",
                    &format!("shop.test:{https_port}:127.0.0.1"),
                    "-w",
                    "\n%{http_version} %{http_code}",
                    &format!("https://shop.test:{https_port}/index.html"),
                ])
                .output()
                .ok()?;
            out.status.success().then(|| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let (body, last) = text.rsplit_once('\n').unwrap_or_default();
                let (v, c) = last.split_once(' ').unwrap_or_default();
                (v.to_owned(), c.parse::<u16>().unwrap_or(0), body.to_owned())
            })
        },
    );
    assert_eq!(
        (version.as_str(), status, body.as_str()),
        ("2", 200, "served over ACME")
    );
    let events = env.tandem(&["audit", "events", "-o", "json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    let installed = events
        .lines()
        .find(|l| l.contains("certificate.installed"))
        .expect("journalled");
    assert!(installed.contains("\"source\":\"acme\""), "{installed}");
    assert!(installed.contains("system:acme"), "{installed}");
    // Kept in the data directory, owner-only.
    use std::os::unix::fs::PermissionsExt;
    let kept = env.data().join("tls/shop.test.pem");
    let mode = std::fs::metadata(&kept).expect("kept").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_api_speaks_tls_and_the_cli_trusts_the_ca_it_is_given() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = certificates(certs.path(), &["127.0.0.1"]);
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write");
    let (cert, key) = (
        certs.path().join("127.0.0.1.crt"),
        certs.path().join("127.0.0.1.key"),
    );
    let env = Env::start_with(&[
        ("TANDEM_API_TLS_CERT", cert.to_str().expect("utf8")),
        ("TANDEM_API_TLS_KEY", key.to_str().expect("utf8")),
    ]);
    let cli = |args: &[&str], cacert: Option<&Path>| {
        let mut cmd = Command::new(util::bin());
        cmd.args(args)
            .env("TANDEM_SERVER", format!("https://{}", env.api))
            .env("TANDEM_DATA_DIR", env.data())
            .env_remove("SSL_CERT_FILE");
        if let Some(ca) = cacert {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.output().expect("run tandem")
    };
    let me = cli(&["whoami"], Some(&ca_file));
    assert_ok(&me);
    assert!(String::from_utf8_lossy(&me.stdout).starts_with("admin (admin)"));
    // A CA it was not given: the handshake fails, said as such.
    let other = tempfile::tempdir().expect("tempdir");
    let stranger = other.path().join("ca.pem");
    std::fs::write(&stranger, certificates(other.path(), &["127.0.0.1"])).expect("write");
    let refused = cli(&["whoami"], Some(&stranger));
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{refused:?}"
    );
    // Plain HTTP to the TLS port gets nothing.
    let plain = Command::new(util::bin())
        .args(["whoami"])
        .env("TANDEM_SERVER", format!("http://{}", env.api))
        .env("TANDEM_DATA_DIR", env.data())
        .output()
        .expect("run tandem");
    assert_ne!(plain.status.code(), Some(0), "{plain:?}");
}
