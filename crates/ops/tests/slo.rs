//! SLO standings from minutes stored in a real SQLite file, with a
//! maintenance window and a latency threshold read from the histogram.

use tandem_core::Spec;
use tandem_ops::slo::{now_minute, report};
use tandem_store::{MinuteRow, Store};

const SPEC: &str = "service: { name: shop }\nrun: { command: ./shop }\nroute: { host: shop.test }\nslo:\n  - { name: availability, objective: 99.9%, window: 30d }\n  - { name: fast, objective: 90%, threshold: 300ms, window: 30d }\n";

#[tokio::test]
async fn standings_count_errors_latency_and_skip_maintenance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    let spec = Spec::parse("tandem.yaml", SPEC).expect("spec");
    let now = now_minute();
    // 120 minutes ending a minute ago: 1000 requests each, 900 answered in
    // 100 ms (bucket 7) and 100 in 400 ms (bucket 11).
    let mut buckets = vec![0u64; 20];
    buckets[7] = 900;
    buckets[11] = 100;
    for minute in now - 120..now {
        let age = now - minute;
        // 10 minutes with 100 errors (long ago), 5 minutes of full outage
        // inside a maintenance window (the most recent ones).
        let errors = match age {
            100..=109 => 100,
            1..=5 => 1000,
            _ => 0,
        };
        let row = MinuteRow {
            service: "shop".into(),
            env: String::new(),
            minute,
            total: 1000,
            errors,
            buckets: buckets.clone(),
            ready: true,
            looks: 60,
            unready_looks: 0,
        };
        store.record_minute(&row).await.expect("record");
    }
    let from = jiff::Timestamp::from_second((now - 5) * 60).expect("ts");
    let to = jiff::Timestamp::from_second(now * 60).expect("ts");
    store
        .add_maintenance(
            "shop",
            &from.to_string(),
            &to.to_string(),
            "upgrade",
            "user:ann",
        )
        .await
        .expect("maintenance");

    let r = report(&store, &spec, now).await.expect("report");
    assert_eq!(r.len(), 2);
    // Availability: 115 counted minutes, 1000 bad in total.
    assert_eq!((r[0].good, r[0].total), (114_000.0, 115_000.0));
    assert_eq!((r[0].requests, r[0].quiet_minutes), (115_000, 0));
    let allowed = 0.001 * 115_000.0;
    assert!(
        (r[0].budget_remaining - (1.0 - 1000.0 / allowed)).abs() < 1e-9,
        "{:?}",
        r[0]
    );
    // The last 5 minutes are maintenance: nothing burns there.
    let burn = |i: usize, w: &str| {
        r[i].burn_rates
            .iter()
            .find(|(n, _)| n == w)
            .map(|(_, v)| *v)
    };
    assert_eq!(burn(0, "5m"), Some(0.0));
    // Latency: 900 fast per minute, minus the minute's errors.
    assert_eq!(r[1].threshold_ms, Some(300));
    assert_eq!(r[1].good, (115 * 900 - 1000) as f64);
    assert_eq!(r[1].total, 115_000.0);
}

/// The reported case, through the store: a service without traffic that
/// was unready for 7 s of one minute (as the monitor counts looks), next to
/// a minute stored before looks were counted (judged whole by `ready`).
#[tokio::test]
async fn a_quiet_service_is_judged_by_its_probes_and_its_budget_by_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    let spec = Spec::parse(
        "tandem.yaml",
        "service: { name: quiet }\nrun: { command: ./q }\nroute: { host: q.test }\nslo:\n  - { name: availability, objective: 99.9%, window: 30d }\n",
    )
    .expect("spec");
    let now = now_minute();
    let row = |minute: i64, looks: i64, unready_looks: i64, ready: bool| MinuteRow {
        service: "quiet".into(),
        env: String::new(),
        minute,
        total: 0,
        errors: 0,
        buckets: vec![0; 20],
        ready,
        looks,
        unready_looks,
    };
    for minute in now - 60..now {
        store
            .record_minute(&row(minute, 60, 0, true))
            .await
            .expect("record");
    }
    store
        .record_minute(&row(now - 1, 60, 7, false))
        .await
        .expect("record");
    let r = report(&store, &spec, now).await.expect("report");
    // Each quiet minute is one event; 7 of 60 looks unready is 7/60 bad.
    let bad = 7.0 / 60.0;
    assert_eq!((r[0].requests, r[0].quiet_minutes), (0, 60), "{r:?}");
    assert!((r[0].total - r[0].good - bad).abs() < 1e-9, "{r:?}");
    assert!((r[0].attainment - (1.0 - bad / 60.0)).abs() < 1e-9, "{r:?}");
    // 30 days at 99.9% allow 43.2 bad minutes: 7 s spend 0.27% of them.
    assert!(
        (r[0].budget_remaining - (1.0 - bad / 43.2)).abs() < 1e-9,
        "{r:?}"
    );
    assert!((burn_of(&r[0], "1h") - bad / 0.06).abs() < 1e-9, "{r:?}");
    assert_eq!(r[0].alert, None);

    // A row from before looks were counted, unready: a whole bad minute.
    store
        .record_minute(&row(now - 2, 0, 0, false))
        .await
        .expect("record");
    let r = report(&store, &spec, now).await.expect("report");
    assert!(
        (burn_of(&r[0], "1h") - (1.0 + bad) / 0.06).abs() < 1e-9,
        "{r:?}"
    );
}

fn burn_of(r: &tandem_ops::slo::SloReport, w: &str) -> f64 {
    r.burn_rates
        .iter()
        .find(|(n, _)| n == w)
        .map(|(_, v)| *v)
        .expect("window")
}

/// The hours the monitor still has to journal: those with stored minutes
/// and no `measurements.recorded` yet — each once, whatever is asked.
#[tokio::test]
async fn finished_hours_are_found_until_journaled_and_journaled_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    let hour = (now_minute() / 60 - 3) * 60;
    for (service, env, minute) in [
        ("shop", "", hour + 5),
        ("shop", "", hour + 65),
        ("blog", "", hour + 70),
        ("shop", "staging", hour + 10),
    ] {
        let row = MinuteRow {
            service: service.into(),
            env: env.into(),
            minute,
            total: 10,
            errors: 1,
            buckets: vec![0; 20],
            ready: true,
            looks: 60,
            unready_looks: 0,
        };
        store.record_minute(&row).await.expect("record");
    }
    let found = store
        .unmeasured_hours(hour, hour + 120)
        .await
        .expect("hours");
    assert_eq!(
        found,
        vec![
            ("shop".to_string(), hour),
            ("blog".to_string(), hour + 60),
            ("shop".to_string(), hour + 60),
        ],
        "production only, by hour"
    );
    let m = tandem_core::slo::Measurements {
        env: String::new(),
        hour,
        minutes: vec![(5, 10, 1, 60, 0)],
    };
    assert!(
        store
            .journal_measurements("shop", &m, "system:monitor")
            .await
            .expect("journal")
            .is_some()
    );
    assert!(
        store
            .journal_measurements("shop", &m, "system:monitor")
            .await
            .expect("again")
            .is_none()
    );
    let found = store
        .unmeasured_hours(hour, hour + 120)
        .await
        .expect("hours");
    assert_eq!(found.len(), 2);
    assert!(!found.contains(&("shop".to_string(), hour)));
    let recorded = store.events(0, 100).await.expect("events");
    let e = recorded
        .iter()
        .find(|e| e.kind == "measurements.recorded")
        .expect("journaled");
    assert_eq!(
        e.payload["minutes"].as_str().map(|s| s.split(';').count()),
        Some(60)
    );
}
