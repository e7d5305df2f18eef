//! `tandem`: parse, set up logging, dispatch, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use tandem_cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(
        cli.command,
        Command::Up { .. } | Command::Agent { .. } | Command::Server { .. }
    );
    init_logging(daemon);
    // TANDEM_WORKER_THREADS pins the runtime size (benchmarks compare one worker each).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("TANDEM_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(tandem_cli::dispatch(cli));
    // File work on blocking threads stops once its task is dropped (see
    // `artifact::Abandoned`); a process that is done does not wait longer
    // than this for any that does not.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            say(&format!("error: {exit}"));
            ExitCode::from(exit.code)
        }
    }
}

/// Logs to stderr, or for a daemon given `TANDEM_LOG_FILE` (the agent
/// `up` starts) to that file, rotated while it runs; as text, or one JSON
/// object a line with `TANDEM_LOG_FORMAT=json`. Filtered by `TANDEM_LOG`.
fn init_logging(daemon: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let default_filter = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| default_filter.into());
    let file = std::env::var_os(tandem_cli::LOG_FILE_VARIABLE).filter(|_| daemon);
    // Colour only for a person at a terminal who has not said no.
    let ansi = file.is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && tandem_cli::colour();
    let writer = match file {
        Some(path) => {
            let limit = std::env::var("TANDEM_LOG_ROTATE_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(tandem_cli::LOG_ROTATE_AT_BYTES);
            BoxMakeWriter::new(tandem_cli::DaemonLog::open(path.as_ref(), limit))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        // A log that cannot be written (a full disk under the agent's
        // log file) is lost, never fatal: by default a failed write is
        // reported on stderr, which is that same file, and `eprintln!`
        // panics when it cannot write.
        .log_internal_errors(false);
    if std::env::var("TANDEM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A line on stderr, if stderr takes it (it may be a log file on a full
/// disk; the exit code still says how the command ended).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
