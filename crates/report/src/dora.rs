//! The five DORA metrics of delivery performance, from journal events
//! alone, per service and in total, over `[from, to)`.
//!
//! In tandem's terms (production only: events without an `env` subject):
//! - a **deployment** is a `release.succeeded` (a release went live); a
//!   `rollback.succeeded` is a deployment too, but a reworking one;
//! - **deployment frequency**: deployments (releases, not rollbacks) per
//!   day over the period;
//! - **lead time for changes**: for each release that came from a
//!   pipeline run, from its commit's `committed_at` (the run's payload) to
//!   the release going live in production; the median is reported;
//! - **change failure rate**: the share of deployments that failed: an
//!   incident named the release its suspect (`suspect_release`), or the
//!   release was rolled back (a `rollback.succeeded` whose `previous` is
//!   it);
//! - **failed deployment recovery time**: for each failed deployment,
//!   from its going live to the first of: another release or a rollback
//!   going live, or the resolution of the last incident suspecting it; the
//!   median is reported;
//! - **deployment rework rate**: the share of deployments (rollbacks
//!   included) made while a failed deployment was not yet recovered from:
//!   unplanned work to undo or fix it.
//!
//! Bands (DORA 2023 report; rework rate has none published):
//! frequency elite ≥ 1 a day, high ≥ 1 a week, medium ≥ 1 a month;
//! lead time elite < 1 day, high < 1 week, medium < 1 month; change
//! failure rate elite ≤ 5 %, high ≤ 10 %, medium ≤ 15 %; recovery elite
//! < 1 hour, high < 1 day, medium < 1 week; otherwise low.

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_core::journal::Event;

use crate::r9;

#[derive(Clone, Debug, Serialize)]
pub struct DoraReport {
    pub from: String,
    pub to: String,
    pub services: Vec<Dora>,
    pub total: Dora,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Dora {
    /// The service, or `*` for the total.
    pub service: String,
    pub deployments: u64,
    pub rollbacks: u64,
    pub deployments_per_day: f64,
    pub deployment_frequency_band: &'static str,
    /// Deployments whose lead time is known (from a pipeline run).
    pub lead_times: u64,
    pub lead_time_median_s: Option<f64>,
    pub lead_time_band: &'static str,
    pub failed_deployments: u64,
    pub change_failure_rate: Option<f64>,
    pub change_failure_band: &'static str,
    pub recovery_median_s: Option<f64>,
    pub recovery_band: &'static str,
    pub rework_deployments: u64,
    pub rework_rate: Option<f64>,
}

fn seconds(ts: &str) -> Option<f64> {
    Some(ts.parse::<jiff::Timestamp>().ok()?.as_millisecond() as f64 / 1000.0)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

const DAY: f64 = 86_400.0;

fn frequency_band(per_day: f64) -> &'static str {
    match per_day {
        x if x >= 1.0 => "elite",
        x if x >= 1.0 / 7.0 => "high",
        x if x >= 1.0 / 30.0 => "medium",
        _ => "low",
    }
}

fn duration_band(s: Option<f64>, limits: [f64; 3]) -> &'static str {
    match s {
        None => "-",
        Some(x) if x < limits[0] => "elite",
        Some(x) if x < limits[1] => "high",
        Some(x) if x < limits[2] => "medium",
        Some(_) => "low",
    }
}

fn rate_band(r: Option<f64>) -> &'static str {
    match r {
        None => "-",
        Some(x) if x <= 0.05 => "elite",
        Some(x) if x <= 0.10 => "high",
        Some(x) if x <= 0.15 => "medium",
        Some(_) => "low",
    }
}

/// One production deployment as the metrics see it.
#[derive(Clone, Debug)]
struct Deployment {
    release: String,
    at: f64,
    rollback: bool,
    lead_time_s: Option<f64>,
    failed: bool,
    recovered_at: Option<f64>,
}

/// The measures gathered for one service, before they are summed.
#[derive(Default)]
struct Gathered {
    deployments: Vec<Deployment>,
}

fn production(e: &Event) -> bool {
    !e.subject.contains_key("env")
}

/// The DORA metrics of every service in `events` (or those in `only`)
/// over `[from, to)` (RFC 3339 instants).
pub fn report(events: &[Event], from: &str, to: &str, only: Option<&[String]>) -> DoraReport {
    let (start, end) = (
        seconds(from).unwrap_or(0.0),
        seconds(to).unwrap_or(f64::MAX),
    );
    // Runs: commit time; releases made by runs.
    let mut committed: BTreeMap<(String, String), f64> = BTreeMap::new(); // (service, run) → s
    let mut released_by: BTreeMap<(String, String), String> = BTreeMap::new(); // (service, release) → run
    // Incidents suspecting a release: (opened, resolved).
    let mut suspected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut resolved: BTreeMap<(String, String), f64> = BTreeMap::new(); // (service, incident) → s
    let mut services: BTreeMap<String, Gathered> = BTreeMap::new();
    for e in events {
        let Some(service) = e.subject.get("service").cloned() else {
            continue;
        };
        if only.is_some_and(|o| !o.contains(&service)) {
            continue;
        }
        let at = seconds(&e.ts).unwrap_or(0.0);
        let run = e.subject.get("run").cloned();
        // Any of a run's events may carry its commit's time (those after
        // the commit was read do).
        if let (Some(run), Some(c)) = (&run, e.payload["committed_at"].as_str().and_then(seconds)) {
            committed.entry((service.clone(), run.clone())).or_insert(c);
        }
        match e.kind.as_str() {
            "run.stage.succeeded" if e.payload["stage"] == "release" => {
                if let (Some(run), Some(r)) = (run, e.payload["release"].as_str()) {
                    released_by.insert((service, r.to_owned()), run);
                }
            }
            "incident.opened" => {
                if let Some(r) = e.payload["suspect_release"].as_str() {
                    let id = e.subject.get("incident").cloned().unwrap_or_default();
                    suspected
                        .entry((service, r.to_owned()))
                        .or_default()
                        .push(id);
                }
            }
            "incident.resolved" => {
                if let Some(id) = e.subject.get("incident") {
                    resolved.insert((service, id.clone()), at);
                }
            }
            "release.succeeded" | "rollback.succeeded" if production(e) => {
                let Some(release) = e.subject.get("release").cloned() else {
                    continue;
                };
                let rollback = e.kind == "rollback.succeeded";
                let g = services.entry(service.clone()).or_default();
                // A rollback reverts the one live before it: that one failed.
                if rollback
                    && let Some(prev) = e.payload["previous"].as_str()
                    && let Some(d) = g.deployments.iter_mut().rev().find(|d| d.release == prev)
                {
                    d.failed = true;
                }
                // Whatever goes live next recovers from a failure before it.
                for d in g
                    .deployments
                    .iter_mut()
                    .filter(|d| d.recovered_at.is_none())
                {
                    d.recovered_at = Some(at);
                }
                let lead_time_s = (!rollback)
                    .then(|| {
                        let run = released_by.get(&(service.clone(), release.clone()))?;
                        let c = committed.get(&(service.clone(), run.clone()))?;
                        Some(at - c)
                    })
                    .flatten();
                g.deployments.push(Deployment {
                    release,
                    at,
                    rollback,
                    lead_time_s,
                    failed: false,
                    recovered_at: None,
                });
            }
            _ => {}
        }
    }
    // Incidents that suspected a deployment make it failed; recovery is
    // the earlier of the next deployment and the last resolution.
    for (service, g) in &mut services {
        for d in &mut g.deployments {
            let Some(incidents) = suspected.get(&(service.clone(), d.release.clone())) else {
                continue;
            };
            d.failed = true;
            let last_resolution = incidents
                .iter()
                .map(|id| resolved.get(&(service.clone(), id.clone())).copied())
                .collect::<Option<Vec<f64>>>()
                .and_then(|r| r.into_iter().reduce(f64::max));
            d.recovered_at = match (d.recovered_at, last_resolution) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let days = ((end - start) / DAY).max(1.0 / 24.0);
    let mut all = Counts::default();
    let mut out = Vec::new();
    for (service, g) in &services {
        let counts = Counts::of(&g.deployments, start, end);
        out.push(counts.dora(service, days));
        all.add(counts);
    }
    DoraReport {
        from: from.to_owned(),
        to: to.to_owned(),
        services: out,
        total: all.dora("*", days),
    }
}

/// What the metrics are made of, summable across services.
#[derive(Default)]
struct Counts {
    deployments: u64,
    rollbacks: u64,
    failed: u64,
    rework: u64,
    lead: Vec<f64>,
    recovery: Vec<f64>,
}

impl Counts {
    /// One service's deployments that went live in `[start, end)`.
    fn of(deployments: &[Deployment], start: f64, end: f64) -> Counts {
        let inside: Vec<&Deployment> = deployments
            .iter()
            .filter(|d| d.at >= start && d.at < end)
            .collect();
        // Rework: live while an earlier failed one was not recovered from.
        let rework = inside
            .iter()
            .filter(|d| {
                inside
                    .iter()
                    .any(|f| f.failed && f.at < d.at && f.recovered_at.is_none_or(|r| d.at <= r))
            })
            .count() as u64;
        Counts {
            deployments: inside.iter().filter(|d| !d.rollback).count() as u64,
            rollbacks: inside.iter().filter(|d| d.rollback).count() as u64,
            failed: inside.iter().filter(|d| d.failed).count() as u64,
            rework,
            lead: inside.iter().filter_map(|d| d.lead_time_s).collect(),
            recovery: inside
                .iter()
                .filter(|d| d.failed)
                .filter_map(|d| Some(d.recovered_at? - d.at))
                .collect(),
        }
    }

    fn add(&mut self, other: Counts) {
        self.deployments += other.deployments;
        self.rollbacks += other.rollbacks;
        self.failed += other.failed;
        self.rework += other.rework;
        self.lead.extend(other.lead);
        self.recovery.extend(other.recovery);
    }

    fn dora(&self, name: &str, days: f64) -> Dora {
        let all = self.deployments + self.rollbacks;
        let per_day = self.deployments as f64 / days;
        let cfr = (all > 0).then(|| self.failed as f64 / all as f64);
        let lead = median(self.lead.clone());
        let recovery = median(self.recovery.clone());
        Dora {
            service: name.to_owned(),
            deployments: self.deployments,
            rollbacks: self.rollbacks,
            deployments_per_day: r9(per_day),
            deployment_frequency_band: frequency_band(per_day),
            lead_times: self.lead.len() as u64,
            lead_time_median_s: lead.map(r9),
            lead_time_band: duration_band(lead, [DAY, 7.0 * DAY, 30.0 * DAY]),
            failed_deployments: self.failed,
            change_failure_rate: cfr.map(r9),
            change_failure_band: rate_band(cfr),
            recovery_median_s: recovery.map(r9),
            recovery_band: duration_band(recovery, [3600.0, DAY, 7.0 * DAY]),
            rework_deployments: self.rework,
            rework_rate: (all > 0).then(|| r9(self.rework as f64 / all as f64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events as the journal holds them (only what the metrics read).
    struct History(Vec<Event>);

    impl History {
        fn add(
            &mut self,
            ts: &str,
            kind: &str,
            subject: &[(&str, &str)],
            payload: serde_json::Value,
        ) {
            let seq = self.0.len() as u64 + 1;
            self.0.push(crate::testing::event(
                seq,
                ts,
                "system:test",
                kind,
                subject,
                payload,
            ));
        }

        /// A run of `commit` committed at `committed` whose release `r`
        /// goes live in production at `live`.
        fn shipped(&mut self, run: &str, committed: &str, r: &str, live: &str) {
            let s = [("service", "shop"), ("run", run)];
            self.add(
                committed,
                "run.queued",
                &s,
                serde_json::json!({ "committed_at": committed }),
            );
            self.add(
                live,
                "run.stage.succeeded",
                &s,
                serde_json::json!({ "stage": "release", "release": r }),
            );
            self.live(r, live);
        }

        fn live(&mut self, r: &str, at: &str) {
            self.add(
                at,
                "release.succeeded",
                &[("service", "shop"), ("release", r)],
                serde_json::json!({}),
            );
        }
    }

    #[test]
    fn a_scripted_month_gives_the_hand_computed_figures_and_bands() {
        let mut h = History(Vec::new());
        h.shipped("1", "2026-11-01T00:00:00Z", "r1", "2026-11-02T00:00:00Z"); // lead 1 day
        h.shipped("2", "2026-11-05T00:00:00Z", "r2", "2026-11-05T02:00:00Z"); // lead 2 h
        // r2 breaks: an incident suspects it; r3 (a fix) goes live first.
        h.add(
            "2026-11-05T02:10:00Z",
            "incident.opened",
            &[("service", "shop"), ("incident", "7")],
            serde_json::json!({ "suspect_release": "r2" }),
        );
        h.shipped("3", "2026-11-05T02:30:00Z", "r3", "2026-11-05T02:45:00Z"); // lead 15 min
        h.add(
            "2026-11-05T03:00:00Z",
            "incident.resolved",
            &[("service", "shop"), ("incident", "7")],
            serde_json::json!({}),
        );
        // r4 is rolled back to r3 half an hour after it went live.
        h.shipped("4", "2026-11-10T00:00:00Z", "r4", "2026-11-10T01:00:00Z"); // lead 1 h
        h.add(
            "2026-11-10T01:30:00Z",
            "rollback.succeeded",
            &[("service", "shop"), ("release", "r3")],
            serde_json::json!({ "previous": "r4" }),
        );
        // r5 by hand (no run: no lead time); a staging deploy is not counted.
        h.live("r5", "2026-11-20T00:00:00Z");
        h.add(
            "2026-11-21T00:00:00Z",
            "release.succeeded",
            &[("service", "shop"), ("release", "r6"), ("env", "staging")],
            serde_json::json!({}),
        );
        // Outside the period: not counted.
        h.live("r0", "2026-10-20T00:00:00Z");

        let r = report(&h.0, "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", None);
        let d = &r.services[0];
        assert_eq!((d.deployments, d.rollbacks), (5, 1));
        // 5 in 30 days: 0.1667 a day, at least weekly: high.
        assert!((d.deployments_per_day - 5.0 / 30.0).abs() < 1e-9);
        assert_eq!(d.deployment_frequency_band, "high");
        // Lead times 900, 3600, 7200, 86400 s: median 5400 s, elite.
        assert_eq!(d.lead_times, 4);
        assert_eq!(d.lead_time_median_s, Some(5400.0));
        assert_eq!(d.lead_time_band, "elite");
        // r2 and r4 failed, of 6 deployments.
        assert_eq!(d.failed_deployments, 2);
        assert_eq!(d.change_failure_rate, Some(r9(2.0 / 6.0)));
        assert_eq!(d.change_failure_band, "low");
        // Recovered by r3 after 45 min, by the rollback after 30 min.
        assert_eq!(d.recovery_median_s, Some(2250.0));
        assert_eq!(d.recovery_band, "elite");
        // r3 and the rollback were rework.
        assert_eq!(d.rework_deployments, 2);
        assert_eq!(d.rework_rate, Some(r9(2.0 / 6.0)));
        assert_eq!(r.total.deployments, 5);
        assert_eq!(r.total.service, "*");
    }
}
