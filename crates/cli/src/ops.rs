//! `tandem incidents` and `tandem channels`.

use crate::Format;
use crate::client::Api;
use crate::exit::CmdResult;
use crate::output::{cell, json, table};

pub async fn incidents(api: &Api, open: bool, fmt: Format) -> CmdResult {
    let v = api.get(&format!("/api/v1/incidents?open={open}")).await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let service = match i["env"].as_str() {
                Some(env) => format!("{}@{env}", cell(&i["service"])),
                None => cell(&i["service"]),
            };
            let release = match i["suspect_release"].as_str() {
                Some(s) => format!("{} (suspect)", s),
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
        })
        .collect();
    table(
        &[
            "ID", "SERVICE", "SEVERITY", "STATUS", "OPENED", "RELEASE", "SUMMARY",
        ],
        &rows,
    );
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
        println!("incident {id} is {}", cell(&v["status"]));
    }
    Ok(())
}

pub async fn channels(api: &Api, fmt: Format) -> CmdResult {
    let v = api.get("/api/v1/channels").await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let scope = match (c["service"].as_str(), c["tier"].as_str()) {
                (Some(s), _) => format!("service {s}"),
                (None, Some(t)) => format!("tier {t}"),
                (None, None) => "all".into(),
            };
            vec![cell(&c["id"]), cell(&c["kind"]), cell(&c["target"]), scope]
        })
        .collect();
    table(&["ID", "KIND", "TARGET", "FOR"], &rows);
    Ok(())
}

pub async fn add_channel(api: &Api, body: serde_json::Value, fmt: Format) -> CmdResult {
    let v = api.post("/api/v1/channels", body).await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        println!(
            "channel {} added: {} {}",
            cell(&v["id"]),
            cell(&v["kind"]),
            cell(&v["target"])
        );
    }
    Ok(())
}

pub async fn remove_channel(api: &Api, id: i64) -> CmdResult {
    api.delete(&format!("/api/v1/channels/{id}")).await?;
    println!("channel {id} removed");
    Ok(())
}
