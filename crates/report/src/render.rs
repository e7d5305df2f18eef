//! An SLA report as CSV (a row per service) and as one self-contained HTML
//! page with SVG charts (daily availability, error-budget burn-down).

use std::fmt::Write;

use crate::sla::{ServiceSla, SlaReport};

fn pct(x: f64) -> String {
    format!("{:.4}%", x * 100.0)
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn csv(r: &SlaReport) -> String {
    let mut out = String::from(
        "customer,month,service,tier,objective,minutes,excluded_minutes,unmeasured_minutes,downtime_minutes,availability,budget_used,credit,incidents,checkpoint_size,checkpoint_root\n",
    );
    for s in &r.services {
        let cells = [
            field(&r.customer),
            field(&r.month),
            field(&s.service),
            field(&s.tier),
            s.objective.map(|o| o.to_string()).unwrap_or_default(),
            s.minutes.to_string(),
            s.excluded_minutes.to_string(),
            s.unmeasured_minutes.to_string(),
            s.downtime_minutes.to_string(),
            s.availability.to_string(),
            s.budget_used.map(|b| b.to_string()).unwrap_or_default(),
            s.credit.to_string(),
            s.incidents.len().to_string(),
            r.checkpoint
                .as_ref()
                .map(|c| c.size.to_string())
                .unwrap_or_default(),
            r.checkpoint
                .as_ref()
                .map(|c| c.root.clone())
                .unwrap_or_default(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 620.0;
const H: f64 = 160.0;

/// Daily availability as bars, scaled from the month's worst day (or the
/// objective, whichever is lower) to 100 %.
fn availability_chart(s: &ServiceSla) -> String {
    let floor = s
        .daily
        .iter()
        .map(|d| d.availability)
        .chain(s.objective)
        .fold(1.0f64, f64::min)
        .min(0.999);
    let n = s.daily.len().max(1) as f64;
    let bar = W / n;
    let y = |a: f64| H - (a - floor) / (1.0 - floor) * H;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {W} {}" role="img" aria-label="daily availability of {}">"#,
        H + 20.0,
        esc(&s.service)
    );
    for (i, d) in s.daily.iter().enumerate() {
        let top = y(d.availability);
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" class="{}"><title>{} {}</title></rect>"#,
            i as f64 * bar + 1.0,
            bar - 2.0,
            H - top,
            if s.objective.is_some_and(|o| d.availability < o) {
                "bad"
            } else {
                "good"
            },
            d.date,
            pct(d.availability)
        );
    }
    if let Some(o) = s.objective {
        let _ = write!(
            svg,
            r#"<line x1="0" x2="{W}" y1="{y:.1}" y2="{y:.1}" class="objective"><title>objective {}</title></line>"#,
            pct(o),
            y = y(o)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="{}">{}</text><text x="{W}" y="{}" text-anchor="end">100%</text></svg>"#,
        H + 16.0,
        pct(floor),
        H + 16.0
    );
    svg
}

/// The budget left at each day's end, as a line from 100 % down.
fn burn_down_chart(s: &ServiceSla) -> String {
    let points: Vec<f64> = s.daily.iter().filter_map(|d| d.budget_left).collect();
    if points.is_empty() {
        return String::new();
    }
    let low = points.iter().copied().fold(0.0f64, f64::min);
    let n = (points.len().max(2) - 1) as f64;
    let y = |b: f64| H - (b - low) / (1.0 - low) * H;
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{:.1},{:.1}", i as f64 / n * W, y(*b)))
        .collect();
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {W} {}" role="img" aria-label="error budget of {}"><line x1="0" x2="{W}" y1="{z:.1}" y2="{z:.1}" class="objective"/><polyline points="{}" class="burn"/><text x="0" y="{}">budget left, {} at the end</text></svg>"#,
        H + 20.0,
        esc(&s.service),
        line.join(" "),
        H + 16.0,
        pct(*points.last().unwrap_or(&1.0)),
        z = y(0.0)
    )
}

pub fn html(r: &SlaReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>SLA report {customer} {month}</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
.chart{{width:100%;max-width:{W}px;height:auto}}.good{{fill:#3a7}}.bad{{fill:#c33}}.objective{{stroke:#555;stroke-dasharray:4}}.burn{{fill:none;stroke:#36c;stroke-width:2}}
</style></head><body><h1>SLA report: {customer}, {month}</h1><p>From {from} to {to} (UTC).</p>"#,
        customer = esc(&r.customer),
        month = esc(&r.month),
        from = esc(&r.from),
        to = esc(&r.to)
    );
    match &r.checkpoint {
        Some(c) => {
            let _ = write!(
                out,
                "<p>Rests on the signed checkpoint of <code>{}</code> at {} events, root <code>{}</code>: check it with <code>tandem verify</code> and the bundle of this report.</p>",
                esc(&c.origin),
                c.size,
                esc(&c.root)
            );
        }
        None => out.push_str("<p>Not tied to a signed checkpoint.</p>"),
    }
    for s in &r.services {
        let _ = write!(
            out,
            "<h2>{}</h2><table><tr><th>objective</th><td>{}</td></tr><tr><th>availability</th><td>{}</td></tr><tr><th>downtime</th><td>{:.2} min</td></tr><tr><th>excluded (maintenance announced in time)</th><td>{} min</td></tr><tr><th>unmeasured</th><td>{} min</td></tr><tr><th>error budget used</th><td>{}</td></tr><tr><th>service credit</th><td>{}</td></tr></table>",
            esc(&s.service),
            s.objective.map(pct).unwrap_or_else(|| "none".into()),
            pct(s.availability),
            s.downtime_minutes,
            s.excluded_minutes,
            s.unmeasured_minutes,
            s.budget_used.map(pct).unwrap_or_else(|| "-".into()),
            pct(s.credit)
        );
        let _ = write!(out, "<h3>Daily availability</h3>{}", availability_chart(s));
        let burn = burn_down_chart(s);
        if !burn.is_empty() {
            let _ = write!(out, "<h3>Error budget</h3>{burn}");
        }
        if !s.maintenance.is_empty() {
            out.push_str("<h3>Maintenance</h3><table><tr><th>from</th><th>to</th><th>announced</th><th>excluded</th><th>reason</th></tr>");
            for w in &s.maintenance {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&w.starts_at),
                    esc(&w.ends_at),
                    esc(&w.announced_at),
                    if w.excluded {
                        "yes"
                    } else {
                        "no: announced too late"
                    },
                    esc(&w.reason)
                );
            }
            out.push_str("</table>");
        }
        if !s.incidents.is_empty() {
            out.push_str("<h3>Incidents</h3><table><tr><th>#</th><th>kind</th><th>opened</th><th>resolved</th><th>duration</th><th>cause</th><th>release</th></tr>");
            for i in &s.incidents {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&i.id),
                    esc(&i.kind),
                    esc(&i.severity),
                    esc(&i.opened_at),
                    esc(i.resolved_at.as_deref().unwrap_or("open")),
                    i.duration_s
                        .map(|d| format!("{}m {}s", d / 60, d % 60))
                        .unwrap_or_default(),
                    esc(&i.cause),
                    esc(i
                        .suspect_release
                        .as_deref()
                        .or(i.release.as_deref())
                        .unwrap_or("-"))
                );
            }
            out.push_str("</table>");
        }
    }
    out.push_str("</body></html>\n");
    out
}
