//! `tandem validate` and `tandem schema`: local, no server needed.

use std::path::{Path, PathBuf};

use tandem_core::Spec;

use crate::Format;
use crate::exit::{CmdResult, Exit};

/// Reads and validates `path` (a directory with tandem.yaml, or the file).
pub fn load(path: &Path) -> Result<(PathBuf, Spec), Exit> {
    let file = if path.is_dir() {
        path.join("tandem.yaml")
    } else {
        path.to_path_buf()
    };
    let text = tandem_engine::read_bounded(&file)
        .map_err(|e| Exit::bad_input(format!("{}: {e}", file.display())))?;
    let shown = file.display().to_string();
    let spec = Spec::parse(&shown, &text).map_err(|e| {
        let mut msg = e.to_string();
        if !e.snippet.is_empty() {
            msg.push('\n');
            msg.push_str(e.snippet.trim_end());
        }
        Exit::bad_input(msg)
    })?;
    Ok((file, spec))
}

pub fn validate(path: &Path, fmt: Format) -> CmdResult {
    let (file, spec) = load(path)?;
    if let Some(note) = spec.not_built_yet() {
        eprintln!("note: {}: {note}", file.display());
    }
    match fmt {
        Format::Json => crate::output::json(&serde_json::to_value(&spec).unwrap_or_default()),
        _ => outln!("{}: ok (service {})", file.display(), spec.service.name),
    }
    Ok(())
}

pub fn schema() -> CmdResult {
    crate::output::json(&Spec::json_schema());
    Ok(())
}
