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

/// Where a chart of daily availability starts: the month's worst day or
/// the objective, whichever is lower (and below 99.9 % at least).
fn chart_floor(s: &ServiceSla) -> f64 {
    s.daily
        .iter()
        .map(|d| d.availability)
        .chain(s.objective)
        .fold(1.0f64, f64::min)
        .min(0.999)
}

/// Daily availability as bars, from [`chart_floor`] to 100 %.
fn availability_chart(s: &ServiceSla) -> String {
    let floor = chart_floor(s);
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

/// Text the PDF's built-in Helvetica can show (WinAnsi): anything else
/// becomes `?`.
fn latin(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (' '..='~').contains(&c) || ('\u{a0}'..='\u{ff}').contains(&c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The report as a PDF (A4, printpdf with the PDF's built-in fonts: no
/// font files needed): the same figures as the HTML, daily availability as
/// bars, incidents and maintenance listed.
pub fn pdf(r: &SlaReport) -> Vec<u8> {
    use printpdf::{
        BuiltinFont, Color, LinePoint, Mm, Op, PaintMode, PdfDocument, PdfFontHandle, PdfPage,
        PdfSaveOptions, Point, Polygon, PolygonRing, Pt, Rgb, TextItem, WindingOrder,
    };
    struct Pages {
        done: Vec<Vec<Op>>,
        ops: Vec<Op>,
        y: f32,
    }
    impl Pages {
        /// A line of text at the cursor, then down.
        fn line(&mut self, size: f32, bold: bool, text: &str) {
            self.room(size * 0.5 + 2.0);
            let font = if bold {
                BuiltinFont::HelveticaBold
            } else {
                BuiltinFont::Helvetica
            };
            self.ops.extend([
                Op::StartTextSection,
                Op::SetTextCursor {
                    pos: Point::new(Mm(18.0), Mm(self.y)),
                },
                Op::SetFont {
                    font: PdfFontHandle::Builtin(font),
                    size: Pt(size),
                },
                Op::ShowText {
                    items: vec![TextItem::Text(latin(text))],
                },
                Op::EndTextSection,
            ]);
            self.y -= size * 0.45 + 1.5;
        }
        /// A new page if fewer than `mm` are left.
        fn room(&mut self, mm: f32) {
            if self.y - mm < 15.0 {
                self.done.push(std::mem::take(&mut self.ops));
                self.y = 280.0;
            }
        }
        fn rect(&mut self, (x, y, w, h): (f32, f32, f32, f32), (r, g, b): (f32, f32, f32)) {
            let p = |x: f32, y: f32| LinePoint {
                p: Point::new(Mm(x), Mm(y)),
                bezier: false,
            };
            self.ops.push(Op::SetFillColor {
                col: Color::Rgb(Rgb {
                    r,
                    g,
                    b,
                    icc_profile: None,
                }),
            });
            self.ops.push(Op::DrawPolygon {
                polygon: Polygon {
                    rings: vec![PolygonRing {
                        points: vec![p(x, y), p(x + w, y), p(x + w, y + h), p(x, y + h)],
                    }],
                    mode: PaintMode::Fill,
                    winding_order: WindingOrder::NonZero,
                },
            });
            self.ops.push(Op::SetFillColor {
                col: Color::Rgb(Rgb {
                    r: 0.0,
                    g: 0.0,
                    b: 0.0,
                    icc_profile: None,
                }),
            });
        }
    }
    let mut p = Pages {
        done: Vec::new(),
        ops: Vec::new(),
        y: 280.0,
    };
    p.line(
        18.0,
        true,
        &format!("SLA report: {}, {}", r.customer, r.month),
    );
    p.line(10.0, false, &format!("From {} to {} (UTC)", r.from, r.to));
    if let Some(c) = &r.checkpoint {
        p.line(
            8.0,
            false,
            &format!(
                "Signed checkpoint of {} at {} events, root {}",
                c.origin, c.size, c.root
            ),
        );
    }
    for s in &r.services {
        p.room(70.0);
        p.y -= 4.0;
        p.line(14.0, true, &s.service);
        for line in [
            format!(
                "Objective: {}",
                s.objective.map(pct).unwrap_or_else(|| "none".into())
            ),
            format!("Availability: {}", pct(s.availability)),
            format!("Downtime: {:.2} min", s.downtime_minutes),
            format!(
                "Excluded (maintenance announced in time): {} min",
                s.excluded_minutes
            ),
            format!("Unmeasured: {} min", s.unmeasured_minutes),
            format!(
                "Error budget used: {}",
                s.budget_used.map(pct).unwrap_or_else(|| "-".into())
            ),
            format!("Service credit: {}", pct(s.credit)),
        ] {
            p.line(10.0, false, &line);
        }
        // Daily availability: a bar a day, from the worst day (or the
        // objective) to 100 %.
        let floor = chart_floor(s);
        let (height, width) = (30.0f32, 174.0f32);
        p.room(height + 8.0);
        let base = p.y - height;
        let bar = width / s.daily.len().max(1) as f32;
        for (i, d) in s.daily.iter().enumerate() {
            let h = ((d.availability - floor) / (1.0 - floor)) as f32 * height;
            let bad = s.objective.is_some_and(|o| d.availability < o);
            let colour = if bad {
                (0.8, 0.2, 0.2)
            } else {
                (0.23, 0.47, 0.33)
            };
            p.rect(
                (
                    18.0 + i as f32 * bar,
                    base,
                    (bar - 0.6).max(0.2),
                    h.max(0.3),
                ),
                colour,
            );
        }
        p.y = base - 2.0;
        p.line(
            7.0,
            false,
            &format!("Daily availability, {} to 100%", pct(floor)),
        );
        if !s.maintenance.is_empty() {
            p.line(11.0, true, "Maintenance");
            for w in &s.maintenance {
                p.line(
                    8.0,
                    false,
                    &format!(
                        "{} to {}, announced {}: {} ({})",
                        w.starts_at,
                        w.ends_at,
                        w.announced_at,
                        w.reason,
                        if w.excluded {
                            "excluded"
                        } else {
                            "counted: announced too late"
                        }
                    ),
                );
            }
        }
        if !s.incidents.is_empty() {
            p.line(11.0, true, "Incidents");
            for i in &s.incidents {
                p.line(
                    8.0,
                    false,
                    &format!(
                        "#{} {} ({}) opened {}, {}{}: {}",
                        i.id,
                        i.kind,
                        i.severity,
                        i.opened_at,
                        i.resolved_at
                            .as_deref()
                            .map_or("still open".into(), |at| format!("resolved {at}")),
                        i.duration_s
                            .map(|d| format!(" after {}m {}s", d / 60, d % 60))
                            .unwrap_or_default(),
                        i.cause
                    ),
                );
            }
        }
    }
    p.done.push(p.ops);
    let pages = p
        .done
        .into_iter()
        .map(|ops| PdfPage::new(Mm(210.0), Mm(297.0), ops))
        .collect();
    PdfDocument::new(&latin(&format!("SLA report {} {}", r.customer, r.month)))
        .with_pages(pages)
        .save(&PdfSaveOptions::default(), &mut Vec::new())
}
