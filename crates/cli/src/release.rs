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
    force: bool,
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
        serde_json::json!({ "dir": dir, "force": force }),
        fmt,
    )
    .await
}

pub async fn rollback(
    api: &Api,
    service: &str,
    to: Option<String>,
    force: bool,
    fmt: Format,
) -> CmdResult {
    follow(
        api,
        &format!("/api/v1/services/{service}/rollback"),
        serde_json::json!({ "to": to, "force": force }),
        fmt,
    )
    .await
}

/// Shows progress until the final `done` or `failed`: on a terminal a live
/// line per phase (a spinner with its elapsed time, ticked off when the next
/// phase begins, step output scrolling above it); otherwise plain lines.
async fn follow(api: &Api, path: &str, body: serde_json::Value, fmt: Format) -> CmdResult {
    let started = Instant::now();
    // A spinner needs a terminal that can move its cursor.
    let live = fmt == Format::Table
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let mut display = Display::new(live);
    let mut end: Option<serde_json::Value> = None;
    api.post_stream(path, body, |event| match event["type"].as_str() {
        Some("phase") if fmt == Format::Table => {
            let phase = event["phase"].as_str().unwrap_or_default();
            let message = event["message"].as_str().unwrap_or_default();
            display.phase(started, phase, message);
        }
        Some("log") if fmt == Format::Table => {
            let step = event["step"].as_str().unwrap_or_default();
            let line = event["line"].as_str().unwrap_or_default();
            display.line(&format!("        {step} | {line}"));
        }
        Some("done") | Some("failed") => {
            display.finish(event["type"] == "done");
            end = Some(event);
        }
        _ => {}
    })
    .await?;
    display.finish(false);
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
                outln!(
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

/// Phase lines, live on a terminal; coloured unless asked not to be.
struct Display {
    live: bool,
    colour: bool,
    current: Option<(indicatif::ProgressBar, String)>,
}

impl Display {
    fn new(live: bool) -> Self {
        Display {
            live,
            colour: live && crate::output::colour(),
            current: None,
        }
    }

    /// `text` in SGR colour `code`, if colours are on.
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn phase(&mut self, started: Instant, phase: &str, message: &str) {
        let elapsed = started.elapsed().as_secs_f64();
        if !self.live {
            eprintln!("{elapsed:>6.2}s {phase:>8}  {message}");
            return;
        }
        let done = self.paint("32", "✓");
        self.tick_off(&done);
        let bar = indicatif::ProgressBar::new_spinner();
        let template = if self.colour {
            "{spinner} {prefix:>8.bold} {msg} {elapsed:.dim}"
        } else {
            "{spinner} {prefix:>8} {msg} {elapsed}"
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(phase.to_owned());
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        self.current = Some((bar, format!("{phase:>8}  {message}")));
    }

    fn line(&self, text: &str) {
        match &self.current {
            Some((bar, _)) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Leaves the current phase's line on screen, marked `mark`.
    fn tick_off(&mut self, mark: &str) {
        if let Some((bar, text)) = self.current.take() {
            let took = bar.elapsed().as_secs_f64();
            bar.finish_and_clear();
            let took = self.paint("2", &format!("({took:.2}s)"));
            eprintln!("{mark} {text} {took}");
        }
    }

    fn finish(&mut self, ok: bool) {
        let mark = if ok {
            self.paint("32", "✓")
        } else {
            self.paint("31", "✗")
        };
        self.tick_off(&mark);
    }
}
