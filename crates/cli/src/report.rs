//! `tandem report sla`, `tandem audit export`, `tandem customers contract`
//! and `tandem verify`: what a customer receives, and the check they run
//! on it with no server and no data directory.

use std::collections::BTreeSet;
use std::path::Path;

use tandem_proof::bundle::Bundle;

use crate::Format;
use crate::client::Api;
use crate::exit::{CmdResult, Exit};
use crate::output::json;

/// `tandem report sla`: the report as the server computed it, in the
/// format asked; with `--bundle`, the bundle of the very events and
/// checkpoint it rests on.
pub async fn sla(
    api: &Api,
    customer: &str,
    month: &str,
    bundle: Option<&Path>,
    fmt: Format,
) -> CmdResult {
    if let Some(file) = bundle
        && file.exists()
    {
        return Err(Exit::bad_input(format!(
            "{} exists; the bundle is written to a new file",
            file.display()
        )));
    }
    let base = format!("/api/v1/reports/sla?customer={customer}&month={month}");
    // First as canonical JSON: it names the checkpoint the rest rests on.
    let canonical = api.get_text(&base).await?;
    let report: serde_json::Value = serde_json::from_str(&canonical)
        .map_err(|e| Exit::failure(format!("the server's report is not JSON: {e}")))?;
    let at = report["checkpoint"]["size"]
        .as_u64()
        .ok_or_else(|| Exit::failure("the server's report names no checkpoint"))?;
    match fmt {
        Format::Json => outln!("{canonical}"),
        Format::Csv | Format::Html => {
            let format = if fmt == Format::Csv { "csv" } else { "html" };
            let text = api
                .get_text(&format!("{base}&format={format}&at={at}"))
                .await?;
            crate::output::write_all(&text);
        }
        Format::Pdf => {
            return Err(Exit::bad_input(
                "-o pdf is not built yet: use -o html and print it to PDF",
            ));
        }
        Format::Table => {
            for s in report["services"].as_array().into_iter().flatten() {
                outln!(
                    "{}: availability {:.4}% (objective {}), downtime {:.1} min, excluded {} min, unmeasured {} min, budget used {}, credit {:.0}%, {} incident(s)",
                    s["service"].as_str().unwrap_or("?"),
                    s["availability"].as_f64().unwrap_or(0.0) * 100.0,
                    s["objective"]
                        .as_f64()
                        .map_or("none".into(), |o| format!("{:.3}%", o * 100.0)),
                    s["downtime_minutes"].as_f64().unwrap_or(0.0),
                    s["excluded_minutes"],
                    s["unmeasured_minutes"],
                    s["budget_used"]
                        .as_f64()
                        .map_or("-".into(), |b| format!("{:.1}%", b * 100.0)),
                    s["credit"].as_f64().unwrap_or(0.0) * 100.0,
                    s["incidents"].as_array().map_or(0, Vec::len),
                );
            }
            outln!(
                "rests on checkpoint {} at {} events, root {}",
                report["checkpoint"]["origin"].as_str().unwrap_or("?"),
                at,
                report["checkpoint"]["root"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(file) = bundle {
        let (from, to) = (&report["from"], &report["to"]);
        let path = format!(
            "/api/v1/audit/export?customer={customer}&from={}&to={}&at={at}",
            from.as_str().unwrap_or_default(),
            to.as_str().unwrap_or_default()
        );
        api.download(&path, file).await?;
        eprintln!(
            "bundle written to {} (check it: tandem verify {} --key KEY --sla {month})",
            file.display(),
            file.display()
        );
    }
    Ok(())
}

/// `tandem audit export`: a bundle of a customer's events to a new file.
pub async fn export(
    api: &Api,
    customer: &str,
    from: &str,
    to: &str,
    file: &Path,
    fmt: Format,
) -> CmdResult {
    if file.exists() {
        return Err(Exit::bad_input(format!(
            "{} exists; the bundle is written to a new file",
            file.display()
        )));
    }
    api.download(
        &format!("/api/v1/audit/export?customer={customer}&from={from}&to={to}"),
        file,
    )
    .await?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    match fmt {
        Format::Json => json(&serde_json::json!({ "file": file, "bytes": size })),
        _ => outln!(
            "bundle of {customer} written to {} ({size} bytes)",
            file.display()
        ),
    }
    Ok(())
}

/// `tandem customers contract C [--file F]`: sets it from F, or shows it.
pub async fn contract(api: &Api, customer: &str, file: Option<&Path>, fmt: Format) -> CmdResult {
    let path = format!("/api/v1/customers/{customer}/contract");
    let v = match file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Exit::bad_input(format!("{}: {e}", file.display())))?;
            api.put(
                &path,
                serde_json::json!({ "file": file.display().to_string(), "text": text }),
            )
            .await?
        }
        None => api.get(&path).await?,
    };
    match fmt {
        Format::Json => json(&v),
        _ => {
            outln!("notice: {}", v["notice"].as_str().unwrap_or("?"));
            for o in v["objectives"].as_array().into_iter().flatten() {
                let whom = o["service"]
                    .as_str()
                    .map(|s| format!("service {s}"))
                    .or_else(|| o["tier"].as_str().map(|t| format!("tier {t}")))
                    .unwrap_or_else(|| "every other service".into());
                outln!(
                    "objective {} for {whom}",
                    o["objective"].as_str().unwrap_or("?")
                );
            }
            for c in v["credits"].as_array().into_iter().flatten() {
                outln!(
                    "credit {} below {}",
                    c["credit"].as_str().unwrap_or("?"),
                    c["below"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

/// `tandem verify FILE --key K [--sla MONTH]`: checks a bundle with the
/// key alone; with `--sla`, prints the SLA report recomputed from it, as
/// canonical JSON (byte for byte the server's, if the bundle is its).
pub fn verify(file: &Path, key: &str, sla: Option<&str>, fmt: Format) -> CmdResult {
    let text =
        std::fs::read(file).map_err(|e| Exit::bad_input(format!("{}: {e}", file.display())))?;
    let bundle: Bundle = serde_json::from_slice(&text)
        .map_err(|e| Exit::bad_input(format!("{}: not a bundle: {e}", file.display())))?;
    let verified = bundle
        .verify(key)
        .map_err(|e| Exit::failure(format!("{}: {e}", file.display())))?;
    // Nothing of another customer: every event is about this one or a
    // service of theirs, by the log's own rules.
    let services: BTreeSet<String> =
        tandem_report::sla::services_of(&bundle.events, &bundle.customer)
            .into_keys()
            .collect();
    if let Some(e) = bundle
        .events
        .iter()
        .find(|e| !tandem_report::sla::concerns(e, &bundle.customer, &services))
    {
        return Err(Exit::failure(format!(
            "{}: event {} is not about {} or their services",
            file.display(),
            e.seq,
            bundle.customer
        )));
    }
    let cp = &verified.checkpoint;
    if let Some(month) = sla {
        let checkpoint = tandem_report::sla::CheckpointRef {
            origin: cp.origin.clone(),
            size: cp.size,
            root: tandem_core::journal::hex(&cp.root),
        };
        let report =
            tandem_report::sla::report(&bundle.events, &bundle.customer, month, Some(checkpoint))
                .map_err(|e| Exit::bad_input(e.to_string()))?;
        outln!(
            "{}",
            tandem_report::canonical(&report).map_err(|e| Exit::failure(e.to_string()))?
        );
    }
    let summary = format!(
        "{}: {} event(s) of {} from {} to {}, all in the log {} at {} events (root {}), unaltered{}",
        file.display(),
        bundle.events.len(),
        bundle.customer,
        bundle.from,
        bundle.to,
        cp.origin,
        cp.size,
        tandem_core::journal::hex(&cp.root),
        verified
            .previous
            .as_ref()
            .map(|p| format!("; the log extends its checkpoint at {} events", p.size))
            .unwrap_or_default()
    );
    match (fmt, sla) {
        (Format::Json, None) => json(&serde_json::json!({
            "ok": true,
            "customer": bundle.customer,
            "events": bundle.events.len(),
            "origin": cp.origin,
            "size": cp.size,
            "root": tandem_core::journal::hex(&cp.root),
            "previous": verified.previous.as_ref().map(|p| p.size),
        })),
        (_, Some(_)) => eprintln!("{summary}"),
        _ => outln!("{summary}"),
    }
    Ok(())
}
