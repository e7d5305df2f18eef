//! SLO standings of a service from its stored minutes and maintenance
//! windows, as `tandem status` shows them and the monitor alerts on.

use serde::Serialize;
use tandem_core::slo::{self, Alert, Minute, Sli};
use tandem_core::spec::{SloWindow, Spec};
use tandem_store::{MaintenanceRow, MinuteRow, Store, StoreError};

/// Burn-rate windows shown, in minutes.
pub const BURN_WINDOWS: [(&str, i64); 5] = [
    ("5m", 5),
    ("1h", 60),
    ("6h", 360),
    ("1d", 1440),
    ("3d", 4320),
];

#[derive(Clone, Debug, Serialize)]
pub struct SloReport {
    pub name: String,
    pub objective: f64,
    pub window: String,
    /// Latency threshold in ms, for a latency SLO.
    pub threshold_ms: Option<u64>,
    /// Good and all events: requests, plus minutes without requests
    /// judged by the probes (fractional when partly unready).
    pub good: f64,
    pub total: f64,
    /// Requests counted, and minutes without requests.
    pub requests: u64,
    pub quiet_minutes: u64,
    pub attainment: f64,
    pub budget_remaining: f64,
    /// Burn rate by window (`5m`, `1h`, …).
    pub burn_rates: Vec<(String, f64)>,
    pub alert: Option<Alert>,
}

/// The current minute (Unix time / 60).
pub fn now_minute() -> i64 {
    jiff::Timestamp::now().as_second() / 60
}

/// Where each of the spec's SLOs stands at `now` (exclusive), in production.
pub async fn report(store: &Store, spec: &Spec, now: i64) -> Result<Vec<SloReport>, StoreError> {
    if spec.slo.is_empty() {
        return Ok(Vec::new());
    }
    let service = spec.service.name.as_str();
    let starts: Vec<i64> = spec
        .slo
        .iter()
        .map(|s| window_start(&s.window, now).0)
        .collect();
    let from = starts.iter().copied().min().unwrap_or(now).min(now - 4320);
    let rows = store.minutes(service, "", from, now).await?;
    let windows = store.maintenance(Some(service)).await?;
    let mut out = Vec::new();
    for (slo, start) in spec.slo.iter().zip(starts) {
        let window_minutes = window_start(&slo.window, now).1;
        let threshold_us = slo.threshold.map(|t| t.as_millis() * 1000);
        let minutes = to_minutes(&rows, &windows, threshold_us);
        let sli = if threshold_us.is_some() {
            Sli::Latency
        } else {
            Sli::Availability
        };
        let objective = slo.objective.ratio();
        let standing = slo::standing(&minutes, sli, objective, start, now, window_minutes);
        out.push(SloReport {
            name: slo.name.clone(),
            objective,
            window: String::from(slo.window.clone()),
            threshold_ms: slo.threshold.map(|t| t.as_millis()),
            good: standing.good,
            total: standing.total,
            requests: standing.requests,
            quiet_minutes: standing.quiet_minutes,
            attainment: standing.attainment,
            budget_remaining: standing.budget_remaining,
            burn_rates: BURN_WINDOWS
                .iter()
                .map(|(name, w)| {
                    (
                        name.to_string(),
                        slo::burn_rate(&minutes, sli, objective, now, *w),
                    )
                })
                .collect(),
            alert: slo::alert(&minutes, sli, objective, now),
        });
    }
    Ok(out)
}

/// Where the SLO window that holds `now` begins, and its whole length in
/// minutes (a calendar month's from its first minute to its last).
fn window_start(window: &SloWindow, now: i64) -> (i64, i64) {
    match window {
        SloWindow::CalendarMonth => {
            let start = slo::month_start(now);
            // The first minute of the next month: 32 days on is always in it.
            (start, slo::month_start(start + 32 * 1440) - start)
        }
        SloWindow::Rolling(d) => {
            let minutes = (d.as_millis() / 60_000) as i64;
            (now - minutes, minutes)
        }
    }
}

/// Stored minutes as the SLO arithmetic reads them: maintenance marked,
/// good answers within `threshold_us` counted (5xx never count as fast).
pub fn to_minutes(
    rows: &[MinuteRow],
    windows: &[MaintenanceRow],
    threshold_us: Option<u64>,
) -> Vec<Minute> {
    let spans: Vec<(i64, i64)> = windows
        .iter()
        .filter_map(|w| {
            let a: jiff::Timestamp = w.starts_at.parse().ok()?;
            let b: jiff::Timestamp = w.ends_at.parse().ok()?;
            Some((
                a.as_second().div_euclid(60),
                (b.as_second() + 59).div_euclid(60),
            ))
        })
        .collect();
    rows.iter()
        .map(|r| {
            let total = r.total.max(0) as u64;
            let errors = r.errors.max(0) as u64;
            let fast = match threshold_us {
                Some(t) => slo::within(&r.buckets, t).saturating_sub(errors),
                None => total - errors.min(total),
            };
            let (looks, unready_looks) = r.looks();
            Minute {
                minute: r.minute,
                total,
                errors,
                fast,
                looks,
                unready_looks,
                maintenance: spans.iter().any(|(a, b)| r.minute >= *a && r.minute < *b),
            }
        })
        .collect()
}

/// Whether a maintenance window of `service` covers this moment.
pub fn in_maintenance(windows: &[MaintenanceRow], now: jiff::Timestamp) -> bool {
    windows.iter().any(|w| {
        match (
            w.starts_at.parse::<jiff::Timestamp>(),
            w.ends_at.parse::<jiff::Timestamp>(),
        ) {
            (Ok(a), Ok(b)) => a <= now && now < b,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute_of(at: &str) -> i64 {
        at.parse::<jiff::Timestamp>()
            .expect("timestamp")
            .as_second()
            / 60
    }

    #[test]
    fn a_calendar_month_window_is_as_long_as_its_month() {
        let feb = minute_of("2026-02-14T10:00:00Z");
        assert_eq!(
            window_start(&SloWindow::CalendarMonth, feb),
            (minute_of("2026-02-01T00:00:00Z"), 28 * 1440)
        );
        let dec = minute_of("2026-12-31T23:59:00Z");
        assert_eq!(
            window_start(&SloWindow::CalendarMonth, dec),
            (minute_of("2026-12-01T00:00:00Z"), 31 * 1440)
        );
    }
}
