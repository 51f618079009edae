//! `panes bench --report DIR`: one self-contained HTML page (no script, no network) with
//! the machine, the cases and four plots drawn as inline SVG with `plotters`: throughput
//! against keys, against panes per window, against batch size, and thread scaling.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bench::{CUMULATE, Case, WINDOWS};
use crate::harness::Report;

/// Writes `DIR/index.html` (and `DIR/report.json`, the same report); returns the page.
/// `peers` is the `peers.json` of `benches/peers/run.sh`, shown as a table of its own.
pub fn write(
    report: &Report,
    peers: Option<&serde_json::Value>,
    dir: &Path,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    let page = dir.join("index.html");
    std::fs::write(&page, html(report, peers))?;
    Ok(page)
}

/// The peers' table: engine, median seconds, events/s, time against panes, agreement.
fn peers_table(peers: &serde_json::Value) -> String {
    let Some(engines) = peers.as_object() else {
        return "<p>The peers file is not an object of engines.</p>".into();
    };
    let panes = peers["panes"]["median_seconds"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let mut out = format!(
        "<h2>Peers on the same file</h2>\n<p>{}</p>\n<table><tr><th>engine</th><th>version</th>\
         <th>median s</th><th>events/s</th><th>time vs panes</th><th>rows agree</th></tr>\n",
        escape(
            peers["panes"]["query"]
                .as_str()
                .unwrap_or("benches/peers/run.sh")
        )
    );
    for (name, r) in engines {
        let seconds = r["median_seconds"].as_f64().unwrap_or(f64::NAN);
        let events = r["events"].as_f64().unwrap_or(f64::NAN);
        let agrees = match r["agrees"].as_bool() {
            Some(true) => "yes".to_string(),
            _ => format!(
                "<span class=\"bad\">no: {}</span>",
                escape(r["disagreement"].as_str().unwrap_or("?"))
            ),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{seconds:.3}</td><td>{:.0}</td><td>{:.2}x</td><td>{agrees}</td></tr>",
            escape(name),
            escape(r["version"].as_str().unwrap_or("")),
            events / seconds,
            seconds / panes,
        );
    }
    out.push_str("</table>\n");
    out
}

/// A plot's points: series name to (x, y) points.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Panes a window of the suite's window shapes covers (for the panes plot).
fn panes_of(window: &str) -> Option<f64> {
    let (_, size, slide) = WINDOWS.iter().find(|w| w.0 == window)?;
    Some((size / slide) as f64)
}

/// The page.
pub fn html(report: &Report, peers: Option<&serde_json::Value>) -> String {
    let cases = &report.cases;
    let first = |f: fn(&Case) -> usize| cases.iter().map(f).min().unwrap_or(0);
    let (threads0, batch0) = (first(|c| c.threads), first(|c| c.batch_rows));
    let at_base = |c: &&Case| c.threads == threads0 && c.batch_rows == batch0;
    let is_window = |c: &&Case| c.window == CUMULATE || panes_of(&c.window).is_some();
    let mut keys = Series::new();
    let mut panes = Series::new();
    let mut batches = Series::new();
    let mut scaling = Series::new();
    for c in cases.iter().filter(is_window) {
        if at_base(&c) {
            let name = format!("{} {}", c.window, c.backend);
            keys.entry(name)
                .or_default()
                .push((c.keys as f64, c.events_per_sec));
            if let Some(p) = panes_of(&c.window) {
                let name = format!("{} keys {}", c.keys, c.backend);
                panes.entry(name).or_default().push((p, c.events_per_sec));
            }
        }
    }
    // Batch size and threads: at the largest key count, without the reference backend
    // (a scalar oracle, single-threaded by design).
    let most = cases
        .iter()
        .filter(is_window)
        .map(|c| c.keys)
        .max()
        .unwrap_or(0);
    let fast = |c: &&Case| c.keys == most && c.backend != "reference";
    for c in cases.iter().filter(is_window).filter(fast) {
        let name = format!("{} {}", c.window, c.backend);
        if c.threads == threads0 {
            batches
                .entry(name.clone())
                .or_default()
                .push((c.batch_rows as f64, c.events_per_sec));
        }
        if c.batch_rows == batch0 {
            scaling
                .entry(name)
                .or_default()
                .push((c.threads as f64, c.speedup));
        }
    }
    let plots = [
        ("Throughput against keys", "keys", "events/s", keys, true),
        (
            "Throughput against panes per window",
            "panes a window covers",
            "events/s",
            panes,
            false,
        ),
        (
            "Throughput against batch size",
            "rows per batch",
            "events/s",
            batches,
            true,
        ),
        ("Thread scaling", "threads", "speed-up", scaling, false),
    ];
    let m = &report.machine;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>panes bench report</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:72em}}\
         table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}\
         .bad{{color:#c00;font-weight:bold}} figure{{margin:2em 0}}\
         </style></head><body>\n<h1>panes bench report</h1>\n\
         <p>{} ({} cases; report schema {})</p>\n<table>\
         <tr><th>cpu</th><td>{}</td></tr><tr><th>cores</th><td>{}</td></tr>\
         <tr><th>memory</th><td>{:.1} GiB</td></tr><tr><th>os</th><td>{}</td></tr>\
         <tr><th>gpu</th><td>{}</td></tr><tr><th>panes</th><td>{} ({})</td></tr></table>\n",
        escape(&m.line()),
        cases.len(),
        escape(&report.schema),
        escape(&m.cpu),
        m.cores,
        m.memory_bytes as f64 / f64::from(1u32 << 30),
        escape(&m.os),
        escape(&m.gpus.join("; ")),
        escape(&m.version),
        escape(&m.commit),
    );
    for (title, x, y, series, log_x) in plots {
        let _ = writeln!(page, "<figure><figcaption><h2>{title}</h2></figcaption>");
        match svg(title, x, y, &series, log_x) {
            Some(svg) => page.push_str(&svg),
            None => page.push_str("<p>This run has too few points for this plot.</p>"),
        }
        page.push_str("</figure>\n");
    }
    if let Some(p) = peers {
        page.push_str(&peers_table(p));
    }
    page.push_str(
        "<h2>Cases</h2>\n<table><tr><th>case</th><th>keys</th><th>backend</th>\
         <th>events</th><th>threads</th><th>batch rows</th><th>events/s (median)</th>\
         <th>spread</th><th>speed-up</th><th>repeats</th><th>rows out</th><th>agrees</th></tr>\n",
    );
    for c in cases {
        let agrees = match (c.agrees, &c.disagreement) {
            (Some(false), Some(d)) => format!("<span class=\"bad\">no: {}</span>", escape(d)),
            (Some(true), _) => "yes".into(),
            _ => "-".into(),
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.0}</td><td>{:.1}%</td><td>{:.2}x</td><td>{}</td><td>{}</td><td>{agrees}</td></tr>",
            escape(&c.window),
            c.keys,
            escape(&c.backend),
            c.events,
            c.threads,
            c.batch_rows,
            c.events_per_sec,
            c.seconds.noise() * 100.0,
            c.speedup,
            c.seconds.samples.len(),
            c.rows_out,
        );
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

/// One plot as inline SVG: a line per series with at least two points; `None` when no
/// series has two.
fn svg(title: &str, x: &str, y: &str, series: &Series, log_x: bool) -> Option<String> {
    let lines: Vec<(&String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(name, p)| {
            let mut p = p.clone();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name, p)
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        (x0, x1, y1) = (x0.min(x), x1.max(x), y1.max(y));
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 480)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(90);
        let palette = |i: usize| Palette99::pick(i).to_rgba();
        let y_range = 0.0..y1 * 1.1;
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x)
                    .y_desc(y)
                    .y_label_formatter(&|v| human(*v))
                    .x_label_formatter(&|v| human(*v))
                    .draw()
                    .ok()?;
                for (i, (name, p)) in lines.iter().enumerate() {
                    let color = palette(i);
                    chart
                        .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
                        .ok()?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(p.iter().map(|&pt| Circle::new(pt, 3, color.filled())))
                        .ok()?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .ok()?;
            }};
        }
        if log_x && x0 > 0.0 {
            draw!(
                builder
                    .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), y_range)
                    .ok()?
            );
        } else {
            let pad = ((x1 - x0) * 0.05).max(0.5);
            draw!(
                builder
                    .build_cartesian_2d(x0 - pad..x1 + pad, y_range)
                    .ok()?
            );
        }
        root.present().ok()?;
    }
    Some(out)
}

/// 1.2M, 35k, 64 (axis labels).
fn human(v: f64) -> String {
    match v.abs() {
        a if a >= 1e9 => format!("{:.1}G", v / 1e9),
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e3 => format!("{:.0}k", v / 1e3),
        a if a >= 10.0 || a == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
