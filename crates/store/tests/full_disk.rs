//! The store on a real full filesystem (a small tmpfs, mounted by the
//! test: it needs root, as CI has): a write that fails fails its caller,
//! leaves no connection inside a transaction, loses nothing acknowledged,
//! and writes work again once there is room, without a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_store::Store;

/// A 4 MiB tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).output();
    }
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 16 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_fails_writes_loses_nothing_acknowledged_and_the_store_recovers() {
    let fs = Tmpfs::mount();
    let db = fs.path().join("tandem.db");
    let store = Store::open(&db).await.expect("open");
    store
        .set_secret("shop", None, "BEFORE", "v", "user:test")
        .await
        .expect("a write with room");
    let filler = fill(fs.path());

    let value = "x".repeat(8 * 1024);
    let mut acknowledged = vec!["BEFORE".to_owned()];
    let mut failed = 0;
    for i in 0..40 {
        let name = format!("FULL{i}");
        match store
            .set_secret("shop", None, &name, &value, "user:test")
            .await
        {
            Ok(_) => acknowledged.push(name),
            Err(_) => failed += 1,
        }
    }
    assert!(failed > 0, "the disk was full, yet every write succeeded");
    let fault = store.fault().expect("a full disk is a storage fault");
    assert_eq!(fault.kind, "full", "{fault:?}");
    // A small write may fit in the WAL's old space; the fault stands
    // until there is room.
    let _ = store.probe().await;
    assert!(
        store.fault().is_some(),
        "a probe ended a full disk's fault without room"
    );

    // Room again: every pooled connection writes, none is left inside a
    // transaction (which made later writes "succeed" into nothing, or
    // fail with "database is locked").
    std::fs::remove_file(&filler).expect("free the space");
    for i in 0..12 {
        let name = format!("AFTER{i}");
        store
            .set_secret("shop", None, &name, "v", "user:test")
            .await
            .unwrap_or_else(|e| panic!("{name}: a write once there is room: {e}"));
        acknowledged.push(name);
    }
    assert_eq!(store.fault(), None, "writes work again, the fault stands");
    drop(store);

    // Everything acknowledged is there after a restart, and the journal
    // is whole.
    let store = Store::open(&db).await.expect("reopen");
    let names: Vec<String> = store
        .secrets("shop")
        .await
        .expect("secrets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    for name in &acknowledged {
        assert!(
            names.contains(name),
            "{name} was acknowledged and is gone: {names:?}"
        );
    }
    let verified = store.verify().await.expect("read");
    assert!(verified.is_ok(), "{verified:?}");
}
