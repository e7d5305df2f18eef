//! `tandem audit checkpoint`, `tandem audit verify --checkpoint FILE` and
//! `tandem keys show`: signed checkpoints of the journal, and the proof
//! that the journal of today extends those a witness kept. The proofs are
//! checked here, with `tandem_proof`, not taken on the server's word.

use std::path::Path;

use tandem_core::journal::unhex;
use tandem_proof::checkpoint::{self, Checkpoint};
use tandem_proof::merkle::{self, Hash};

use crate::Format;
use crate::client::Api;
use crate::exit::{CmdResult, Exit};
use crate::output::{cell, json};

/// `tandem keys show`: the verifier key a customer keeps.
pub async fn key(api: &Api, fmt: Format) -> CmdResult {
    let v = api.get("/api/v1/audit/key").await?;
    match fmt {
        Format::Json => json(&v),
        _ => outln!("{}", cell(&v["verifier_key"])),
    }
    Ok(())
}

/// `tandem audit checkpoint`: the signed note as it is (save it, give it
/// to a witness); with `-o json`, its size, root and time too.
pub async fn checkpoint(api: &Api, fmt: Format) -> CmdResult {
    let v = api.get("/api/v1/audit/checkpoint").await?;
    if v.is_null() {
        return Err(Exit::failure("the journal is empty: nothing to sign yet"));
    }
    match fmt {
        Format::Json => json(&v),
        // The note ends with its newline already.
        _ => outln!(
            "{}",
            v["note"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches('\n')
        ),
    }
    Ok(())
}

fn hash(v: &serde_json::Value, what: &str) -> Result<Hash, Exit> {
    v.as_str()
        .and_then(unhex)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| Exit::failure(format!("the server's answer has no {what}")))
}

/// What the journal is to one checkpoint.
enum Standing {
    Extends,
    /// The first `size` events are no longer those signed.
    Diverged(String),
}

/// Checks the journal against every checkpoint in `file`, signed by
/// `key` (else the key the server names, which is weaker: said so).
pub async fn verify_checkpoints(
    api: &Api,
    file: &Path,
    key: Option<&str>,
    fmt: Format,
) -> CmdResult {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Exit::bad_input(format!("{}: {e}", file.display())))?;
    let (key, from_server) = match key {
        Some(k) => (k.to_owned(), false),
        None => {
            let v = api.get("/api/v1/audit/key").await?;
            (
                v["verifier_key"].as_str().unwrap_or_default().to_owned(),
                true,
            )
        }
    };
    let notes = checkpoint::split_notes(&text);
    if notes.is_empty() {
        return Err(Exit::bad_input(format!(
            "{}: no signed checkpoint in it",
            file.display()
        )));
    }
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for (i, note) in notes.iter().enumerate() {
        let cp = checkpoint::open(note, &key).map_err(|e| {
            Exit::failure(format!(
                "{}: checkpoint {} of {}: {e}",
                file.display(),
                i + 1,
                notes.len()
            ))
        })?;
        checkpoints.push(cp);
    }
    checkpoints.sort_by_key(|c| c.size);
    checkpoints.dedup_by_key(|c| c.size);

    // Proofs go to one fresh checkpoint the server signs now, checked with
    // the same key: then every saved one is proven against a signed root,
    // not against whatever the server says. A server that will not sign
    // (its journal no longer extends its own last checkpoint) is asked
    // for its journal as it stands instead, and that is said.
    let now = match api.get("/api/v1/audit/checkpoint").await {
        Ok(v) => {
            let note = v["note"].as_str().unwrap_or_default();
            let signed = checkpoint::open(note, &key)
                .map_err(|e| Exit::failure(format!("the server's checkpoint now: {e}")))?;
            Some(signed)
        }
        Err(e) => {
            eprintln!(
                "note: the server signs no checkpoint now ({}); checking against its journal as it stands",
                e.message
            );
            None
        }
    };
    let mut results = Vec::new();
    for cp in &checkpoints {
        let to = now
            .as_ref()
            .map(|n| format!("&to={}", n.size))
            .unwrap_or_default();
        let v = api
            .get(&format!("/api/v1/audit/consistency?from={}{to}", cp.size))
            .await;
        let standing = match v {
            // Refused as asking for more events than there are (exit 2):
            // the journal is shorter than what was signed.
            Err(e) if e.code == 2 => Standing::Diverged(format!(
                "the journal has no {} events any more ({})",
                cp.size, e.message
            )),
            Err(e) => return Err(e),
            Ok(v) => {
                // The signed root when there is one; the server's word else.
                let (size, root) = match &now {
                    Some(n) => (n.size, n.root),
                    None => (v["size"].as_u64().unwrap_or(0), hash(&v["root"], "root")?),
                };
                let proof: Vec<Hash> = v["proof"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| hash(p, "proof"))
                    .collect::<Result<_, _>>()?;
                if merkle::verify_consistency(cp.size, size, &cp.root, &root, &proof) {
                    Standing::Extends
                } else {
                    Standing::Diverged(format!(
                        "its first {} events are not those signed (their root is now {}, signed {})",
                        cp.size,
                        v["from_root"].as_str().unwrap_or("?"),
                        tandem_core::journal::hex(&cp.root)
                    ))
                }
            }
        };
        results.push((cp, standing));
    }
    let first_bad = results
        .iter()
        .position(|(_, s)| matches!(s, Standing::Diverged(_)));
    let last_good = first_bad
        .map_or(results.len(), |i| i)
        .checked_sub(1)
        .map(|i| results[i].0.size);
    if fmt == Format::Json {
        json(&serde_json::json!({
            "key": key,
            "key_from_server": from_server,
            "checkpoints": results.iter().map(|(c, s)| serde_json::json!({
                "size": c.size,
                "root": tandem_core::journal::hex(&c.root),
                "extended": matches!(s, Standing::Extends),
                "why": match s { Standing::Diverged(w) => Some(w.as_str()), Standing::Extends => None },
            })).collect::<Vec<_>>(),
        }));
    }
    if from_server && fmt == Format::Table {
        eprintln!(
            "note: checked with the key the server names ({key}); pass --key with the one you kept to trust it less"
        );
    }
    match first_bad {
        None => {
            if fmt == Format::Table {
                outln!(
                    "journal extends all {} signed checkpoint(s) in {} (largest: {} events)",
                    results.len(),
                    file.display(),
                    last_good.unwrap_or(0)
                );
            }
            Ok(())
        }
        Some(i) => {
            let (cp, Standing::Diverged(why)) = &results[i] else {
                unreachable!("first_bad is a divergence")
            };
            let range = match last_good {
                Some(good) => format!(
                    "events 1..={good} are as signed; an event in {}..={} was changed, removed or reordered",
                    good + 1,
                    cp.size
                ),
                None => format!(
                    "an event in 1..={} was changed, removed or reordered",
                    cp.size
                ),
            };
            Err(Exit::failure(format!(
                "journal diverges from the checkpoint of {} events: {why}; {range}",
                cp.size
            )))
        }
    }
}
