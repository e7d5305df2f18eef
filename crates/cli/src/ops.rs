//! `tandem incidents` and `tandem channels`.

use crate::Format;
use crate::client::Api;
use crate::exit::CmdResult;
use crate::output::{cell, json, list};

pub async fn incidents(api: &Api, open: bool, fmt: Format) -> CmdResult {
    let header = [
        "ID", "SERVICE", "SEVERITY", "STATUS", "OPENED", "RELEASE", "SUMMARY",
    ];
    list(
        api,
        &format!("/api/v1/incidents?open={open}"),
        fmt,
        &header,
        |i| {
            let service = match i["env"].as_str() {
                Some(env) => format!("{}@{env}", cell(&i["service"])),
                None => cell(&i["service"]),
            };
            let release = match i["suspect_release"].as_str() {
                Some(s) => format!("{s} (suspect)"),
                None => cell(&i["release"]),
            };
            vec![
                cell(&i["id"]),
                service,
                cell(&i["severity"]),
                cell(&i["status"]),
                cell(&i["opened_at"]),
                release,
                cell(&i["summary"]),
            ]
        },
    )
    .await
}

/// One incident, its notifications (each channel's, with its state) and
/// every attempt at them.
pub async fn show_incident(api: &Api, id: i64, fmt: Format) -> CmdResult {
    let v = api.get(&format!("/api/v1/incidents/{id}")).await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    outln!(
        "incident {} · {} · {} · {}",
        cell(&v["id"]),
        cell(&v["service"]),
        cell(&v["severity"]),
        cell(&v["status"])
    );
    outln!("{}", cell(&v["summary"]));
    outln!(
        "opened {} · release {} · suspect {}",
        cell(&v["opened_at"]),
        cell(&v["release"]),
        cell(&v["suspect_release"])
    );
    let empty = Vec::new();
    let attempts = v["deliveries"].as_array().unwrap_or(&empty);
    for n in v["notifications"].as_array().unwrap_or(&empty) {
        outln!(
            "  {} to channel {}: {} after {} attempt(s){}",
            cell(&n["event"]),
            cell(&n["channel"]),
            cell(&n["status"]),
            cell(&n["attempts"]),
            match n["status"].as_str() {
                Some("pending") => format!(", next at {}", cell(&n["next_at"])),
                _ => String::new(),
            }
        );
        for a in attempts
            .iter()
            .filter(|a| a["channel"] == n["channel"] && a["event"] == n["event"])
        {
            outln!(
                "    #{} {} {} {}",
                cell(&a["attempt"]),
                cell(&a["at"]),
                if a["ok"] == true { "ok" } else { "failed" },
                cell(&a["detail"])
            );
        }
    }
    Ok(())
}

pub async fn transition(
    api: &Api,
    id: i64,
    action: &str,
    note: Option<String>,
    fmt: Format,
) -> CmdResult {
    let v = api
        .post(
            &format!("/api/v1/incidents/{id}/{action}"),
            serde_json::json!({ "note": note }),
        )
        .await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        outln!("incident {id} is {}", cell(&v["status"]));
    }
    Ok(())
}

pub async fn channels(api: &Api, fmt: Format) -> CmdResult {
    let header = ["ID", "KIND", "TARGET", "FOR"];
    list(api, "/api/v1/channels", fmt, &header, |c| {
        let scope = match (c["service"].as_str(), c["tier"].as_str()) {
            (Some(s), _) => format!("service {s}"),
            (None, Some(t)) => format!("tier {t}"),
            (None, None) => "all".into(),
        };
        vec![cell(&c["id"]), cell(&c["kind"]), cell(&c["target"]), scope]
    })
    .await
}

pub async fn add_channel(api: &Api, body: serde_json::Value, fmt: Format) -> CmdResult {
    let v = api.post("/api/v1/channels", body).await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        outln!(
            "channel {} added: {} {}",
            cell(&v["id"]),
            cell(&v["kind"]),
            cell(&v["target"])
        );
    }
    Ok(())
}

pub async fn remove_channel(api: &Api, id: i64, fmt: Format) -> CmdResult {
    let answer = api.delete(&format!("/api/v1/channels/{id}")).await?;
    if fmt == Format::Json {
        json(&answer);
    } else {
        outln!("channel {id} removed");
    }
    Ok(())
}

/// Turns the maintenance page of `service` on (503 with `Retry-After`) or,
/// with no `retry_after`, off.
async fn maintenance_mode(
    api: &Api,
    service: &str,
    retry_after: Option<u32>,
    fmt: Format,
) -> Result<serde_json::Value, crate::Exit> {
    let body = match retry_after {
        Some(seconds) => serde_json::json!({ "on": true, "retry_after_s": seconds }),
        None => serde_json::json!({ "on": false }),
    };
    let path = format!("/api/v1/services/{service}/maintenance-mode");
    let v = api.post(&path, body).await?;
    if fmt == Format::Table {
        match retry_after {
            Some(s) => outln!("{service}: maintenance page on (503, Retry-After {s}s)"),
            None => outln!("{service}: maintenance page off; traffic flows again"),
        }
    }
    Ok(v)
}

pub async fn maintenance(api: &Api, command: crate::MaintenanceCommand, fmt: Format) -> CmdResult {
    use crate::MaintenanceCommand as M;
    let v = match command {
        M::Add {
            service,
            from,
            to,
            reason,
        } => {
            let body = serde_json::json!({ "from": from, "to": to, "reason": reason });
            let v = api
                .post(&format!("/api/v1/services/{service}/maintenance"), body)
                .await?;
            if fmt == Format::Table {
                outln!(
                    "maintenance #{} of {service} from {} to {} scheduled and announced",
                    cell(&v["id"]),
                    cell(&v["starts_at"]),
                    cell(&v["ends_at"])
                );
            }
            v
        }
        M::Ls { service } => {
            let path = match service {
                Some(s) => format!("/api/v1/maintenance?service={s}"),
                None => "/api/v1/maintenance".into(),
            };
            let header = ["ID", "SERVICE", "FROM", "TO", "REASON"];
            return list(api, &path, fmt, &header, |w| {
                vec![
                    cell(&w["id"]),
                    cell(&w["service"]),
                    cell(&w["starts_at"]),
                    cell(&w["ends_at"]),
                    cell(&w["reason"]),
                ]
            })
            .await;
        }
        M::Rm { id } => {
            let v = api.delete(&format!("/api/v1/maintenance/{id}")).await?;
            if fmt == Format::Table {
                outln!("maintenance #{id} cancelled");
            }
            v
        }
        M::On {
            service,
            retry_after,
        } => maintenance_mode(api, &service, Some(retry_after), fmt).await?,
        M::Off { service } => maintenance_mode(api, &service, None, fmt).await?,
    };
    if fmt == Format::Json {
        json(&v);
    }
    Ok(())
}
