//! People and access from the command line: `users`, `tokens`,
//! `customers`, `whoami`.

use crate::Format;
use crate::client::Api;
use crate::exit::CmdResult;
use crate::output::{cell, json, list};

pub async fn whoami(api: &Api, fmt: Format) -> CmdResult {
    let v = api.get("/api/v1/whoami").await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        let customer = v["customer"]
            .as_str()
            .map(|c| format!(" of customer {c}"))
            .unwrap_or_default();
        outln!(
            "{} ({}{customer}), token {}",
            cell(&v["user"]),
            cell(&v["role"]),
            cell(&v["token"])
        );
    }
    Ok(())
}

pub async fn users(api: &Api, fmt: Format) -> CmdResult {
    list(
        api,
        "/api/v1/users",
        fmt,
        &["name", "role", "customer", "email", "since"],
        |u| {
            vec![
                cell(&u["name"]),
                cell(&u["role"]),
                cell(&u["customer"]),
                cell(&u["email"]),
                cell(&u["created_at"]),
            ]
        },
    )
    .await
}

pub async fn add_user(
    api: &Api,
    name: &str,
    role: &str,
    customer: Option<String>,
    email: Option<String>,
    fmt: Format,
) -> CmdResult {
    let v = api
        .post(
            "/api/v1/users",
            serde_json::json!({ "name": name, "role": role, "customer": customer, "email": email }),
        )
        .await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        outln!("added {name} ({role}); make a token for them: tandem tokens create --user {name}");
    }
    Ok(())
}

pub async fn remove_user(api: &Api, name: &str) -> CmdResult {
    api.delete(&format!("/api/v1/users/{name}")).await?;
    outln!("removed {name} and their tokens");
    Ok(())
}

pub async fn tokens(api: &Api, fmt: Format) -> CmdResult {
    list(
        api,
        "/api/v1/tokens",
        fmt,
        &["id", "user", "name", "created", "expires"],
        |t| {
            vec![
                cell(&t["id"]),
                cell(&t["user"]),
                cell(&t["name"]),
                cell(&t["created_at"]),
                t["expires_at"].as_str().unwrap_or("never").to_owned(),
            ]
        },
    )
    .await
}

pub async fn create_token(
    api: &Api,
    user: &str,
    name: Option<String>,
    expires: Option<String>,
    fmt: Format,
) -> CmdResult {
    let v = api
        .post(
            "/api/v1/tokens",
            serde_json::json!({ "user": user, "name": name, "expires": expires }),
        )
        .await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        // The token alone on stdout (for `$(…)`); the rest on stderr.
        outln!("{}", cell(&v["token"]));
        eprintln!(
            "token {} for {user}{}; shown this once, keep it secret (TANDEM_TOKEN=… or --token)",
            cell(&v["id"]),
            v["expires_at"]
                .as_str()
                .map(|t| format!(", valid until {t}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn revoke_token(api: &Api, id: &str) -> CmdResult {
    api.delete(&format!("/api/v1/tokens/{id}")).await?;
    outln!("revoked token {id}");
    Ok(())
}

pub async fn customers(api: &Api, fmt: Format) -> CmdResult {
    list(
        api,
        "/api/v1/customers",
        fmt,
        &["id", "name", "since"],
        |c| vec![cell(&c["id"]), cell(&c["name"]), cell(&c["created_at"])],
    )
    .await
}

pub async fn add_customer(api: &Api, id: &str, name: &str, fmt: Format) -> CmdResult {
    let v = api
        .post(
            "/api/v1/customers",
            serde_json::json!({ "id": id, "name": name }),
        )
        .await?;
    if fmt == Format::Json {
        json(&v);
    } else {
        outln!("added customer {id} ({name})");
    }
    Ok(())
}
