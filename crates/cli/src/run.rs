//! `tandem up`, `server`, `agent` and `down`: the long-running processes.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use crate::dataplane::DataPlaneArgs;
use tandem_agent::{AgentConfig, AgentError};
use tandem_engine::{AgentClient, AgentClientError, Engine};
use tandem_store::Store;
use tokio_util::task::AbortOnDropHandle;

use crate::exit::{CmdResult, Exit};

/// A line on stderr, or nothing if stderr does not take it: `up`'s
/// stderr may be a log file on a full disk, and `eprintln!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// How long `up` waits for a freshly started agent to answer.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `upgrade-agent` waits for the new agent to take over: the old
/// one first lets release changes in flight (a drain) finish, and serves
/// on meanwhile.
const AGENT_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `message` to systemd's notification socket (`$NOTIFY_SOCKET`: a
/// path, or `@name` in the abstract namespace), if there is one; what it
/// cannot send is dropped (the unit times out and says so).
fn notify_systemd(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
        }
        None => socket.send_to(message.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn check_data_dir(dir: &Path) -> CmdResult {
    // What tandem makes is owner-only; its memory is not for others.
    tandem_sandbox::paths::protect_self();
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|e| {
            Exit::bad_input(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| {
        Exit::bad_input(format!(
            "data directory {} is not writable: {e}",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(probe);
    // Services' users reach their releases by name through it (never
    // listing it); all else in it is tandem's alone.
    tandem_sandbox::paths::harden(dir).map_err(|e| {
        Exit::bad_input(format!(
            "cannot set the modes of data directory {}: {e}",
            dir.display()
        ))
    })?;
    if rustix::process::geteuid().is_root()
        && let Some((at, mode)) = tandem_sandbox::paths::unreachable_ancestor(dir)
    {
        return Err(Exit::bad_input(format!(
            "data directory {}: services run as users of their own and must pass \
                 through {} (mode {mode:04o}) to reach their releases; make it \
                 searchable (chmod o+x {}) or choose a data directory under one \
                 that is, such as /var/lib/tandem",
            dir.display(),
            at.display(),
            at.display()
        )));
    }
    Ok(())
}

pub async fn agent(
    dir: &Path,
    proxy_addr: SocketAddr,
    takeover: bool,
    data_plane: &DataPlaneArgs,
) -> CmdResult {
    check_data_dir(dir)?;
    let config = AgentConfig {
        data_dir: dir.to_path_buf(),
        proxy_addr,
        proxy: data_plane.proxy_config(),
        tls_addr: data_plane.proxy_tls_addr,
        metrics_addr: data_plane.agent_metrics_addr,
        takeover,
    };
    tandem_agent::run(config).await.map_err(|e| match e {
        AgentError::AlreadyRunning(..)
        | AgentError::ProxyBind { .. }
        | AgentError::DataDir { .. } => Exit::bad_input(e.to_string()),
        AgentError::Socket { .. } | AgentError::Handover(_) => Exit::failure(e.to_string()),
    })
}

/// Starts `tandem agent` for `dir` with `args` as its own process (own
/// process group, so Ctrl-C on the caller does not reach it; output to
/// `agent.log`; `listener` passed on as its proxy's listening socket) and
/// waits until an agent answers whose pid `is_it` accepts: its pid and
/// proxy address.
async fn start_agent(
    dir: &Path,
    args: &[&str],
    data_plane: Option<&DataPlaneArgs>,
    listener: Option<&OwnedFd>,
    within: Duration,
    is_it: impl Fn(u32) -> bool,
) -> Result<(u32, String), Exit> {
    let exe = std::env::current_exe()
        .map_err(|e| Exit::failure(format!("cannot find own executable: {e}")))?;
    let log_path = dir.join("agent.log");
    tandem_agent::logs::rotate_if_past(&log_path, tandem_agent::logs::ROTATE_AT_BYTES);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Exit::bad_input(format!("{}: {e}", log_path.display())))?;
    let log2 = log.try_clone().map_err(|e| Exit::failure(e.to_string()))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("agent")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        // Its log, rotated while it runs (and by its successors, which
        // inherit its environment); stdout and stderr there too, for what
        // is not logged (a panic).
        .env(tandem_agent::logs::LOG_FILE_VARIABLE, &log_path)
        // systemd hears from `up`, the unit's main process, alone.
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    if let Some(fd) = listener {
        pass_descriptor(&mut command, fd, tandem_agent::PROXY_FD_VAR);
    }
    if let Some(settings) = data_plane {
        settings.pass_to(&mut command);
    }
    let mut child = command
        .spawn()
        .map_err(|e| Exit::failure(format!("cannot start the agent: {e}")))?;
    let client = AgentClient::for_data_dir(dir);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(hello) = client.hello().await
            && is_it(hello.0)
        {
            // The agent outlives us: nobody waits for it but init.
            drop(child);
            return Ok(hello);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_owned();
            let code = if status.code() == Some(2) { 2 } else { 1 };
            return Err(Exit {
                code,
                message: format!("the agent did not start ({status}): {last}"),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Exit::failure(format!(
                "the agent did not answer within {}s; see {}",
                within.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Makes `command`'s process inherit `fd` (under the same number, told in
/// the variable `var`). Only that process does: the descriptor keeps
/// close-on-exec here, and the child clears it on its own copy between
/// fork and exec, so a build step this process spawns meanwhile inherits
/// nothing.
#[allow(unsafe_code)]
fn pass_descriptor(command: &mut std::process::Command, fd: &OwnedFd, var: &str) {
    let raw = fd.as_raw_fd();
    command.env(var, raw.to_string());
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one `fcntl`
    // system call and allocates nothing. The descriptor is open in the
    // child, a copy of ours, which the caller keeps open across `spawn`.
    unsafe {
        command.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
}

/// `tandem upgrade-agent`: has the running agent start this binary's
/// agent with `--takeover`, and waits until it took over.
pub async fn upgrade_agent(dir: &Path) -> CmdResult {
    let client = AgentClient::for_data_dir(dir);
    let (old_pid, _) = client.hello().await.map_err(|e| {
        Exit::failure(format!(
            "no agent runs for {} to upgrade ({e}); `tandem up` starts one",
            dir.display()
        ))
    })?;
    let started = std::time::Instant::now();
    let exe = std::env::current_exe()
        .map_err(|e| Exit::failure(format!("cannot find own executable: {e}")))?;
    // The running agent starts this binary's agent as its own child, so
    // the new agent keeps the old one's environment, limits, output and
    // control group (a systemd unit's, say), not this shell's.
    let new_pid = match client.upgrade(&exe).await {
        Ok(pid) => pid,
        Err(AgentClientError::Refused(why)) if why.contains("unknown variant") => {
            // An agent from before `Upgrade`: started from here instead.
            start_agent(
                dir,
                &["--takeover"],
                None,
                None,
                AGENT_TAKEOVER_TIMEOUT,
                |pid| pid != old_pid,
            )
            .await?
            .0
        }
        Err(e) => {
            return Err(Exit::failure(format!(
                "the agent was not upgraded: {e}; the running agent (pid {old_pid}) serves on"
            )));
        }
    };
    let adopted = client
        .status()
        .await
        .map(|s| s.services.iter().map(|s| s.instances.len()).sum::<usize>())
        .unwrap_or(0);
    say!(
        "agent upgraded: pid {old_pid} -> {new_pid} in {} ms; {adopted} instance(s) running on; \
         the old agent exits once its clients have moved (at most {} s)",
        started.elapsed().as_millis(),
        tandem_agent::handover::HANDOVER_DRAIN.as_secs()
    );
    Ok(())
}

/// Starts the agent as its own process (own process group, so Ctrl-C on
/// `up` does not reach it) unless one answers already. Returns the agent's
/// pid and proxy address, and the proxy's listening socket: `up` binds it
/// and passes it to the agent it starts, or borrows the running agent's,
/// and holds it, so that clients wait in its backlog rather than being
/// refused while a dead agent is started again.
async fn ensure_agent(
    dir: &Path,
    proxy_addr: SocketAddr,
    data_plane: &DataPlaneArgs,
) -> Result<(u32, String, Option<OwnedFd>), Exit> {
    let client = AgentClient::for_data_dir(dir);
    if let Ok((pid, addr)) = client.hello().await {
        tracing::info!(pid, proxy = %addr, "reattached to running agent");
        let held = tandem_agent::handover::borrow_listener(dir)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot hold the proxy's socket"))
            .ok();
        return Ok((pid, addr, held));
    }
    let listener = std::net::TcpListener::bind(proxy_addr).map_err(|e| {
        Exit::bad_input(format!(
            "cannot listen for proxy traffic on {proxy_addr}: {e}"
        ))
    })?;
    let held = OwnedFd::from(listener);
    let (pid, addr) = start_agent_on_listener(dir, proxy_addr, data_plane, &held).await?;
    Ok((pid, addr, Some(held)))
}

/// Starts the agent with `listener` (see [`ensure_agent`]).
async fn start_agent_on_listener(
    dir: &Path,
    proxy_addr: SocketAddr,
    data_plane: &DataPlaneArgs,
    listener: &OwnedFd,
) -> Result<(u32, String), Exit> {
    let addr = proxy_addr.to_string();
    start_agent(
        dir,
        &["--proxy-addr", &addr],
        Some(data_plane),
        Some(listener),
        AGENT_START_TIMEOUT,
        |_| true,
    )
    .await
}

/// What the server does besides serving the API.
pub struct ServerOptions {
    pub acme: Option<tandem_engine::acme::AcmeConfig>,
    pub keep_releases: usize,
    pub backups: crate::backup::BackupArgs,
    pub api_limits: tandem_api::serve::Limits,
    /// The API's TLS certificate chain and key files.
    pub api_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Host names the API answers to besides IP addresses and localhost.
    pub api_hosts: Vec<String>,
}

/// Runs the server; with `start_agent_on`, also the agent (started unless
/// one runs, and again should it die) on that address with those settings.
pub async fn up(
    dir: &Path,
    api_addr: SocketAddr,
    start_agent_on: Option<(SocketAddr, DataPlaneArgs)>,
    options: ServerOptions,
) -> CmdResult {
    let ServerOptions {
        acme,
        keep_releases,
        backups,
        api_limits,
        api_tls,
        api_hosts,
    } = options;
    check_data_dir(dir)?;
    let tls = match &api_tls {
        None => None,
        Some((cert, key)) => {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|e| Exit::bad_input(format!("{}: {e}", p.display())))
            };
            Some(
                tandem_api::serve::tls_config(&read(cert)?, &read(key)?)
                    .map_err(|e| Exit::bad_input(format!("--api-tls-cert/--api-tls-key: {e}")))?,
            )
        }
    };
    if tls.is_none() && !api_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %api_addr,
            "the API listens beyond this machine without TLS: tokens cross the network in clear; give --api-tls-cert and --api-tls-key"
        );
        say!(
            "tandem up: warning: the API on {api_addr} is not loopback and has no TLS (--api-tls-cert, --api-tls-key)"
        );
    }
    let _lock = tandem_agent::lock_data_dir(dir, "server.lock").map_err(|_| {
        let pid = std::fs::read_to_string(dir.join("server.lock")).unwrap_or_default();
        Exit::bad_input(format!(
            "a tandem server for data directory {} already runs (pid {})",
            dir.display(),
            pid.trim()
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(|e| Exit::bad_input(format!("cannot listen for the API on {api_addr}: {e}")))?;
    let api_local = listener
        .local_addr()
        .map_err(|e| Exit::failure(e.to_string()))?;
    let store = Store::open(&dir.join("tandem.db"))
        .await
        .map_err(|e| Exit::failure(format!("cannot open the store: {e}")))?;
    // The WAL is moved into the database file every 30 s, so a WAL lost
    // with its file loses at most that much (and a removed one is found).
    let _checkpoints = AbortOnDropHandle::new(tokio::spawn(
        store.clone().keep_checkpointing(Duration::from_secs(30)),
    ));
    let engine = Engine::new(store, dir).keeping(keep_releases);
    let https = start_agent_on
        .as_ref()
        .and_then(|(_, d)| d.proxy_tls_addr)
        .map(|a| format!(" https://{a}"))
        .unwrap_or_default();
    let (agent_pid, proxy, held) = match &start_agent_on {
        Some((proxy_addr, data_plane)) => ensure_agent(dir, *proxy_addr, data_plane).await?,
        None => {
            let (pid, proxy) = engine.agent.hello().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no agent answers; start one with `tandem agent`");
                (0, "(agent not reachable)".into())
            });
            (pid, proxy, None)
        }
    };
    if let Err(e) = engine.reconcile().await {
        tracing::warn!(error = %e, "could not reconcile with the agent");
    }
    // What should serve but does not (after `down`, say) starts again, in
    // the background: the API answers meanwhile.
    let restoring = engine.clone();
    let _restoring = AbortOnDropHandle::new(tokio::spawn(async move {
        restore_missing(&restoring).await;
    }));
    // The agent `up` started is started again should it die.
    let watchdog = match (start_agent_on, proxy.parse::<SocketAddr>()) {
        (Some((_, data_plane)), Ok(bound)) => Some(AbortOnDropHandle::new(tokio::spawn(
            watch_agent(dir.to_path_buf(), bound, data_plane, held, engine.clone()),
        ))),
        _ => None,
    };
    // A data directory's first start makes its first admin; the local
    // CLI finds the token beside the database.
    match engine.store.bootstrap_admin().await {
        Ok(Some(token)) => {
            let file = dir.join(ADMIN_TOKEN_FILE);
            write_private(&file, &token)
                .map_err(|e| Exit::failure(format!("cannot write {}: {e}", file.display())))?;
            say!(
                "tandem up: first start: user admin made; its token is in {} (owner-only)",
                file.display()
            );
        }
        Ok(None) => {}
        Err(e) => return Err(Exit::failure(format!("cannot make the first admin: {e}"))),
    }
    // Which protections services run with, and why any is off.
    for p in engine.sandbox.protections() {
        let state = if p.on { "on" } else { "OFF" };
        say!("tandem up: isolation: {} {state}: {}", p.name, p.detail);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    say!(
        "tandem up: api {scheme}://{api_local}  proxy http://{proxy}{https}  data {}  agent pid {agent_pid}",
        dir.display()
    );
    let delivery = tandem_delivery::Delivery::start(engine.clone(), dir, pipeline_parallelism())
        .await
        .map_err(|e| Exit::failure(format!("cannot start pipelines: {e}")))?;
    let ops = tandem_ops::Ops::new(engine.clone());
    ops.start();
    // Under systemd's Type=notify, the unit is started once this serves.
    notify_systemd(&format!(
        "READY=1\nSTATUS=serving: api {api_local}, proxy {proxy}\n"
    ));
    // Certificates for `route.tls: acme`, ordered and renewed.
    let _acme = acme.map(|config| {
        let engine = engine.clone();
        AbortOnDropHandle::new(tokio::spawn(engine.keep_acme_certificates(config)))
    });
    let _backups = AbortOnDropHandle::new(tokio::spawn(crate::backup::keep_backing_up(
        engine.clone(),
        backups,
    )));
    let app = tandem_api::router(tandem_api::AppState::new(tandem_api::Shared {
        engine,
        delivery,
        ops,
        agent_status: Default::default(),
        refused: Default::default(),
        allowed_hosts: tandem_api::auth::AllowedHosts(std::sync::Arc::new(api_hosts)),
    }));
    // Once asked to stop, the agent is no longer ours to start again:
    // `down` stops it next, and a watchdog still running while open
    // requests finish would bring it back.
    let stopping = async move {
        shutdown_signal().await;
        drop(watchdog);
    };
    tandem_api::serve::serve(listener, app, api_limits, tls, stopping)
        .await
        .map_err(|e| Exit::failure(format!("server failed: {e}")))?;
    say!("tandem server stopped; services keep running (tandem down stops them)");
    Ok(())
}

/// How often `up` checks that its agent lives.
const AGENT_WATCH_EVERY: Duration = Duration::from_secs(1);

/// Starts the agent of `dir` again, on the address it served on, when it
/// has died: it stops answering *and* nobody holds its lock (a busy or
/// hung agent still does; so does one handing over). The new agent takes
/// over the instances that still run (`Supervisor::restore`); the restart
/// is journalled.
async fn watch_agent(
    dir: std::path::PathBuf,
    proxy_addr: SocketAddr,
    data_plane: DataPlaneArgs,
    held: Option<OwnedFd>,
    engine: Engine,
) {
    let client = AgentClient::for_data_dir(&dir);
    // Asks in a row that the agent holding the lock did not answer.
    let mut unanswered = 0u32;
    loop {
        tokio::time::sleep(AGENT_WATCH_EVERY).await;
        let asked = client.hello().await;
        let silent = matches!(
            asked,
            Err(tandem_engine::AgentClientError::TimedOut { .. }
                | tandem_engine::AgentClientError::NoAnswer)
        );
        if asked.is_ok() || !silent && !tandem_agent::lock_is_free(&dir, "agent.lock") {
            // Alive (an error it sent is an answer: a handover, say).
            unanswered = 0;
            continue;
        }
        if !tandem_agent::lock_is_free(&dir, "agent.lock") {
            // It holds the lock and says nothing: stopped (SIGSTOP) or
            // hung. A stopped one is replaced after three unanswered asks
            // (~12 s: the monitor pages at 5 s first), a merely silent one
            // after five (a busy agent may come back).
            unanswered += 1;
            let Some(pid) = lock_holder(&dir).filter(|pid| is_agent_of(*pid, &dir)) else {
                continue;
            };
            let stopped = process_stopped(pid);
            if unanswered
                < if stopped {
                    AGENT_STOPPED_ASKS
                } else {
                    AGENT_SILENT_ASKS
                }
            {
                continue;
            }
            let why = if stopped { "stopped" } else { "not answering" };
            tracing::error!(pid, why, "the agent is stuck; replacing it");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let event = tandem_core::journal::NewEvent::new("system:server", "agent.replaced")
                .payload(serde_json::json!({ "agent_pid": pid, "reason": why }));
            if let Err(e) = engine.store.append(event).await {
                tracing::warn!(error = %e, "could not journal the agent's replacement");
            }
            unanswered = 0;
            // Its lock goes with it; the next look starts a new agent.
            continue;
        }
        unanswered = 0;
        tracing::warn!("the agent has died; starting it again");
        let started = match &held {
            Some(listener) => {
                start_agent_on_listener(&dir, proxy_addr, &data_plane, listener).await
            }
            None => ensure_agent(&dir, proxy_addr, &data_plane)
                .await
                .map(|(pid, addr, _)| (pid, addr)),
        };
        match started {
            Ok((pid, _)) => {
                let event = tandem_core::journal::NewEvent::new("system:server", "agent.restarted")
                    .payload(serde_json::json!({ "agent_pid": pid }));
                if let Err(e) = engine.store.append(event).await {
                    tracing::warn!(error = %e, "could not journal the agent restart");
                }
                tracing::info!(
                    pid,
                    "agent started again; it took over the running instances"
                );
                // What its state file did not bring back (it was lost, say),
                // and what it brought back that should no longer run (a
                // group whose release failed while the agent was away).
                restore_missing(&engine).await;
                match engine.stop_strays().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(stopped = n, "stopped groups nothing serves"),
                    Err(e) => tracing::warn!(error = %e, "could not stop stray groups"),
                }
            }
            Err(e) => tracing::error!(error = %e.message, "could not start the agent again"),
        }
    }
}

/// Unanswered asks (each a second apart, up to 3 s long) after which a
/// stopped agent is replaced.
const AGENT_STOPPED_ASKS: u32 = 3;
/// The same for an agent that is not stopped but does not answer.
const AGENT_SILENT_ASKS: u32 = 5;

/// The pid written in the agent's lock file.
fn lock_holder(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("agent.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
}

/// Whether process `pid` is a `tandem agent` of data directory `dir` (a
/// pid read from a file is not killed on its word alone).
fn is_agent_of(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = dir.as_os_str().as_encoded_bytes();
    args.contains(&b"agent".as_slice()) && args.contains(&dir)
}

/// Whether process `pid` is stopped (by a signal or a tracer).
fn process_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let (_, rest) = stat.rsplit_once(") ")?;
            rest.chars().next()
        })
        .is_some_and(|state| state == 'T' || state == 't')
}

/// Starts again what the store says serves but the agent runs nothing of
/// (`Engine::restore_missing`), and says what came of it.
async fn restore_missing(engine: &Engine) {
    match engine.restore_missing().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(restored = n, "started again what should serve"),
        Err(e) => tracing::warn!(error = %e, "could not start again what should serve"),
    }
}

/// Runs of different services at once: `TANDEM_PIPELINES` (default 2).
fn pipeline_parallelism() -> usize {
    std::env::var("TANDEM_PIPELINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn down(dir: &Path) -> CmdResult {
    let client = AgentClient::for_data_dir(dir);
    let mut stopped_any = false;
    if let Ok(pid) = std::fs::read_to_string(dir.join("server.lock"))
        && let Ok(pid) = pid.trim().parse::<i32>()
        && tandem_agent::lock_data_dir(dir, "server.lock").is_err()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        say!("stopped server (pid {pid})");
        stopped_any = true;
    }
    match client.shutdown(true).await {
        Ok(_) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while client.socket().exists() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            say!("stopped agent and its services");
        }
        Err(e) if !stopped_any => {
            return Err(Exit::failure(format!(
                "nothing runs for {}: {e}",
                dir.display()
            )));
        }
        Err(_) => {}
    }
    Ok(())
}

/// The file under the data directory holding the first admin's token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Writes `text` to `file`, owner-only (0600), replacing it whole.
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `command` (a shell's `test`) succeeds.
    fn has_fd(command: &mut std::process::Command) -> bool {
        command.status().expect("run sh").success()
    }

    #[test]
    fn a_passed_descriptor_reaches_that_child_and_no_other() {
        let (reader, _writer) = std::io::pipe().expect("pipe");
        let fd = OwnedFd::from(reader);
        let n = fd.as_raw_fd();
        let mut passed = std::process::Command::new("sh");
        passed.args(["-c", r#"test -e "/proc/$$/fd/$PASSED_FD""#]);
        pass_descriptor(&mut passed, &fd, "PASSED_FD");
        assert!(has_fd(&mut passed), "the child it was passed to has fd {n}");
        let flags = rustix::io::fcntl_getfd(&fd).expect("fcntl");
        assert!(
            flags.contains(rustix::io::FdFlags::CLOEXEC),
            "ours stays close-on-exec"
        );
        let mut other = std::process::Command::new("sh");
        other.args(["-c", &format!(r#"test -e "/proc/$$/fd/{n}""#)]);
        assert!(!has_fd(&mut other), "another child does not inherit fd {n}");
    }
}
