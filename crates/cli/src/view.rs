//! Read-only commands: status, releases, logs, services, audit.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::Format;
use crate::client::Api;
use crate::exit::{CmdResult, Exit};
use crate::output::{cell, json, list, table};

pub async fn status(api: &Api, service: Option<&str>, fmt: Format) -> CmdResult {
    let path = match service {
        Some(s) => format!("/api/v1/status?service={s}"),
        None => "/api/v1/status".into(),
    };
    let v = api.get(&path).await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    if v["agent"].is_null() {
        eprintln!("warning: the agent does not answer; instance data is missing");
    }
    let mut rows = Vec::new();
    for s in v["services"].as_array().into_iter().flatten() {
        let instances = s["instances"].as_array().cloned().unwrap_or_default();
        let ready = instances.iter().filter(|i| i["ready"] == true).count();
        let route = if s["route"].is_null() {
            "-".into()
        } else {
            format!(
                "{}{}",
                cell(&s["route"]["host"]),
                cell(&s["route"]["path_prefix"])
            )
        };
        rows.push(vec![
            cell(&s["service"]),
            cell(&s["owner"]),
            cell(&s["live_release"]),
            route,
            format!("{ready}/{}", instances.len()),
        ]);
        if service.is_some() {
            for i in &instances {
                rows.push(vec![
                    format!("  {}", cell(&i["id"])),
                    format!("pid {}", cell(&i["pid"])),
                    cell(&i["release"]),
                    format!("port {} {}", cell(&i["port"]), cell(&i["state"])),
                    format!(
                        "{} restarts={}",
                        if i["ready"] == true {
                            "ready"
                        } else {
                            "not-ready"
                        },
                        cell(&i["restarts"])
                    ),
                ]);
            }
        }
    }
    table(&["service", "owner", "live", "route", "ready"], &rows);
    if service.is_some() {
        for s in v["services"].as_array().into_iter().flatten() {
            print_slos(s);
        }
    }
    Ok(())
}

/// SLO attainment, budget left and burn rates; environments; maintenance.
fn print_slos(s: &serde_json::Value) {
    for e in s["environments"].as_array().into_iter().flatten() {
        outln!(
            "environment {}: {} ({} serving)",
            cell(&e["env"]),
            cell(&e["release"]),
            cell(&e["serving"])
        );
    }
    if let Some(retry) = s["maintenance_mode"].as_u64() {
        outln!("maintenance mode: on (503, Retry-After {retry}s)");
    }
    for w in s["maintenance"].as_array().into_iter().flatten() {
        outln!(
            "maintenance #{}: {} to {} ({})",
            cell(&w["id"]),
            cell(&w["starts_at"]),
            cell(&w["ends_at"]),
            cell(&w["reason"])
        );
    }
    let slos = s["slo"].as_array().cloned().unwrap_or_default();
    if slos.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = slos
        .iter()
        .map(|o| {
            let pct = |v: &serde_json::Value| {
                v.as_f64()
                    .map(|x| format!("{:.3}%", x * 100.0))
                    .unwrap_or_else(|| "-".into())
            };
            let burns = o["burn_rates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| Some(format!("{} {:.1}x", b[0].as_str()?, b[1].as_f64()?)))
                .collect::<Vec<_>>()
                .join("  ");
            // What the figures rest on: requests, and quiet minutes that
            // only the probes could judge.
            let basis = match (o["requests"].as_u64(), o["quiet_minutes"].as_u64()) {
                (Some(r), Some(q)) if q > 0 => format!("{r} req + {q} quiet min"),
                (Some(r), _) => format!("{r} req"),
                _ => "-".into(),
            };
            vec![
                cell(&o["name"]),
                pct(&o["objective"]),
                cell(&o["window"]),
                pct(&o["attainment"]),
                basis,
                pct(&o["budget_remaining"]),
                burns,
                o["alert"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "slo",
            "objective",
            "window",
            "attained",
            "over",
            "budget left",
            "burn rates",
            "alert",
        ],
        &rows,
    );
}

pub async fn releases(api: &Api, service: &str, fmt: Format) -> CmdResult {
    let path = format!("/api/v1/services/{service}/releases");
    let header = ["release", "status", "digest", "created", "reason"];
    list(api, &path, fmt, &header, |r| {
        vec![
            format!("r{}", cell(&r["number"])),
            cell(&r["status"]),
            cell(&r["digest"]).chars().take(12).collect(),
            cell(&r["created_at"]),
            cell(&r["reason"]),
        ]
    })
    .await
}

pub async fn services(api: &Api, fmt: Format) -> CmdResult {
    let header = ["service", "owner", "customer", "tier", "live", "repository"];
    list(api, "/api/v1/services", fmt, &header, |s| {
        let live = s["live_release"].as_i64().map(|n| format!("r{n}"));
        let repo = &s["repo"];
        let polling = if repo.is_null() {
            "-".to_owned()
        } else if let Some(error) = repo["poll_error"].as_str() {
            format!(
                "UNREACHABLE since {}: {error}",
                repo["failing_since"].as_str().unwrap_or("?")
            )
        } else {
            match repo["polled_at"].as_str() {
                Some(at) => format!("ok, polled {at}"),
                None => "not polled yet".to_owned(),
            }
        };
        vec![
            cell(&s["name"]),
            cell(&s["owner"]),
            cell(&s["customer"]),
            cell(&s["tier"]),
            live.unwrap_or_else(|| "-".into()),
            polling,
        ]
    })
    .await
}

/// Prints the last `lines` of each instance log; with `follow`, then what
/// each writes from there on, by the cursor after each line (`next`): no
/// line is printed twice or skipped, however many come between two asks or
/// however alike they are. An agent that gives no cursors gets the older
/// way: each instance's new lines are those after the last one printed.
/// With `-o json`, each line is one JSON object: `{"instance", "line"}`.
pub async fn logs(api: &Api, service: &str, follow: bool, lines: usize, fmt: Format) -> CmdResult {
    // After the first ask, an instance without a cursor is one that had
    // written nothing or did not run yet: all it has is new.
    const SINCE_START: usize = 10_000;
    let mut cursors: BTreeMap<String, String> = BTreeMap::new();
    let mut last_seen: HashMap<String, String> = HashMap::new();
    let mut first = true;
    loop {
        // At least one line, for its cursor, even when none is shown.
        let ask = if first { lines.max(1) } else { SINCE_START };
        let mut path = format!("/api/v1/services/{service}/logs?lines={ask}");
        if !cursors.is_empty() {
            let after: Vec<String> = cursors.iter().map(|(i, c)| format!("{i}:{c}")).collect();
            path.push_str(&format!("&after={}", after.join(",")));
        }
        let v = api.get(&path).await?;
        let mut by_instance: Vec<(String, Vec<&serde_json::Value>)> = Vec::new();
        for l in v.as_array().into_iter().flatten() {
            let inst = cell(&l["instance"]);
            match by_instance.last_mut() {
                Some((i, ls)) if *i == inst => ls.push(l),
                _ => by_instance.push((inst, vec![l])),
            }
        }
        let mut printed = 0;
        for (inst, ls) in by_instance {
            let start = if ls.iter().all(|l| log_cursor(l).is_some()) {
                if first {
                    ls.len().saturating_sub(lines)
                } else {
                    0
                }
            } else {
                last_seen
                    .get(&inst)
                    .and_then(|seen| ls.iter().rposition(|l| cell(&l["line"]) == *seen))
                    .map(|p| p + 1)
                    .unwrap_or(0)
            };
            for l in &ls[start..] {
                if fmt == Format::Json {
                    outln!(
                        "{}",
                        serde_json::json!({ "instance": inst, "line": l["line"] })
                    );
                } else {
                    outln!("{inst} | {}", cell(&l["line"]));
                }
                printed += 1;
            }
            if let Some(l) = ls.last() {
                last_seen.insert(inst.clone(), cell(&l["line"]));
                if let Some(c) = log_cursor(l) {
                    cursors.insert(inst, c);
                }
            }
        }
        if !follow {
            return Ok(());
        }
        first = false;
        // Soon again while lines come (a page may have been cut short).
        let pause = if printed > 0 { 100 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A log line's cursor as the API's `after` takes it (`FILE:OFFSET`).
fn log_cursor(line: &serde_json::Value) -> Option<String> {
    let next = &line["next"];
    Some(format!(
        "{}:{}",
        next["file"].as_u64()?,
        next["offset"].as_u64()?
    ))
}

pub async fn audit_verify(api: &Api, fmt: Format) -> CmdResult {
    let v = api.get("/api/v1/audit/verify").await?;
    if fmt == Format::Json {
        json(&v);
    }
    if v["ok"] == true {
        if fmt == Format::Table {
            outln!(
                "journal intact: {} events, head {}",
                v["events"],
                cell(&v["head"])
            );
        }
        Ok(())
    } else {
        Err(Exit::failure(format!(
            "journal broken: {}",
            cell(&v["error"])
        )))
    }
}

/// Journal events after `after`, all of them: the API answers a page at a
/// time (`page` events), so this asks until a page comes back short. With
/// `-o json`, one event per line (JSON Lines, as stored: hashes included);
/// else a table for people.
pub async fn events(api: &Api, after: u64, page: u32, fmt: Format) -> CmdResult {
    let mut rows = Vec::new();
    let mut after = after;
    loop {
        let v = api
            .get(&format!("/api/v1/events?after={after}&limit={page}"))
            .await?;
        let got = v.as_array().cloned().unwrap_or_default();
        for e in &got {
            if fmt == Format::Json {
                outln!("{e}");
            } else {
                rows.push(event_row(e));
            }
        }
        match got.last().and_then(|e| e["seq"].as_u64()) {
            Some(seq) if got.len() >= page as usize => after = seq,
            _ => break,
        }
    }
    if fmt != Format::Json {
        table(
            &["seq", "time", "actor", "kind", "subject", "detail"],
            &rows,
        );
    }
    Ok(())
}

/// A journal event as a table row: its subject as `key=value`s, its payload
/// cut to one short line (`-o json` has it whole).
fn event_row(e: &serde_json::Value) -> Vec<String> {
    const DETAIL: usize = 100;
    let subject = e["subject"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    let payload = e["payload"].to_string();
    let detail = match payload.as_str() {
        "{}" | "null" => "-".into(),
        p if p.chars().count() > DETAIL => {
            format!("{}…", p.chars().take(DETAIL).collect::<String>())
        }
        p => p.to_owned(),
    };
    vec![
        cell(&e["seq"]),
        cell(&e["ts"]),
        cell(&e["actor"]),
        cell(&e["kind"]),
        subject,
        detail,
    ]
}
