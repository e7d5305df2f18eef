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
    assert_eq!((r[0].good, r[0].total), (115_000 - 1000, 115_000));
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
    assert_eq!(r[1].good, 115 * 900 - 1000);
    assert_eq!(r[1].total, 115_000);
}
