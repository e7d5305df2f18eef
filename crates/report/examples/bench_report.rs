//! `bench/report` runs this (release build): how long a month's SLA report
//! of 1,000 services takes, and how fast a bundle of 1,000,000 events is
//! verified offline — each with the size of its data. Goals (issue 18):
//! the report in at most 1 s, verifying at least 500,000 events/s.
//!
//! `SERVICES` and `EVENTS` change the sizes.

use std::time::Instant;

use tandem_core::journal::{self, Event, NewEvent, hex};
use tandem_core::slo::Measurements;
use tandem_proof::bundle::{Bundle, FORMAT};
use tandem_proof::checkpoint::LogKey;
use tandem_proof::merkle::{Tree, leaf_hash};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A month of `services` services of acme: created, then every hour of
/// November 2026 measured (100 requests a minute; the first service down
/// for 37 minutes on the 10th), and a contract.
fn month(services: usize) -> Vec<Event> {
    let (from, to) = tandem_report::sla::month_minutes("2026-11").expect("month");
    let mut events = Vec::new();
    let mut push = |new: NewEvent, ts: &str| {
        events.push(Event {
            seq: events.len() as u64 + 1,
            ts: ts.into(),
            actor: new.actor,
            kind: new.kind,
            subject: new.subject,
            payload: new.payload,
            prev: String::new(),
            hash: String::new(),
        });
    };
    let contract = serde_json::json!({ "notice": "72h", "objectives": [{ "objective": "99.9%" }],
        "credits": [{ "below": "99.9%", "credit": "10%" }] });
    push(
        NewEvent::new("user:ann", "customer.contract_set")
            .subject("customer", "acme")
            .payload(serde_json::json!({ "contract": contract })),
        "2026-10-01T00:00:00.000Z",
    );
    for i in 0..services {
        push(
            NewEvent::new("user:ann", "service.created")
                .subject("service", format!("svc-{i}"))
                .payload(serde_json::json!({ "customer": "acme", "tier": "critical" })),
            "2026-10-01T00:00:00.000Z",
        );
    }
    let outage = from + 9 * 1440 + 720..from + 9 * 1440 + 757;
    for hour in (from..to).step_by(60) {
        for i in 0..services {
            let m = Measurements {
                env: String::new(),
                hour,
                minutes: (0..60u32)
                    .map(|o| {
                        let down = i == 0 && outage.contains(&(hour + i64::from(o)));
                        (o, 100, if down { 100 } else { 0 }, 60, 0)
                    })
                    .collect(),
            };
            push(
                NewEvent::new("system:monitor", "measurements.recorded")
                    .subject("service", format!("svc-{i}"))
                    .payload(serde_json::to_value(&m).expect("json")),
                "2026-12-01T00:00:00.000Z",
            );
        }
    }
    events
}

/// A journal of `n` sealed events and a bundle of all of them.
fn bundle(n: usize) -> (Bundle, String) {
    let key = LogKey::from_seed("tandem/bench", &[7; 32]).expect("key");
    let mut prev = journal::GENESIS.to_owned();
    let mut events = Vec::with_capacity(n);
    for seq in 1..=n as u64 {
        let new = NewEvent::new("system:monitor", "measurements.recorded")
            .subject("service", "svc-0")
            .payload(serde_json::json!({ "env": "", "hour": seq * 60, "minutes": "100,0,60,0;100,0,60,0" }));
        let e = journal::seal(seq, "2026-11-01T00:00:00.000Z".into(), new, &prev).expect("seal");
        prev = e.hash.clone();
        events.push(e);
    }
    let leaves = events
        .iter()
        .map(|e| leaf_hash(&journal::unhex(&e.hash).expect("hex")))
        .collect();
    let tree = Tree::new(leaves);
    let note = key.sign(n as u64, tree.root(n as u64)).expect("sign");
    let indices: Vec<u64> = (0..n as u64).collect();
    let proof = tree.batch_proof(&indices, n as u64);
    (
        Bundle {
            format: FORMAT.into(),
            customer: "acme".into(),
            from: "2026-11-01".into(),
            to: "2026-12-01".into(),
            checkpoint: note,
            events,
            proof: proof.iter().map(|h| hex(h)).collect(),
            previous: None,
        },
        key.verifier_key().to_owned(),
    )
}

fn main() {
    let services = setting("SERVICES", 1000);
    let events = month(services);
    let bytes: usize = events
        .iter()
        .map(|e| e.payload.to_string().len() + 200)
        .sum();
    let started = Instant::now();
    let report = tandem_report::sla::report(&events, "acme", "2026-11", None).expect("report");
    let took = started.elapsed();
    let json = tandem_report::canonical(&report).expect("json");
    let first = &report.services[0];
    println!(
        "sla report: {services} services, {} events (~{:.0} MB of journal), {:.3} s (goal <= 1 s); report {} KB; svc-0 availability {:.6}, downtime {} min",
        events.len(),
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        json.len() / 1024,
        first.availability,
        first.downtime_minutes
    );
    drop(events);

    let n = setting("EVENTS", 1_000_000);
    let (bundle, key) = bundle(n);
    let text = serde_json::to_vec(&bundle).expect("json");
    drop(bundle);
    // As `tandem verify` does: read whole, then hashed on every core.
    let started = Instant::now();
    let parsed: Bundle = serde_json::from_slice(&text).expect("parse");
    let read = started.elapsed();
    let verified = parsed.verify(&key).expect("verified");
    let took = started.elapsed();
    println!(
        "bundle verify: {n} events, {:.0} MB, {:.3} s ({:.3} s reading): {:.0} events/s (goal >= 500,000); checkpoint at {}",
        text.len() as f64 / 1e6,
        took.as_secs_f64(),
        read.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        verified.checkpoint.size
    );
}
