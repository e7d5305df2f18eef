//! Continuous delivery from the command line: `services add|rm`,
//! `deploy <svc> --ref`, `pipelines` and their logs, cancel and retry.

use crate::Format;
use crate::client::Api;
use crate::exit::{CmdResult, Exit};
use crate::output::{cell, json, list};

/// What `services add` may set besides the repository and branch.
pub struct AddOptions {
    pub webhook_secret: Option<String>,
    pub poll_interval: Option<String>,
    pub path: Option<String>,
    pub token: Option<String>,
    pub token_user: Option<String>,
    pub ssh_key: Option<String>,
}

pub async fn add(
    api: &Api,
    repo: &str,
    branch: &str,
    options: AddOptions,
    fmt: Format,
) -> CmdResult {
    let AddOptions {
        webhook_secret,
        poll_interval,
        path,
        token,
        token_user,
        ssh_key,
    } = options;
    // A local path is resolved here: the server may run elsewhere.
    let url = match std::path::Path::new(repo).canonicalize() {
        Ok(p) if !repo.contains("://") => p.display().to_string(),
        _ => repo.to_owned(),
    };
    let body = serde_json::json!({
        "url": url,
        "branch": branch,
        "webhook_secret": webhook_secret,
        "poll_interval": poll_interval,
        "path": path,
        "token": token,
        "token_username": token_user,
        "ssh_key": ssh_key,
    });
    let v = api.post("/api/v1/services", body).await?;
    if fmt == Format::Json {
        json(&v);
        return Ok(());
    }
    let service = v["service"].as_str().unwrap_or_default();
    outln!("registered {service} from {url}#{branch}");
    if let Some(id) = v["run"]["id"].as_i64() {
        outln!(
            "run {id} queued for {}; follow it with `tandem pipelines logs {id} -f`",
            short(&v["run"]["commit"])
        );
    }
    Ok(())
}

pub async fn remove(api: &Api, service: &str) -> CmdResult {
    api.delete(&format!("/api/v1/services/{service}")).await?;
    outln!("removed {service}; its instances are stopped, its history stays in the journal");
    Ok(())
}

/// Queues a run of `rev` and follows it to its end.
pub async fn deploy_ref(api: &Api, service: &str, rev: Option<String>, fmt: Format) -> CmdResult {
    let run = api
        .post(
            &format!("/api/v1/services/{service}/runs"),
            serde_json::json!({ "ref": rev }),
        )
        .await?;
    let id = run["id"]
        .as_i64()
        .ok_or_else(|| Exit::failure("the server did not say which run it queued"))?;
    if fmt == Format::Table {
        eprintln!("run {id}: {} of {service}", short(&run["commit"]));
    }
    logs(api, id, true, fmt).await
}

pub async fn runs(api: &Api, service: Option<&str>, fmt: Format) -> CmdResult {
    let path = match service {
        Some(s) => format!("/api/v1/runs?service={s}"),
        None => "/api/v1/runs".into(),
    };
    let header = [
        "RUN", "SERVICE", "COMMIT", "STATUS", "AUTHOR", "MESSAGE", "STAGES",
    ];
    list(api, &path, fmt, &header, |r| {
        let stages = r["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let took = match (s["started_ms"].as_u64(), s["ended_ms"].as_u64()) {
                    (Some(a), Some(b)) => format!("{:.1}s", b.saturating_sub(a) as f64 / 1000.0),
                    _ => "…".into(),
                };
                format!("{} {took}", cell(&s["name"]))
            })
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            cell(&r["id"]),
            cell(&r["service"]),
            short(&r["commit"]),
            cell(&r["status"]),
            cell(&r["author"]),
            cell(&r["message"]).chars().take(40).collect(),
            stages,
        ]
    })
    .await
}

/// Prints a run's log; with `follow`, until the run ends, and exits with
/// its outcome.
pub async fn logs(api: &Api, id: i64, follow: bool, fmt: Format) -> CmdResult {
    let mut end: Option<serde_json::Value> = None;
    api.get_events(
        &format!("/api/v1/runs/{id}/logs?follow={follow}"),
        |event, data| match event {
            "line" if fmt == Format::Table => outln!("{data}"),
            "end" => end = serde_json::from_str(data).ok(),
            _ => {}
        },
    )
    .await?;
    let end = end.unwrap_or_default();
    if fmt == Format::Json {
        json(&api.get(&format!("/api/v1/runs/{id}")).await?);
    }
    if !follow {
        return Ok(());
    }
    match end["status"].as_str() {
        Some("succeeded") => Ok(()),
        Some("waiting-approval") => {
            eprintln!("run {id} waits for approval: tandem approve {id}");
            Ok(())
        }
        Some(status) => Err(Exit::failure(format!(
            "run {id} {status}{}",
            end["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))),
        None => Err(Exit::failure(format!(
            "the log of run {id} ended without an outcome; see `tandem pipelines`"
        ))),
    }
}

pub async fn act(api: &Api, id: i64, action: &str, fmt: Format) -> CmdResult {
    let v = api
        .post(
            &format!("/api/v1/runs/{id}/{action}"),
            serde_json::json!({}),
        )
        .await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        match action {
            "retry" => outln!("run {} queued for {}", cell(&v["id"]), short(&v["commit"])),
            "approve" if v["status"] == "queued" => {
                outln!("run {id} approved; it promotes now")
            }
            "approve" => outln!("run {id}: approval recorded; more are needed"),
            _ => outln!("run {id} is {}", cell(&v["status"])),
        }
    }
    Ok(())
}

pub async fn policy(
    api: &Api,
    service: &str,
    change: Option<serde_json::Value>,
    fmt: Format,
) -> CmdResult {
    let path = format!("/api/v1/services/{service}/policy");
    if let Some(change) = change {
        let v = api.put(&path, change).await?;
        if fmt == Format::Json {
            json(&v);
        } else {
            outln!(
                "{service} {}: approvals {} from {}, approvers {}, {}{}",
                cell(&v["env"]),
                cell(&v["approvals"]),
                cell(&v["approvers_from"]),
                approvers(&v["approvers"]),
                if v["required"] == true {
                    "required"
                } else {
                    "optional"
                },
                if v["author_may_approve"] == true {
                    ", the author may approve"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    let header = [
        "env",
        "approvals",
        "from",
        "approvers",
        "author may",
        "required",
        "set by",
        "at",
    ];
    crate::output::list(api, &path, fmt, &header, |p| {
        vec![
            cell(&p["env"]),
            cell(&p["approvals"]),
            cell(&p["approvers_from"]),
            approvers(&p["approvers"]),
            if p["author_may_approve"] == true {
                "yes".into()
            } else {
                "no".into()
            },
            if p["required"] == true {
                "yes".into()
            } else {
                "no".into()
            },
            cell(&p["updated_by"]),
            cell(&p["updated_at"]),
        ]
    })
    .await
}

fn approvers(v: &serde_json::Value) -> String {
    let names: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    if names.is_empty() {
        "anyone".into()
    } else {
        names.join(",")
    }
}

pub async fn reject(api: &Api, id: i64, reason: &str, fmt: Format) -> CmdResult {
    let v = api
        .post(
            &format!("/api/v1/runs/{id}/reject"),
            serde_json::json!({ "reason": reason }),
        )
        .await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        outln!("run {id} rejected: {}", cell(&v["reason"]));
    }
    Ok(())
}

pub async fn secrets(api: &Api, command: crate::SecretsCommand, fmt: Format) -> CmdResult {
    use crate::SecretsCommand as S;
    match command {
        S::Set { service, name, env } => {
            let mut value = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
                .map_err(|e| Exit::bad_input(format!("cannot read the value from stdin: {e}")))?;
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return Err(Exit::bad_input(format!(
                    "no value on stdin; e.g. printf %s \"$VALUE\" | tandem secrets set {service} {name}"
                )));
            }
            let answer = api
                .put(
                    &format!(
                        "/api/v1/services/{service}/secrets/{name}{}",
                        env_query(&env)
                    ),
                    serde_json::json!({ "value": value }),
                )
                .await?;
            match (fmt, env) {
                (Format::Json, _) => crate::output::json(&answer),
                (_, Some(env)) => outln!("{service}: {name} set for {env}"),
                (_, None) => outln!("{service}: {name} set"),
            }
        }
        S::Ls { service } => {
            let path = format!("/api/v1/services/{service}/secrets");
            return list(api, &path, fmt, &["NAME", "ENV", "UPDATED"], |s| {
                vec![
                    cell(&s["name"]),
                    s["env"].as_str().unwrap_or("(all)").to_owned(),
                    cell(&s["updated_at"]),
                ]
            })
            .await;
        }
        S::Rm { service, name, env } => {
            let answer = api
                .delete(&format!(
                    "/api/v1/services/{service}/secrets/{name}{}",
                    env_query(&env)
                ))
                .await?;
            if fmt == Format::Json {
                crate::output::json(&answer);
            } else {
                outln!("{service}: {name} removed");
            }
        }
    }
    Ok(())
}

/// `?env=E` for an environment's secret, nothing for the service-wide one.
fn env_query(env: &Option<String>) -> String {
    env.as_ref()
        .map(|e| format!("?env={e}"))
        .unwrap_or_default()
}

fn short(v: &serde_json::Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}
