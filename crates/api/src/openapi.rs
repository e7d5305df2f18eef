//! The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`.
//! Written out here rather than derived: the API is small and the document
//! is checked by a test against the router's paths. Each route's entry in
//! [`PATHS`] is also what [`crate::auth`] checks callers against.

use axum::Json;
use tandem_core::access::Need;

/// A route of the API: what it needs of its caller
/// ([`tandem_core::access::Need`]), what it does, and the JSON Schemas of
/// its body and query, made from the very types its handler reads them
/// into.
pub struct Route {
    pub path: &'static str,
    pub method: &'static str,
    pub need: Need,
    pub summary: &'static str,
    pub body: Option<fn() -> serde_json::Value>,
    pub query: Option<fn() -> serde_json::Value>,
}

impl Route {
    /// A route without body or query.
    const PLAIN: Route = Route {
        path: "",
        method: "",
        need: Need::Admin,
        summary: "",
        body: None,
        query: None,
    };
}

/// The JSON Schema of `T`, as OpenAPI 3.1 takes it.
fn schema<T: schemars::JsonSchema>() -> serde_json::Value {
    // Inlined: a `$ref` in a schema placed inside the document would be
    // read from the document's root.
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    let generator = settings.into_generator();
    let mut v = generator.into_root_schema_for::<T>().to_value();
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
    }
    v
}

pub const PATHS: [Route; 59] = [
    Route {
        path: "/api/v1/health",
        method: "get",
        need: Need::Public,
        summary: "Health of the control plane: 200, or 503 with the storage fault that stops writes",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services",
        method: "get",
        need: Need::CustomerRead,
        summary: "List services",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services",
        method: "post",
        need: Need::Admin,
        summary: "Register a service from a git repository and queue a run of its head",
        body: Some(schema::<crate::pipelines::AddBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}",
        method: "get",
        need: Need::CustomerRead,
        summary: "One service",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}",
        method: "delete",
        need: Need::Admin,
        summary: "Stop a service's instances and forget it",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/hooks/{provider}",
        method: "post",
        need: Need::Public,
        summary: "Push webhook (github, gitlab, gitea); 401 on a bad signature, 202 otherwise",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/runs",
        method: "post",
        need: Need::Operate,
        summary: "Queue a pipeline run of a ref (default: the branch head)",
        body: Some(schema::<crate::pipelines::RunBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/secrets",
        method: "get",
        need: Need::Read,
        summary: "Names of a service's secrets (never their values)",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/secrets/{secret}",
        method: "put",
        need: Need::Operate,
        summary: "Set a secret; injected into instances and steps that declare it",
        body: Some(schema::<crate::pipelines::SecretBody>),
        query: Some(schema::<crate::pipelines::SecretQuery>),
    },
    Route {
        path: "/api/v1/services/{name}/secrets/{secret}",
        method: "delete",
        need: Need::Operate,
        summary: "Remove a secret",
        query: Some(schema::<crate::pipelines::SecretQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs",
        method: "get",
        need: Need::CustomerRead,
        summary: "Pipeline runs, newest first",
        query: Some(schema::<crate::pipelines::RunsQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs/{id}",
        method: "get",
        need: Need::CustomerRead,
        summary: "One pipeline run",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs/{id}/logs",
        method: "get",
        need: Need::Read,
        summary: "A run's log as Server-Sent Events (`follow=true` until it ends)",
        query: Some(schema::<crate::pipelines::LogQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs/{id}/cancel",
        method: "post",
        need: Need::Operate,
        summary: "Cancel a run",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs/{id}/retry",
        method: "post",
        need: Need::Operate,
        summary: "Run a finished run's commit again",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs/{id}/approve",
        method: "post",
        need: Need::Approve,
        summary: "Approve the promotion a run waits for; the approver is recorded",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/policy",
        method: "get",
        need: Need::Read,
        summary: "A service's gate policy per environment",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/policy",
        method: "put",
        need: Need::Admin,
        summary: "Change one environment's gate policy (journalled policy.set)",
        body: Some(schema::<tandem_delivery::PolicyChange>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/runs/{id}/reject",
        method: "post",
        need: Need::Approve,
        summary: "Refuse the promotion a run waits for, with a reason (journalled)",
        body: Some(schema::<crate::pipelines::RejectBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/releases",
        method: "get",
        need: Need::CustomerRead,
        summary: "Releases of a service, newest first",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/rollback",
        method: "post",
        need: Need::Operate,
        summary: "Re-release an earlier release (body {to, force}: one that never went live only with force); streams NDJSON progress",
        body: Some(schema::<crate::RollbackBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/logs",
        method: "get",
        need: Need::Read,
        summary: "Last lines of the service's instance logs (?lines=N, ?release=R); each line's `next` is a cursor, and ?after=INSTANCE:FILE:OFFSET,... returns what was written since",
        query: Some(schema::<crate::LogsQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/deploys",
        method: "post",
        need: Need::Operate,
        summary: "Deploy a directory holding a tandem.yaml; streams NDJSON progress",
        body: Some(schema::<crate::DeployBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/status",
        method: "get",
        need: Need::CustomerRead,
        summary: "Services with their running instances",
        query: Some(schema::<crate::StatusQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/events",
        method: "get",
        need: Need::CustomerRead,
        summary: "Journal events after a sequence number",
        query: Some(schema::<crate::EventsQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/audit/verify",
        method: "get",
        need: Need::Read,
        summary: "Verify the journal's hash chain",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/audit/key",
        method: "get",
        need: Need::Signed,
        summary: "The verifier key of the installation's log (C2SP signed-note form)",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/audit/checkpoint",
        method: "get",
        need: Need::Signed,
        summary: "The signed checkpoint of the journal as it stands (signed now if it grew since the last)",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/audit/consistency",
        method: "get",
        need: Need::Signed,
        summary: "The RFC 6962 proof that the journal now extends its first `from` events",
        query: Some(schema::<crate::audit::ConsistencyQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/audit/export",
        method: "get",
        need: Need::CustomerRead,
        summary: "A bundle of a customer's events with their proofs, checkable offline (`tandem verify`)",
        query: Some(schema::<crate::reports::ExportQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/reports/sla",
        method: "get",
        need: Need::CustomerRead,
        summary: "A customer's SLA report for a month, computed from the journal (canonical JSON, CSV or HTML)",
        query: Some(schema::<crate::reports::SlaQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/reports/dora",
        method: "get",
        need: Need::CustomerRead,
        summary: "DORA metrics (frequency, lead time, change failure rate, recovery time, rework rate) per service and in total",
        query: Some(schema::<crate::reports::DoraQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/reports/changes",
        method: "get",
        need: Need::CustomerRead,
        summary: "Change evidence: a row per production change of a customer's services in a month",
        query: Some(schema::<crate::reports::ChangesQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/trace",
        method: "get",
        need: Need::CustomerRead,
        summary: "A change from commit to run, stages, approvals, release, deployments and incidents",
        query: Some(schema::<crate::reports::TraceQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/customers/{name}/contract",
        method: "get",
        need: Need::CustomerRead,
        summary: "A customer's contract as last set",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/customers/{name}/contract",
        method: "put",
        need: Need::Admin,
        summary: "Set a customer's contract (objectives, maintenance notice, credits; journaled whole)",
        body: Some(schema::<crate::reports::ContractBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/incidents",
        method: "get",
        need: Need::CustomerRead,
        summary: "Incidents, newest first (`open=true`: unresolved only)",
        query: Some(schema::<crate::ops::IncidentsQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/incidents/{id}",
        method: "get",
        need: Need::CustomerRead,
        summary: "One incident with its notification attempts",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/incidents/{id}/ack",
        method: "post",
        need: Need::Operate,
        summary: "Acknowledge an incident",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/incidents/{id}/resolve",
        method: "post",
        need: Need::Operate,
        summary: "Resolve an incident with a note",
        body: Some(schema::<crate::ops::ResolveBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/maintenance",
        method: "post",
        need: Need::Operate,
        summary: "Schedule a maintenance window (announced; its minutes are excluded from SLOs)",
        body: Some(schema::<crate::ops::MaintenanceBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/services/{name}/maintenance-mode",
        method: "post",
        need: Need::Operate,
        summary: "Serve 503 with Retry-After instead of forwarding (on/off)",
        body: Some(schema::<crate::ops::ModeBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/maintenance",
        method: "get",
        need: Need::CustomerRead,
        summary: "Maintenance windows",
        query: Some(schema::<crate::ops::MaintenanceQuery>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/maintenance/{id}",
        method: "delete",
        need: Need::Operate,
        summary: "Cancel a maintenance window",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/channels",
        method: "get",
        need: Need::Read,
        summary: "Notification channels",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/channels",
        method: "post",
        need: Need::Admin,
        summary: "Add a channel: webhook (signed), slack or email",
        body: Some(schema::<crate::ops::ChannelBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/channels/{id}",
        method: "delete",
        need: Need::Admin,
        summary: "Remove a channel",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/openapi.json",
        method: "get",
        need: Need::Public,
        summary: "This document",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/backup",
        method: "get",
        need: Need::Admin,
        summary: "A backup of the data directory as a tar (database, keys, artifacts); admin only",
        ..Route::PLAIN
    },
    Route {
        path: "/metrics",
        method: "get",
        need: Need::Read,
        summary: "Prometheus metrics of the data plane and of refused API requests",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/whoami",
        method: "get",
        need: Need::Signed,
        summary: "The caller: user, role, customer, token",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/users",
        method: "get",
        need: Need::Admin,
        summary: "People and their roles",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/users",
        method: "post",
        need: Need::Admin,
        summary: "Add a person with a role (body {name, role, customer?, email?})",
        body: Some(schema::<crate::people::UserBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/users/{name}",
        method: "delete",
        need: Need::Admin,
        summary: "Remove a person and their tokens (not the last admin)",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/tokens",
        method: "get",
        need: Need::Signed,
        summary: "API tokens (never their secrets): all for an admin, one's own otherwise",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/tokens",
        method: "post",
        need: Need::Admin,
        summary: "Make a token for a user (body {user, name?, expires?}); the token is in this answer only",
        body: Some(schema::<crate::people::TokenBody>),
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/tokens/{id}",
        method: "delete",
        need: Need::Signed,
        summary: "Revoke a token (an admin any, others their own); refused from the next request",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/customers",
        method: "get",
        need: Need::Read,
        summary: "Customers",
        ..Route::PLAIN
    },
    Route {
        path: "/api/v1/customers",
        method: "post",
        need: Need::Admin,
        summary: "Add a customer (body {id, name})",
        body: Some(schema::<crate::people::CustomerBody>),
        ..Route::PLAIN
    },
];

pub async fn document() -> Json<serde_json::Value> {
    let mut paths = serde_json::Map::new();
    for route in &PATHS {
        let params: Vec<serde_json::Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| serde_json::json!({}));
        let error = |description: &str| {
            serde_json::json!({
                "description": description,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
            })
        };
        let mut responses = serde_json::json!({
            "200": { "description": "OK" },
            "400": error("Bad input; `error` says what and where"),
            "404": error("No such service, run, incident or release (or not the caller's)"),
            "422": error("A body that does not match its schema, or work that failed"),
            "default": {
                "description": "Another answer: 201/202 for what was made or queued, 409 for a change the state does not allow, 503 while the store cannot write or the server is busy (errors in the Error shape)"
            },
        });
        let mut params = params;
        if let Some(query) = route.query {
            let schema = query();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
                params.push(serde_json::json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": prop,
                }));
            }
        }
        let security = if route.need == Need::Public {
            serde_json::json!([])
        } else {
            responses["401"] = error("No valid token");
            responses["403"] = error("The caller's role may not");
            serde_json::json!([{ "bearer": [] }])
        };
        entry[route.method] = serde_json::json!({
            "summary": route.summary,
            "parameters": params,
            "security": security,
            "x-tandem-need": route.need.as_str(),
            "responses": responses,
        });
        if let Some(body) = route.body {
            entry[route.method]["requestBody"] = serde_json::json!({
                "required": true,
                "content": { "application/json": { "schema": body() } }
            });
        }
    }
    Json(serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "tandem API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": { "type": "string", "description": "What went wrong, and where" },
                        "log_tail": { "type": "array", "items": { "type": "string" } }
                    }
                }
            },
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "A token from `tandem tokens create`" }
            }
        },
        "paths": paths,
    }))
}

/// The table route × role of ARCHITECTURE.md, from [`PATHS`] and
/// [`tandem_core::access::decide`].
pub fn access_table() -> String {
    use tandem_core::access::{Access, Role, decide};
    let mut out = String::from("| Route | ");
    out.push_str(&Role::ALL.map(Role::as_str).join(" | "));
    out.push_str(" |\n|---|");
    out.push_str(&"---|".repeat(Role::ALL.len()));
    out.push('\n');
    let mut routes: Vec<&Route> = PATHS.iter().collect();
    routes.sort_by_key(|r| (r.path, r.method));
    for r in routes {
        out.push_str(&format!("| `{} {}` |", r.method.to_uppercase(), r.path));
        for role in Role::ALL {
            let cell = match (r.need, decide(role, r.need)) {
                (Need::Public, _) => "anyone",
                (_, Access::Allow) => "yes",
                (_, Access::OwnCustomer) => "own",
                (_, Access::Deny) => "-",
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    /// ARCHITECTURE.md's table is this code's: `TANDEM_PRINT_TABLE=1`
    /// prints the table to paste when a route or role changes.
    #[test]
    fn architecture_md_holds_the_access_table_as_the_code_decides_it() {
        let table = super::access_table();
        if std::env::var_os("TANDEM_PRINT_TABLE").is_some() {
            println!("{table}");
        }
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../ARCHITECTURE.md"
        ))
        .expect("ARCHITECTURE.md");
        assert!(
            doc.contains(&table),
            "ARCHITECTURE.md's route × role table differs from the code's; print it with TANDEM_PRINT_TABLE=1 cargo test -p tandem-api architecture_md -- --nocapture"
        );
    }
}
