//! The run queue's rules against a real SQLite file: a commit is queued
//! once, a newer one supersedes older queued runs, a finished run takes no
//! more updates, and every change is a chained event.

use tandem_core::journal::NewEvent;
use tandem_store::{NewRun, RunUpdate, Store, StoreError};

fn run(commit: &str) -> NewRun {
    NewRun {
        service: "shop".into(),
        commit: commit.into(),
        branch: "main".into(),
        trigger: "poll".into(),
        ..NewRun::default()
    }
}

#[tokio::test]
async fn a_commit_is_queued_once_and_arrival_supersedes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("open");
    let a = s
        .enqueue_run(run("aaa"), false, "system:poller")
        .await
        .expect("enqueue")
        .expect("queued");
    assert_eq!(a.status, "queued");
    assert!(
        s.enqueue_run(run("aaa"), false, "system:poller")
            .await
            .expect("enqueue")
            .is_none(),
        "the same commit is not queued twice"
    );
    let b = s
        .enqueue_run(run("bbb"), false, "system:poller")
        .await
        .expect("enqueue")
        .expect("queued");
    // Arrival says nothing of history (a late webhook brings an older
    // commit): which run goes ahead is the scheduler's, by the branch head.
    let a = s.run(a.id).await.expect("read").expect("a");
    assert_eq!(a.status, "queued");
    assert!(s.has_run("shop", "aaa").await.expect("read"));
    // Forced (a retry): queued again even though the commit was seen.
    let again = s
        .enqueue_run(run("aaa"), true, "user:ann")
        .await
        .expect("enqueue")
        .expect("forced");
    assert_eq!(
        s.run(b.id).await.expect("read").expect("b").status,
        "queued"
    );

    // A finished run refuses further updates: a cancel wins over a late end.
    let end = RunUpdate {
        status: "superseded",
        reason: Some("not the branch head"),
        stages: &[],
        ..RunUpdate::default()
    };
    s.update_run(
        a.id,
        end,
        NewEvent::new("system:pipeline", "run.superseded"),
    )
    .await
    .expect("end a");
    let update = RunUpdate {
        status: "running",
        stages: &[],
        ..RunUpdate::default()
    };
    let err = s
        .update_run(
            a.id,
            update,
            NewEvent::new("system:pipeline", "run.stage.started"),
        )
        .await
        .expect_err("superseded is final");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let queued = s.runs_in("queued").await.expect("read");
    assert_eq!(
        queued.iter().map(|r| r.id).collect::<Vec<_>>(),
        [b.id, again.id]
    );

    let kinds: Vec<String> = s
        .events(0, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["run.queued", "run.queued", "run.queued", "run.superseded"]
    );
    assert!(s.verify().await.expect("read").is_ok());
}

#[tokio::test]
async fn approvals_count_distinct_approvers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("open");
    let r = s
        .enqueue_run(run("ccc"), false, "system:poller")
        .await
        .expect("enqueue")
        .expect("queued");
    let ev = || NewEvent::new("user:ann", "run.approved");
    assert_eq!(
        s.approve(r.id, "production", "user:ann", "supplier", ev())
            .await
            .expect("approve")
            .len(),
        1
    );
    assert_eq!(
        s.approve(r.id, "production", "user:ann", "supplier", ev())
            .await
            .expect("approve")
            .len(),
        1,
        "twice by one person counts once"
    );
    assert_eq!(
        s.approve(r.id, "production", "user:bob", "acme", ev())
            .await
            .expect("approve"),
        [
            ("user:ann".to_owned(), "supplier".to_owned()),
            ("user:bob".to_owned(), "acme".to_owned())
        ]
    );
    assert_eq!(
        s.approvals(r.id, "production").await.expect("read"),
        ["user:ann", "user:bob"]
    );
    let approved = s
        .events(0, 100)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.kind == "run.approved")
        .count();
    assert_eq!(approved, 2, "one event per distinct approval");
}

#[tokio::test]
async fn a_policy_changed_again_keeps_every_field_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("open");
    let mut row = tandem_store::PolicyRow {
        service: "shop".into(),
        env: "production".into(),
        approvals: 1,
        approvers: Vec::new(),
        required: true,
        approvers_from: "supplier".into(),
        author_may_approve: false,
        updated_at: String::new(),
        updated_by: String::new(),
    };
    s.set_policy(&row, "user:admin").await.expect("first");
    row.approvers_from = "both".into();
    row.author_may_approve = true;
    let event = s.set_policy(&row, "user:admin").await.expect("again");
    let kept = s.policies("shop").await.expect("read");
    assert_eq!(
        (kept[0].approvers_from.as_str(), kept[0].author_may_approve),
        ("both", true)
    );
    assert_eq!(event.payload["before"]["approvers_from"], "supplier");
    assert_eq!(event.payload["approvers_from"], "both");
}
