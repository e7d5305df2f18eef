//! Drives the real `tandem` binary in a temporary data directory, with the
//! API and the proxy on port 0, plus a keep-alive load generator.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A temporary directory other users may pass through (not list): as
/// root, tandem runs services as users of their own, who must reach
/// their releases in the data directory inside it.
pub fn searchable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod tempdir");
    dir
}

/// The line a connection to the agent of `data` starts with.
pub fn agent_auth(data: &Path) -> String {
    let key = std::fs::read_to_string(data.join("keys/agent.key")).expect("agent key");
    format!(r#"{{"op":"auth","key":"{}"}}"#, key.trim())
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

pub struct Env {
    pub root: tempfile::TempDir,
    pub api: String,
    pub proxy: String,
    pub up: Option<Child>,
    /// Extra environment of `tandem up` (and so of its agent).
    pub vars: Vec<(String, String)>,
    /// File systems mounted for the test, unmounted when it ends.
    pub mounts: Vec<PathBuf>,
    /// The uid `tandem up` runs as (`None`: the test's own).
    pub as_user: Option<u32>,
    /// What `tandem up` said before its banner.
    pub said: Vec<String>,
}

impl Env {
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// `tandem up` on port 0; waits for its banner.
    pub fn start() -> Env {
        Env::start_with(&[])
    }

    /// `tandem up` with extra environment variables, its proxy on `proxy`
    /// (an address someone else has to know beforehand; empty: port 0).
    pub fn start_on(proxy: &str, vars: &[(&str, &str)]) -> Env {
        let mut env = Env::unstarted(proxy, vars);
        env.up_again();
        env
    }

    /// An environment whose `tandem up` is started by `up_again`.
    pub fn unstarted(proxy: &str, vars: &[(&str, &str)]) -> Env {
        Env::unstarted_in(searchable_tempdir(), proxy, vars)
    }

    /// `tandem up` with its data directory outside `/tmp` (under cargo's
    /// scratch directory in `target/`), so that services get a `/tmp` of
    /// their own.
    pub fn start_outside_tmp(vars: &[(&str, &str)]) -> Env {
        use std::os::unix::fs::PermissionsExt;
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).expect("target tmp");
        let root = tempfile::tempdir_in(&base).expect("tempdir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        let mut env = Env::unstarted_in(root, "", vars);
        env.up_again();
        env
    }

    fn unstarted_in(root: tempfile::TempDir, proxy: &str, vars: &[(&str, &str)]) -> Env {
        Env {
            root,
            api: String::new(),
            proxy: proxy.to_string(),
            up: None,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: Vec::new(),
            as_user: None,
            said: Vec::new(),
        }
    }

    /// `tandem up` with its data directory on a tmpfs of `size` (`16m`),
    /// to fill: this needs root, as CI has.
    pub fn start_on_small_disk(size: &str) -> Env {
        let mut env = Env::unstarted("", &[]);
        let data = env.data();
        std::fs::create_dir_all(&data).expect("data dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&data)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.mounts.push(data);
        env.up_again();
        env
    }

    /// Fills the file system of the data directory; the file to remove to
    /// make room again.
    pub fn fill_disk(&self) -> PathBuf {
        let path = self.data().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }

    /// GET `path` of the API as the first admin: status and body.
    pub fn api_get(&self, path: &str) -> (u16, String) {
        get_as(&self.api, &self.api, path, Some(&self.token()))
    }

    /// The first admin's token, which `tandem up` wrote on first start.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data().join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// `tandem up` with extra environment variables.
    pub fn start_with(vars: &[(&str, &str)]) -> Env {
        // No proxy address yet: port 0.
        Env::start_on("", vars)
    }

    /// Starts `tandem up` (again) on the same data directory.
    pub fn up_again(&mut self) {
        let proxy_arg = if self.proxy.is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            self.proxy.clone()
        };
        let mut up = Command::new(bin());
        if let Some(uid) = self.as_user {
            use std::os::unix::process::CommandExt;
            up.uid(uid).gid(uid);
        }
        let mut child = up
            .args([
                "up",
                "--api-addr",
                "127.0.0.1:0",
                "--proxy-addr",
                &proxy_arg,
                "--data-dir",
            ])
            .arg(self.data())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem up");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        loop {
            let line = match lines.next() {
                Some(line) => line.expect("read"),
                None => panic!(
                    "tandem up ended before its banner ({:?}); it said:\n{}",
                    child.wait().map(|s| s.to_string()),
                    said.join("\n")
                ),
            };
            said.push(line.clone());
            if let Some(rest) = line
                .strip_prefix("tandem up: api http://")
                .or_else(|| line.strip_prefix("tandem up: api https://"))
            {
                let mut parts = rest.split_whitespace();
                self.api = parts.next().expect("api").to_string();
                parts.next();
                self.proxy = parts
                    .next()
                    .expect("proxy")
                    .trim_start_matches("http://")
                    .to_string();
                break;
            }
        }
        self.said = said;
        // Keep draining stderr so the server never blocks on a full pipe;
        // its errors go to the test's output (shown when a test fails).
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("ERROR") || line.contains("error") {
                    eprintln!("server: {line}");
                }
            }
        });
        self.up = Some(child);
    }

    pub fn tandem(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("TANDEM_SERVER", format!("http://{}", self.api))
            .env("TANDEM_DATA_DIR", self.data())
            .output()
            .expect("run tandem")
    }

    /// The service `mixed` ([`MIXED_APP`], two instances, host
    /// `mixed.test`, a 5 s drain) serving `body`, deployed; its directory.
    pub fn deploy_mixed(&self, body: &str) -> PathBuf {
        let dir = self.root.path().join("mixed");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("app.py"), MIXED_APP).expect("app");
        std::fs::write(
            dir.join("tandem.yaml"),
            "service:\n  name: mixed\nrun:\n  command: exec python3 app.py\n  instances: 2\nroute:\n  host: mixed.test\nrelease:\n  deploy_timeout: 15s\n  drain_timeout: 5s\n",
        )
        .expect("spec");
        std::fs::write(dir.join("index.html"), body).expect("body");
        assert_ok(&self.deploy(&dir));
        dir
    }

    /// `tandem secrets set SERVICE NAME` with `value` on stdin.
    pub fn set_secret(&self, service: &str, name: &str, value: &str) -> Output {
        self.set_secret_with(&["secrets", "set", service, name], value)
    }

    /// A `tandem secrets set …` command line with `value` on stdin.
    pub fn set_secret_with(&self, args: &[&str], value: &str) -> Output {
        let mut set = Command::new(bin())
            .args(args)
            .env("TANDEM_SERVER", format!("http://{}", self.api))
            .env("TANDEM_TOKEN", self.token())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let _ = set.stdin.take().expect("stdin").write_all(value.as_bytes());
        set.wait_with_output().expect("wait")
    }

    /// Writes a service directory with `python3 -m http.server` serving `body`.
    pub fn app(&self, name: &str, extra_yaml: &str, body: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("tandem.yaml"),
            format!(
                "service:\n  name: {name}\n  owner: team-test\nrun:\n  command: exec python3 -m http.server $PORT --bind 127.0.0.1\n  instances: 2\n  stop_timeout: 5s\nroute:\n  host: {name}.test\n{extra_yaml}"
            ),
        )
        .expect("write spec");
        std::fs::write(dir.join("index.html"), body).expect("write body");
        dir
    }

    pub fn deploy(&self, dir: &Path) -> Output {
        self.tandem(&["deploy", "--dir", dir.to_str().expect("utf8")])
    }

    /// One GET through the proxy on a fresh connection: (status, body).
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        get_from(&self.proxy, host, path)
    }

    /// SIGKILL of the `tandem up` process (the control plane).
    pub fn kill_up(&mut self) {
        if let Some(mut c) = self.up.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status_json(&self, service: &str) -> serde_json::Value {
        let out = self.tandem(&["status", service, "-o", "json"]);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// Instances of `service` as the agent reports them.
    pub fn instances(&self, service: &str) -> Vec<serde_json::Value> {
        self.status_json(service)["services"][0]["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["down", "--data-dir"])
            .arg(self.data())
            .output();
        self.kill_up();
        for m in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}

/// One GET of `path` from `addr` for `host` on a fresh connection:
/// (status, body).
pub fn get_from(addr: &str, host: &str, path: &str) -> (u16, String) {
    get_as(addr, host, path, None)
}

/// [`get_from`] with a bearer token.
pub fn get_as(addr: &str, host: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    // A test that waits on an answer fails in time rather than hangs.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `f` every 100 ms until it gives a value; fails after `within`.
pub fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Steady keep-alive GET load from `workers` connections until finished.
pub struct Load {
    ok: Arc<AtomicU64>,
    by_ask: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    connects: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

pub struct LoadResult {
    pub ok: u64,
    /// Answered requests by kind of [`Ask`].
    pub by_ask: std::collections::BTreeMap<String, u64>,
    /// Connections the clients opened (one each, unless one was closed).
    pub connects: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

/// A connection the load's workers speak HTTP/1.1 on.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Opens one connection for a load worker.
pub type Connector = Arc<dyn Fn() -> std::io::Result<Box<dyn Conn>> + Send + Sync>;

/// Plain TCP connections to `addr`.
pub fn plain(addr: &str) -> Connector {
    let addr = addr.to_string();
    Arc::new(move || {
        let s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Box::new(s) as Box<dyn Conn>)
    })
}

/// TLS connections to `addr` for `host` (SNI), trusting only `ca_pem`.
pub fn tls(addr: &str, host: &str, ca_pem: &str) -> Connector {
    let config = tls_client(ca_pem);
    let (addr, host) = (addr.to_string(), host.to_string());
    Arc::new(move || {
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(std::io::Error::other)?;
        let conn = rustls::ClientConnection::new(Arc::clone(&config), name)
            .map_err(std::io::Error::other)?;
        let s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Box::new(rustls::StreamOwned::new(conn, s)) as Box<dyn Conn>)
    })
}

/// A TLS client configuration that trusts only `ca_pem`.
pub fn tls_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.expect("a PEM certificate")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// What a load worker asks, over and over.
#[derive(Clone, Copy, Debug)]
pub enum Ask {
    /// `GET /index.html`: bodiless, so the proxy may retry it elsewhere.
    Get,
    /// `POST /echo` with a 16 KiB body the answer must carry the SHA-256
    /// of: never retried by the proxy, so a connection cut on a switch
    /// shows.
    Post,
    /// `GET /slow?ms=1500`: in flight across a switch, for a drain to wait for.
    Slow,
}

/// A service for mixed load ([`Ask`]): `app.py`, a threaded HTTP/1.1
/// server answering `index.html`, `/slow?ms=N` after N ms, and POSTs with
/// the SHA-256 of their body. Stopping ends it at once, in-flight
/// requests included: only a drain keeps them whole.
pub const MIXED_APP: &str = r#"
import hashlib, http.server, os, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/slow?ms="):
            time.sleep(int(self.path.split("=")[1]) / 1000)
        with open("index.html", "rb") as f:
            self.answer(f.read())
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.answer(hashlib.sha256(data).hexdigest().encode())
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

impl Load {
    pub fn start(proxy: &str, host: &str, workers: usize) -> Load {
        Load::start_on(&plain(proxy), host, workers)
    }

    /// `workers` connections for each kind of [`Ask`].
    pub fn start_mixed(proxy: &str, host: &str, workers: usize) -> Load {
        let asks = [Ask::Get, Ask::Post, Ask::Slow];
        Load::start_asking(&plain(proxy), host, &asks.repeat(workers))
    }

    /// The load over connections `connect` opens.
    pub fn start_on(connect: &Connector, host: &str, workers: usize) -> Load {
        Load::start_asking(connect, host, &vec![Ask::Get; workers])
    }

    /// One connection per entry of `asks`, each asking that.
    pub fn start_asking(connect: &Connector, host: &str, asks: &[Ask]) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let by_ask = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let connects = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = asks
            .iter()
            .map(|&ask| {
                let counts = Counts {
                    ok: ok.clone(),
                    by_ask: by_ask.clone(),
                    connects: connects.clone(),
                    failed: failed.clone(),
                    failures: failures.clone(),
                };
                let stop = stop.clone();
                let (connect, host) = (Arc::clone(connect), host.to_string());
                std::thread::spawn(move || worker(&connect, &host, ask, &counts, &stop))
            })
            .collect();
        Load {
            ok,
            by_ask,
            connects,
            failed,
            failures,
            stop,
            threads,
        }
    }

    pub fn ok_so_far(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        LoadResult {
            ok: self.ok.load(Ordering::SeqCst),
            by_ask: self.by_ask.lock().map(|b| b.clone()).unwrap_or_default(),
            connects: self.connects.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            failures,
        }
    }
}

/// What the load's workers count.
struct Counts {
    ok: Arc<AtomicU64>,
    by_ask: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    connects: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
}

/// One keep-alive connection asking `ask` again and again; every error,
/// non-200 or wrong answer is a failure.
fn worker(connect: &Connector, host: &str, ask: Ask, counts: &Counts, stop: &AtomicBool) {
    let Counts {
        ok,
        by_ask,
        connects,
        failed,
        failures,
    } = counts;
    let mut conn: Option<BufReader<Box<dyn Conn>>> = None;
    let fail = |why: String| {
        failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut f) = failures.lock() {
            f.push(why);
        }
    };
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect() {
                Ok(s) => {
                    connects.fetch_add(1, Ordering::SeqCst);
                    conn.insert(BufReader::new(s))
                }
                Err(e) => {
                    fail(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match request(c, host, ask, n) {
            Ok((200, close)) => {
                ok.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut b) = by_ask.lock() {
                    *b.entry(format!("{ask:?}")).or_default() += 1;
                }
                // A client sends nothing more on a connection the server
                // said it closes.
                if close {
                    conn = None;
                }
            }
            Ok((other, _)) => fail(format!("status {other}")),
            Err(e) => {
                fail(e);
                conn = None;
            }
        }
    }
}

/// One request: its status, and whether the server closes the connection.
fn request(
    c: &mut BufReader<Box<dyn Conn>>,
    host: &str,
    ask: Ask,
    n: u64,
) -> Result<(u16, bool), String> {
    let mut expect = None;
    match ask {
        Ask::Get => write!(
            c.get_mut(),
            "GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        Ask::Slow => write!(
            c.get_mut(),
            "GET /slow?ms=1500 HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        Ask::Post => {
            use sha2::Digest;
            let body: Vec<u8> = (0..16 * 1024u64).map(|i| (i * 7 + n) as u8).collect();
            let digest = sha2::Sha256::digest(&body);
            expect = Some(
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            );
            write!(
                c.get_mut(),
                "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .and_then(|()| c.get_mut().write_all(&body))
        }
    }
    .map_err(|e| format!("write: {e}"))?;
    let mut status_line = String::new();
    c.read_line(&mut status_line)
        .map_err(|e| format!("read: {e}"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {status_line:?}"))?;
    let mut len = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        c.read_line(&mut h)
            .map_err(|e| format!("read header: {e}"))?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("connection")
        {
            close |= v.trim().eq_ignore_ascii_case("close");
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    if let Some(expect) = expect
        && status == 200
        && body != expect.as_bytes()
    {
        return Err(format!(
            "{ask:?}: a wrong answer {:?}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok((status, close))
}

/// A port free on 127.0.0.1 a moment ago, for a server that has to be
/// told its address before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// (soft, hard) "Max open files" of a running process.
pub fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let soft = numbers.next().expect("soft");
    let hard = numbers.next().unwrap_or(u64::MAX); // "unlimited"
    (soft, hard)
}

/// Whether `pid` runs (a zombie, exited but not yet reaped, does not).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// One received HTTP request: headers (lower-case names) and body.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP receiver on port 0 that answers 200 and keeps every request.
pub fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    receiver_on(0)
}

/// [`receiver`] on `port` (one a test chose before it was up).
pub fn receiver_on(port: u16) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
    let addr = listener.local_addr().expect("addr").to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut headers = Vec::new();
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            keep.lock().expect("lock").push(Received {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, got)
}
