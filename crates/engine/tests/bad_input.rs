//! The engine re-validates what reaches it over the API: a bad spec is
//! rejected with its location and leaves the store as it was.

use tandem_engine::{Engine, EngineError, Reporter};
use tandem_store::Store;

#[tokio::test]
async fn deploy_of_a_bad_spec_is_located_and_records_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        app.path().join("tandem.yaml"),
        "service:\n  name: web\nrun:\n  command: x\n  instnces: 2\nroute:\n  host: web.test\n",
    )
    .expect("write");
    let store = Store::open(&data.path().join("tandem.db"))
        .await
        .expect("store");
    let engine = Engine::new(store.clone(), data.path());
    let err = engine
        .deploy_dir(app.path(), "user:test", &Reporter::silent())
        .await
        .expect_err("rejected");
    let EngineError::Spec(e) = err else {
        panic!("expected a spec error, got {err}")
    };
    assert_eq!((e.line, e.column), (5, 3));
    assert_eq!(e.hint.as_deref(), Some("did you mean `instances`?"));
    assert!(
        store.events(0, 10).await.expect("events").is_empty(),
        "no event recorded"
    );
    assert!(
        store.services().await.expect("services").is_empty(),
        "no service created"
    );
}

#[tokio::test]
async fn deploy_of_a_missing_directory_is_bad_input() {
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&data.path().join("tandem.db"))
        .await
        .expect("store");
    let engine = Engine::new(store, data.path());
    let err = engine
        .deploy_dir(&data.path().join("nope"), "user:test", &Reporter::silent())
        .await
        .expect_err("rejected");
    assert!(matches!(err, EngineError::BadInput(_)), "{err}");
}
