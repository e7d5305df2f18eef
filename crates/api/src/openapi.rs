//! The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`.
//! Written out here rather than derived: the API is small and the document
//! is checked by a test against the router's paths.

use axum::Json;

pub const PATHS: [(&str, &str, &str); 38] = [
    (
        "/api/v1/health",
        "get",
        "Health of the control plane: 200, or 503 with the storage fault that stops writes",
    ),
    ("/api/v1/services", "get", "List services"),
    (
        "/api/v1/services",
        "post",
        "Register a service from a git repository and queue a run of its head",
    ),
    ("/api/v1/services/{name}", "get", "One service"),
    (
        "/api/v1/services/{name}",
        "delete",
        "Stop a service's instances and forget it",
    ),
    (
        "/api/v1/services/{name}/hooks/{provider}",
        "post",
        "Push webhook (github, gitlab, gitea); 401 on a bad signature, 202 otherwise",
    ),
    (
        "/api/v1/services/{name}/runs",
        "post",
        "Queue a pipeline run of a ref (default: the branch head)",
    ),
    (
        "/api/v1/services/{name}/secrets",
        "get",
        "Names of a service's secrets (never their values)",
    ),
    (
        "/api/v1/services/{name}/secrets/{secret}",
        "put",
        "Set a secret; injected into instances and steps that declare it",
    ),
    (
        "/api/v1/services/{name}/secrets/{secret}",
        "delete",
        "Remove a secret",
    ),
    ("/api/v1/runs", "get", "Pipeline runs, newest first"),
    ("/api/v1/runs/{id}", "get", "One pipeline run"),
    (
        "/api/v1/runs/{id}/logs",
        "get",
        "A run's log as Server-Sent Events (`follow=true` until it ends)",
    ),
    ("/api/v1/runs/{id}/cancel", "post", "Cancel a run"),
    (
        "/api/v1/runs/{id}/retry",
        "post",
        "Run a finished run's commit again",
    ),
    (
        "/api/v1/runs/{id}/approve",
        "post",
        "Approve the promotion a run waits for; the approver is recorded",
    ),
    (
        "/api/v1/services/{name}/policy",
        "get",
        "A service's gate policy per environment",
    ),
    (
        "/api/v1/services/{name}/policy",
        "put",
        "Change one environment's gate policy (journalled policy.set)",
    ),
    (
        "/api/v1/runs/{id}/reject",
        "post",
        "Refuse the promotion a run waits for, with a reason (journalled)",
    ),
    (
        "/api/v1/services/{name}/releases",
        "get",
        "Releases of a service, newest first",
    ),
    (
        "/api/v1/services/{name}/rollback",
        "post",
        "Re-release an earlier release (body {to, force}: one that never went live only with force); streams NDJSON progress",
    ),
    (
        "/api/v1/services/{name}/logs",
        "get",
        "Last lines of the service's instance logs (?lines=N, ?release=R); each line's `next` is a cursor, and ?after=INSTANCE:FILE:OFFSET,... returns what was written since",
    ),
    (
        "/api/v1/deploys",
        "post",
        "Deploy a directory holding a tandem.yaml; streams NDJSON progress",
    ),
    (
        "/api/v1/status",
        "get",
        "Services with their running instances",
    ),
    (
        "/api/v1/events",
        "get",
        "Journal events after a sequence number",
    ),
    (
        "/api/v1/audit/verify",
        "get",
        "Verify the journal's hash chain",
    ),
    (
        "/api/v1/incidents",
        "get",
        "Incidents, newest first (`open=true`: unresolved only)",
    ),
    (
        "/api/v1/incidents/{id}",
        "get",
        "One incident with its notification attempts",
    ),
    (
        "/api/v1/incidents/{id}/ack",
        "post",
        "Acknowledge an incident",
    ),
    (
        "/api/v1/incidents/{id}/resolve",
        "post",
        "Resolve an incident with a note",
    ),
    (
        "/api/v1/services/{name}/maintenance",
        "post",
        "Schedule a maintenance window (announced; its minutes are excluded from SLOs)",
    ),
    (
        "/api/v1/services/{name}/maintenance-mode",
        "post",
        "Serve 503 with Retry-After instead of forwarding (on/off)",
    ),
    ("/api/v1/maintenance", "get", "Maintenance windows"),
    (
        "/api/v1/maintenance/{id}",
        "delete",
        "Cancel a maintenance window",
    ),
    ("/api/v1/channels", "get", "Notification channels"),
    (
        "/api/v1/channels",
        "post",
        "Add a channel: webhook (signed), slack or email",
    ),
    ("/api/v1/channels/{id}", "delete", "Remove a channel"),
    ("/api/v1/openapi.json", "get", "This document"),
];

pub async fn document() -> Json<serde_json::Value> {
    let mut paths = serde_json::Map::new();
    for (path, method, summary) in PATHS {
        let params: Vec<serde_json::Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry[method] = serde_json::json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": { "description": "OK" },
                "400": { "description": "Bad input; `error` says what and where" },
                "404": { "description": "No such service or release" }
            }
        });
    }
    Json(serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "tandem API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
    }))
}
