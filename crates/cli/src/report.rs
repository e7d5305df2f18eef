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
            let pdf = api.get_bytes(&format!("{base}&format=pdf&at={at}")).await?;
            crate::output::write_bytes(&pdf);
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
        // The bundle must cover the month (its range is not signed: a
        // month outside it would be reported from nothing).
        let (first, next) =
            tandem_report::sla::month_minutes(month).map_err(|e| Exit::bad_input(e.to_string()))?;
        let day = |t: &str| t.get(..10).unwrap_or(t).to_owned();
        let as_day = |m: i64| day(&tandem_report::sla::minute_ts(m));
        if day(&bundle.from) > as_day(first) || day(&bundle.to) < as_day(next) {
            return Err(Exit::bad_input(format!(
                "{}: the bundle covers {} to {}, not all of {month}",
                file.display(),
                bundle.from,
                bundle.to
            )));
        }
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

/// `tandem report dora`: the five metrics per service and in total.
pub async fn dora(
    api: &Api,
    service: Option<&str>,
    customer: Option<&str>,
    (from, to): (Option<&str>, Option<&str>),
    fmt: Format,
) -> CmdResult {
    let mut query = Vec::new();
    for (k, v) in [
        ("service", service),
        ("customer", customer),
        ("from", from),
        ("to", to),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={v}"));
        }
    }
    let v = api
        .get(&format!("/api/v1/reports/dora?{}", query.join("&")))
        .await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    let secs = |x: &serde_json::Value| {
        x.as_f64().map_or("-".into(), |s| match s {
            s if s < 120.0 => format!("{s:.0}s"),
            s if s < 7200.0 => format!("{:.0}m", s / 60.0),
            s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
            s => format!("{:.1}d", s / 86_400.0),
        })
    };
    let pct = |x: &serde_json::Value| {
        x.as_f64()
            .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
    };
    let rows: Vec<Vec<String>> = v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&v["total"]))
        .map(|d| {
            vec![
                d["service"].as_str().unwrap_or("?").to_owned(),
                format!(
                    "{} ({:.2}/day, {})",
                    d["deployments"],
                    d["deployments_per_day"].as_f64().unwrap_or(0.0),
                    d["deployment_frequency_band"].as_str().unwrap_or("-")
                ),
                format!(
                    "{} ({})",
                    secs(&d["lead_time_median_s"]),
                    d["lead_time_band"].as_str().unwrap_or("-")
                ),
                format!(
                    "{} ({})",
                    pct(&d["change_failure_rate"]),
                    d["change_failure_band"].as_str().unwrap_or("-")
                ),
                format!(
                    "{} ({})",
                    secs(&d["recovery_median_s"]),
                    d["recovery_band"].as_str().unwrap_or("-")
                ),
                pct(&d["rework_rate"]),
            ]
        })
        .collect();
    crate::output::table(
        &[
            "service",
            "deployments",
            "lead time",
            "change failure",
            "recovery",
            "rework",
        ],
        &rows,
    );
    outln!(
        "from {} to {}",
        v["from"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `tandem report changes`: change evidence, a row per production change.
pub async fn changes(api: &Api, customer: &str, month: &str, fmt: Format) -> CmdResult {
    let base = format!("/api/v1/reports/changes?customer={customer}&month={month}");
    match fmt {
        Format::Csv => {
            crate::output::write_all(&api.get_text(&format!("{base}&format=csv")).await?);
            return Ok(());
        }
        Format::Html | Format::Pdf => {
            return Err(Exit::bad_input(
                "change evidence is -o json, csv or a table",
            ));
        }
        _ => {}
    }
    let v = api.get(&base).await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut flags = Vec::new();
            if c["unapproved"] == true {
                flags.push("UNAPPROVED");
            }
            if c["self_approved"] == true {
                flags.push("SELF-APPROVED");
            }
            vec![
                format!(
                    "{} {}",
                    c["service"].as_str().unwrap_or("?"),
                    c["release"].as_str().unwrap_or("?")
                ),
                c["deployed_at"].as_str().unwrap_or("").to_owned(),
                c["commit"]
                    .as_str()
                    .map(|s| s.chars().take(10).collect())
                    .unwrap_or_else(|| "-".into()),
                c["author"].as_str().unwrap_or("-").to_owned(),
                c["tests"].as_str().unwrap_or("-").to_owned(),
                c["approvers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into()),
                c["incidents"].as_array().map_or(0, Vec::len).to_string(),
                flags.join(" "),
            ]
        })
        .collect();
    crate::output::table(
        &[
            "change",
            "deployed",
            "commit",
            "author",
            "tests",
            "approvers",
            "incidents",
            "flags",
        ],
        &rows,
    );
    Ok(())
}

/// `tandem trace TARGET`: a commit (7+ hex digits), a release
/// (`SERVICE/rN`) or an incident (its number).
pub async fn trace(api: &Api, target: &str, fmt: Format) -> CmdResult {
    let query = if target.contains('/') {
        format!("release={target}")
    } else if target.len() >= 7 && target.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("commit={target}")
    } else if let Ok(n) = target.trim_start_matches('#').parse::<u64>() {
        format!("incident={n}")
    } else {
        return Err(Exit::bad_input(format!(
            "{target:?}: a commit (7+ hex digits), a release (shop/r3) or an incident number"
        )));
    };
    let t = api.get(&format!("/api/v1/trace?{query}")).await?;
    if fmt == Format::Json {
        json(&t);
        return Ok(());
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    match t["commit"].as_str() {
        Some(c) => outln!(
            "{} commit {c} by {} at {}",
            s(&t["service"]),
            s(&t["author"]),
            s(&t["committed_at"])
        ),
        None => outln!(
            "{} (no commit: deployed from a directory)",
            s(&t["service"])
        ),
    }
    let release_lines = |r: &serde_json::Value, indent: &str| {
        let mut lines = vec![format!("release {}", s(&r["release"]))];
        for d in r["deployments"].as_array().into_iter().flatten() {
            lines.push(format!(
                "  {} in {} at {} by {}",
                s(&d["outcome"]),
                s(&d["env"]),
                s(&d["at"]),
                s(&d["by"])
            ));
        }
        for i in r["incidents"].as_array().into_iter().flatten() {
            let end = match i["resolved_at"].as_str() {
                Some(at) => format!("resolved at {at} by {}", s(&i["resolved_by"])),
                None => "still open".into(),
            };
            lines.push(format!(
                "  incident {} ({}) opened at {}: {}; {end}",
                s(&i["incident"]),
                s(&i["kind"]),
                s(&i["opened_at"]),
                s(&i["summary"])
            ));
        }
        lines
            .into_iter()
            .map(|l| format!("{indent}{l}"))
            .collect::<Vec<_>>()
    };
    for run in t["runs"].as_array().into_iter().flatten() {
        outln!(
            "└─ run {} {} (queued {})",
            s(&run["run"]),
            s(&run["status"]),
            s(&run["queued_at"])
        );
        for st in run["stages"].as_array().into_iter().flatten() {
            let took = st["duration_ms"]
                .as_u64()
                .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
                .unwrap_or_default();
            outln!("   ├─ stage {} {}{took}", s(&st["stage"]), s(&st["status"]));
        }
        for a in run["approvals"].as_array().into_iter().flatten() {
            outln!(
                "   ├─ {} by {} at {}",
                s(&a["decision"]),
                s(&a["by"]),
                s(&a["at"])
            );
        }
        if run["release"].is_object() {
            for line in release_lines(&run["release"], "   └─ ") {
                outln!("{line}");
            }
        }
    }
    for r in t["releases"].as_array().into_iter().flatten() {
        for line in release_lines(r, "└─ ") {
            outln!("{line}");
        }
    }
    Ok(())
}
