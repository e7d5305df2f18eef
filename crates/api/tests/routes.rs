//! The router against a real SQLite store, called with `oneshot`.

use axum::body::Body;
use http_body_util::BodyExt;
use tandem_api::{AppState, router};
use tandem_engine::Engine;
use tandem_store::Store;
use tower::ServiceExt;

async fn app(dir: &tempfile::TempDir) -> axum::Router {
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    let engine = Engine::new(store, dir.path());
    let delivery = tandem_delivery::Delivery::start(engine.clone(), dir.path(), 1)
        .await
        .expect("delivery");
    let ops = tandem_ops::Ops::new(engine.clone());
    router(AppState::new(tandem_api::Shared {
        engine,
        delivery,
        ops,
        agent_status: Default::default(),
        refused: Default::default(),
        allowed_hosts: Default::default(),
    }))
}

/// The first admin's token of the store in `dir` (made on first call).
async fn admin_token(dir: &tempfile::TempDir) -> String {
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    store
        .bootstrap_admin()
        .await
        .expect("bootstrap")
        .expect("a fresh store")
}

async fn call(app: &axum::Router, method: &str, path: &str) -> (u16, Vec<u8>) {
    call_as(app, method, path, None, &[]).await
}

async fn call_as(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    send(app, method, path, token, headers, "{}").await
}

async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<u8>) {
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "127.0.0.1:7070");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body.to_owned())).expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

#[tokio::test]
async fn every_documented_path_is_routed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = admin_token(&dir).await;
    let app = app(&dir).await;
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    // The router's own table against the documented one, both ways: a
    // route served but not documented (it would need an admin, silently)
    // or documented but not served fails here.
    let routed: std::collections::BTreeSet<(String, &str)> = tandem_api::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_lowercase(), p))
        .collect();
    assert_eq!(
        routed.len(),
        tandem_api::route_table().len(),
        "a route twice"
    );
    let documented: std::collections::BTreeSet<(String, &str)> = tandem_api::openapi::PATHS
        .iter()
        .map(|p| (p.method.to_lowercase(), p.path))
        .collect();
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, &str)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, &str)>::new(),
        "documented but not served"
    );
    // The document served is that table too.
    let served: std::collections::BTreeSet<(String, &str)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .map(move |(m, _)| (m.clone(), p.as_str()))
        })
        .collect();
    assert_eq!(served, documented);
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path
                .replace("{name}", "nope")
                .replace("{id}", "0")
                .replace("{provider}", "github")
                .replace("{secret}", "S");
            let (status, body) =
                call_as(&app, &method.to_uppercase(), &concrete, Some(&token), &[]).await;
            // axum's own 404/405 for an unrouted path has an empty body;
            // ours always explains itself.
            assert!(
                !(status == 404 || status == 405) || !body.is_empty(),
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
}

#[tokio::test]
async fn unknown_service_is_404_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = admin_token(&dir).await;
    let app = app(&dir).await;
    let (status, body) = call_as(
        &app,
        "GET",
        "/api/v1/services/nope/releases",
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "no service named nope");
}

/// A service of customer `customer` with a run, an incident and a
/// maintenance window, its owner a marker that must not leak.
async fn service_of(store: &Store, engine: &Engine, name: &str, customer: &str) -> (i64, i64) {
    let yaml = format!(
        "service:\n  name: {name}\n  owner: owner-of-{name}\n  customer: {customer}\nrun:\n  command: exec sleep 100\nroute:\n  host: {name}.test\n"
    );
    let spec = tandem_core::Spec::parse("tandem.yaml", &yaml).expect("spec");
    engine
        .register(&spec, "test", None, "user:admin")
        .await
        .expect("register");
    let run = store
        .enqueue_run(
            tandem_store::NewRun {
                service: name.into(),
                commit: format!("{:0>40}", name.len()),
                branch: "main".into(),
                trigger: "manual".into(),
                author: Some(format!("author-of-{name}")),
                committed_at: None,
                message: Some(format!("message-of-{name}")),
                retry_of: None,
            },
            false,
            "user:admin",
        )
        .await
        .expect("run")
        .expect("queued");
    let incident = store
        .open_incident(
            &tandem_store::NewIncident {
                service: name.into(),
                env: None,
                kind: "probe".into(),
                severity: "critical".into(),
                summary: format!("summary-of-{name}"),
                release: None,
                suspect_release: None,
            },
            "system:test",
        )
        .await
        .expect("incident");
    store
        .add_maintenance(
            name,
            "2030-01-01T00:00:00Z",
            "2030-01-01T01:00:00Z",
            &format!("maintenance-of-{name}"),
            "user:admin",
        )
        .await
        .expect("maintenance");
    (run.id, incident.id)
}

/// Every route of the API document, tried as nobody, as another
/// customer's viewer and as a viewer: the document is the list, so a new
/// route cannot be missed.
#[tokio::test]
async fn every_route_refuses_who_may_not_and_hides_other_customers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = admin_token(&dir).await;
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    let engine = Engine::new(store.clone(), dir.path());
    for (id, name) in [("acme", "ACME AG"), ("globex", "Globex")] {
        store
            .add_customer(id, name, "user:admin")
            .await
            .expect("customer");
    }
    let (run_a, incident_a) = service_of(&store, &engine, "shop-a", "acme").await;
    let (run_b, _) = service_of(&store, &engine, "shop-b", "globex").await;
    let mut tokens = std::collections::HashMap::new();
    for (user, role, customer) in [
        ("vic", "viewer", None),
        ("bea", "customer-viewer", Some("globex")),
    ] {
        let row = tandem_store::identity::UserRow {
            name: user.into(),
            role: role.into(),
            customer: customer.map(Into::into),
            email: None,
            created_at: String::new(),
        };
        store.add_user(&row, "user:admin").await.expect("user");
        let (token, _) = store
            .create_token(user, "test", None, "user:admin")
            .await
            .expect("token");
        tokens.insert(user, token);
    }
    let app = app(&dir).await;
    // What people did (the scheduler works on in the background).
    let journal_len = || async {
        store
            .events(0, 100_000)
            .await
            .expect("events")
            .iter()
            .filter(|e| e.actor.starts_with("user:"))
            .count()
    };
    let leaks_a = |body: &[u8]| {
        let text = String::from_utf8_lossy(body);
        [
            "owner-of-shop-a",
            "author-of-shop-a",
            "message-of-shop-a",
            "summary-of-shop-a",
            "maintenance-of-shop-a",
        ]
        .iter()
        .find(|m| text.contains(*m))
        .map(|m| m.to_string())
    };

    let mut tried = 0;
    for route in &tandem_api::openapi::PATHS {
        let method = route.method.to_uppercase();
        // A customer's own route names the customer; others name a service.
        let of_a = route
            .path
            .replace("/customers/{name}", "/customers/acme")
            .replace("{name}", "shop-a")
            .replace("{secret}", "S")
            .replace("{provider}", "github")
            .replace(
                "{id}",
                &if route.path.starts_with("/api/v1/incidents/") {
                    incident_a
                } else {
                    run_a
                }
                .to_string(),
            );
        if route.need == tandem_core::access::Need::Public {
            continue;
        }
        tried += 1;
        // Nobody: 401, whatever the body.
        let (status, _) = call(&app, &method, &of_a).await;
        assert_eq!(status, 401, "{method} {} without a token", route.path);
        let (status, _) = call_as(&app, &method, &of_a, Some("tdm_00000000_00"), &[]).await;
        assert_eq!(status, 401, "{method} {} with a made-up token", route.path);

        // Another customer's viewer: A's things do not exist.
        let before = journal_len().await;
        let (status, body) = call_as(&app, &method, &of_a, Some(&tokens["bea"]), &[]).await;
        let names_a = route.path.starts_with("/api/v1/services/{name}")
            || route.path.starts_with("/api/v1/customers/{name}")
            || route.path.starts_with("/api/v1/runs/")
            || route.path.starts_with("/api/v1/incidents/");
        if names_a {
            // Whatever it asks of A's thing: there is no such thing.
            assert_eq!(status, 404, "{method} {} as globex's viewer", route.path);
        } else if route.need == tandem_core::access::Need::Signed {
            // One's own things (whoami, tokens): another's is unknown.
            assert!(
                [200, 404].contains(&status),
                "{method} {}: {status}",
                route.path
            );
        } else if route.path == "/api/v1/trace" {
            // It needs a commit, release or incident to start from: asked
            // for none, it says so and reads nothing.
            assert_eq!(status, 400, "{method} {} as globex's viewer", route.path);
        } else {
            assert!(
                status == 403 || (method == "GET" && status == 200),
                "{method} {} as globex's viewer: {status}",
                route.path
            );
        }
        assert_eq!(
            leaks_a(&body),
            None,
            "{method} {} shows acme's data to globex",
            route.path
        );
        assert_eq!(
            journal_len().await,
            before,
            "{method} {} changed something",
            route.path
        );

        // A viewer changes nothing.
        if method != "GET" {
            let before = journal_len().await;
            let (status, _) = call_as(&app, &method, &of_a, Some(&tokens["vic"]), &[]).await;
            // A route for one's own things (a token): another's is unknown.
            let expected = if route.need == tandem_core::access::Need::Signed {
                404
            } else {
                403
            };
            assert_eq!(status, expected, "{method} {} as a viewer", route.path);
            assert_eq!(
                journal_len().await,
                before,
                "{method} {} as a viewer",
                route.path
            );
        }
    }
    assert!(tried > 40, "only {tried} routes tried");

    // Globex's viewer sees globex's own.
    let (status, body) = call_as(
        &app,
        "GET",
        &format!("/api/v1/runs/{run_b}"),
        Some(&tokens["bea"]),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, body) = call_as(&app, "GET", "/api/v1/services", Some(&tokens["bea"]), &[]).await;
    let services: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let names: Vec<&str> = services
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["shop-b"]);
    // Its lists hold its own, not only nothing of the other's.
    for (path, marker) in [
        ("/api/v1/runs", "message-of-shop-b"),
        ("/api/v1/incidents", "summary-of-shop-b"),
        ("/api/v1/maintenance", "maintenance-of-shop-b"),
        ("/api/v1/events?limit=1", "shop-b"),
    ] {
        let (status, body) = call_as(&app, "GET", path, Some(&tokens["bea"]), &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            String::from_utf8_lossy(&body).contains(marker),
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // A later spec naming another customer does not hand shop-a over.
    let yaml = "service:\n  name: shop-a\n  customer: globex\nrun:\n  command: exec sleep 100\nroute:\n  host: shop-a.test\n";
    let spec = tandem_core::Spec::parse("tandem.yaml", yaml).expect("spec");
    engine
        .register(&spec, "test", None, "user:admin")
        .await
        .expect("register");
    let (status, _) = call_as(
        &app,
        "GET",
        "/api/v1/services/shop-a",
        Some(&tokens["bea"]),
        &[],
    )
    .await;
    assert_eq!(status, 404, "a commit moved shop-a to globex");

    // What the client says it is changes nothing: the journal names the
    // token's user.
    let (status, body) = send(
        &app,
        "PUT",
        "/api/v1/services/shop-a/secrets/API_KEY",
        Some(&admin),
        &[("x-tandem-actor", "user:ceo")],
        r#"{"value": "k-123456"}"#,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let events = store.events(0, 100_000).await.expect("events");
    let set = events
        .iter()
        .rfind(|e| e.kind == "secret.set")
        .expect("secret.set");
    assert_eq!(set.actor, "user:admin", "{set:?}");
}

#[tokio::test]
async fn foreign_hosts_and_cross_site_changes_are_refused_and_errors_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = admin_token(&dir).await;
    let app = app(&dir).await;
    let json = |body: &[u8]| -> serde_json::Value {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
    };
    // DNS rebinding: a name the server was not told it answers to.
    let (status, body) = call_as(
        &app,
        "GET",
        "/api/v1/status",
        Some(&admin),
        &[("host", "attacker.example:7070")],
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        json(&body)["error"]
            .as_str()
            .expect("error")
            .contains("does not answer to the host")
    );
    // Two of them, one harmless: which one would a proxy in front read?
    let req = axum::http::Request::builder()
        .uri("/api/v1/status")
        .header("host", "127.0.0.1:7070")
        .header("host", "attacker.example")
        .header("authorization", format!("Bearer {admin}"))
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), 400);
    // A Host that is not text is no "missing Host".
    let req = axum::http::Request::builder()
        .uri("/api/v1/status")
        .header(
            "host",
            axum::http::HeaderValue::from_bytes(b"a\xff").expect("bytes"),
        )
        .header("authorization", format!("Bearer {admin}"))
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), 400);
    // HEAD needs what GET needs: the health check, no token.
    let (status, _) = call(&app, "HEAD", "/api/v1/health").await;
    assert_eq!(status, 200);
    for host in ["localhost:7070", "[::1]:7070", "10.1.2.3"] {
        let (status, _) = call_as(
            &app,
            "GET",
            "/api/v1/status",
            Some(&admin),
            &[("host", host)],
        )
        .await;
        assert_eq!(status, 200, "{host}");
    }
    // A page of another site posting with the admin's token (a browser
    // that somehow has it): refused; the same site is not.
    let (status, _) = call_as(
        &app,
        "POST",
        "/api/v1/customers",
        Some(&admin),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = send(
        &app,
        "POST",
        "/api/v1/customers",
        Some(&admin),
        &[("origin", "http://127.0.0.1:7070")],
        r#"{"id": "acme", "name": "ACME AG"}"#,
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    // A body-less change without a token: 401 before anything is read.
    let (status, _) = call(&app, "POST", "/api/v1/services/shop/rollback").await;
    assert_eq!(status, 401);
    // axum's own rejections in the API's error shape.
    let (status, body) = send(
        &app,
        "POST",
        "/api/v1/customers",
        Some(&admin),
        &[],
        "{not json",
    )
    .await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].is_string());
    let (status, body) = call_as(&app, "GET", "/api/v1/runs/abc", Some(&admin), &[]).await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].is_string());
    let (status, body) = send(
        &app,
        "POST",
        "/api/v1/customers",
        Some(&admin),
        &[],
        r#"{"id": 1}"#,
    )
    .await;
    assert_eq!(status, 422);
    assert!(json(&body)["error"].as_str().expect("error").contains("id"));
}

#[tokio::test]
async fn the_document_has_the_bodies_and_queries_of_the_handlers_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(&dir).await;
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("json");
    let users = &doc["paths"]["/api/v1/users"]["post"];
    let body = &users["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        body["required"],
        serde_json::json!(["name", "role"]),
        "{body}"
    );
    assert!(body["properties"]["email"].is_object());
    let events = doc["paths"]["/api/v1/events"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let names: Vec<&str> = events.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["after", "limit"]);
    assert_eq!(
        doc["paths"]["/api/v1/health"]["get"]["security"],
        serde_json::json!([])
    );
    assert_eq!(
        doc["paths"]["/api/v1/users"]["get"]["security"],
        serde_json::json!([{ "bearer": [] }])
    );
    // Every reference resolves within the document.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"").skip(1) {
        let target = part.split('"').next().expect("ref");
        let pointer = target.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
}
