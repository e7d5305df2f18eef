//! Issue 18's acceptance for the SLA report: a month of history built
//! through the store's own append path on a real SQLite file — a 37-minute
//! outage, a 120-minute maintenance window announced in time and a
//! 10-minute one announced too late — and the report's figures against a
//! hand computation.
//!
//! The month is the one 40 days from now, so that both windows lie ahead
//! and their announcements (journaled now) are in time or late by the
//! contract's notice, which the test sets between their two lead times.

use tandem_core::contract::Contract;
use tandem_core::slo::Measurements;
use tandem_report::sla::{self, month_minutes};
use tandem_store::{ServiceUpsert, Store};

fn ts(minute: i64) -> String {
    jiff::Timestamp::from_second(minute * 60)
        .expect("ts")
        .to_string()
}

#[tokio::test]
async fn a_month_with_an_outage_and_two_maintenance_windows_matches_the_hand_computation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tandem.db"))
        .await
        .expect("store");
    store
        .add_customer("acme", "ACME Corp", "user:ann")
        .await
        .expect("customer");
    for (name, customer) in [("shop", Some("acme")), ("other", Some("globex"))] {
        store
            .upsert_service(
                ServiceUpsert {
                    name,
                    owner: None,
                    customer,
                    tier: "critical",
                    spec: &serde_json::json!({}),
                    source: "dir",
                },
                "user:ann",
            )
            .await
            .expect("service");
    }

    let now = jiff::Timestamp::now().as_second() / 60;
    let ahead = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(40 * 24))
        .expect("ahead")
        .to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let month = format!("{:04}-{:02}", ahead.year(), ahead.month());
    let (from, to) = month_minutes(&month).expect("month");
    let days = (to - from) / 1440;

    // The late window: day 2, 02:00, 10 minutes. The one in time: day 21,
    // 10:00, 120 minutes. The notice lies between their lead times.
    let late = (from + 1440 + 120, from + 1440 + 130);
    let in_time = (from + 20 * 1440 + 600, from + 20 * 1440 + 720);
    let notice_minutes = ((late.0 - now) + (in_time.0 - now)) / 2;
    let contract = Contract::parse(
        "contract.yaml",
        &format!(
            "notice: {notice_minutes}m\nobjectives:\n  - {{ tier: critical, objective: 99.95% }}\ncredits:\n  - {{ below: 99.95%, credit: 10% }}\n  - {{ below: 99.9%, credit: 25% }}\n  - {{ below: 99%, credit: 50% }}\n"
        ),
    )
    .expect("contract");
    store
        .set_contract("acme", &contract, "user:ann")
        .await
        .expect("contract set");
    for (span, reason) in [(late, "late upgrade"), (in_time, "database upgrade")] {
        store
            .add_maintenance("shop", &ts(span.0), &ts(span.1), reason, "user:ann")
            .await
            .expect("maintenance");
    }

    // 100 requests a minute; all of them fail for 37 minutes on day 10,
    // and during both windows.
    let outage = (from + 9 * 1440 + 720, from + 9 * 1440 + 757);
    let failing = |m: i64| {
        [outage, late, in_time]
            .iter()
            .any(|(a, b)| (*a..*b).contains(&m))
    };
    for hour in (from..to).step_by(60) {
        let m = Measurements {
            env: String::new(),
            hour,
            minutes: (0..60)
                .map(|i| {
                    let errors = if failing(hour + i) { 100 } else { 0 };
                    (i as u32, 100, errors, 60, 0)
                })
                .collect(),
        };
        store
            .journal_measurements("shop", &m, "system:monitor")
            .await
            .expect("measurements");
        // Another customer's service, down all month: not in acme's report.
        let mut down = m.clone();
        down.minutes.iter_mut().for_each(|x| x.2 = 100);
        store
            .journal_measurements("other", &down, "system:monitor")
            .await
            .expect("measurements");
        // Journaled once per hour, however often asked.
        assert!(
            store
                .journal_measurements("shop", &m, "system:monitor")
                .await
                .expect("again")
                .is_none()
        );
    }
    assert!(store.verify().await.expect("verify").is_ok());

    let events = store.events(0, 100_000).await.expect("events");
    let report = sla::report(&events, "acme", &month, None).expect("report");
    assert_eq!(report.services.len(), 1, "acme's services only");
    let s = &report.services[0];
    assert_eq!(s.service, "shop");
    assert_eq!(s.objective, Some(0.9995));
    // By hand: the month's minutes less the 120 excluded; down for the
    // 37-minute outage and the 10 late-announced minutes.
    let minutes = days * 1440;
    let counted = (minutes - 120) as f64;
    let availability = 1.0 - 47.0 / counted;
    assert_eq!(s.minutes, minutes as u64);
    assert_eq!(s.excluded_minutes, 120);
    assert_eq!(s.unmeasured_minutes, 0);
    assert_eq!(s.downtime_minutes, 47.0);
    assert!(
        (s.availability - availability).abs() < 0.5e-4,
        "{} vs {availability}",
        s.availability
    );
    assert_eq!(
        format!("{:.4}", s.availability),
        format!("{availability:.4}")
    );
    // 99.89 % of a 99.95 % objective: below 99.9 %, the 25 % step.
    assert!(availability < 0.999 && availability > 0.99);
    assert_eq!(s.credit, 0.25);
    let budget = 47.0 / (0.0005 * counted);
    assert!((s.budget_used.expect("budget") - budget).abs() < 1e-6);
    assert_eq!(
        s.maintenance
            .iter()
            .map(|w| (w.reason.as_str(), w.excluded))
            .collect::<Vec<_>>(),
        vec![("late upgrade", false), ("database upgrade", true)]
    );
    // Day 10 carries the outage; the daily figures add up.
    assert_eq!(s.daily.len() as i64, days);
    assert_eq!(s.daily[9].downtime_minutes, 37.0);
    let daily: f64 = s.daily.iter().map(|d| d.downtime_minutes).sum();
    assert_eq!(daily, 47.0);
    let last = s
        .daily
        .last()
        .and_then(|d| d.budget_left)
        .expect("burn-down");
    assert!((last - (1.0 - budget)).abs() < 1e-6);

    // Canonical JSON: computed again, the same bytes.
    let json = tandem_report::canonical(&report).expect("json");
    let again =
        tandem_report::canonical(&sla::report(&events, "acme", &month, None).expect("report"))
            .expect("json");
    assert_eq!(json, again);
    let csv = tandem_report::render::csv(&report);
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.contains(",shop,critical,0.9995,")),
        "{csv}"
    );
    let html = tandem_report::render::html(&report);
    assert!(
        html.contains("<svg") && html.contains("announced too late"),
        "{html}"
    );
}
