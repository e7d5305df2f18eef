//! Service level objectives over per-minute rollups: attainment, error
//! budget and burn rates, and the multiwindow, multi-burn-rate alerts of the
//! Google SRE workbook. Pure arithmetic on [`Minute`]s; the caller loads
//! them.
//!
//! The SLI is request-based: a minute contributes its requests, good ones
//! being those not answered 5xx (and, for a latency SLO, answered within
//! the threshold). A minute without a ready instance and without requests
//! still counts as one bad event, so an outage nobody noticed burns budget
//! too. Minutes inside a maintenance window count for nothing.

use serde::{Deserialize, Serialize};

/// Upper bounds (µs) of the proxy's latency histogram. Common latency SLO
/// thresholds (200 ms, 300 ms, …) are bounds, so "answered within the
/// threshold" is exact for them; another threshold counts up to the bound
/// below it.
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000, 250_000, 300_000, 400_000,
    500_000, 750_000, 1_000_000, 2_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Requests of a minute's histogram answered within `threshold_us`.
pub fn within(buckets: &[u64], threshold_us: u64) -> u64 {
    LATENCY_BOUNDS_US
        .iter()
        .zip(buckets)
        .take_while(|(bound, _)| **bound <= threshold_us)
        .map(|(_, n)| n)
        .sum()
}

/// One minute of one service, as measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// Unix time / 60.
    pub minute: i64,
    pub total: u64,
    /// Requests answered 5xx.
    pub errors: u64,
    /// Requests answered within the latency SLO's threshold (non-5xx).
    pub fast: u64,
    /// Whether some instance was ready during the whole minute.
    pub ready: bool,
    pub maintenance: bool,
}

/// What an SLO counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sli {
    Availability,
    Latency,
}

impl Minute {
    /// (good, total) events of this minute for `sli`.
    pub fn events(&self, sli: Sli) -> (u64, u64) {
        if self.maintenance {
            return (0, 0);
        }
        if self.total == 0 {
            return if self.ready { (0, 0) } else { (0, 1) };
        }
        let good = match sli {
            Sli::Availability => self.total - self.errors.min(self.total),
            Sli::Latency => self.fast.min(self.total),
        };
        (good, self.total)
    }
}

/// Good and total events of `minutes` with `from <= minute < to`.
pub fn count(minutes: &[Minute], sli: Sli, from: i64, to: i64) -> (u64, u64) {
    minutes
        .iter()
        .filter(|m| m.minute >= from && m.minute < to)
        .map(|m| m.events(sli))
        .fold((0, 0), |(g, t), (mg, mt)| (g + mg, t + mt))
}

/// Where an SLO stands over its window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Standing {
    pub good: u64,
    pub total: u64,
    /// good / total; 1.0 with no events.
    pub attainment: f64,
    /// Share of the error budget left: 1.0 untouched, 0 spent, below 0
    /// overspent.
    pub budget_remaining: f64,
}

/// `objective` as a fraction (0.9995 for 99.95%).
pub fn standing(minutes: &[Minute], sli: Sli, objective: f64, from: i64, to: i64) -> Standing {
    let (good, total) = count(minutes, sli, from, to);
    let attainment = if total == 0 {
        1.0
    } else {
        good as f64 / total as f64
    };
    let allowed = (1.0 - objective) * total as f64;
    let bad = (total - good) as f64;
    let budget_remaining = if allowed > 0.0 {
        1.0 - bad / allowed
    } else if bad > 0.0 {
        f64::NEG_INFINITY
    } else {
        1.0
    };
    Standing {
        good,
        total,
        attainment,
        budget_remaining,
    }
}

/// Burn rate over the `window_minutes` ending at `now` (exclusive): the
/// error rate divided by the rate the objective allows. 1.0 spends the
/// budget exactly over the SLO window; 0 with no events.
pub fn burn_rate(
    minutes: &[Minute],
    sli: Sli,
    objective: f64,
    now: i64,
    window_minutes: i64,
) -> f64 {
    let (good, total) = count(minutes, sli, now - window_minutes, now);
    if total == 0 {
        return 0.0;
    }
    let error_rate = (total - good) as f64 / total as f64;
    let allowed = 1.0 - objective;
    if allowed <= 0.0 {
        return if error_rate > 0.0 { f64::INFINITY } else { 0.0 };
    }
    error_rate / allowed
}

/// How loudly to alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alert {
    Ticket,
    Page,
}

/// One multiwindow rule: both windows must burn at least `rate`.
pub struct Rule {
    pub alert: Alert,
    pub rate: f64,
    pub long_minutes: i64,
    pub short_minutes: i64,
}

/// The SRE workbook's rules for a 30-day budget.
pub const RULES: [Rule; 4] = [
    Rule {
        alert: Alert::Page,
        rate: 14.4,
        long_minutes: 60,
        short_minutes: 5,
    },
    Rule {
        alert: Alert::Page,
        rate: 6.0,
        long_minutes: 360,
        short_minutes: 30,
    },
    Rule {
        alert: Alert::Ticket,
        rate: 3.0,
        long_minutes: 1440,
        short_minutes: 120,
    },
    Rule {
        alert: Alert::Ticket,
        rate: 1.0,
        long_minutes: 4320,
        short_minutes: 360,
    },
];

/// Tolerance for comparing burn rates with thresholds (0.0144 / 0.001 is
/// 14.399999999999999 in floating point).
const EPSILON: f64 = 1e-9;

/// The loudest alert whose both windows burn at or above its rate.
pub fn alert(minutes: &[Minute], sli: Sli, objective: f64, now: i64) -> Option<Alert> {
    RULES
        .iter()
        .filter(|r| {
            burn_rate(minutes, sli, objective, now, r.long_minutes) >= r.rate - EPSILON
                && burn_rate(minutes, sli, objective, now, r.short_minutes) >= r.rate - EPSILON
        })
        .map(|r| r.alert)
        .max()
}

/// The first minute of the calendar month (UTC) that `minute` is in.
pub fn month_start(minute: i64) -> i64 {
    let ts = jiff::Timestamp::from_second(minute * 60).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let date = ts.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let first = date.first_of_month();
    first
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second() / 60)
        .unwrap_or(minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 29_000_000; // some minute in 2025
    const SLO: f64 = 0.999; // budget: 0.1% errors

    /// `span` minutes ending before `end`, each with `total` requests of
    /// which `errors` failed.
    fn minutes(end: i64, span: i64, total: u64, errors: u64) -> Vec<Minute> {
        (end - span..end)
            .map(|minute| Minute {
                minute,
                total,
                errors,
                fast: total - errors,
                ready: true,
                maintenance: false,
            })
            .collect()
    }

    /// Overwrites the error count of the minutes in `[from, to)`.
    fn with_errors(mut m: Vec<Minute>, from: i64, to: i64, errors: u64) -> Vec<Minute> {
        for x in m.iter_mut().filter(|x| x.minute >= from && x.minute < to) {
            x.errors = errors;
            x.fast = x.total - errors;
        }
        m
    }

    #[test]
    fn burning_14_4_times_over_both_the_hour_and_five_minutes_pages() {
        // 1.44% errors = exactly 14.4 × the 0.1% budget, for the last hour.
        let m = with_errors(minutes(NOW, 3 * 24 * 60, 10_000, 0), NOW - 60, NOW, 144);
        for window in [60, 5] {
            let rate = burn_rate(&m, Sli::Availability, SLO, NOW, window);
            assert!((rate - 14.4).abs() < 1e-9, "{window}m: {rate}");
        }
        assert_eq!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Page));
    }

    #[test]
    fn the_six_times_rule_pages_on_six_hours_and_thirty_minutes_alone() {
        // 0.6% errors = 6× the budget for the last 6 hours: below 14.4× over
        // the hour, so only the second page rule can fire.
        let m = with_errors(minutes(NOW, 3 * 24 * 60, 1000, 0), NOW - 360, NOW, 6);
        assert!((burn_rate(&m, Sli::Availability, SLO, NOW, 360) - 6.0).abs() < 1e-9);
        assert!((burn_rate(&m, Sli::Availability, SLO, NOW, 30) - 6.0).abs() < 1e-9);
        assert!(burn_rate(&m, Sli::Availability, SLO, NOW, 60) < 14.4);
        assert_eq!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Page));
        // The same burn that stopped 31 minutes ago: the short window is
        // clean, so no page (the long window alone does not decide).
        let ended = with_errors(minutes(NOW, 3 * 24 * 60, 1000, 0), NOW - 360, NOW - 31, 6);
        assert_ne!(
            alert(&ended, Sli::Availability, SLO, NOW),
            Some(Alert::Page)
        );
    }

    #[test]
    fn the_one_times_rule_tickets_on_three_days_and_six_hours_alone() {
        // Exactly the budget's pace (0.1%) for three days: 1×, a ticket.
        let m = minutes(NOW, 3 * 24 * 60, 1000, 1);
        assert!((burn_rate(&m, Sli::Availability, SLO, NOW, 4320) - 1.0).abs() < 1e-9);
        assert!(burn_rate(&m, Sli::Availability, SLO, NOW, 1440) < 3.0);
        assert_eq!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Ticket));
        // Below it (0.09%): nothing.
        let under: Vec<Minute> = m
            .iter()
            .map(|x| Minute {
                total: 10_000,
                errors: 9,
                fast: 9_991,
                ..*x
            })
            .collect();
        assert_eq!(alert(&under, Sli::Availability, SLO, NOW), None);
    }

    #[test]
    fn burning_14_times_does_not_page() {
        let m = with_errors(minutes(NOW, 3 * 24 * 60, 10_000, 0), NOW - 60, NOW, 140);
        let rate = burn_rate(&m, Sli::Availability, SLO, NOW, 60);
        assert!((rate - 14.0).abs() < 1e-9, "{rate}");
        assert_ne!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Page));
    }

    #[test]
    fn an_hour_long_spike_that_has_ended_does_not_page() {
        // 3% errors from 65 to 10 minutes ago; the last 10 minutes clean.
        let m = with_errors(minutes(NOW, 3 * 24 * 60, 1000, 0), NOW - 65, NOW - 10, 30);
        assert!(burn_rate(&m, Sli::Availability, SLO, NOW, 60) >= 14.4);
        assert_eq!(burn_rate(&m, Sli::Availability, SLO, NOW, 5), 0.0);
        assert_ne!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Page));
    }

    #[test]
    fn a_slow_steady_burn_opens_a_ticket_not_a_page() {
        // 0.35% errors for three days: 3.5× — ticket (3× over 1d and 2h).
        let m = minutes(NOW, 3 * 24 * 60, 1000, 0);
        let m = with_errors(m, NOW - 3 * 24 * 60, NOW, 0);
        let m: Vec<Minute> = m
            .into_iter()
            .map(|mut x| {
                x.total = 2000;
                x.errors = 7;
                x.fast = 1993;
                x
            })
            .collect();
        assert_eq!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Ticket));
    }

    #[test]
    fn calendar_month_attainment_and_budget_exclude_maintenance() {
        // A 30-day month of 1000 requests a minute: 43,200 minutes.
        let start = month_start(NOW);
        assert_eq!(month_start(start + 10), start);
        let mut m: Vec<Minute> = (start..start + 43_200)
            .map(|minute| Minute {
                minute,
                total: 1000,
                errors: 0,
                fast: 1000,
                ready: true,
                maintenance: false,
            })
            .collect();
        // 100 minutes of a full outage (all 5xx) outside maintenance…
        for x in &mut m[1_000..1_100] {
            x.errors = 1000;
            x.fast = 0;
        }
        // …and 60 minutes of a full outage inside a maintenance window.
        for x in &mut m[2_000..2_060] {
            x.errors = 1000;
            x.fast = 0;
            x.maintenance = true;
        }
        // …and 30 minutes with no ready instance and no traffic.
        for x in &mut m[3_000..3_030] {
            x.total = 0;
            x.errors = 0;
            x.fast = 0;
            x.ready = false;
        }
        let s = standing(&m, Sli::Availability, 0.9995, start, start + 43_200);
        // Counted: 43,200 − 60 (maintenance) − 30 (silent) minutes of 1000
        // requests, plus 30 silent bad events.
        let total = (43_200 - 60 - 30) * 1000 + 30;
        let bad = 100 * 1000 + 30;
        assert_eq!((s.good, s.total), (total - bad, total));
        let attainment = (total - bad) as f64 / total as f64;
        assert!((s.attainment - attainment).abs() < 1e-12);
        // Budget: 0.05% of 43,110,030 = 21,555.015 bad events allowed.
        let allowed = 0.0005 * total as f64;
        assert!((s.budget_remaining - (1.0 - bad as f64 / allowed)).abs() < 1e-9);
        assert!(
            s.budget_remaining < -3.6 && s.budget_remaining > -3.7,
            "{}",
            s.budget_remaining
        );
    }

    #[test]
    fn latency_counts_only_fast_answers_as_good() {
        let m = vec![Minute {
            minute: NOW - 1,
            total: 100,
            errors: 2,
            fast: 90,
            ready: true,
            maintenance: false,
        }];
        assert_eq!(count(&m, Sli::Latency, NOW - 1, NOW), (90, 100));
        assert_eq!(count(&m, Sli::Availability, NOW - 1, NOW), (98, 100));
    }
}
