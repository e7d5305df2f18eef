//! The journal against a real SQLite file.

use tandem_core::journal::{ChainError, NewEvent};
use tandem_store::{ServiceUpsert, Store};

async fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("open store")
}

#[tokio::test]
async fn events_chain_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let a = s
        .append(NewEvent::new("user:ann", "thing.happened"))
        .await
        .expect("append");
    let b = s
        .append(NewEvent::new("user:ann", "thing.happened"))
        .await
        .expect("append");
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(b.prev, a.hash);
    drop(s);
    let s = store(&dir).await;
    let (count, head) = s.verify().await.expect("read").expect("intact");
    assert_eq!((count, head), (2, b.hash));
}

#[tokio::test]
async fn journal_rejects_updates_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    s.append(NewEvent::new("user:ann", "thing.happened"))
        .await
        .expect("append");
    let update = sqlx::query("UPDATE events SET actor = 'user:eve'")
        .execute(s.pool())
        .await;
    assert!(
        update
            .expect_err("trigger")
            .to_string()
            .contains("append-only")
    );
    let delete = sqlx::query("DELETE FROM events").execute(s.pool()).await;
    assert!(delete.is_err());
}

#[tokio::test]
async fn audit_verify_detects_an_event_altered_in_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let spec = serde_json::json!({"service": {"name": "shop"}});
    s.upsert_service(
        ServiceUpsert {
            name: "shop",
            owner: Some("team"),
            customer: Some("acme"),
            tier: "standard",
            spec: &spec,
            source: "/src",
        },
        "user:ann",
    )
    .await
    .expect("upsert");
    for _ in 0..3 {
        s.append(NewEvent::new("system:test", "thing.happened"))
            .await
            .expect("append");
    }
    // Tampering as an attacker with file access would: past the triggers.
    sqlx::query("DROP TRIGGER events_no_update")
        .execute(s.pool())
        .await
        .expect("drop trigger");
    sqlx::query("UPDATE events SET payload = '{\"owner\":\"team-other\"}' WHERE seq = 1")
        .execute(s.pool())
        .await
        .expect("tamper");
    let broken = s
        .verify()
        .await
        .expect("read")
        .expect_err("tampering detected");
    assert!(
        matches!(broken, ChainError::Altered { seq: 1, .. }),
        "{broken}"
    );
}

#[tokio::test]
async fn releases_number_up_and_go_live_one_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(&dir).await;
    let spec = serde_json::json!({});
    s.upsert_service(
        ServiceUpsert {
            name: "shop",
            owner: None,
            customer: None,
            tier: "standard",
            spec: &spec,
            source: "/src",
        },
        "user:ann",
    )
    .await
    .expect("upsert");
    let r1 = s
        .create_release("shop", "d1", "/a/d1", &spec, "/src", "user:ann")
        .await
        .expect("r1");
    let r2 = s
        .create_release("shop", "d2", "/a/d2", &spec, "/src", "user:ann")
        .await
        .expect("r2");
    assert_eq!((r1.name(), r2.name()), ("r1".to_string(), "r2".to_string()));
    s.transition(
        "shop",
        1,
        "live",
        None,
        true,
        NewEvent::new("user:ann", "release.succeeded"),
    )
    .await
    .expect("live");
    s.transition(
        "shop",
        2,
        "live",
        None,
        true,
        NewEvent::new("user:ann", "release.succeeded"),
    )
    .await
    .expect("live");
    let releases = s.releases("shop").await.expect("list");
    let statuses: Vec<_> = releases
        .iter()
        .map(|r| (r.number, r.status.as_str()))
        .collect();
    assert_eq!(statuses, vec![(2, "live"), (1, "retired")]);
    assert_eq!(
        s.service("shop")
            .await
            .expect("get")
            .and_then(|x| x.live_release),
        Some(2)
    );
    assert!(s.verify().await.expect("read").is_ok());
}
