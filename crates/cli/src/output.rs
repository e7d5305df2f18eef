//! Tables for people, JSON for programs.

use crate::Format;
use crate::client::Api;
use crate::exit::CmdResult;

/// Writes one line of output (see `outln!`): on a broken pipe the command
/// is done, exit 0; any other write error is said on stderr, exit 1.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes bytes as they are (a PDF), with the same care as `write_line`.
pub fn write_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes `text` as it is (a report), with the same care as `write_line`.
pub fn write_all(text: &str) {
    let text = text.strip_suffix('\n').unwrap_or(text);
    write_line(format_args!("{text}"));
}

/// Prints rows under a header, columns padded to their widest cell; says
/// so on stderr when there are none (stdout then stays empty).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        eprintln!("(none)");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A JSON value as a table cell.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// GETs a JSON array and prints it: as is with `-o json`, else one table
/// row per element.
pub async fn list(
    api: &Api,
    path: &str,
    fmt: Format,
    header: &[&str],
    row: impl Fn(&serde_json::Value) -> Vec<String>,
) -> CmdResult {
    let v = api.get(path).await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v.as_array().into_iter().flatten().map(row).collect();
    table(header, &rows);
    Ok(())
}

/// Whether to colour what goes to a terminal: not with `NO_COLOR` set
/// (no-color.org), `CLICOLOR=0` or `TERM=dumb`; `CLICOLOR_FORCE=1`
/// colours even so.
pub fn colour() -> bool {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if var("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return true;
    }
    var("NO_COLOR").is_none()
        && var("CLICOLOR").is_none_or(|v| v != "0")
        && var("TERM").is_none_or(|v| v != "dumb")
}
