//! A damaged database file is told at start, with the way out, and a WAL
//! removed from under a running store is noticed and loses nothing
//! committed before the next checkpoint.

use tandem_store::Store;

#[tokio::test]
async fn a_damaged_database_is_refused_at_open_naming_the_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tandem.db");
    {
        let store = Store::open(&db).await.expect("open");
        for i in 0..200 {
            store
                .set_secret(
                    "shop",
                    None,
                    &format!("S{i}"),
                    &"v".repeat(500),
                    "user:test",
                )
                .await
                .expect("write");
        }
        store.checkpoint().await.expect("checkpoint");
    }
    // Scribble over the middle of the file: pages of the tables.
    let mut bytes = std::fs::read(&db).expect("read");
    assert!(bytes.len() > 40_000, "{} bytes", bytes.len());
    for b in &mut bytes[8192..32768] {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).expect("write");
    let _ = std::fs::remove_file(dir.path().join("tandem.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("tandem.db-shm"));

    let err = match Store::open(&db).await {
        Ok(_) => panic!("a damaged database opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains("tandem restore"), "{err}");
}

#[tokio::test]
async fn a_removed_wal_is_a_fault_and_what_was_committed_reaches_the_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tandem.db");
    let store = Store::open(&db).await.expect("open");
    store
        .set_secret("shop", None, "KEPT", "v", "user:test")
        .await
        .expect("write");
    assert_eq!(store.fault(), None);
    std::fs::remove_file(dir.path().join("tandem.db-wal")).expect("remove the WAL");
    store
        .set_secret("shop", None, "AFTER", "v", "user:test")
        .await
        .expect("a write still works, into the unlinked WAL");
    // Acknowledged means in the database file: the write checkpointed
    // before it returned, since the WAL it went into is gone.
    let fault = store.fault().expect("a removed WAL is a fault");
    assert_eq!(fault.kind, "wal-missing");

    // What is in the database file alone: a copy of it without WAL or
    // shared memory, as a crash would leave it.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).expect("copy");
    let reopened = Store::open(&copy).await.expect("the file alone opens");
    let names: Vec<String> = reopened
        .secrets("shop")
        .await
        .expect("secrets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(
        names.contains(&"KEPT".to_owned()) && names.contains(&"AFTER".to_owned()),
        "{names:?}"
    );
    assert!(reopened.verify().await.expect("read").is_ok());
}
