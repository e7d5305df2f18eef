//! The SLA report of one customer and calendar month, from journal events
//! alone: which services are the customer's (`service.created|updated`),
//! their contract (`customer.contract_set`), the minutes measured
//! (`measurements.recorded`), maintenance windows and when they were
//! announced (`maintenance.scheduled|cancelled`), and incidents
//! (`incident.opened|acknowledged|resolved`).
//!
//! The rules, per service and month (UTC):
//! - A minute inside a maintenance window announced at least the
//!   contract's notice before the window began is **excluded**; a window
//!   announced later, or cancelled, excludes nothing.
//! - A measured minute with requests is down by the share of them answered
//!   5xx; a measured minute without requests by the share of the monitor's
//!   looks (about one a second) that found no ready instance, and it
//!   weighs the share of the minute that was watched (as `core::slo`).
//! - A minute nobody measured (tandem itself was down) is **unmeasured**:
//!   reported, and counted neither up nor down.
//! - availability = 1 − downtime / measured; the error budget is
//!   `(1 − objective) × (minutes − excluded)`; the credit is the
//!   contract's largest step whose bound the availability is below.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tandem_core::contract::Contract;
use tandem_core::journal::Event;
use tandem_core::slo::{Minute, Sli, each_measured, measured_minute};

use crate::{ReportError, r9};

/// The signed checkpoint a report rests on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointRef {
    pub origin: String,
    pub size: u64,
    /// Lowercase hex.
    pub root: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SlaReport {
    pub customer: String,
    pub month: String,
    /// The month's first and last instant (UTC).
    pub from: String,
    pub to: String,
    pub checkpoint: Option<CheckpointRef>,
    /// The contract in force (the last one set), as journaled.
    pub contract: Option<Contract>,
    pub services: Vec<ServiceSla>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceSla {
    pub service: String,
    pub tier: String,
    /// A fraction (0.999 for 99.9 %); none if the contract owes nothing.
    pub objective: Option<f64>,
    /// Minutes in the month.
    pub minutes: u64,
    /// Inside maintenance announced in time.
    pub excluded_minutes: u64,
    /// Neither excluded nor measured.
    pub unmeasured_minutes: u64,
    /// Measured minutes, by the share of each that was watched.
    pub measured_minutes: f64,
    pub downtime_minutes: f64,
    pub availability: f64,
    /// Share of the month's error budget spent (above 1: overspent).
    pub budget_used: Option<f64>,
    /// Share of the month's fee owed as service credit.
    pub credit: f64,
    pub maintenance: Vec<Window>,
    pub incidents: Vec<Incident>,
    pub daily: Vec<Day>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub id: String,
    pub starts_at: String,
    pub ends_at: String,
    pub announced_at: String,
    pub reason: String,
    /// Announced in time, and so excluded.
    pub excluded: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Incident {
    pub id: String,
    pub kind: String,
    pub severity: String,
    /// Its summary when it opened.
    pub cause: String,
    pub opened_at: String,
    pub resolved_at: Option<String>,
    pub duration_s: Option<i64>,
    pub release: Option<String>,
    pub suspect_release: Option<String>,
    pub resolved_by: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Day {
    pub date: String,
    pub availability: f64,
    pub downtime_minutes: f64,
    /// The month's budget left at the day's end (1: untouched).
    pub budget_left: Option<f64>,
}

/// The first minute of `month` ("2026-11") and of the month after it.
pub fn month_minutes(month: &str) -> Result<(i64, i64), ReportError> {
    let bad = || ReportError::BadInput(format!("month {month:?}: expected YYYY-MM"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (y, m): (i16, i8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = jiff::civil::Date::new(y, m, 1).map_err(|_| bad())?;
    let next = first.last_of_month().tomorrow().map_err(|_| bad())?;
    let minute = |d: jiff::civil::Date| -> Result<i64, ReportError> {
        Ok(d.to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map_err(|_| bad())?
            .timestamp()
            .as_second()
            / 60)
    };
    Ok((minute(first)?, minute(next)?))
}

fn ts_minute(ts: &str) -> Option<i64> {
    Some(
        ts.parse::<jiff::Timestamp>()
            .ok()?
            .as_second()
            .div_euclid(60),
    )
}

fn ts_second(ts: &str) -> Option<i64> {
    Some(ts.parse::<jiff::Timestamp>().ok()?.as_second())
}

/// The instant a minute (Unix time / 60) begins, RFC 3339.
pub fn minute_ts(minute: i64) -> String {
    jiff::Timestamp::from_second(minute * 60)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// The services of `customer` in `events`, with their tier: a service's
/// customer is the first one it was delivered to (as the store keeps it).
pub fn services_of(events: &[Event], customer: &str) -> BTreeMap<String, String> {
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut tier: BTreeMap<String, String> = BTreeMap::new();
    for e in events {
        if e.kind != "service.created" && e.kind != "service.updated" {
            continue;
        }
        let Some(service) = e.subject.get("service") else {
            continue;
        };
        if let Some(c) = e.payload["customer"].as_str() {
            owner.entry(service.clone()).or_insert_with(|| c.to_owned());
        }
        if let Some(t) = e.payload["tier"].as_str() {
            tier.insert(service.clone(), t.to_owned());
        }
    }
    owner
        .into_iter()
        .filter(|(_, c)| c == customer)
        .map(|(s, _)| {
            let t = tier.get(&s).cloned().unwrap_or_default();
            (s, t)
        })
        .collect()
}

/// Whether `e` is about `customer` or one of `services`: the events a
/// report of theirs reads and a bundle of theirs holds.
pub fn concerns(e: &Event, customer: &str, services: &BTreeSet<String>) -> bool {
    e.subject.get("customer").is_some_and(|c| c == customer)
        || e.subject
            .get("service")
            .is_some_and(|s| services.contains(s))
}

/// Of `events` (in journal order), those a bundle for `customer` and the
/// minutes `[from, to)` holds, and a report of theirs reads: every event
/// about them or their services, but measurements only of the hours that
/// touch `[from, to)`.
pub fn select(events: Vec<Event>, customer: &str, from: i64, to: i64) -> Vec<Event> {
    let services: BTreeSet<String> = services_of(&events, customer).into_keys().collect();
    events
        .into_iter()
        .filter(|e| concerns(e, customer, &services))
        .filter(|e| {
            e.kind != "measurements.recorded"
                || e.payload["hour"]
                    .as_i64()
                    .is_some_and(|h| h < to && h + 60 > from)
        })
        .collect()
}

/// (weight, bad) of a measured minute: see the module's rules.
fn judge(m: &Minute) -> (f64, f64) {
    let (good, total) = m.events(Sli::Availability);
    if m.total > 0 {
        (1.0, (total - good) / total)
    } else {
        (total, total - good)
    }
}

/// The SLA report of `customer` for `month` from `events` (any superset
/// of those that concern them, in journal order).
pub fn report(
    events: &[Event],
    customer: &str,
    month: &str,
    checkpoint: Option<CheckpointRef>,
) -> Result<SlaReport, ReportError> {
    let (from, to) = month_minutes(month)?;
    let services = services_of(events, customer);
    let contract = events
        .iter()
        .filter(|e| e.kind == "customer.contract_set")
        .filter(|e| e.subject.get("customer").is_some_and(|c| c == customer))
        .filter_map(|e| {
            let c = serde_json::from_value::<Contract>(e.payload["contract"].clone()).ok()?;
            Some((ts_minute(&e.ts).unwrap_or(i64::MAX), c))
        })
        // The one in force when the month began; else the first set during
        // it (a contract signed mid-month covers that month). Never one
        // set after the month: it cannot change what was owed.
        .fold(None::<(i64, Contract)>, |kept, (at, c)| match kept {
            _ if at >= to => kept,
            Some((k, _)) if k >= from && at > k => kept,
            Some((k, _)) if at > from && k <= from => kept,
            _ => Some((at, c)),
        })
        .map(|(_, c)| c);
    let notice_s = contract
        .as_ref()
        .map_or(0, |c| (c.notice.as_millis() / 1000) as i64);

    // Per service: measured minutes of the month (the bulk: read on every
    // core), windows, incidents.
    let mut measured = measurements(events, &services, from, to)?;
    let mut windows: BTreeMap<&str, BTreeMap<String, Window>> = BTreeMap::new();
    let mut incidents: BTreeMap<&str, BTreeMap<String, Incident>> = BTreeMap::new();
    for e in events {
        if e.kind == "measurements.recorded" {
            continue;
        }
        let Some(service) = e.subject.get("service").map(String::as_str) else {
            continue;
        };
        if !services.contains_key(service) {
            continue;
        }
        match e.kind.as_str() {
            "maintenance.scheduled" => {
                let id = e.subject.get("maintenance").cloned().unwrap_or_default();
                let (Some(starts_at), Some(ends_at)) =
                    (text(&e.payload["starts_at"]), text(&e.payload["ends_at"]))
                else {
                    continue;
                };
                let excluded = matches!(
                    (ts_second(&e.ts), ts_second(&starts_at)),
                    (Some(announced), Some(starts)) if announced + notice_s <= starts
                );
                windows.entry(service).or_default().insert(
                    id.clone(),
                    Window {
                        id,
                        starts_at,
                        ends_at,
                        announced_at: e.ts.clone(),
                        reason: text(&e.payload["reason"]).unwrap_or_default(),
                        excluded,
                    },
                );
            }
            "maintenance.cancelled" => {
                if let Some(id) = e.subject.get("maintenance") {
                    windows.entry(service).or_default().remove(id);
                }
            }
            "incident.opened" => {
                let id = e.subject.get("incident").cloned().unwrap_or_default();
                incidents.entry(service).or_default().insert(
                    id.clone(),
                    Incident {
                        id,
                        kind: text(&e.payload["kind"]).unwrap_or_default(),
                        severity: text(&e.payload["severity"]).unwrap_or_default(),
                        cause: text(&e.payload["summary"]).unwrap_or_default(),
                        opened_at: e.ts.clone(),
                        resolved_at: None,
                        duration_s: None,
                        release: text(&e.payload["release"]),
                        suspect_release: text(&e.payload["suspect_release"]),
                        resolved_by: None,
                    },
                );
            }
            "incident.resolved" => {
                let Some(i) = e
                    .subject
                    .get("incident")
                    .and_then(|id| incidents.get_mut(service)?.get_mut(id))
                else {
                    continue;
                };
                i.resolved_at = Some(e.ts.clone());
                i.duration_s = match (ts_second(&i.opened_at), ts_second(&e.ts)) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                };
                i.resolved_by = Some(e.actor.clone());
            }
            _ => {}
        }
    }

    // Each service on its own, on every core.
    let inputs: Vec<Input> = services
        .iter()
        .map(|(service, tier)| Input {
            service: service.clone(),
            tier: tier.clone(),
            windows: windows
                .remove(service.as_str())
                .unwrap_or_default()
                .into_values()
                .collect(),
            incidents: incidents
                .remove(service.as_str())
                .unwrap_or_default()
                .into_values()
                .collect(),
            hours: measured.remove(service.as_str()).unwrap_or_default(),
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = inputs.len().div_ceil(cores).max(1);
    let terms = contract.as_ref();
    let out: Vec<ServiceSla> = std::thread::scope(|s| {
        let running: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|i| service_sla(i, terms, from, to))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| ReportError::Encode("a report worker failed".into()))
            })
            .collect::<Result<Vec<Vec<ServiceSla>>, _>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    Ok(SlaReport {
        customer: customer.to_owned(),
        month: month.to_owned(),
        from: minute_ts(from),
        to: minute_ts(to),
        checkpoint,
        contract,
        services: out,
    })
}

/// What one service's figures are computed from.
struct Input<'a> {
    service: String,
    tier: String,
    windows: Vec<Window>,
    incidents: Vec<Incident>,
    /// (hour, minute string) of its measurements.
    hours: Vec<(i64, &'a str)>,
}

/// One service's figures for the minutes `[from, to)`.
fn service_sla(input: &Input<'_>, contract: Option<&Contract>, from: i64, to: i64) -> ServiceSla {
    let objective = contract.and_then(|c| c.objective_for(&input.service, &input.tier));
    let mut windows: Vec<Window> = input
        .windows
        .iter()
        .filter(|w| {
            // Those that touch the month.
            matches!((ts_minute(&w.starts_at), ts_minute(&w.ends_at)), (Some(a), Some(b)) if a < to && b > from)
        })
        .cloned()
        .collect();
    windows.sort_by(|a, b| (&a.starts_at, &a.id).cmp(&(&b.starts_at, &b.id)));
    // Excluded minutes: the windows announced in time, merged, in the month.
    let mut spans: Vec<(i64, i64)> = windows
        .iter()
        .filter(|w| w.excluded)
        .filter_map(|w| {
            // Whole minutes inside the window only: a minute it covers in
            // part still counts (rounding outward would hide downtime).
            let a = (ts_second(&w.starts_at)? + 59).div_euclid(60).max(from);
            let b = ts_second(&w.ends_at)?.div_euclid(60).min(to);
            (a < b).then_some((a, b))
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (a, b) in spans {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let excluded: u64 = merged.iter().map(|(a, b)| (b - a) as u64).sum();
    // Hours in order, each once (the last record of an hour stands).
    let mut hours = input.hours.clone();
    hours.reverse();
    hours.sort_by_key(|h| h.0);
    hours.dedup_by_key(|h| h.0);
    let days_n = ((to - from) as usize).div_ceil(1440);
    let mut days = vec![(0.0f64, 0.0f64); days_n];
    let (mut weight, mut down, mut measured) = (0.0f64, 0.0f64, 0u64);
    for (hour, text) in hours {
        // A malformed hour counts for nothing, not for its first minutes.
        let mut read = Vec::with_capacity(60);
        if each_measured(text, |m| read.push(m)).is_none() {
            continue;
        }
        read.into_iter().for_each(|m| {
            let minute = measured_minute(hour, m);
            if minute.minute < from
                || minute.minute >= to
                || merged
                    .iter()
                    .any(|(a, b)| (*a..*b).contains(&minute.minute))
            {
                return;
            }
            let (w, bad) = judge(&minute);
            measured += 1;
            weight += w;
            down += bad;
            let day = &mut days[((minute.minute - from) / 1440) as usize];
            day.0 += w;
            day.1 += bad;
        });
    }
    let total = (to - from) as u64;
    let unmeasured = total.saturating_sub(excluded + measured);
    let allowed = objective.map(|o| (1.0 - o) * (total - excluded) as f64);
    // No budget at all (an objective of 100 %): no share of it.
    let budget_used = allowed.filter(|a| *a > 0.0).map(|a| down / a);
    let availability = if weight > 0.0 {
        1.0 - down / weight
    } else {
        1.0
    };
    let mut spent = 0.0;
    let daily = days
        .iter()
        .enumerate()
        .map(|(i, &(w, d))| {
            spent += d;
            Day {
                date: minute_ts(from + i as i64 * 1440)
                    .get(..10)
                    .unwrap_or_default()
                    .to_owned(),
                availability: r9(if w > 0.0 { 1.0 - d / w } else { 1.0 }),
                downtime_minutes: r9(d),
                budget_left: allowed.filter(|a| *a > 0.0).map(|a| r9(1.0 - spent / a)),
            }
        })
        .collect();
    let mut incidents: Vec<Incident> = input
        .incidents
        .iter()
        .filter(|i| {
            let opened = ts_minute(&i.opened_at).unwrap_or(i64::MAX);
            let resolved = i.resolved_at.as_deref().and_then(ts_minute);
            opened < to && resolved.is_none_or(|r| r >= from)
        })
        .cloned()
        .collect();
    incidents.sort_by(|a, b| (&a.opened_at, &a.id).cmp(&(&b.opened_at, &b.id)));
    ServiceSla {
        service: input.service.clone(),
        tier: input.tier.clone(),
        objective,
        minutes: total,
        excluded_minutes: excluded,
        unmeasured_minutes: unmeasured,
        measured_minutes: r9(weight),
        downtime_minutes: r9(down),
        availability: r9(availability),
        budget_used: budget_used.map(r9),
        // On the figure shown: 99.9000% is not "below 99.9%".
        credit: contract.map_or(0.0, |c| c.credit_for(r9(availability))),
        maintenance: windows,
        incidents,
        daily,
    }
}

/// Each service's (hour, minute string) measurements.
type Hours<'a> = BTreeMap<&'a str, Vec<(i64, &'a str)>>;

/// (hour, minute string) of each service's production measurements that
/// touch `[from, to)`, in journal order.
fn measurements<'a>(
    events: &'a [Event],
    services: &BTreeMap<String, String>,
    from: i64,
    to: i64,
) -> Result<Hours<'a>, ReportError> {
    let wanted: std::collections::HashSet<&str> = services.keys().map(String::as_str).collect();
    let read = |part: &'a [Event]| {
        let mut found: std::collections::HashMap<&'a str, Vec<(i64, &'a str)>> =
            std::collections::HashMap::new();
        for e in part {
            if e.kind != "measurements.recorded" {
                continue;
            }
            let Some(service) = e.subject.get("service").map(String::as_str) else {
                continue;
            };
            if !wanted.contains(service) {
                continue;
            }
            let (Some(hour), Some(minutes)) =
                (e.payload["hour"].as_i64(), e.payload["minutes"].as_str())
            else {
                continue;
            };
            if e.payload["env"].as_str().is_some_and(|env| !env.is_empty())
                || hour % 60 != 0
                || hour + 60 <= from
                || hour >= to
            {
                continue;
            }
            found.entry(service).or_default().push((hour, minutes));
        }
        found
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = events.len().div_ceil(cores).max(1);
    let parts: Vec<_> = std::thread::scope(|s| {
        let running: Vec<_> = events
            .chunks(chunk)
            .map(|part| s.spawn(move || read(part)))
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| ReportError::Encode("a report worker failed".into()))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut all: BTreeMap<&'a str, Vec<(i64, &'a str)>> = BTreeMap::new();
    for part in parts {
        for (service, hours) in part {
            all.entry(service).or_default().extend(hours);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::event;

    const MONTH: &str = "2026-11";

    fn contract(notice: &str, objective: &str) -> serde_json::Value {
        serde_json::json!({ "contract": {
            "notice": notice,
            "objectives": [{ "objective": objective }],
            "credits": [{ "below": "99.9%", "credit": "10%" }],
        } })
    }

    /// A month of acme's `shop`: every minute measured with 100 requests,
    /// the minutes in `down` all answered 5xx; plus `extra` events.
    fn month(down: std::ops::Range<i64>, extra: Vec<Event>) -> Vec<Event> {
        let (from, to) = month_minutes(MONTH).expect("month");
        let mut events = vec![event(
            1,
            "2026-10-01T00:00:00Z",
            "user:ann",
            "service.created",
            &[("service", "shop")],
            serde_json::json!({ "customer": "acme", "tier": "critical" }),
        )];
        events.extend(extra);
        for hour in (from..to).step_by(60) {
            let minutes: Vec<String> = (hour..hour + 60)
                .map(|m| format!("100,{},60,0", if down.contains(&m) { 100 } else { 0 }))
                .collect();
            events.push(event(
                0,
                "2026-12-01T00:00:00Z",
                "system:monitor",
                "measurements.recorded",
                &[("service", "shop")],
                serde_json::json!({ "env": "", "hour": hour, "minutes": minutes.join(";") }),
            ));
        }
        events
    }

    fn set(ts: &str, body: serde_json::Value) -> Event {
        event(
            0,
            ts,
            "user:ann",
            "customer.contract_set",
            &[("customer", "acme")],
            body,
        )
    }

    #[test]
    fn the_contract_in_force_when_the_month_began_decides_not_one_set_later() {
        let before = set("2026-10-15T00:00:00Z", contract("72h", "99.9%"));
        let during = set("2026-11-10T00:00:00Z", contract("72h", "99.5%"));
        let after = set("2026-12-02T00:00:00Z", contract("72h", "90%"));
        let objective = |extra: Vec<Event>| {
            report(&month(0..0, extra), "acme", MONTH, None)
                .expect("report")
                .services[0]
                .objective
        };
        assert_eq!(
            objective(vec![before, during.clone(), after.clone()]),
            Some(0.999)
        );
        // None before the month: the first set during it covers it.
        assert_eq!(objective(vec![during, after.clone()]), Some(0.995));
        // Only one set after the month: it owes nothing for this month.
        assert_eq!(objective(vec![after]), None);
    }

    #[test]
    fn a_window_excludes_only_the_whole_minutes_inside_it() {
        let (from, _) = month_minutes(MONTH).expect("month");
        // 10:00:30 to 10:10:30 on the month's second day, announced long
        // before; down from 10:00 to 10:11. Excluded: 10:01..10:10 (9
        // minutes); the two partly covered minutes count as down.
        let start = from + 1440 + 600;
        let at = |m: i64, s: i64| {
            jiff::Timestamp::from_second(m * 60 + s)
                .expect("ts")
                .to_string()
        };
        let window = event(
            0,
            "2026-10-01T00:00:00Z",
            "user:ann",
            "maintenance.scheduled",
            &[("service", "shop"), ("maintenance", "1")],
            serde_json::json!({ "starts_at": at(start, 30), "ends_at": at(start + 10, 30), "reason": "r" }),
        );
        let extra = vec![
            set("2026-10-01T00:00:00Z", contract("72h", "99.9%")),
            window,
        ];
        let s = &report(&month(start..start + 11, extra), "acme", MONTH, None)
            .expect("report")
            .services[0];
        assert_eq!(s.excluded_minutes, 9);
        assert_eq!(s.downtime_minutes, 2.0);
        assert!(s.maintenance[0].excluded);
    }

    #[test]
    fn a_malformed_hour_counts_for_nothing_and_credit_follows_the_figure_shown() {
        let (from, to) = month_minutes(MONTH).expect("month");
        let mut events = month(
            0..0,
            vec![set("2026-10-01T00:00:00Z", contract("72h", "99.9%"))],
        );
        // The first hour's string broken after its first minutes.
        let first = events
            .iter_mut()
            .find(|e| e.kind == "measurements.recorded")
            .expect("hour");
        first.payload["minutes"] = serde_json::json!("100,100,60,0;100,100,60,0;oops");
        let s = &report(&events, "acme", MONTH, None)
            .expect("report")
            .services[0];
        assert_eq!(s.unmeasured_minutes, 60, "the whole hour, not 58 of it");
        assert_eq!(s.downtime_minutes, 0.0);
        // Down exactly 0.1 % of the month (43.2 of 43,200 minutes: 43
        // whole ones and a fifth of the 44th): 99.9000 % shown, and 99.9 %
        // is not "below 99.9 %".
        assert_eq!(to - from, 43_200);
        let mut exact = month(
            from..from + 43,
            vec![set("2026-10-01T00:00:00Z", contract("72h", "99.9%"))],
        );
        let first = exact
            .iter_mut()
            .find(|e| e.kind == "measurements.recorded")
            .expect("hour");
        let mut fields: Vec<String> = first.payload["minutes"]
            .as_str()
            .expect("minutes")
            .split(';')
            .map(str::to_owned)
            .collect();
        fields[43] = "100,20,60,0".into();
        first.payload["minutes"] = serde_json::json!(fields.join(";"));
        let s = &report(&exact, "acme", MONTH, None)
            .expect("report")
            .services[0];
        assert_eq!(s.availability, 0.999);
        assert_eq!(s.credit, 0.0);
    }
}
