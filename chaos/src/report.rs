//! The report a person reads: one self-contained HTML page with the verdict first, a timeline chart
//! (request rate, error ratio and p99 latency of the sampled sidecars, the fault windows shaded,
//! the failed hypothesis checks marked) drawn as inline SVG with plotters, then the hypothesis
//! checks, the steps with their timing and output, and what was left to expire by TTL.

use crate::journal::{ActivityRecord, Check, Journal};
use crate::prom::Point;
use crate::Verdict;
use plotters::prelude::*;
use std::fmt::Write as _;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Held => "#1a7f37",
        Verdict::Deviated => "#cf222e",
        Verdict::SteadyStateNotMet => "#9a6700",
        Verdict::Aborted | Verdict::ActionFailed => "#bc4c00",
        Verdict::Interrupted | Verdict::DryRun => "#57606a",
    }
}

type Getter = fn(&Point) -> Option<f64>;

/// The timeline chart as an SVG document (empty string if nothing was sampled).
pub fn chart(j: &Journal) -> Result<String, String> {
    let pts = &j.timeline;
    if pts.is_empty() {
        return Ok(String::new());
    }
    let xmax = j
        .duration_s
        .max(pts.last().map(|p| p.t).unwrap_or(0.0))
        .max(1.0);
    let failed: Vec<f64> = j
        .steady_states
        .during
        .iter()
        .chain(j.steady_states.after.iter())
        .filter(|c| !c.met)
        .map(|c| c.at_s)
        .collect();
    let panels: [(&str, Getter, RGBColor); 3] = [
        (
            "requests per second",
            |p| Some(p.rps),
            RGBColor(9, 105, 218),
        ),
        (
            "error ratio (5xx / all)",
            |p| Some(p.error_ratio),
            RGBColor(207, 34, 46),
        ),
        ("p99 latency (ms)", |p| p.p99_ms, RGBColor(130, 80, 223)),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((3, 1));
        for (i, (area, (label, get, color))) in areas.iter().zip(panels).enumerate() {
            let top = pts.iter().filter_map(get).fold(0.0f64, f64::max);
            let ymax = if top > 0.0 { top * 1.15 } else { 1.0 };
            let mut c = ChartBuilder::on(area)
                .margin(6)
                .caption(label, ("sans-serif", 14))
                .x_label_area_size(22)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..xmax, 0f64..ymax)
                .map_err(|e| e.to_string())?;
            c.configure_mesh()
                .light_line_style(RGBColor(240, 240, 240))
                .x_labels(10)
                .y_labels(4)
                .x_label_formatter(&|x| format!("{x:.0}s"))
                .draw()
                .map_err(|e| e.to_string())?;
            for w in &j.fault_windows {
                let end = w.end_s.unwrap_or(xmax).min(xmax);
                c.draw_series(std::iter::once(Rectangle::new(
                    [(w.start_s, 0.0), (end, ymax)],
                    RGBAColor(255, 140, 0, 0.18).filled(),
                )))
                .map_err(|e| e.to_string())?;
                if i == 0 {
                    c.draw_series(std::iter::once(Text::new(
                        w.name.clone(),
                        (w.start_s, ymax * 0.97),
                        ("sans-serif", 11).into_font().color(&RGBColor(150, 70, 0)),
                    )))
                    .map_err(|e| e.to_string())?;
                }
            }
            c.draw_series(LineSeries::new(
                pts.iter().filter_map(|p| get(p).map(|v| (p.t, v))),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
            if i == 1 {
                c.draw_series(
                    failed
                        .iter()
                        .map(|t| Circle::new((*t, ymax * 0.92), 4, RGBColor(207, 34, 46).filled())),
                )
                .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn check_rows(out: &mut String, phase: &str, c: &Check) {
    for p in &c.probes {
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{phase}</td><td>{:.1}s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if p.tolerance_met { "ok" } else { "bad" },
            c.at_s,
            esc(&p.name),
            esc(p.type_),
            esc(&p.value),
            esc(&p.tolerance),
            if p.tolerance_met { "✓".to_string() } else { format!("✗ {}", esc(p.error.as_deref().unwrap_or(""))) },
        );
    }
}

fn activity_rows(out: &mut String, rs: &[ActivityRecord]) {
    for r in rs {
        let output = serde_json::to_string(&r.output).unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{:.1}s</td><td>{:.1}s</td><td>{}</td><td>{}</td><td>{}{}</td><td><code>{}</code>{}</td></tr>",
            if r.status == "failed" { "bad" } else { "ok" },
            r.start_s,
            r.duration_s,
            esc(&r.activity),
            esc(&r.type_),
            esc(&r.status),
            if r.background { " (background)" } else { "" },
            esc(&crate::probe::truncate(&output, 400)),
            r.error.as_ref().map(|e| format!("<br><b>{}</b>", esc(e))).unwrap_or_default(),
        );
    }
}

pub fn render(j: &Journal) -> String {
    let mut h = String::new();
    let color = verdict_color(j.verdict);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} — {}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#1f2328}}\
.verdict{{background:{color};color:#fff;padding:.8em 1.2em;border-radius:8px;font-size:1.4em}}\
table{{border-collapse:collapse;width:100%;margin:.5em 0 1.5em;font-size:.9em}}\
td,th{{border-bottom:1px solid #d0d7de;padding:.3em .5em;text-align:left;vertical-align:top}}\
tr.bad td{{background:#ffebe9}} code{{font-size:.85em;word-break:break-all}}\
.meta td:first-child{{color:#57606a;width:12em}} .legend span{{display:inline-block;margin-right:1.5em}}\
</style></head><body>",
        esc(&j.experiment.title),
        j.verdict.describe()
    );
    let _ = write!(
        h,
        "<div class=\"verdict\">{} — exit {}</div><h1>{}</h1><p>{}</p>",
        esc(j.verdict.describe()),
        j.exit_code,
        esc(&j.experiment.title),
        esc(&j.experiment.description)
    );
    if let Some(a) = &j.abort {
        let _ = write!(h, "<p><b>Stopped:</b> {}</p>", esc(&a.reason));
    }
    let during_failed = j.steady_states.during.iter().filter(|c| !c.met).count();
    let _ = write!(
        h,
        "<table class=\"meta\"><tr><td>experiment</td><td>{}</td></tr><tr><td>run</td><td>{} · status {}</td></tr>\
<tr><td>started</td><td>{} ({:.1}s)</td></tr><tr><td>seed</td><td>{}</td></tr>\
<tr><td>hypothesis during</td><td>{} checks, {} failed</td></tr></table>",
        esc(&j.experiment.source),
        esc(&j.run_id),
        esc(&j.status),
        esc(&j.start),
        j.duration_s,
        j.seed,
        j.steady_states.during.len(),
        during_failed
    );
    h.push_str("<h2>Timeline</h2>");
    match chart(j) {
        Ok(svg) if !svg.is_empty() => {
            h.push_str(
                "<p class=\"legend\"><span>all sampled sidecars</span><span>shaded: fault windows</span>\
                 <span>red dots: failed hypothesis checks</span></p>",
            );
            // The SVG's own XML declaration is not wanted inside HTML.
            let body = svg.find("<svg").map(|i| &svg[i..]).unwrap_or(&svg);
            h.push_str(body);
        }
        Ok(_) => h.push_str(
            "<p>No sidecar metrics were sampled (no host has an <code>admin</code> URL).</p>",
        ),
        Err(e) => {
            let _ = write!(h, "<p>The chart could not be drawn: {}</p>", esc(&e));
        }
    }
    h.push_str("<h2>Steady-state hypothesis</h2><table><tr><th>phase</th><th>at</th><th>probe</th><th>type</th><th>value</th><th>tolerance</th><th></th></tr>");
    if let Some(c) = &j.steady_states.before {
        check_rows(&mut h, "before", c);
    }
    // During: every failed check, and the last one.
    for c in j.steady_states.during.iter().filter(|c| !c.met) {
        check_rows(&mut h, "during", c);
    }
    if let Some(c) = j.steady_states.during.last().filter(|c| c.met) {
        check_rows(&mut h, "during (last)", c);
    }
    if let Some(c) = &j.steady_states.after {
        check_rows(&mut h, "after", c);
    }
    h.push_str("</table><h2>Method</h2><table><tr><th>start</th><th>took</th><th>activity</th><th>type</th><th>status</th><th>output</th></tr>");
    activity_rows(&mut h, &j.run);
    h.push_str("</table><h2>Rollbacks</h2><table><tr><th>start</th><th>took</th><th>activity</th><th>type</th><th>status</th><th>output</th></tr>");
    activity_rows(&mut h, &j.rollbacks);
    h.push_str("</table>");
    if !j.left_to_ttl.is_empty() {
        h.push_str("<h2>Left to expire by TTL</h2><ul>");
        for l in &j.left_to_ttl {
            let _ = write!(h, "<li>{}</li>", esc(l));
        }
        h.push_str("</ul>");
    }
    if !j.loads.is_empty() {
        h.push_str("<h2>Load</h2><table><tr><th>load</th><th>sent</th><th>ok</th><th>failed</th><th>skipped</th><th>answers</th></tr>");
        for l in &j.loads {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.name),
                l.sent,
                l.ok,
                l.failed,
                l.skipped,
                esc(&serde_json::to_string(&l.statuses).unwrap_or_default())
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<p><small>Full detail: the journal (JSON) written beside this page.</small></p></body></html>\n");
    h
}
