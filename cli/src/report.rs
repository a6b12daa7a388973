//! `tokentrail report`: one self-contained HTML page (inline SVG and CSS, no script, no network)
//! comparing the two patterns from a span store, with the load run's `load.json` when present.
//! Its sections are the panels of [`crate::dashboards::PANELS`] (same ids, titles and metrics as
//! the Grafana and CloudWatch dashboards), computed from the audited requests: every figure comes
//! with sample trace ids, linked to Jaeger when a Jaeger URL is given.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::audit::{Record, Verdict};
use crate::dashboards::{PANELS, Panel};

const PATTERNS: [&str; 2] = ["passthrough", "broker"];
const ROOT_HOP: &str = "app.request";

fn color(series: &str) -> &'static str {
    match series {
        "passthrough" => "#1f77b4",
        "broker" => "#d62728",
        "broker, cold cache" => "#ff7f0e",
        "broker, warm cache" => "#2ca02c",
        _ => "#7f7f7f",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Values with the trace they came from, sortable by value.
#[derive(Default)]
struct Samples(Vec<(f64, String)>);

impl Samples {
    fn push(&mut self, v: f64, trace: &str) {
        self.0.push((v, trace.to_owned()));
    }
    fn sorted(mut self) -> Sorted {
        self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
        Sorted(self.0)
    }
}

struct Sorted(Vec<(f64, String)>);

impl Sorted {
    fn values(&self) -> Vec<f64> {
        self.0.iter().map(|v| v.0).collect()
    }
    /// The value at percentile `q` and the trace holding it.
    fn at(&self, q: f64) -> Option<(f64, &str)> {
        if self.0.is_empty() {
            return None;
        }
        let rank = ((q / 100.0) * self.0.len() as f64).ceil() as usize;
        let (v, t) = &self.0[rank.clamp(1, self.0.len()) - 1];
        Some((*v, t))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// End-to-end time of a request: the app's root span, else the longest hop.
fn e2e_ms(r: &Record) -> f64 {
    r.chain
        .iter()
        .find(|h| h.hop == ROOT_HOP)
        .map(|h| h.duration_ms)
        .unwrap_or_else(|| r.chain.iter().map(|h| h.duration_ms).fold(0.0, f64::max))
}

/// What the page shows, computed once.
struct Model {
    jaeger: Option<String>,
    records: Vec<Record>,
    load: Option<Value>,
    store: PathBuf,
}

impl Model {
    fn of(&self, pattern: &str) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(move |r| r.pattern.as_deref() == Some(pattern))
    }

    fn trace_link(&self, trace: &str) -> String {
        // The first 8 hex are the epoch seconds (X-Ray-compatible ids): show the random end.
        let short = &trace[trace.len().saturating_sub(8)..];
        match &self.jaeger {
            Some(base) => format!(
                r#"<a class="trace" href="{}/trace/{}" title="trace {}">{}</a>"#,
                esc(base.trim_end_matches('/')),
                esc(trace),
                esc(trace),
                esc(short)
            ),
            None => format!(
                r#"<code class="trace" title="trace {}">{}</code>"#,
                esc(trace),
                esc(short)
            ),
        }
    }

    /// Hops in chain order (by their first appearance at the lowest position), both patterns.
    fn hops(&self) -> Vec<String> {
        let mut order: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in &self.records {
            for (i, h) in r.chain.iter().enumerate() {
                let e = order.entry(h.hop.clone()).or_insert((i, usize::MAX));
                e.0 = e.0.min(i);
            }
        }
        let mut hops: Vec<(String, usize)> = order.into_iter().map(|(h, (i, _))| (h, i)).collect();
        hops.sort_by_key(|(h, i)| (*i, h.clone()));
        hops.into_iter().map(|(h, _)| h).collect()
    }
}

// ------------------------------------------------------------------ SVG

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Position on a "nines" axis: 0, 50, 90, 99, 99.9 evenly spread.
fn nines(p: f64) -> f64 {
    -(1.0 - (p / 100.0).min(0.9999)).log10()
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A shaded x range of a chart, with its label (a stack fault's window).
struct Band {
    from: f64,
    to: f64,
    /// Short, drawn in the band.
    label: String,
    /// Long, on hover.
    title: String,
}

/// A line chart. `x_ticks` are (position, label); y starts at 0; `bands` are shaded.
fn line_chart(
    series: &[Series],
    x_ticks: &[(f64, String)],
    x_label: &str,
    y_label: &str,
    pattern_of: impl Fn(&str) -> &'static str,
    bands: &[Band],
) -> String {
    let (w, h, l, r, t, b) = (640.0, 280.0, 60.0, 150.0, 12.0, 40.0);
    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(x_ticks.iter().map(|t| t.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0, x0 + 1.0) };
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| t + (1.0 - y / ymax) * (h - t - b);
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        esc(y_label)
    );
    for (i, band) in bands.iter().enumerate() {
        let (a, z) = (px(band.from.max(x0)), px(band.to.min(x1)));
        if z > a {
            let _ = write!(
                svg,
                r##"<rect class="fault" x="{a:.1}" y="{t}" width="{:.1}" height="{:.1}" fill="#f2c14e" opacity="0.3"><title>{}</title></rect><text x="{:.1}" y="{:.1}" class="tick">{}</text>"##,
                z - a,
                h - t - b,
                esc(&band.title),
                a + 3.0,
                t + 12.0 + 12.0 * i as f64,
                esc(&band.label)
            );
        }
    }
    for i in 0..=4 {
        let y = ymax * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{l}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            w - r,
            l - 6.0,
            py(y) + 4.0,
            fmt_num(y),
            py = py(y)
        );
    }
    for (x, label) in x_ticks {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"#,
            px(*x),
            h - b + 16.0,
            esc(label)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle" class="axis">{}</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle" class="axis">{}</text>"#,
        (l + w - r) / 2.0,
        h - 4.0,
        esc(x_label),
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let d: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let c = color(&s.name);
        let _ = write!(
            svg,
            r#"<polyline class="series" data-pattern="{}" data-points="{}" points="{}" fill="none" stroke="{c}" stroke-width="2"/><rect x="{}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}" class="legend">{}</text>"#,
            pattern_of(&s.name),
            s.points.len(),
            d.join(" "),
            w - r + 10.0,
            t + 10.0 + 18.0 * i as f64,
            w - r + 26.0,
            t + 14.0 + 18.0 * i as f64,
            esc(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn pattern_of(series: &str) -> &'static str {
    if series.starts_with("broker") {
        "broker"
    } else {
        "passthrough"
    }
}

// ------------------------------------------------------------------ sections

fn section(p: &Panel, body: &str) -> String {
    format!(
        r#"<section class="panel" id="{}" data-metrics="{}"><h2>{}</h2><p class="about">{}</p>{body}</section>"#,
        p.id,
        p.metrics.join(" "),
        esc(p.title),
        esc(p.about)
    )
}

fn hop_latency(m: &Model) -> String {
    let hops = m.hops();
    let mut rows = String::new();
    let mut bars = String::new();
    let mut stats: Vec<(String, &str, f64, f64, f64)> = Vec::new();
    for hop in &hops {
        for pattern in PATTERNS {
            let mut s = Samples::default();
            for r in m.of(pattern) {
                for h in r.chain.iter().filter(|h| &h.hop == hop) {
                    s.push(h.duration_ms, &r.trace_id);
                }
            }
            let s = s.sorted();
            let Some((p50, t50)) = s.at(50.0) else {
                continue;
            };
            let (p90, _) = s.at(90.0).unwrap_or((p50, t50));
            let (p99, t99) = s.at(99.0).unwrap_or((p50, t50));
            let _ = write!(
                rows,
                r#"<tr data-pattern="{pattern}"><td>{}</td><td><span class="dot" style="background:{}"></span>{pattern}</td><td class="n">{}</td><td class="n">{:.2}</td><td class="n">{:.2}</td><td class="n">{:.2}</td><td>{} {}</td></tr>"#,
                esc(hop),
                color(pattern),
                s.len(),
                p50,
                p90,
                p99,
                m.trace_link(t50),
                m.trace_link(t99),
            );
            stats.push((hop.clone(), pattern, p50, p90, p99));
        }
    }
    // Bars: p50 solid, p90 and p99 lighter, one row per hop and pattern.
    let max = nice_max(stats.iter().map(|s| s.4).fold(0.0, f64::max));
    let (w, l, row) = (640.0, 190.0, 16.0);
    let height = 20.0 + row * stats.len() as f64 + 24.0;
    let _ = write!(
        bars,
        r#"<svg viewBox="0 0 {w} {height}" width="{w}" height="{height}" role="img" aria-label="latency per hop">"#
    );
    for (i, (hop, pattern, p50, p90, p99)) in stats.iter().enumerate() {
        let y = 10.0 + row * i as f64;
        let x = |v: f64| v / max * (w - l - 20.0);
        let c = color(pattern);
        let _ = write!(
            bars,
            r#"<g class="bar" data-pattern="{pattern}"><text x="{}" y="{}" text-anchor="end" class="tick">{} · {pattern}</text><rect x="{l}" y="{y}" width="{:.1}" height="12" fill="{c}" opacity="0.25"/><rect x="{l}" y="{y}" width="{:.1}" height="12" fill="{c}" opacity="0.5"/><rect x="{l}" y="{y}" width="{:.1}" height="12" fill="{c}"/></g>"#,
            l - 6.0,
            y + 10.0,
            esc(hop),
            x(*p99).max(1.0),
            x(*p90).max(1.0),
            x(*p50).max(1.0),
        );
    }
    let _ = write!(
        bars,
        r#"<text x="{l}" y="{}" class="tick">0</text><text x="{}" y="{}" text-anchor="end" class="tick">{} ms (bar: p50 solid, p90, p99 light)</text></svg>"#,
        height - 6.0,
        w - 20.0,
        height - 6.0,
        fmt_num(max)
    );
    format!(
        r#"{bars}<table><thead><tr><th>hop</th><th>pattern</th><th>spans</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>sample traces (p50, p99)</th></tr></thead><tbody>{rows}</tbody></table>"#
    )
}

fn critical_path(m: &Model) -> String {
    let mut out = String::new();
    let mut verdicts = Vec::new();
    for pattern in PATTERNS {
        let mut total = 0.0;
        let mut by_hop: BTreeMap<&str, (f64, usize, String)> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for r in m.of(pattern).filter(|r| matches!(r.verdict, Verdict::Ok)) {
            total += e2e_ms(r);
            for h in &r.chain {
                let e = by_hop
                    .entry(h.hop.as_str())
                    .or_insert_with(|| (0.0, 0, r.trace_id.clone()));
                e.0 += h.self_ms;
                e.1 += 1;
                if !order.contains(&h.hop.as_str()) {
                    order.push(h.hop.as_str());
                }
            }
        }
        if total <= 0.0 {
            let _ = write!(
                out,
                r#"<p data-pattern="{pattern}" class="empty">{pattern}: no request reached the target.</p>"#
            );
            continue;
        }
        let Some((top, (top_ms, top_n, top_trace))) = by_hop
            .iter()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .map(|(k, v)| (*k, v.clone()))
        else {
            continue;
        };
        let _ = write!(
            out,
            r#"<div class="stack" data-pattern="{pattern}"><div class="label"><span class="dot" style="background:{}"></span>{pattern}</div><svg viewBox="0 0 640 26" width="640" height="26" role="img" aria-label="{pattern} critical path">"#,
            color(pattern)
        );
        let mut x = 0.0;
        let shades = [
            "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
            "#9c755f",
        ];
        for (i, hop) in order.iter().enumerate() {
            let (ms, n, _) = &by_hop[hop];
            let share = ms / total;
            let wpx = share * 640.0;
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="0" width="{wpx:.1}" height="26" fill="{}"><title>{}: {:.1}% of end-to-end time ({} spans, mean own time {:.3} ms)</title></rect>"#,
                shades[i % shades.len()],
                esc(hop),
                share * 100.0,
                n,
                ms / *n as f64
            );
            if wpx > 60.0 {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="17" class="inbar">{} {:.0}%</text>"#,
                    x + 4.0,
                    esc(hop.split('.').next().unwrap_or(hop)),
                    share * 100.0
                );
            }
            x += wpx;
        }
        out.push_str("</svg></div>");
        verdicts.push(format!(
            r#"<li data-pattern="{pattern}"><b>{pattern}</b>: <b>{}</b> dominates with {:.1}% of end-to-end time (mean own time {:.3} ms over {top_n} requests; sample {})</li>"#,
            esc(top),
            top_ms / total * 100.0,
            top_ms / top_n as f64,
            m.trace_link(&top_trace)
        ));
    }
    format!(
        "{out}<ul>{}</ul><p class=\"note\">Own time = a hop's span minus the hop spans nested in it; over requests that reached the target.</p>",
        verdicts.join("")
    )
}

fn e2e_latency(m: &Model) -> String {
    let curve_points = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99,
    ];
    let mut series = Vec::new();
    let mut rows = String::new();
    let mut max_x: f64 = 0.0;
    let mut groups: Vec<(String, Vec<&Record>)> = Vec::new();
    for pattern in PATTERNS {
        groups.push((pattern.to_owned(), m.of(pattern).collect()));
    }
    let cache_of = |r: &Record| {
        r.chain
            .iter()
            .find_map(|h| h.cache.clone())
            .unwrap_or_default()
    };
    let broker: Vec<&Record> = m.of("broker").collect();
    groups.push((
        "broker, cold cache".into(),
        broker
            .iter()
            .copied()
            .filter(|r| cache_of(r) == "miss")
            .collect(),
    ));
    groups.push((
        "broker, warm cache".into(),
        broker
            .iter()
            .copied()
            .filter(|r| cache_of(r) == "hit")
            .collect(),
    ));
    for (name, records) in &groups {
        let mut s = Samples::default();
        for r in records.iter().filter(|r| matches!(r.verdict, Verdict::Ok)) {
            s.push(e2e_ms(r), &r.trace_id);
        }
        let s = s.sorted();
        let values = s.values();
        if values.is_empty() {
            continue;
        }
        // Percentiles the sample can tell apart, then the maximum one step further right.
        let resolvable = 100.0 - 100.0 / values.len() as f64;
        let mut points: Vec<(f64, f64)> = curve_points
            .iter()
            .filter(|p| **p <= resolvable || **p == 0.0)
            .map(|p| (nines(*p), pct(&values, (*p).max(0.0001))))
            .collect();
        let last = points.last().map_or(0.0, |p| p.0);
        points.push((last + 0.5, pct(&values, 100.0)));
        max_x = max_x.max(last + 0.5);
        series.push(Series {
            name: name.clone(),
            points,
        });
        let cell = |q: f64| {
            s.at(q)
                .map(|(v, t)| format!("{v:.2} {}", m.trace_link(t)))
                .unwrap_or_default()
        };
        let _ = write!(
            rows,
            r#"<tr data-pattern="{}"><td><span class="dot" style="background:{}"></span>{}</td><td class="n">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            pattern_of(name),
            color(name),
            esc(name),
            s.len(),
            cell(50.0),
            cell(90.0),
            cell(99.0),
            cell(99.9),
            cell(100.0),
        );
    }
    let ticks: Vec<(f64, String)> = [0.0, 50.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .map(|p| (nines(*p), format!("p{p}")))
        .filter(|(x, _)| *x <= max_x)
        .collect();
    let chart = line_chart(&series, &ticks, "percentile", "ms", pattern_of, &[]);
    format!(
        r#"{chart}<table><thead><tr><th>requests that reached the target</th><th>n</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr></thead><tbody>{rows}</tbody></table><p class="note">Cold cache: the broker exchanged a fresh service token (<code>tokentrail.broker.cache=miss</code>); warm: it served a cached one.</p>"#
    )
}

fn failure_points(m: &Model) -> String {
    let mut out = String::new();
    for pattern in PATTERNS {
        let total = m.of(pattern).count();
        let mut cells: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
        let mut reached = 0;
        for r in m.of(pattern) {
            match &r.verdict {
                Verdict::Rejected { hop, reason } => cells
                    .entry((hop.clone(), reason.clone()))
                    .or_default()
                    .push(&r.trace_id),
                Verdict::Ok => reached += 1,
                Verdict::Violation { .. } => cells
                    .entry(("(audit)".into(), "violation".into()))
                    .or_default()
                    .push(&r.trace_id),
            }
        }
        let hops: Vec<&String> = {
            let mut h: Vec<&String> = cells.keys().map(|k| &k.0).collect();
            h.dedup();
            h
        };
        let mut reasons: Vec<&String> = cells.keys().map(|k| &k.1).collect();
        reasons.sort();
        reasons.dedup();
        let _ = write!(
            out,
            r#"<h3 data-pattern="{pattern}"><span class="dot" style="background:{}"></span>{pattern}: {total} requests, {reached} reached the target ({:.1}%)</h3>"#,
            color(pattern),
            if total > 0 {
                reached as f64 * 100.0 / total as f64
            } else {
                0.0
            }
        );
        if cells.is_empty() {
            let _ = write!(
                out,
                r#"<p class="empty" data-pattern="{pattern}">No request was stopped.</p>"#
            );
            continue;
        }
        let _ = write!(
            out,
            r#"<table class="matrix" data-pattern="{pattern}"><thead><tr><th>hop \ reason</th>{}</tr></thead><tbody>"#,
            reasons
                .iter()
                .map(|r| format!("<th>{}</th>", esc(r)))
                .collect::<String>()
        );
        for hop in hops {
            let _ = write!(out, "<tr><td>{}</td>", esc(hop));
            for reason in &reasons {
                match cells.get(&(hop.clone(), (*reason).clone())) {
                    Some(traces) => {
                        let share = traces.len() as f64 * 100.0 / total.max(1) as f64;
                        let _ = write!(
                            out,
                            r#"<td class="cell" style="background:rgba(214,39,40,{:.2})"><b>{}</b> ({share:.1}%)<br>{}</td>"#,
                            (share / 20.0).clamp(0.08, 0.6),
                            traces.len(),
                            traces
                                .iter()
                                .take(3)
                                .map(|t| m.trace_link(t))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    None => out.push_str("<td></td>"),
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out
}

/// The stack faults of the load run, as x ranges of the time charts (seconds since the first
/// request, `first_ns`): only when the page shows that load run (its first request is the run's).
fn fault_bands(m: &Model, first_ns: u64) -> Vec<Band> {
    let Some(load) = &m.load else {
        return Vec::new();
    };
    let started = load["started_at"]
        .as_str()
        .and_then(|s| crate::audit::parse_time(s, 0).ok());
    let first_s = (first_ns / 1_000_000_000) as i64;
    if started.is_none_or(|s| (first_s - s).abs() > 2) {
        return Vec::new();
    }
    let warmup = load["warmup_s"].as_f64().unwrap_or(0.0);
    load["stack_faults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| Band {
            from: warmup + f["from_s"].as_f64().unwrap_or(0.0),
            to: warmup + f["until_s"].as_f64().unwrap_or(0.0),
            label: format!(
                "{} {}",
                f["target"].as_str().unwrap_or("?"),
                f["kind"].as_str().unwrap_or("?")
            ),
            title: crate::load::describe_fault(f),
        })
        .collect()
}

fn throughput(m: &Model) -> String {
    let start = m
        .records
        .iter()
        .map(|r| r.start_unix_nano)
        .min()
        .unwrap_or(0);
    let end = m
        .records
        .iter()
        .map(|r| r.start_unix_nano)
        .max()
        .unwrap_or(0);
    let span_s = ((end.saturating_sub(start)) as f64 / 1e9).max(1.0);
    // About 60 buckets over the run, at least a second each.
    let bucket_s = (span_s / 60.0).ceil().max(1.0);
    let buckets = (span_s / bucket_s).floor() as usize + 1;
    let mut rate = Vec::new();
    let mut errors = Vec::new();
    let mut rows = String::new();
    for pattern in PATTERNS {
        let mut n = vec![0u64; buckets];
        let mut bad = vec![0u64; buckets];
        for r in m.of(pattern) {
            let i = (((r.start_unix_nano - start) as f64 / 1e9) / bucket_s) as usize;
            let i = i.min(buckets - 1);
            n[i] += 1;
            if !matches!(r.verdict, Verdict::Ok) {
                bad[i] += 1;
            }
        }
        let total: u64 = n.iter().sum();
        let total_bad: u64 = bad.iter().sum();
        if total == 0 {
            continue;
        }
        rate.push(Series {
            name: pattern.to_owned(),
            points: n
                .iter()
                .enumerate()
                .map(|(i, c)| (i as f64 * bucket_s, *c as f64 / bucket_s))
                .collect(),
        });
        errors.push(Series {
            name: pattern.to_owned(),
            points: n
                .iter()
                .zip(&bad)
                .enumerate()
                .filter(|(_, (c, _))| **c > 0)
                .map(|(i, (c, b))| (i as f64 * bucket_s, *b as f64 * 100.0 / *c as f64))
                .collect(),
        });
        let _ = write!(
            rows,
            r#"<tr data-pattern="{pattern}"><td><span class="dot" style="background:{}"></span>{pattern}</td><td class="n">{total}</td><td class="n">{:.1}</td><td class="n">{total_bad}</td><td class="n">{:.1}%</td></tr>"#,
            color(pattern),
            total as f64 / span_s,
            total_bad as f64 * 100.0 / total as f64
        );
    }
    let bands = fault_bands(m, start);
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            let x = (buckets.saturating_sub(1)) as f64 * bucket_s * f64::from(i) / 4.0;
            (
                x,
                if bucket_s * buckets as f64 >= 20.0 {
                    format!("{x:.0}s")
                } else {
                    format!("{x:.1}s")
                },
            )
        })
        .collect();
    format!(
        r#"<div class="pair">{}{}</div><table><thead><tr><th>pattern</th><th>requests</th><th>mean req/s</th><th>not reaching the target</th><th>error rate</th></tr></thead><tbody>{rows}</tbody></table><p class="note">Buckets of {bucket_s:.0} s from the first request; error = any request that did not reach the target (rejections included).</p>"#,
        line_chart(
            &rate,
            &ticks,
            "time since start",
            "requests/s",
            pattern_of,
            &bands
        ),
        line_chart(
            &errors,
            &ticks,
            "time since start",
            "error rate %",
            pattern_of,
            &bands
        ),
    )
}

fn identities(m: &Model) -> String {
    let mut out = String::new();
    let mut violations = String::new();
    for pattern in PATTERNS {
        let mut pairs: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
        let (mut total, mut reached) = (0, 0);
        for r in m.of(pattern) {
            total += 1;
            let entered = format!(
                "{} {}",
                r.entered.kind.as_deref().unwrap_or("none"),
                r.entered.subject.as_deref().unwrap_or("-")
            );
            let at_target = match &r.reached {
                Some(i) => {
                    reached += 1;
                    format!(
                        "{} {} ({})",
                        i.kind.as_deref().unwrap_or("?"),
                        i.subject.as_deref().unwrap_or("-"),
                        i.fingerprint.as_deref().unwrap_or("no fingerprint")
                    )
                }
                None => "(stopped before the target)".into(),
            };
            let e = pairs
                .entry((entered, at_target))
                .or_insert((0, r.trace_id.clone()));
            e.0 += 1;
            if let Verdict::Violation { violations: v } = &r.verdict {
                let _ = write!(
                    violations,
                    r#"<li data-pattern="{pattern}">{} {}</li>"#,
                    m.trace_link(&r.trace_id),
                    esc(&v.join("; "))
                );
            }
        }
        let _ = write!(
            out,
            r#"<h3 data-pattern="{pattern}"><span class="dot" style="background:{}"></span>{pattern}: {reached} of {total} requests reached the target</h3><table data-pattern="{pattern}"><thead><tr><th>entered</th><th>reached the target as</th><th>requests</th><th>sample</th></tr></thead><tbody>"#,
            color(pattern)
        );
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        pairs.sort_by_key(|b| std::cmp::Reverse(b.1.0));
        for ((entered, at), (n, trace)) in pairs.iter().take(12) {
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{}</td><td class="n">{n}</td><td>{}</td></tr>"#,
                esc(entered),
                esc(at),
                m.trace_link(trace)
            );
        }
        out.push_str("</tbody></table>");
    }
    let count = m
        .records
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Violation { .. }))
        .count();
    let _ = write!(
        out,
        r#"<p class="verdict {}"><b>{count} violation(s)</b> of the patterns' promises (<code>tokentrail audit --store {}</code> lists every request).</p>"#,
        if count == 0 { "ok" } else { "bad" },
        esc(&m.store.display().to_string())
    );
    if count > 0 {
        let _ = write!(out, "<ul>{violations}</ul>");
    }
    out
}

fn load_summary(m: &Model) -> String {
    let Some(doc) = &m.load else {
        return String::new();
    };
    let mut rows = String::new();
    for pattern in PATTERNS {
        let p = &doc["patterns"][pattern];
        if p.is_null() {
            continue;
        }
        let l = &p["latency"];
        let f = |v: &Value| v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_default();
        let _ = write!(
            rows,
            r#"<tr data-pattern="{pattern}"><td><span class="dot" style="background:{}"></span>{pattern}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            color(pattern),
            p["measured"],
            f(&p["achieved_rate_per_s"]),
            f(&l["p50_ms"]),
            f(&l["p90_ms"]),
            f(&l["p99_ms"]),
            f(&l["p99_9_ms"]),
            f(&l["max_ms"]),
            p["outcomes"]["rejected"],
            p["outcomes"]["error"],
        );
    }
    let faults: Vec<String> = doc["stack_faults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(crate::load::describe_fault)
        .collect();
    let faults = if faults.is_empty() {
        String::new()
    } else {
        format!(
            r#"<p class="note">Stack faults: {}.</p>"#,
            esc(&faults.join("; "))
        )
    };
    format!(
        r#"<section class="load" id="load"><h2>Load run</h2><p class="about"><code>{}</code> · {} mode · tokentrail {} · {} CPUs. Latency measured by the load generator from each request's intended start (no coordinated omission).</p>{faults}<table><thead><tr><th>pattern</th><th>measured</th><th>achieved req/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>rejected</th><th>errors</th></tr></thead><tbody>{rows}</tbody></table></section>"#,
        esc(doc["command"].as_str().unwrap_or("")),
        esc(doc["mode"].as_str().unwrap_or("?")),
        esc(doc["tokentrail_version"].as_str().unwrap_or("?")),
        doc["machine"]["cpus"],
    )
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1360px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:0 0 2px} h3{font-size:14px;margin:14px 0 6px}
.sub{color:#555;margin:0 0 16px}
section{border:1px solid #e3e3e3;border-radius:8px;padding:14px 16px;margin:14px 0;background:#fff}
.about{color:#555;margin:0 0 10px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#fafafa;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}
.tick{font-size:11px;fill:#555} .axis{font-size:12px;fill:#333} .legend{font-size:12px;fill:#222}
.inbar{font-size:11px;fill:#fff}
.trace{font:11px ui-monospace,monospace;color:#0b61a4;margin-right:4px}
.stack{display:flex;align-items:center;gap:10px;margin:6px 0} .stack .label{width:120px}
.pair{display:flex;flex-wrap:wrap;gap:12px}
.note{color:#666;font-size:12px} .empty{color:#666}
.verdict.ok{color:#2b7a0b} .verdict.bad{color:#b00020}
"#;

/// Render the page.
fn render(m: &Model) -> String {
    let mut body = String::new();
    for p in PANELS.iter().filter(|p| !p.lambda_only) {
        let inner = match p.id {
            "hop-latency" => hop_latency(m),
            "critical-path" => critical_path(m),
            "e2e-latency" => e2e_latency(m),
            "failure-points" => failure_points(m),
            "throughput" => throughput(m),
            "identities" => identities(m),
            other => format!("<p>unknown panel {other}</p>"),
        };
        body.push_str(&section(p, &inner));
    }
    let counts: Vec<String> = PATTERNS
        .iter()
        .map(|p| format!("{} {p}", m.of(p).count()))
        .collect();
    let lambda_only: Vec<&str> = PANELS
        .iter()
        .filter(|p| p.lambda_only)
        .map(|p| p.title)
        .collect();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>tokentrail report: passthrough vs broker</title><style>{STYLE}</style></head><body><h1>tokentrail: passthrough vs broker</h1><p class="sub">{} requests ({}) from <code>{}</code>. Generated by tokentrail {}. Every figure names sample traces{}.</p>{}{body}<p class="note">On the dashboards only (Lambda): {}.</p></body></html>
"#,
        m.records.len(),
        counts.join(", "),
        esc(&m.store.display().to_string()),
        env!("CARGO_PKG_VERSION"),
        if m.jaeger.is_some() {
            " (links open them in Jaeger)"
        } else {
            " (trace ids: hover for the full id, or pass --jaeger URL for links)"
        },
        load_summary(m),
        lambda_only.join(", ")
    )
}

/// Options of `tokentrail report`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The store directory (holding `traces.jsonl`, and `load.json` after a load run).
    pub store: PathBuf,
    /// Where to write the page (default `STORE/report.html`).
    pub out: Option<PathBuf>,
    /// Jaeger UI base URL for trace links.
    pub jaeger: Option<String>,
    /// Also render a PNG next to it with headless Chromium.
    pub png: bool,
    /// Only requests started at or after (Unix seconds).
    pub since: Option<i64>,
    /// Only requests started before (Unix seconds).
    pub until: Option<i64>,
}

/// What [`run`] wrote, and notes for the user (the audit index, requests outside the load run).
#[derive(Debug)]
pub struct Written {
    /// The page.
    pub html: PathBuf,
    /// The screenshot, when asked.
    pub png: Option<PathBuf>,
    /// Notes for stderr.
    pub notes: Vec<String>,
}

/// Build the report.
pub fn run(opts: &ReportOptions) -> Result<Written> {
    let store_dir = if opts.store.is_dir() {
        opts.store.clone()
    } else {
        opts.store
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    let indexed = crate::audit_index::records(&opts.store)?;
    let mut notes = indexed.notes;
    let window = crate::audit::Filter {
        since: opts.since,
        until: opts.until,
        ..crate::audit::Filter::default()
    };
    let records = crate::audit::select(indexed.records, &window);
    if records.is_empty() {
        bail!(
            "no request in {}{}: run `tokentrail demo` or `tokentrail load --local` first",
            opts.store.display(),
            if opts.since.is_some() || opts.until.is_some() {
                " in the --since/--until window"
            } else {
                ""
            }
        );
    }
    let load_path = store_dir.join("load.json");
    let load: Option<Value> = match std::fs::read_to_string(&load_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", load_path.display()))?,
        ),
        Err(_) => None,
    };
    // A store collects every run written to it: say so when it holds more than the load run.
    if let Some(l) = load
        .as_ref()
        .filter(|_| opts.since.is_none() && opts.until.is_none())
        && let Some(started) = l["started_at"].as_str()
        && let Ok(start) = crate::audit::parse_time(started, 0)
    {
        let length =
            l["warmup_s"].as_f64().unwrap_or(0.0) + l["duration_s"].as_f64().unwrap_or(0.0);
        // Requests answer within the app's 30 s timeout after the last one is sent.
        let end = start + length.ceil() as i64 + 31;
        let outside = records
            .iter()
            .map(|r| (r.start_unix_nano / 1_000_000_000) as i64)
            .filter(|s| *s < start - 1 || *s > end)
            .count();
        if outside > 0 {
            notes.push(format!(
                "{} also holds {outside} request(s) from outside the load run of {started} (an earlier or later demo or load); `--since {started} --until {}` shows the load run alone",
                opts.store.display(),
                auth::iam::epoch_to_rfc3339(end)
            ));
        }
    }
    let model = Model {
        jaeger: opts.jaeger.clone(),
        records,
        load,
        store: opts.store.clone(),
    };
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| store_dir.join("report.html"));
    std::fs::write(&out, render(&model))
        .with_context(|| format!("cannot write {}", out.display()))?;
    let png = if opts.png {
        Some(screenshot(&out)?)
    } else {
        None
    };
    Ok(Written {
        html: out,
        png,
        notes,
    })
}

/// The Chromium binary: `TOKENTRAIL_CHROMIUM`, else `chromium`, `chromium-browser`,
/// `google-chrome` on `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TOKENTRAIL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Render `html` to `html` with `.png` using headless Chromium (no network: every background
/// service is off).
fn screenshot(html: &Path) -> Result<PathBuf> {
    let browser = chromium().context(
        "--png needs Chromium: install Debian's `chromium` package (apt-get install chromium) or set TOKENTRAIL_CHROMIUM",
    )?;
    let html = std::fs::canonicalize(html)?;
    let png = html.with_extension("png");
    let profile = std::env::temp_dir().join(format!("tokentrail-chromium-{}", std::process::id()));
    let output = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,4200",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", browser.display()))?;
    let _ = std::fs::remove_dir_all(&profile);
    if !output.status.success() || !png.is_file() {
        bail!(
            "{} could not render {}: {}",
            browser.display(),
            html.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        );
    }
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 50.0);
        assert_eq!(pct(&v, 99.0), 99.0);
        assert_eq!(pct(&v, 100.0), 100.0);
        assert_eq!(pct(&[], 50.0), 0.0);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(esc(r#"<a href="x">&"#), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }

    #[test]
    fn the_nines_axis_spreads_the_tail() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
