//! Service level objectives over per-minute rollups: attainment, error
//! budget and burn rates, and the multiwindow, multi-burn-rate alerts of the
//! Google SRE workbook. Pure arithmetic on [`Minute`]s; the caller loads
//! them.
//!
//! The rules, so that a quiet service gets honest figures:
//!
//! - A minute **with requests** counts its requests: good ones are those
//!   not answered 5xx (and, for a latency SLO, answered within the
//!   threshold). Requests that met no ready instance were answered 502/503
//!   by the proxy, so an outage under traffic is counted here.
//! - A minute **without requests** is judged by the probes, by time: the
//!   monitor looks about once a second, each look is 1/60 of an event, bad
//!   when no instance was ready. A quiet minute watched throughout is one
//!   event; seven seconds unready in it are 0.12 of a bad event, not a
//!   whole one; a minute the monitor saw only part of (it started, the
//!   unit appeared) is that part of an event. Rows from before looks were
//!   counted are judged as a whole minute by their `ready` flag.
//! - Minutes inside a maintenance window count for nothing; minutes nobody
//!   measured (no row) count for nothing.
//! - A budget is never smaller than the window's minutes allow: the bad
//!   events a window may hold are `(1 − objective) × max(events, minutes)`,
//!   with `minutes` the SLO window's whole length (a calendar month's
//!   minutes, say) for the budget and the burn window's length for a burn
//!   rate. A service that has been quiet, or that appeared an hour ago,
//!   cannot overspend a month's budget in one bad second.
//!
//! So a service with no traffic that was unready for 7 s in an hour burns
//! its 99.9 % budget at about 1.9× over that hour, while one that is down
//! for five quiet minutes burns it at 1000× over five minutes and 83× over
//! the hour, and pages.

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

/// The monitor looks about once a second.
pub const LOOKS_PER_MINUTE: u32 = 60;

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
    /// How often the monitor looked during the minute (about 60 when it
    /// watched the whole minute).
    pub looks: u32,
    /// Looks at which no instance was ready.
    pub unready_looks: u32,
    pub maintenance: bool,
}

impl Minute {
    /// A minute of `total` requests, `errors` of them 5xx and the rest
    /// fast, ready throughout.
    pub fn serving(minute: i64, total: u64, errors: u64) -> Minute {
        let errors = errors.min(total);
        Minute {
            minute,
            total,
            errors,
            fast: total - errors,
            looks: 60,
            unready_looks: 0,
            maintenance: false,
        }
    }

    /// Whether no request came in: then the probes judge it.
    pub fn quiet(&self) -> bool {
        self.total == 0 && !self.maintenance
    }
}

/// One hour of a service's minutes as the journal records them
/// (`measurements.recorded`), so that availability can be computed from
/// the log alone. In the journal the minutes are one compact string (a
/// month of a thousand services is 744,000 such events): 60 fields
/// separated by `;`, the hour's minutes in order, each
/// `requests,5xx,looks,unready looks`, or empty for a minute nobody
/// measured — `"100,0,60,0;100,2,60,0;;0,0,60,7;…"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    /// The environment (empty: production).
    pub env: String,
    /// The hour's first minute (Unix time / 60, a multiple of 60).
    pub hour: i64,
    /// Measured minutes: (offset in the hour, requests, 5xx, looks,
    /// unready looks).
    #[serde(with = "compact_minutes")]
    pub minutes: Vec<(u32, u64, u64, u32, u32)>,
}

/// A measured minute as the journal writes it.
pub type Measured = (u32, u64, u64, u32, u32);

/// Reads the journal's minute string, calling `each` for every measured
/// minute; `None` if the string is not one.
pub fn each_measured(text: &str, mut each: impl FnMut(Measured)) -> Option<()> {
    // One pass over the bytes (a month of a thousand services is 43
    // million minutes): digits accumulate, ',' ends a number, ';' a minute.
    let mut offset = 0u32;
    let mut fields = [0u64; 4];
    let (mut field, mut digits) = (0usize, 0u32);
    let mut end_minute =
        |offset: u32, field: usize, digits: u32, fields: &[u64; 4]| -> Option<()> {
            match (field, digits) {
                (0, 0) => Some(()), // nobody measured it
                (3, 1..) => {
                    each((
                        offset,
                        fields[0],
                        fields[1],
                        u32::try_from(fields[2]).ok()?,
                        u32::try_from(fields[3]).ok()?,
                    ));
                    Some(())
                }
                _ => None,
            }
        };
    for &b in text.as_bytes() {
        match b {
            b'0'..=b'9' => {
                if digits >= 19 {
                    return None;
                }
                fields[field] = fields[field] * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b',' if digits > 0 && field < 3 => {
                field += 1;
                digits = 0;
            }
            b';' => {
                end_minute(offset, field, digits, &fields)?;
                offset += 1;
                if offset >= 60 {
                    return None;
                }
                fields = [0; 4];
                (field, digits) = (0, 0);
            }
            _ => return None,
        }
    }
    end_minute(offset, field, digits, &fields)
}

mod compact_minutes {
    use super::Measured;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(minutes: &[Measured], s: S) -> Result<S::Ok, S::Error> {
        let mut fields = vec![String::new(); 60];
        for &(offset, total, errors, looks, unready) in minutes {
            if let Some(f) = fields.get_mut(offset as usize) {
                *f = format!("{total},{errors},{looks},{unready}");
            }
        }
        s.serialize_str(&fields.join(";"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Measured>, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = Vec::new();
        super::each_measured(&text, |m| out.push(m)).ok_or_else(|| {
            serde::de::Error::custom("not 60 minutes of requests,5xx,looks,unready")
        })?;
        Ok(out)
    }
}

/// A measured minute of the hour starting at `hour`, as the SLO arithmetic
/// reads it.
pub fn measured_minute(
    hour: i64,
    (offset, total, errors, looks, unready_looks): Measured,
) -> Minute {
    Minute {
        minute: hour + i64::from(offset),
        total,
        errors: errors.min(total),
        fast: total - errors.min(total),
        looks,
        unready_looks,
        maintenance: false,
    }
}

/// What an SLO counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sli {
    Availability,
    Latency,
}

impl Minute {
    /// (good, total) events of this minute for `sli` (see the module's
    /// rules): fractional for a quiet minute that was partly unready.
    pub fn events(&self, sli: Sli) -> (f64, f64) {
        if self.maintenance {
            return (0.0, 0.0);
        }
        if self.total == 0 {
            // Each look stands for about a second: a minute looked at
            // throughout is one event, one the monitor saw only part of
            // (it started, the unit appeared) that part of one.
            let per_minute = f64::from(self.looks.max(LOOKS_PER_MINUTE));
            let unready = self.unready_looks.min(self.looks);
            return (
                f64::from(self.looks - unready) / per_minute,
                f64::from(self.looks) / per_minute,
            );
        }
        let good = match sli {
            Sli::Availability => self.total - self.errors.min(self.total),
            Sli::Latency => self.fast.min(self.total),
        };
        (good as f64, self.total as f64)
    }
}

/// Good and total events of `minutes` with `from <= minute < to`.
pub fn count(minutes: &[Minute], sli: Sli, from: i64, to: i64) -> (f64, f64) {
    minutes
        .iter()
        .filter(|m| m.minute >= from && m.minute < to)
        .map(|m| m.events(sli))
        .fold((0.0, 0.0), |(g, t), (mg, mt)| (g + mg, t + mt))
}

/// The bad events a window of `window_minutes` with `total` events may
/// hold: never fewer than its minutes allow.
fn allowed(objective: f64, total: f64, window_minutes: i64) -> f64 {
    (1.0 - objective) * total.max(window_minutes.max(0) as f64)
}

/// Where an SLO stands over its window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Standing {
    /// Good events: requests, plus quiet minutes judged by the probes.
    pub good: f64,
    pub total: f64,
    /// Requests counted.
    pub requests: u64,
    /// Minutes without requests, judged by the probes.
    pub quiet_minutes: u64,
    /// good / total; 1.0 with no events.
    pub attainment: f64,
    /// Share of the error budget left: 1.0 untouched, 0 spent, below 0
    /// overspent.
    pub budget_remaining: f64,
}

/// `objective` as a fraction (0.9995 for 99.95%), over the SLO window
/// `[from, to)`; `window_minutes` is the window's whole length, which sets
/// the smallest budget (a calendar month's minutes even on its first day).
pub fn standing(
    minutes: &[Minute],
    sli: Sli,
    objective: f64,
    from: i64,
    to: i64,
    window_minutes: i64,
) -> Standing {
    let (good, total) = count(minutes, sli, from, to);
    let inside = || {
        minutes
            .iter()
            .filter(move |m| m.minute >= from && m.minute < to && !m.maintenance)
    };
    let attainment = if total == 0.0 { 1.0 } else { good / total };
    let bad = (total - good).max(0.0);
    let allowed = allowed(objective, total, window_minutes);
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
        requests: inside().map(|m| m.total).sum(),
        quiet_minutes: inside().filter(|m| m.quiet()).count() as u64,
        attainment,
        budget_remaining,
    }
}

/// Burn rate over the `window_minutes` ending at `now` (exclusive): the
/// bad events divided by those the objective allows in such a window. 1.0
/// spends the budget exactly over the SLO window; 0 with no events.
pub fn burn_rate(
    minutes: &[Minute],
    sli: Sli,
    objective: f64,
    now: i64,
    window_minutes: i64,
) -> f64 {
    let (good, total) = count(minutes, sli, now - window_minutes, now);
    let bad = (total - good).max(0.0);
    if bad == 0.0 {
        return 0.0;
    }
    let allowed = allowed(objective, total, window_minutes);
    if allowed <= 0.0 {
        return f64::INFINITY;
    }
    bad / allowed
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
            .map(|minute| Minute::serving(minute, total, errors))
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
                looks: 60,
                unready_looks: 0,
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
            x.unready_looks = 60;
        }
        let s = standing(&m, Sli::Availability, 0.9995, start, start + 43_200, 43_200);
        // Counted: 43,200 − 60 (maintenance) − 30 (silent) minutes of 1000
        // requests, plus 30 silent bad events.
        let total = (43_200 - 60 - 30) * 1000 + 30;
        let bad = 100 * 1000 + 30;
        assert_eq!((s.good, s.total), ((total - bad) as f64, total as f64));
        assert_eq!((s.requests, s.quiet_minutes), ((43_200 - 90) * 1000, 30));
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
            looks: 60,
            unready_looks: 0,
            maintenance: false,
        }];
        assert_eq!(count(&m, Sli::Latency, NOW - 1, NOW), (90.0, 100.0));
        assert_eq!(count(&m, Sli::Availability, NOW - 1, NOW), (98.0, 100.0));
    }

    /// `span` quiet minutes ending before `end`, ready throughout.
    fn quiet(end: i64, span: i64) -> Vec<Minute> {
        (end - span..end)
            .map(|minute| Minute {
                minute,
                looks: 60,
                ..Minute::default()
            })
            .collect()
    }

    #[test]
    fn a_quiet_service_unready_for_seven_seconds_burns_twice_its_pace_and_pages_nobody() {
        // The reported case: no traffic at all, one minute with 7 of its
        // 60 looks unready. Alone, and after three quiet days.
        let blip = Minute {
            minute: NOW - 1,
            looks: 60,
            unready_looks: 7,
            ..Minute::default()
        };
        for history in [vec![blip], {
            let mut m = quiet(NOW - 1, 3 * 24 * 60);
            m.push(blip);
            m
        }] {
            let s = standing(
                &history,
                Sli::Availability,
                SLO,
                month_start(NOW),
                NOW,
                43_200,
            );
            let bad = 7.0 / 60.0;
            assert!((s.total - s.good - bad).abs() < 1e-9, "{s:?}");
            assert_eq!((s.requests, s.quiet_minutes), (0, s.total as u64));
            // A month's budget at 99.9% is 43.2 minutes; 7 s spend 0.27% of it.
            assert!(
                (s.budget_remaining - (1.0 - bad / 43.2)).abs() < 1e-9,
                "{s:?}"
            );
            let hour = burn_rate(&history, Sli::Availability, SLO, NOW, 60);
            assert!((hour - bad / 0.06).abs() < 1e-9 && hour < 2.0, "{hour}");
            let five = burn_rate(&history, Sli::Availability, SLO, NOW, 5);
            assert!((five - bad / 0.005).abs() < 1e-9, "{five}");
            assert_eq!(alert(&history, Sli::Availability, SLO, NOW), None);
        }
    }

    #[test]
    fn a_quiet_service_down_for_five_minutes_pages() {
        let mut m = quiet(NOW - 5, 3 * 24 * 60);
        m.extend((NOW - 5..NOW).map(|minute| Minute {
            minute,
            looks: 60,
            unready_looks: 60,
            ..Minute::default()
        }));
        let five = burn_rate(&m, Sli::Availability, SLO, NOW, 5);
        assert!((five - 1000.0).abs() < 1e-6, "{five}");
        let hour = burn_rate(&m, Sli::Availability, SLO, NOW, 60);
        assert!((hour - 5.0 / 0.06).abs() < 1e-6, "{hour}");
        assert_eq!(alert(&m, Sli::Availability, SLO, NOW), Some(Alert::Page));
        // The same outage on a service that appeared six minutes ago: the
        // hour still allows only what an hour's minutes allow.
        let young: Vec<Minute> = m.iter().copied().filter(|x| x.minute >= NOW - 6).collect();
        assert!((burn_rate(&young, Sli::Availability, SLO, NOW, 60) - hour).abs() < 1e-6);
        assert_eq!(
            alert(&young, Sli::Availability, SLO, NOW),
            Some(Alert::Page)
        );
    }

    #[test]
    fn a_minute_with_requests_is_judged_by_them_not_by_its_probes() {
        // Unready for half the minute, but every request was answered well
        // (they came while it was ready): the requests decide.
        let m = Minute {
            unready_looks: 30,
            ..Minute::serving(NOW - 1, 100, 0)
        };
        assert_eq!(m.events(Sli::Availability), (100.0, 100.0));
        // A quiet minute the monitor saw 15 s of, 9 of them unready: a
        // quarter of an event, 9/60 of it bad (not 9/15).
        let m = Minute {
            minute: NOW - 1,
            looks: 15,
            unready_looks: 9,
            ..Minute::default()
        };
        assert_eq!(m.events(Sli::Availability), (6.0 / 60.0, 15.0 / 60.0));
        // A quiet minute in maintenance counts for nothing, however unready.
        let m = Minute {
            minute: NOW - 1,
            looks: 60,
            unready_looks: 60,
            maintenance: true,
            ..Minute::default()
        };
        assert_eq!(m.events(Sli::Availability), (0.0, 0.0));
        assert!(!m.quiet());
    }

    #[test]
    fn a_budget_is_never_smaller_than_the_window_minutes_allow() {
        // A service of 10 requests a day: one failed request in a 30-day
        // window is one of at least 43,200 events' budget (43.2), not one
        // of ten (0.01).
        let m = vec![Minute::serving(NOW - 1, 10, 1)];
        let s = standing(&m, Sli::Availability, SLO, NOW - 43_200, NOW, 43_200);
        assert!((s.attainment - 0.9).abs() < 1e-12);
        assert!(
            (s.budget_remaining - (1.0 - 1.0 / 43.2)).abs() < 1e-9,
            "{s:?}"
        );
        // A busy service's budget is its requests' share, as before.
        let busy = minutes(NOW, 60, 100_000, 10);
        let s = standing(&busy, Sli::Availability, SLO, NOW - 43_200, NOW, 43_200);
        assert!(
            (s.budget_remaining - (1.0 - 600.0 / 6_000.0)).abs() < 1e-9,
            "{s:?}"
        );
    }

    #[test]
    fn measurements_travel_as_one_compact_string_and_come_back() {
        let m = Measurements {
            env: String::new(),
            hour: 60 * 29_000,
            minutes: vec![(0, 100, 2, 60, 0), (3, 0, 0, 60, 7), (59, 5, 5, 58, 58)],
        };
        let v = serde_json::to_value(&m).expect("json");
        let text = v["minutes"].as_str().expect("a string");
        assert_eq!(text.split(';').count(), 60);
        assert!(text.starts_with("100,2,60,0;;;0,0,60,7;"), "{text}");
        assert!(text.ends_with(";5,5,58,58"), "{text}");
        let back: Measurements = serde_json::from_value(v).expect("back");
        assert_eq!(back, m);
        for bad in [
            "1,2,3",
            "a,b,c,d",
            &";".repeat(60),
            "1,2,3,4,5",
            ",1,2,3",
            "1,,2,3",
            "1,2,3,",
            "1,2,3,99999999999",
            "-1,2,3,4",
        ] {
            let v = serde_json::json!({ "env": "", "hour": 0, "minutes": bad });
            assert!(serde_json::from_value::<Measurements>(v).is_err(), "{bad}");
        }
    }
}
