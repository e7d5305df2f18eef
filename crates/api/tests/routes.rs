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
    router(AppState {
        engine,
        delivery,
        ops,
        agent_status: Default::default(),
    })
}

async fn call(app: &axum::Router, method: &str, path: &str) -> (u16, Vec<u8>) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .expect("request");
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
    let app = app(&dir).await;
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    let documented: std::collections::BTreeSet<&str> =
        tandem_api::openapi::PATHS.iter().map(|p| p.0).collect();
    assert_eq!(paths.len(), documented.len());
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path
                .replace("{name}", "nope")
                .replace("{id}", "0")
                .replace("{provider}", "github")
                .replace("{secret}", "S");
            let (status, body) = call(&app, &method.to_uppercase(), &concrete).await;
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
    let app = app(&dir).await;
    let (status, body) = call(&app, "GET", "/api/v1/services/nope/releases").await;
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "no service named nope");
}
