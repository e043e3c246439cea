//! `report.html`: error rate, p99 and weight per arm over time, with the decisions marked (the
//! ticks that were not "continue"), drawn as inline SVG with plotters as `chaos` does, then the
//! verdict and the tick lines.
use crate::decide::{ArmSample, Decision};
use crate::journal::Journal;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

fn rate(s: &ArmSample) -> Option<f64> {
    (s.counts.requests > 0).then(|| s.counts.errors() as f64 / s.counts.requests as f64)
}

fn p99_ms(s: &ArmSample) -> Option<f64> {
    s.latency.quantile(0.99).map(|x| x * 1000.0)
}

type Get = fn(&crate::journal::TickRecord) -> (Option<f64>, Option<f64>);

fn chart(j: &Journal) -> Result<String, String> {
    let xs: Vec<f64> = j.ticks.iter().map(|t| t.input.now.as_secs_f64()).collect();
    let xmax = xs.iter().cloned().fold(1.0, f64::max) * 1.05;
    let panels: [(&str, Get); 3] = [
        ("error rate per tick", |t| {
            (rate(&t.input.candidate), rate(&t.input.baseline))
        }),
        ("p99 per tick (ms)", |t| {
            (p99_ms(&t.input.candidate), p99_ms(&t.input.baseline))
        }),
        ("candidate weight (%)", |t| (Some(t.weight as f64), None)),
    ];
    let marks: Vec<f64> = j
        .ticks
        .iter()
        .filter(|t| !matches!(t.report.decision, Decision::Continue { .. }))
        .map(|t| t.input.now.as_secs_f64())
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        for (area, (label, get)) in root.split_evenly((3, 1)).iter().zip(panels) {
            let top = j
                .ticks
                .iter()
                .flat_map(|t| {
                    let (a, b) = get(t);
                    [a, b]
                })
                .flatten()
                .fold(0.0, f64::max);
            let ymax = if top > 0.0 { top * 1.15 } else { 1.0 };
            let mut c = ChartBuilder::on(area)
                .margin(6)
                .caption(label, ("sans-serif", 14))
                .x_label_area_size(22)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..xmax, 0f64..ymax)
                .map_err(|e| e.to_string())?;
            c.configure_mesh()
                .x_label_formatter(&|x| format!("{x:.0}s"))
                .draw()
                .map_err(|e| e.to_string())?;
            for m in &marks {
                c.draw_series(std::iter::once(PathElement::new(
                    vec![(*m, 0.0), (*m, ymax)],
                    RGBColor(200, 120, 0),
                )))
                .map_err(|e| e.to_string())?;
            }
            let cand = j
                .ticks
                .iter()
                .filter_map(|t| get(t).0.map(|v| (t.input.now.as_secs_f64(), v)));
            c.draw_series(LineSeries::new(cand, RGBColor(207, 34, 46).stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label("candidate");
            let base = j
                .ticks
                .iter()
                .filter_map(|t| get(t).1.map(|v| (t.input.now.as_secs_f64(), v)));
            c.draw_series(LineSeries::new(base, RGBColor(9, 105, 218).stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label("baseline");
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the report for `j` to `path`.
pub fn write(j: &Journal, path: &Path) -> Result<(), String> {
    let mut out = String::new();
    let title = format!(
        "canary: {}{}",
        j.plan.name,
        if j.rehearsal.is_some() {
            " (REHEARSAL)"
        } else {
            ""
        }
    );
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title>",
        esc(&title)
    );
    out.push_str("<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px;white-space:pre-wrap}</style></head><body>");
    let _ = write!(out, "<h1>{}</h1>", esc(&title));
    if let Some(r) = &j.rehearsal {
        let _ = write!(
            out,
            "<p><b>Rehearsal</b>: fault <code>{}</code> injected on the candidate's traffic.</p>",
            esc(r)
        );
    }
    if let Some(v) = &j.verdict {
        let _ = write!(
            out,
            "<h2>Verdict: {} (exit {})</h2><p>{}</p><p>candidate {} requests, {} errors; baseline {} requests, {} errors; split removed {:?} ms after the decision; candidate requests after: {:?}; promoted digest: {:?}</p>",
            esc(&v.outcome), v.exit_code, esc(&v.decision), v.candidate.requests, v.candidate.errors(),
            v.baseline.requests, v.baseline.errors(), v.split_removed_ms, v.admitted_after_split, v.promoted_digest
        );
    }
    let _ = write!(
        out,
        "<p>candidate digest <code>{}</code>, stable <code>{:?}</code>, seed {}</p>",
        j.digests.candidate, j.digests.stable, j.seed
    );
    out.push_str(
        "<p>Red: candidate, blue: baseline; orange lines: decisions other than continue.</p>",
    );
    out.push_str(&chart(j)?);
    out.push_str("<h2>Ticks</h2><pre>");
    for t in &j.ticks {
        let _ = writeln!(out, "{}", esc(&t.report.to_string()));
    }
    out.push_str("</pre><h2>Events</h2><pre>");
    for e in j.events.iter().chain(&j.actions) {
        let _ = writeln!(out, "+{:.1}s {}", e.at_s, esc(&e.what));
    }
    out.push_str("</pre></body></html>\n");
    std::fs::write(path, out).map_err(|e| e.to_string())
}
