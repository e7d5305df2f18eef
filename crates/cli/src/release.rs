//! `tandem deploy` and `tandem rollback`: start the work on the server and
//! show its progress as it happens.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use crate::Format;
use crate::client::Api;
use crate::exit::{CmdResult, Exit};

pub async fn deploy(
    api: &Api,
    service: Option<String>,
    dir: Option<PathBuf>,
    env: Option<String>,
    fmt: Format,
) -> CmdResult {
    if env.is_some() {
        return Err(Exit::bad_input(
            "--env is not supported yet: environments are promoted by pipelines",
        ));
    }
    let dir = dir.ok_or_else(|| {
        Exit::bad_input(
            "tandem deploy needs --dir DIR (a directory holding tandem.yaml), or a service registered from a repository: tandem deploy SERVICE [--ref R]",
        )
    })?;
    // Check the spec here first: located errors without a round trip.
    let (_, spec) = crate::spec::load(&dir)?;
    if let Some(s) = service.filter(|s| s != spec.service.name.as_str()) {
        return Err(Exit::bad_input(format!(
            "{} declares service {}, not {s}",
            dir.display(),
            spec.service.name
        )));
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| Exit::bad_input(format!("{}: {e}", dir.display())))?;
    follow(
        api,
        "/api/v1/deploys",
        serde_json::json!({ "dir": dir }),
        fmt,
    )
    .await
}

pub async fn rollback(api: &Api, service: &str, to: Option<String>, fmt: Format) -> CmdResult {
    follow(
        api,
        &format!("/api/v1/services/{service}/rollback"),
        serde_json::json!({ "to": to }),
        fmt,
    )
    .await
}

/// Prints progress lines until the final `done` or `failed`.
async fn follow(api: &Api, path: &str, body: serde_json::Value, fmt: Format) -> CmdResult {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut end: Option<serde_json::Value> = None;
    api.post_stream(path, body, |event| {
        let elapsed = started.elapsed().as_secs_f64();
        match event["type"].as_str() {
            Some("phase") if fmt == Format::Table => {
                let phase = event["phase"].as_str().unwrap_or_default();
                let message = event["message"].as_str().unwrap_or_default();
                if tty {
                    eprintln!("\x1b[1m{elapsed:>6.2}s {phase:>8}\x1b[0m  {message}");
                } else {
                    eprintln!("{elapsed:>6.2}s {phase:>8}  {message}");
                }
            }
            Some("log") if fmt == Format::Table => {
                eprintln!(
                    "        {} | {}",
                    event["step"].as_str().unwrap_or_default(),
                    event["line"].as_str().unwrap_or_default()
                );
            }
            Some("done") | Some("failed") => end = Some(event),
            _ => {}
        }
    })
    .await?;
    let Some(end) = end else {
        return Err(Exit::failure(
            "the server ended the stream without a result; see `tandem releases` and the server log",
        ));
    };
    if fmt == Format::Json {
        crate::output::json(&end);
    }
    match end["type"].as_str() {
        Some("done") => {
            if fmt == Format::Table {
                let t = &end["timings"];
                println!(
                    "{} (ready in {} ms, switched {} ms after ready, drained in {} ms, {} ms in all)",
                    end["message"].as_str().unwrap_or_default(),
                    t["start_to_ready_ms"],
                    t["ready_to_switch_ms"],
                    t["drain_ms"],
                    t["total_ms"]
                );
            }
            Ok(())
        }
        _ => {
            let mut message = end["message"].as_str().unwrap_or("failed").to_owned();
            if let Some(tail) = end["log_tail"].as_array().filter(|t| !t.is_empty()) {
                message.push_str("\nlast log lines:");
                for l in tail {
                    message.push_str("\n  ");
                    message.push_str(l.as_str().unwrap_or_default());
                }
            }
            if end["kind"] == "bad_input" {
                Err(Exit::bad_input(message))
            } else {
                Err(Exit::failure(message))
            }
        }
    }
}
