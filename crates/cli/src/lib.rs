//! The `tandem` command line: argument definitions here, one module per
//! group of subcommands, each returning an [`Exit`] on failure.

/// `println!` for what a command prints on stdout: a reader that goes
/// away early (`tandem audit events -o json | head`) ends the command
/// quietly, as it ends `cat`, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

mod audit;
mod backup;
pub mod client;
mod dataplane;
pub mod exit;
mod ops;
mod output;
mod people;
mod pipelines;
mod release;
mod report;
mod run;
mod spec;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use exit::{CmdResult, Exit};
pub use output::colour;

/// The relay password of `user`, from standard input (one line).
fn read_password(user: &str) -> Result<String, Exit> {
    let mut value = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
        .map_err(|e| Exit::bad_input(format!("cannot read the password from stdin: {e}")))?;
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        return Err(Exit::bad_input(format!(
            "no password on stdin for {user}; e.g. printf %s \"$PASS\" | tandem channels add email … --smtp-user {user}"
        )));
    }
    Ok(value)
}

/// `bytes` to stdout; a reader that stopped early (`| head`) is no error.
fn print_bytes(bytes: &[u8]) -> CmdResult {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Exit::failure(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}
pub use tandem_agent::logs::{
    DaemonLog, LOG_FILE_VARIABLE, ROTATE_AT_BYTES as LOG_ROTATE_AT_BYTES,
};

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "Deliver and run services: development and operation in tandem."
)]
pub struct Cli {
    /// URL of the tandem server.
    #[arg(
        long,
        global = true,
        env = "TANDEM_SERVER",
        default_value = "http://127.0.0.1:7070",
        value_parser = server_url
    )]
    pub server: String,
    /// API token (`tandem tokens create`). Without one, a CLI talking to a
    /// server on this machine uses the first admin's, from
    /// <data>/admin.token, if it can read it.
    #[arg(long, global = true, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM) to trust for an https --server, instead of
    /// the system's (which honour SSL_CERT_FILE).
    #[arg(long, global = true, env = "TANDEM_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

/// An address to listen on: `IP:PORT` (`[::]:8080` for IPv6), or
/// `localhost:PORT` for 127.0.0.1. A bare `:PORT` is refused with both
/// choices spelled out: all interfaces or this machine only is a decision,
/// not a default.
pub(crate) fn listen_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| "no port; expected IP:PORT, e.g. 127.0.0.1:8080".to_owned())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port `{port}` is not a number from 0 to 65535"))?;
    match host {
        "localhost" => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        "" => Err(format!(
            "no host; write 127.0.0.1:{port} for this machine only, or 0.0.0.0:{port} for every interface"
        )),
        _ => Err(format!(
            "`{host}` is not an IP address; expected IP:PORT, e.g. 127.0.0.1:{port} (names other than localhost are not resolved)"
        )),
    }
}

/// Checks `--server` when the command line is read, so a mistyped URL is
/// bad usage (exit 2) before anything is sent: `http[s]://HOST[:PORT][/PREFIX]`.
fn server_url(value: &str) -> Result<String, String> {
    const FORM: &str = "expected http[s]://HOST[:PORT], e.g. http://127.0.0.1:7070";
    let uri: http::Uri = value.parse().map_err(|e| format!("{e}; {FORM}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("scheme {other} is not http; {FORM}")),
        None => return Err(format!("no scheme; {FORM}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("no host; {FORM}"));
    }
    if uri.query().is_some() {
        return Err(format!("a query has no place in it; {FORM}"));
    }
    Ok(value.to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// Reports only.
    Csv,
    /// Reports only.
    Html,
    /// Reports only.
    Pdf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataDirArg {
    /// Data directory (database, artifacts, logs, agent socket).
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The server's own settings: the API's bounds (see `tandem_api::serve`)
/// and release retention.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Releases kept per service with their files, besides the live one,
    /// its rollback target and those environments run; older ones are
    /// pruned after each release (their history stays).
    #[arg(long, env = "TANDEM_KEEP_RELEASES", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_releases: u32,
    /// Open API connections at most; more wait until one closes.
    #[arg(long, env = "TANDEM_API_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_max_connections: u32,
    /// API requests handled at once at most; more get 503 + Retry-After.
    #[arg(long, env = "TANDEM_API_MAX_REQUESTS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_max_requests: u32,
    /// Time for an API request head to arrive whole.
    #[arg(long, env = "TANDEM_API_HEAD_TIMEOUT", default_value = "10s", value_parser = dataplane::duration)]
    pub api_head_timeout: std::time::Duration,
    /// Serve the API over TLS with this PEM certificate chain (with
    /// --api-tls-key).
    #[arg(long, env = "TANDEM_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-tls-cert.
    #[arg(long, env = "TANDEM_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// A host name the API answers to (besides IP addresses and
    /// localhost); repeat or separate with commas. Requests naming any
    /// other host are refused (DNS rebinding).
    #[arg(long = "api-host", env = "TANDEM_API_HOSTS", value_delimiter = ',')]
    pub api_hosts: Vec<String>,
}

impl ServerArgs {
    fn options(
        self,
        acme: &dataplane::AcmeArgs,
        backups: backup::BackupArgs,
    ) -> run::ServerOptions {
        run::ServerOptions {
            acme: acme.config(),
            backups,
            keep_releases: self.keep_releases as usize,
            api_limits: tandem_api::serve::Limits {
                max_connections: self.api_max_connections as usize,
                max_requests: self.api_max_requests as usize,
                head_timeout: self.api_head_timeout,
            },
            api_tls: self.api_tls_cert.zip(self.api_tls_key),
            api_hosts: self.api_hosts,
        }
    }
}

impl DataDirArg {
    /// The flag, else `$TANDEM_DATA_DIR` (via clap), else the XDG data
    /// directory (for root: `/var/lib/tandem`).
    pub fn resolve(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        let xdg = base.join("tandem");
        // root's services run as users of their own, who cannot pass
        // through /root: its home is /var/lib's (unless an older tandem
        // made one under the XDG directory already).
        if rustix::process::geteuid().is_root() && !xdg.exists() {
            return PathBuf::from("/var/lib/tandem");
        }
        xdg
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run tandem on this machine: the agent (if none runs) and the server, in the foreground.
    #[command(
        after_help = "Examples:\n  tandem up                                   # API on 127.0.0.1:7070, proxy on 127.0.0.1:8080\n  tandem up --proxy-addr 0.0.0.0:80 --data-dir /var/lib/tandem\n  TANDEM_LOG_FORMAT=json tandem up            # JSON logs"
    )]
    Up {
        #[command(flatten)]
        data: DataDirArg,
        /// Address of the API and web UI.
        #[arg(long, env = "TANDEM_API_ADDR", default_value = "127.0.0.1:7070", value_parser = listen_addr)]
        api_addr: SocketAddr,
        /// Address the proxy serves traffic on.
        #[arg(long, env = "TANDEM_PROXY_ADDR", default_value = "127.0.0.1:8080", value_parser = listen_addr)]
        proxy_addr: SocketAddr,
        #[command(flatten)]
        data_plane: dataplane::DataPlaneArgs,
        #[command(flatten)]
        acme: dataplane::AcmeArgs,
        #[command(flatten)]
        backups: backup::BackupArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop every service and the agent of a data directory, and its server.
    Down {
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Run the data plane (proxy and supervisor) in the foreground.
    Agent {
        #[command(flatten)]
        data: DataDirArg,
        #[arg(long, env = "TANDEM_PROXY_ADDR", default_value = "127.0.0.1:8080", value_parser = listen_addr)]
        proxy_addr: SocketAddr,
        /// Take over from the agent running for the data directory: its
        /// listening sockets, lock and running instances (what
        /// `upgrade-agent` starts).
        #[arg(long)]
        takeover: bool,
        #[command(flatten)]
        data_plane: dataplane::DataPlaneArgs,
    },
    /// Replace the running agent of a data directory by this binary's,
    /// without refusing a connection or restarting an instance; open
    /// HTTP/1.1 connections and tunnels (WebSockets) move to the new agent.
    UpgradeAgent {
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Run only the control plane, against an agent that already runs.
    Server {
        #[command(flatten)]
        data: DataDirArg,
        #[arg(long, env = "TANDEM_API_ADDR", default_value = "127.0.0.1:7070", value_parser = listen_addr)]
        api_addr: SocketAddr,
        #[command(flatten)]
        acme: dataplane::AcmeArgs,
        #[command(flatten)]
        backups: backup::BackupArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a consistent backup of the running server (its database,
    /// artifacts, git mirrors and certificates) to FILE, a new file.
    Backup { file: PathBuf },
    /// Unpack a backup into an empty or new data directory and verify it;
    /// `tandem up --data-dir DIR` then brings its services back.
    Restore {
        file: PathBuf,
        /// The directory to restore into (empty or absent).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Check a directory's tandem.yaml.
    Validate {
        /// Directory holding tandem.yaml (or the file itself).
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Print the JSON Schema of tandem.yaml.
    Schema,
    /// Print a shell's completion script.
    #[command(
        after_help = "Examples:\n  tandem completions bash > /etc/bash_completion.d/tandem\n  tandem completions zsh > \"${fpath[1]}/_tandem\"\n  tandem completions fish > ~/.config/fish/completions/tandem.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), for `man`.
    #[command(after_help = "Example:\n  tandem man > /usr/local/share/man/man1/tandem.1")]
    Man,
    /// Build, test and release a service: from a directory (--dir), or a
    /// commit of a service registered from a repository (run a pipeline).
    #[command(
        after_help = "Examples:\n  tandem deploy --dir ./shop                  # build, test, release, switch\n  tandem deploy shop --ref v1.4.2             # a commit of a repository service\n  tandem deploy --dir ./shop -o json          # progress as JSON lines"
    )]
    Deploy {
        /// Service name (optional with --dir: it comes from tandem.yaml).
        service: Option<String>,
        /// Directory holding tandem.yaml.
        #[arg(long, conflicts_with = "git_ref")]
        dir: Option<PathBuf>,
        /// Commit, branch or tag to deploy; default: the branch head.
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Target environment.
        #[arg(long)]
        env: Option<String>,
        /// With --dir, over a service delivered from a repository, past
        /// its pipeline and gates (admins only; journalled).
        #[arg(long, requires = "dir")]
        force: bool,
    },
    /// Release an earlier release again, without rebuilding.
    #[command(
        after_help = "Examples:\n  tandem rollback shop                        # to the release live before\n  tandem rollback shop --to r3                # to r3"
    )]
    Rollback {
        service: String,
        /// Release to go back to (e.g. r3); default: the one live before.
        #[arg(long)]
        to: Option<String>,
        /// Release it even if it never went live (it failed, or never
        /// finished); journalled as forced.
        #[arg(long, requires = "to")]
        force: bool,
    },
    /// Services, their live release and instances.
    #[command(after_help = "Examples:\n  tandem status\n  tandem status shop -o json")]
    Status { service: Option<String> },
    /// Releases of a service, newest first.
    Releases { service: String },
    /// Instance logs of a service.
    Logs {
        service: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines per instance.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// People and their roles (admin): `add`, `rm`; without a subcommand,
    /// the list.
    #[command(args_conflicts_with_subcommands = true)]
    Users {
        #[command(subcommand)]
        command: Option<UsersCommand>,
    },
    /// API tokens: `create` one for a user, `rm` (revoke) one; without a
    /// subcommand, the list (all for an admin, one's own otherwise).
    #[command(args_conflicts_with_subcommands = true)]
    Tokens {
        #[command(subcommand)]
        command: Option<TokensCommand>,
    },
    /// The customers services are delivered to: `add` one; without a
    /// subcommand, the list.
    #[command(args_conflicts_with_subcommands = true)]
    Customers {
        #[command(subcommand)]
        command: Option<CustomersCommand>,
    },
    /// Who the token in use belongs to.
    Whoami,
    /// Registered services; `add` one from a git repository, `rm` one.
    #[command(args_conflicts_with_subcommands = true)]
    Services {
        #[command(subcommand)]
        command: Option<ServicesCommand>,
    },
    /// Pipeline runs, newest first; their logs, cancel and retry.
    #[command(args_conflicts_with_subcommands = true)]
    Pipelines {
        /// Only the runs of this service.
        service: Option<String>,
        #[command(subcommand)]
        command: Option<PipelinesCommand>,
    },
    /// Secrets of a service: injected into its instances and steps by name
    /// (`run.secrets`), masked in logs, never shown.
    #[command(args_conflicts_with_subcommands = true)]
    Secrets {
        /// List this service's secrets (as `secrets ls SERVICE`).
        service: Option<String>,
        #[command(subcommand)]
        command: Option<SecretsCommand>,
    },
    /// Incidents, newest first; acknowledge or resolve one.
    #[command(args_conflicts_with_subcommands = true)]
    Incidents {
        /// Only unresolved incidents.
        #[arg(long)]
        open: bool,
        #[command(subcommand)]
        command: Option<IncidentsCommand>,
    },
    /// Maintenance windows (announced, excluded from SLOs, alerts muted) and
    /// the proxy's maintenance page.
    #[command(args_conflicts_with_subcommands = true)]
    Maintenance {
        /// List this service's windows (as `maintenance ls [SERVICE]`).
        service: Option<String>,
        #[command(subcommand)]
        command: Option<MaintenanceCommand>,
    },
    /// Where incidents are told: webhooks, Slack, e-mail.
    Channels {
        #[command(subcommand)]
        command: Option<ChannelsCommand>,
    },
    /// Approve the promotion a pipeline run waits for (your identity is recorded).
    Approve { run: i64 },
    /// Refuse the promotion a pipeline run waits for; the run ends
    /// `rejected` (your identity and the reason are recorded).
    Reject {
        run: i64,
        /// Why, for the journal and the run.
        #[arg(long)]
        reason: String,
    },
    /// The tamper-evident journal.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The installation's keys a customer or auditor keeps.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Reports computed from the journal (`-o json|csv|html|pdf`).
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Follow a change: commit, run, stages, approvals, release,
    /// deployments, incidents it caused, who resolved them.
    #[command(
        after_help = "Examples:\n  tandem trace 3f9c1a2                        # a commit\n  tandem trace shop/r12                       # a release\n  tandem trace 7                              # an incident"
    )]
    Trace {
        /// A commit (7+ hex digits), a release (SERVICE/rN) or an incident.
        target: String,
    },
    /// Check a bundle (`tandem audit export`, `report sla --bundle`) with
    /// the installation's verifier key alone: no server, no data directory.
    #[command(
        after_help = "Examples:\n  tandem verify acme-2026-11.json --key \"$(cat tandem.vkey)\"\n  tandem verify acme-2026-11.json --key \"$(cat tandem.vkey)\" --sla 2026-11 > report.json"
    )]
    Verify {
        /// The bundle.
        file: PathBuf,
        /// The verifier key (`tandem keys show`), kept from before.
        #[arg(long)]
        key: String,
        /// Also recompute the SLA report of this month (YYYY-MM) from the
        /// bundle and print it as canonical JSON.
        #[arg(long, value_name = "MONTH")]
        sla: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// A customer's SLA report for a month: availability by minute with
    /// maintenance announced in time excluded, downtime, incidents,
    /// budget and the credit owed by their contract.
    #[command(
        after_help = "Examples:\n  tandem report sla --customer acme --month 2026-11\n  tandem report sla --customer acme --month 2026-11 -o html > acme-2026-11.html\n  tandem report sla --customer acme --month 2026-11 -o pdf > acme-2026-11.pdf\n  tandem report sla --customer acme --month 2026-11 -o json --bundle acme-2026-11.json"
    )]
    Sla {
        #[arg(long)]
        customer: String,
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
        /// Also write the bundle of the events and checkpoint the report
        /// rests on to this (new) file.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// DORA metrics: deployment frequency, lead time for changes, change
    /// failure rate, failed deployment recovery time, rework rate; per
    /// service and in total, with their bands.
    #[command(
        after_help = "Examples:\n  tandem report dora                          # every service, the last 30 days\n  tandem report dora --customer acme --from 2026-11-01 --to 2026-12-01\n  tandem report dora --service shop -o json"
    )]
    Dora {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        /// Day (YYYY-MM-DD) or instant; 30 days before --to by default.
        #[arg(long)]
        from: Option<String>,
        /// Day or instant (exclusive); now by default.
        #[arg(long)]
        to: Option<String>,
    },
    /// Change evidence: a row per production change of a customer's
    /// services (commit, author, tests, approvers, incidents), flagging
    /// unapproved and self-approved ones (`-o csv` or `-o json`).
    Changes {
        #[arg(long)]
        customer: String,
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print the verifier key of the journal's signed checkpoints (C2SP
    /// signed-note form: name+id+key); keep it to check checkpoints later.
    Show,
}

#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Register the service whose tandem.yaml is in a git repository; its
    /// pushes then flow to production.
    Add {
        /// Repository URL, or path of a local repository.
        repo: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Shared secret of push webhooks (GitHub, GitLab, Gitea).
        #[arg(long, env = "TANDEM_WEBHOOK_SECRET")]
        webhook_secret: Option<String>,
        /// How often to look for new commits (e.g. 30s, 1m).
        #[arg(long)]
        poll_interval: Option<String>,
        /// The directory of the repository holding the service's
        /// tandem.yaml, its build root (monorepos: services/shop).
        #[arg(long)]
        path: Option<String>,
        /// Read an access token for the repository (HTTPS) from stdin: kept
        /// sealed by the server, never shown, handed to git through its
        /// environment only.
        #[arg(long)]
        token_from_stdin: bool,
        /// The user name that goes with the token.
        #[arg(long, requires = "token_from_stdin")]
        token_user: Option<String>,
        /// A deploy key for the repository over SSH (a private key file
        /// without a passphrase): sent to the server, kept sealed, written
        /// to a private file only while git runs. Host keys are learnt on
        /// first use into <data>/git/known_hosts.
        #[arg(long, value_name = "FILE", conflicts_with = "token_from_stdin")]
        ssh_key: Option<std::path::PathBuf>,
    },
    /// Stop a service's instances and forget it (history stays in the journal).
    Rm { service: String },
    /// Show, or with --env change, a service's gate policy: the approvals
    /// each environment needs at least and who may give them, held here so
    /// that a commit cannot loosen its own gate (its tandem.yaml may only
    /// ask for more).
    Policy {
        service: String,
        /// The environment to change (`production` for a service without
        /// environments).
        #[arg(long)]
        env: Option<String>,
        #[arg(long, requires = "env")]
        approvals: Option<u32>,
        /// Who may approve, comma-separated (`alice,bob`); empty: anyone.
        #[arg(long, requires = "env", value_delimiter = ',')]
        approvers: Option<Vec<String>>,
        /// A commit whose tandem.yaml lacks the environment is not released.
        #[arg(long, requires = "env", conflicts_with = "optional")]
        required: bool,
        /// A commit may drop the environment.
        #[arg(long, requires = "env")]
        optional: bool,
        /// Whose approvals count: supplier, customer (a customer-approver
        /// of the service's customer) or both (one of each at least).
        #[arg(long, requires = "env", value_parser = ["supplier", "customer", "both"])]
        approvers_from: Option<String>,
        /// Whether a commit's author may approve it (true or false).
        #[arg(long, requires = "env")]
        author_may_approve: Option<bool>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Schedule a window (RFC 3339 times, e.g. 2026-12-01T02:00:00Z).
    Add {
        service: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        reason: String,
    },
    /// Scheduled windows.
    Ls { service: Option<String> },
    /// Cancel a window.
    Rm { id: i64 },
    /// Serve a maintenance page (503 with Retry-After) instead of the service.
    On {
        service: String,
        /// Seconds clients are told to wait.
        #[arg(long, default_value_t = 300)]
        retry_after: u32,
    },
    /// Let traffic through again.
    Off { service: String },
}

#[derive(Subcommand, Debug)]
pub enum IncidentsCommand {
    /// Incidents, newest first (as `incidents` alone).
    Ls {
        /// Only unresolved incidents.
        #[arg(long)]
        open: bool,
    },
    /// One incident, with each notification about it and its attempts.
    Show { id: i64 },
    /// Acknowledge: someone is on it (recorded with your identity).
    Ack { id: i64 },
    /// Resolve by hand, with a note.
    Resolve {
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ChannelScope {
    /// Only incidents of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only incidents of services of this tier.
    #[arg(long)]
    pub tier: Option<String>,
    /// Tell an unacknowledged page again this often (e.g. 15m).
    #[arg(long)]
    pub repeat: Option<String>,
    /// Escalate an unacknowledged page this long after it opened (e.g.
    /// 30m) to the channel --escalate-to.
    #[arg(long, requires = "escalate_to")]
    pub escalate_after: Option<String>,
    #[arg(long, requires = "escalate_after")]
    pub escalate_to: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum ChannelsCommand {
    /// Add a channel.
    Add {
        #[command(subcommand)]
        kind: ChannelKind,
    },
    /// Remove a channel.
    Rm { id: i64 },
    /// The channels (as `channels` alone).
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum ChannelKind {
    /// JSON POSTs, signed as Standard Webhooks are (webhook-id, webhook-timestamp, webhook-signature).
    Webhook {
        url: String,
        #[arg(long, env = "TANDEM_CHANNEL_SECRET")]
        secret: Option<String>,
        #[command(flatten)]
        scope: ChannelScope,
    },
    /// A Slack-compatible incoming webhook.
    Slack {
        url: String,
        #[command(flatten)]
        scope: ChannelScope,
    },
    /// E-mail through an SMTP relay.
    Email {
        address: String,
        /// host:port of the SMTP relay.
        #[arg(long)]
        smtp: String,
        /// none, starttls or tls (implicit TLS, e.g. port 465); default:
        /// none for a relay on this machine, else starttls.
        #[arg(long)]
        smtp_tls: Option<String>,
        /// Log in to the relay as this user; the password is read from
        /// standard input.
        #[arg(long)]
        smtp_user: Option<String>,
        #[command(flatten)]
        scope: ChannelScope,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set a secret; the value is read from standard input.
    Set {
        service: String,
        name: String,
        /// For one environment only (it takes this before the
        /// service-wide value).
        #[arg(long)]
        env: Option<String>,
    },
    /// Names of a service's secrets, and their environments.
    Ls { service: String },
    /// Remove a secret (the service-wide one, or one environment's).
    Rm {
        service: String,
        name: String,
        #[arg(long)]
        env: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PipelinesCommand {
    /// Runs, newest first (as `pipelines [SERVICE]`).
    Ls { service: Option<String> },
    /// A run's log; -f follows it live until the run ends.
    Logs {
        run: i64,
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a queued run, or a running one before it releases.
    Cancel { run: i64 },
    /// Run a finished run's commit again.
    Retry { run: i64 },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the hash chain and name the first broken link; with
    /// `--checkpoint`, also prove that the journal extends each signed
    /// checkpoint in FILE (a witness's copy), naming where it diverges.
    #[command(
        after_help = "Examples:\n  tandem audit verify\n  tandem audit checkpoint > cp-$(date +%F).txt     # give it to a witness\n  tandem audit verify --checkpoint cp-2026-12-01.txt --key \"$(cat tandem.vkey)\""
    )]
    Verify {
        /// Signed checkpoints (one or more notes, e.g. a copy of the
        /// witness file `checkpoints.log`).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The verifier key to check them with (`tandem keys show`, kept
        /// earlier); without it, the key the server names.
        #[arg(long, requires = "checkpoint")]
        key: Option<String>,
    },
    /// Sign a checkpoint of the journal as it stands and print it (a
    /// C2SP tlog-checkpoint in a signed note).
    Checkpoint,
    /// Write a bundle of a customer's events, with their proofs, to a new
    /// file; `tandem verify` checks it offline.
    Export {
        #[arg(long)]
        customer: String,
        /// First day (YYYY-MM-DD) or instant (RFC 3339), UTC.
        #[arg(long)]
        from: String,
        /// The day (or instant) after the last.
        #[arg(long)]
        to: String,
        /// The new file to write (`-o` is the output format).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the journal's events, oldest first (`-o json`: one per line,
    /// hashes included).
    Events {
        /// Only the events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Events asked of the server at a time.
        #[arg(long, default_value_t = 1000, hide = true, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        page: u32,
    },
}

/// The first admin's token, for a CLI on the server's own machine: read
/// from the data directory (`$TANDEM_DATA_DIR`, else the default) when
/// the server is on a loopback address and the file is readable to us.
fn local_admin_token(server: &str) -> Option<String> {
    let uri: http::Uri = server.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return None;
    }
    let data = DataDirArg {
        data_dir: std::env::var_os("TANDEM_DATA_DIR").map(PathBuf::from),
    }
    .resolve();
    let token = std::fs::read_to_string(data.join(run::ADMIN_TOKEN_FILE)).ok()?;
    Some(token.trim().to_owned()).filter(|t| !t.is_empty())
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Add a person with one role.
    Add {
        name: String,
        /// admin, engineer, viewer, customer-viewer or customer-approver.
        #[arg(long)]
        role: String,
        /// The customer of a customer-viewer or customer-approver.
        #[arg(long)]
        customer: Option<String>,
        /// Their e-mail (an approver is matched against commit authors by it).
        #[arg(long)]
        email: Option<String>,
    },
    /// Remove a person and their tokens.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Make a token for a user; printed once, only its hash is kept.
    Create {
        #[arg(long)]
        user: String,
        /// What it is for (laptop, ci).
        #[arg(long)]
        name: Option<String>,
        /// How long it is valid (30d, 12h); forever without.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke a token by its id: refused from the next request on.
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum CustomersCommand {
    /// Add a customer: the id is what `service.customer` in tandem.yaml names.
    Add {
        id: String,
        /// The customer's full name.
        #[arg(long)]
        name: String,
    },
    /// Show a customer's contract, or set it from a YAML file (objectives,
    /// maintenance notice, credit steps; see docs in ARCHITECTURE.md).
    Contract {
        id: String,
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> CmdResult {
    let token = cli.token.clone().or_else(|| local_admin_token(&cli.server));
    let http = client::Api::connector(cli.cacert.as_deref())?;
    let api = || client::Api::new(&cli.server, token.clone(), http.clone());
    let fmt = cli.output;
    let report = matches!(cli.command, Command::Report { .. });
    if matches!(fmt, Format::Csv | Format::Html | Format::Pdf) && !report {
        return Err(exit::Exit::bad_input(
            "-o csv, html and pdf are for reports (tandem report …); other commands print a table or -o json",
        ));
    }
    match cli.command {
        Command::Up {
            data,
            api_addr,
            proxy_addr,
            data_plane,
            acme,
            backups,
            server,
        } => {
            let agent = Some((proxy_addr, data_plane));
            let options = server.options(&acme, backups);
            run::up(&data.resolve(), api_addr, agent, options).await
        }
        Command::Server {
            data,
            api_addr,
            acme,
            backups,
            server,
        } => {
            let options = server.options(&acme, backups);
            run::up(&data.resolve(), api_addr, None, options).await
        }
        Command::Backup { file } => backup::backup(&api(), &file).await,
        Command::Restore { file, data_dir } => backup::restore(&file, &data_dir).await,
        Command::Agent {
            data,
            proxy_addr,
            takeover,
            data_plane,
        } => run::agent(&data.resolve(), proxy_addr, takeover, &data_plane).await,
        Command::UpgradeAgent { data } => run::upgrade_agent(&data.resolve()).await,
        Command::Down { data } => run::down(&data.resolve()).await,
        Command::Validate { path } => spec::validate(&path, fmt),
        Command::Schema => spec::schema(),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut text);
            print_bytes(&text)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut text = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut text)
                .map_err(|e| Exit::failure(format!("cannot make the manual page: {e}")))?;
            print_bytes(&text)
        }
        Command::Deploy {
            service: Some(service),
            dir: None,
            git_ref,
            env: None,
            ..
        } => pipelines::deploy_ref(&api(), &service, git_ref, fmt).await,
        Command::Deploy {
            service,
            dir,
            env,
            force,
            ..
        } => release::deploy(&api(), service, dir, env, force, fmt).await,
        Command::Rollback { service, to, force } => {
            release::rollback(&api(), &service, to, force, fmt).await
        }
        Command::Status { service } => view::status(&api(), service.as_deref(), fmt).await,
        Command::Releases { service } => view::releases(&api(), &service, fmt).await,
        Command::Logs {
            service,
            follow,
            lines,
        } => view::logs(&api(), &service, follow, lines, fmt).await,
        Command::Whoami => people::whoami(&api(), fmt).await,
        Command::Users { command: None } => people::users(&api(), fmt).await,
        Command::Users {
            command:
                Some(UsersCommand::Add {
                    name,
                    role,
                    customer,
                    email,
                }),
        } => people::add_user(&api(), &name, &role, customer, email, fmt).await,
        Command::Users {
            command: Some(UsersCommand::Rm { name }),
        } => people::remove_user(&api(), &name).await,
        Command::Tokens { command: None } => people::tokens(&api(), fmt).await,
        Command::Tokens {
            command:
                Some(TokensCommand::Create {
                    user,
                    name,
                    expires,
                }),
        } => people::create_token(&api(), &user, name, expires, fmt).await,
        Command::Tokens {
            command: Some(TokensCommand::Rm { id }),
        } => people::revoke_token(&api(), &id).await,
        Command::Customers { command: None } => people::customers(&api(), fmt).await,
        Command::Customers {
            command: Some(CustomersCommand::Add { id, name }),
        } => people::add_customer(&api(), &id, &name, fmt).await,
        Command::Customers {
            command: Some(CustomersCommand::Contract { id, file }),
        } => report::contract(&api(), &id, file.as_deref(), fmt).await,
        Command::Services { command: None } => view::services(&api(), fmt).await,
        Command::Services {
            command:
                Some(ServicesCommand::Add {
                    repo,
                    branch,
                    webhook_secret,
                    poll_interval,
                    path,
                    token_from_stdin,
                    token_user,
                    ssh_key,
                }),
        } => {
            let token = if token_from_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| {
                    Exit::bad_input(format!("cannot read the token from stdin: {e}"))
                })?;
                Some(line.trim().to_owned())
            } else {
                None
            };
            let ssh_key = match ssh_key {
                None => None,
                Some(file) => Some(std::fs::read_to_string(&file).map_err(|e| {
                    Exit::bad_input(format!(
                        "cannot read the deploy key {}: {e}",
                        file.display()
                    ))
                })?),
            };
            let options = pipelines::AddOptions {
                webhook_secret,
                poll_interval,
                path,
                token,
                token_user,
                ssh_key,
            };
            pipelines::add(&api(), &repo, &branch, options, fmt).await
        }
        Command::Services {
            command: Some(ServicesCommand::Rm { service }),
        } => pipelines::remove(&api(), &service).await,
        Command::Services {
            command:
                Some(ServicesCommand::Policy {
                    service,
                    env,
                    approvals,
                    approvers,
                    required,
                    optional,
                    approvers_from,
                    author_may_approve,
                }),
        } => {
            let change = env.map(|env| {
                serde_json::json!({
                    "env": env,
                    "approvals": approvals,
                    "approvers": approvers.map(|a| a
                        .into_iter()
                        .filter(|n| !n.is_empty())
                        .map(|n| if n.starts_with("user:") { n } else { format!("user:{n}") })
                        .collect::<Vec<_>>()),
                    "required": if required { Some(true) } else if optional { Some(false) } else { None },
                    "approvers_from": approvers_from,
                    "author_may_approve": author_may_approve,
                })
            });
            pipelines::policy(&api(), &service, change, fmt).await
        }
        Command::Pipelines {
            service,
            command: None,
        }
        | Command::Pipelines {
            command: Some(PipelinesCommand::Ls { service }),
            ..
        } => pipelines::runs(&api(), service.as_deref(), fmt).await,
        Command::Pipelines {
            command: Some(PipelinesCommand::Logs { run, follow }),
            ..
        } => pipelines::logs(&api(), run, follow, fmt).await,
        Command::Pipelines {
            command: Some(PipelinesCommand::Cancel { run }),
            ..
        } => pipelines::act(&api(), run, "cancel", fmt).await,
        Command::Pipelines {
            command: Some(PipelinesCommand::Retry { run }),
            ..
        } => pipelines::act(&api(), run, "retry", fmt).await,
        Command::Secrets {
            command: Some(command),
            ..
        } => pipelines::secrets(&api(), command, fmt).await,
        Command::Secrets {
            service: Some(service),
            command: None,
        } => pipelines::secrets(&api(), SecretsCommand::Ls { service }, fmt).await,
        Command::Secrets {
            service: None,
            command: None,
        } => Err(Exit::bad_input(
            "tandem secrets needs a service: tandem secrets SERVICE, or set/rm (see --help)",
        )),
        Command::Incidents {
            open,
            command: None,
        }
        | Command::Incidents {
            command: Some(IncidentsCommand::Ls { open }),
            ..
        } => ops::incidents(&api(), open, fmt).await,
        Command::Incidents {
            command: Some(IncidentsCommand::Show { id }),
            ..
        } => ops::show_incident(&api(), id, fmt).await,
        Command::Incidents {
            command: Some(IncidentsCommand::Ack { id }),
            ..
        } => ops::transition(&api(), id, "ack", None, fmt).await,
        Command::Incidents {
            command: Some(IncidentsCommand::Resolve { id, note }),
            ..
        } => ops::transition(&api(), id, "resolve", note, fmt).await,
        Command::Maintenance { service, command } => {
            let command = command.unwrap_or(MaintenanceCommand::Ls { service });
            ops::maintenance(&api(), command, fmt).await
        }
        Command::Channels {
            command: None | Some(ChannelsCommand::Ls),
        } => ops::channels(&api(), fmt).await,
        Command::Channels {
            command: Some(ChannelsCommand::Rm { id }),
        } => ops::remove_channel(&api(), id, fmt).await,
        Command::Channels {
            command: Some(ChannelsCommand::Add { kind }),
        } => {
            let mut login = (None, None, None);
            let (kind, target, secret, smtp, scope) = match kind {
                ChannelKind::Webhook { url, secret, scope } => {
                    ("webhook", url, secret, None, scope)
                }
                ChannelKind::Slack { url, scope } => ("slack", url, None, None, scope),
                ChannelKind::Email {
                    address,
                    smtp,
                    smtp_tls,
                    smtp_user,
                    scope,
                } => {
                    let password = match &smtp_user {
                        Some(user) => Some(read_password(user)?),
                        None => None,
                    };
                    login = (smtp_tls, smtp_user, password);
                    ("email", address, None, Some(smtp), scope)
                }
            };
            let body = serde_json::json!({
                "kind": kind, "target": target, "secret": secret, "smtp": smtp,
                "service": scope.service, "tier": scope.tier, "repeat": scope.repeat,
                "escalate_after": scope.escalate_after, "escalate_to": scope.escalate_to,
                "smtp_tls": login.0, "smtp_user": login.1, "smtp_password": login.2,
            });
            ops::add_channel(&api(), body, fmt).await
        }
        Command::Approve { run } => pipelines::act(&api(), run, "approve", fmt).await,
        Command::Reject { run, reason } => pipelines::reject(&api(), run, &reason, fmt).await,
        Command::Audit {
            command: AuditCommand::Verify { checkpoint, key },
        } => {
            let api = api();
            view::audit_verify(&api, fmt).await?;
            match checkpoint {
                Some(file) => audit::verify_checkpoints(&api, &file, key.as_deref(), fmt).await,
                None => Ok(()),
            }
        }
        Command::Audit {
            command: AuditCommand::Checkpoint,
        } => audit::checkpoint(&api(), fmt).await,
        Command::Keys {
            command: KeysCommand::Show,
        } => audit::key(&api(), fmt).await,
        Command::Audit {
            command:
                AuditCommand::Export {
                    customer,
                    from,
                    to,
                    file,
                },
        } => report::export(&api(), &customer, &from, &to, &file, fmt).await,
        Command::Report {
            command:
                ReportCommand::Sla {
                    customer,
                    month,
                    bundle,
                },
        } => report::sla(&api(), &customer, &month, bundle.as_deref(), fmt).await,
        Command::Report {
            command:
                ReportCommand::Dora {
                    service,
                    customer,
                    from,
                    to,
                },
        } => {
            report::dora(
                &api(),
                service.as_deref(),
                customer.as_deref(),
                (from.as_deref(), to.as_deref()),
                fmt,
            )
            .await
        }
        Command::Report {
            command: ReportCommand::Changes { customer, month },
        } => report::changes(&api(), &customer, &month, fmt).await,
        Command::Trace { target } => report::trace(&api(), &target, fmt).await,
        Command::Verify { file, key, sla } => report::verify(&file, &key, sla.as_deref(), fmt),
        Command::Audit {
            command: AuditCommand::Events { after, page },
        } => view::events(&api(), after, page, fmt).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(url: &str) -> String {
        let err = Cli::try_parse_from(["tandem", "--server", url, "status"])
            .expect_err(url)
            .to_string();
        assert!(err.contains(&format!("'{url}'")), "{err}");
        err
    }

    #[test]
    fn a_listen_address_is_an_ip_and_port_or_localhost() {
        let up = |addr: &str| {
            Cli::try_parse_from(["tandem", "up", "--proxy-addr", addr])
                .map(|cli| match cli.command {
                    Command::Up { proxy_addr, .. } => proxy_addr.to_string(),
                    _ => unreachable!("up parses as up"),
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(up("0.0.0.0:80").as_deref(), Ok("0.0.0.0:80"));
        assert_eq!(up("[::]:8080").as_deref(), Ok("[::]:8080"));
        assert_eq!(up("localhost:8080").as_deref(), Ok("127.0.0.1:8080"));
        let bare = up(":8080").expect_err("bare port");
        assert!(
            bare.contains("127.0.0.1:8080 for this machine only, or 0.0.0.0:8080"),
            "{bare}"
        );
        let named = up("example.test:8080").expect_err("a name");
        assert!(
            named.contains("`example.test` is not an IP address"),
            "{named}"
        );
        assert!(
            up("127.0.0.1:http")
                .expect_err("port")
                .contains("not a number")
        );
        assert!(up("127.0.0.1").expect_err("no port").contains("no port"));
    }

    #[test]
    fn a_server_url_is_checked_when_the_command_line_is_read() {
        for url in [
            "http://127.0.0.1:7070",
            "http://tandem.internal/",
            "http://[::1]:7070/base",
            "https://tandem.example",
        ] {
            let cli = Cli::try_parse_from(["tandem", "--server", url, "status"]).expect(url);
            assert_eq!(cli.server, url);
        }
        assert!(server_error("notaurl").contains("no scheme"));
        assert!(server_error("127.0.0.1:7070").contains("expected http[s]://HOST"));
        assert!(server_error("ftp://host").contains("scheme ftp"));
        assert!(server_error("http://host:7070/?x=1").contains("query"));
        assert!(server_error("http://exa mple").contains("expected http[s]://HOST"));
    }
}
