//! One definition of the comparison panels, rendered three ways: the Grafana dashboard
//! (`dashboards/grafana/tokentrail.json`, Prometheus + Jaeger data sources), the CloudWatch
//! dashboard body and Logs Insights queries (`dashboards/cloudwatch/`), and the sections of
//! `tokentrail report`. `tokentrail dashboards --out dashboards` writes the files; a test checks
//! the committed ones are what this module generates, so the three never drift apart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use telemetry::attrs::metric;

/// How a panel reads its data in each place.
#[derive(Debug, Clone, Copy)]
pub struct Panel {
    /// Stable id: the report section's `id`, the Grafana panel's `description` tag.
    pub id: &'static str,
    /// Title (the same everywhere).
    pub title: &'static str,
    /// What it answers.
    pub about: &'static str,
    /// The hop metrics it shows (OTLP names).
    pub metrics: &'static [&'static str],
    /// Shown only where Lambda runs the hops (dashboards), not in the local report.
    pub lambda_only: bool,
    /// Prometheus queries (legend, PromQL) for Grafana; empty for a traces panel.
    pub promql: &'static [(&'static str, &'static str)],
    /// CloudWatch metric math / SEARCH expressions (label, expression); empty for a logs panel.
    pub cloudwatch: &'static [(&'static str, &'static str)],
    /// Logs Insights query over the EMF log lines or Transaction Search spans, when the panel is
    /// a table of events.
    pub logs_insights: Option<&'static str>,
}

/// The panels, in the order every view shows them.
pub const PANELS: &[Panel] = &[
    Panel {
        id: "hop-latency",
        title: "Latency per hop (p50 / p90 / p99)",
        about: "Where the time goes hop by hop, for each pattern.",
        metrics: &[metric::HOP_DURATION],
        lambda_only: false,
        promql: &[
            (
                "{{pattern}} {{hop}} p50",
                "histogram_quantile(0.5, sum by (le, pattern, hop) (rate(tokentrail_hop_duration_milliseconds_bucket{pattern=~\"$pattern\", hop=~\"$hop\"}[$__rate_interval])))",
            ),
            (
                "{{pattern}} {{hop}} p90",
                "histogram_quantile(0.9, sum by (le, pattern, hop) (rate(tokentrail_hop_duration_milliseconds_bucket{pattern=~\"$pattern\", hop=~\"$hop\"}[$__rate_interval])))",
            ),
            (
                "{{pattern}} {{hop}} p99",
                "histogram_quantile(0.99, sum by (le, pattern, hop) (rate(tokentrail_hop_duration_milliseconds_bucket{pattern=~\"$pattern\", hop=~\"$hop\"}[$__rate_interval])))",
            ),
        ],
        cloudwatch: &[
            (
                "p50",
                "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.duration\"', 'p50', 60)",
            ),
            (
                "p90",
                "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.duration\"', 'p90', 60)",
            ),
            (
                "p99",
                "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.duration\"', 'p99', 60)",
            ),
        ],
        logs_insights: None,
    },
    Panel {
        id: "critical-path",
        title: "Critical path: share of end-to-end time per hop",
        about: "Which hop dominates end-to-end time (its own time, without the hops it calls).",
        metrics: &[metric::HOP_DURATION],
        lambda_only: false,
        promql: &[(
            "{{pattern}} {{hop}}",
            "sum by (pattern, hop) (rate(tokentrail_hop_duration_milliseconds_sum{pattern=~\"$pattern\", hop=~\"$hop\"}[$__rate_interval])) / ignoring(hop) group_left sum by (pattern) (rate(tokentrail_hop_duration_milliseconds_sum{pattern=~\"$pattern\", hop=\"app.request\"}[$__rate_interval]))",
        )],
        cloudwatch: &[(
            "total ms per hop (app.request = end to end)",
            "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.duration\"', 'Sum', 300)",
        )],
        logs_insights: None,
    },
    Panel {
        id: "e2e-latency",
        title: "End-to-end latency by pattern (broker: cold vs warm cache)",
        about: "The whole request as the app saw it; the percentile curve shows the tail.",
        metrics: &[metric::HOP_DURATION],
        lambda_only: false,
        promql: &[
            (
                "{{pattern}} p50",
                "histogram_quantile(0.5, sum by (le, pattern) (rate(tokentrail_hop_duration_milliseconds_bucket{pattern=~\"$pattern\", hop=\"app.request\"}[$__rate_interval])))",
            ),
            (
                "{{pattern}} p99",
                "histogram_quantile(0.99, sum by (le, pattern) (rate(tokentrail_hop_duration_milliseconds_bucket{pattern=~\"$pattern\", hop=\"app.request\"}[$__rate_interval])))",
            ),
            (
                "{{pattern}} p99.9",
                "histogram_quantile(0.999, sum by (le, pattern) (rate(tokentrail_hop_duration_milliseconds_bucket{pattern=~\"$pattern\", hop=\"app.request\"}[$__rate_interval])))",
            ),
        ],
        cloudwatch: &[(
            "p99",
            "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.duration\" Hop=\"app.request\"', 'p99', 60)",
        )],
        logs_insights: None,
    },
    Panel {
        id: "failure-points",
        title: "Failure points: hop × reason",
        about: "Where requests are stopped and why, with each cell's share of the pattern's requests.",
        metrics: &[metric::HOP_OUTCOMES],
        lambda_only: false,
        promql: &[(
            "{{pattern}} {{hop}} {{reason}}",
            "sum by (pattern, hop, reason) (increase(tokentrail_hop_outcomes_total{pattern=~\"$pattern\", hop=~\"$hop\", outcome!=\"ok\"}[$__range]))",
        )],
        cloudwatch: &[(
            "not ok",
            "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.outcomes\" NOT Outcome=\"ok\"', 'Sum', 300)",
        )],
        logs_insights: Some(
            "fields Pattern, Hop, Reason, traceId\n| filter ispresent(Hop) and Outcome != \"ok\"\n| stats count(*) as requests, latest(traceId) as sample_trace by Pattern, Hop, Reason\n| sort requests desc",
        ),
    },
    Panel {
        id: "throughput",
        title: "Throughput and error rate over time",
        about: "Requests per second entering each pattern, and the share not reaching the target.",
        metrics: &[metric::HOP_OUTCOMES],
        lambda_only: false,
        promql: &[
            (
                "{{pattern}} req/s",
                "sum by (pattern) (rate(tokentrail_hop_outcomes_total{pattern=~\"$pattern\", hop=\"app.request\"}[$__rate_interval]))",
            ),
            (
                "{{pattern}} error rate",
                "sum by (pattern) (rate(tokentrail_hop_outcomes_total{pattern=~\"$pattern\", hop=\"app.request\", outcome!=\"ok\"}[$__rate_interval])) / sum by (pattern) (rate(tokentrail_hop_outcomes_total{pattern=~\"$pattern\", hop=\"app.request\"}[$__rate_interval]))",
            ),
        ],
        cloudwatch: &[(
            "requests",
            "SEARCH('{TokenTrail,Pattern,Hop,Outcome} MetricName=\"tokentrail.hop.outcomes\" Hop=\"app.request\"', 'Sum', 60)",
        )],
        logs_insights: None,
    },
    Panel {
        id: "identities",
        title: "Which identity reached the target",
        about: "Per request: the identity that entered and the one the target saw (audit).",
        metrics: &[],
        lambda_only: false,
        promql: &[],
        cloudwatch: &[],
        logs_insights: Some(
            "fields traceId, attributes.tokentrail.pattern as pattern, attributes.tokentrail.credential.kind as kind, attributes.tokentrail.credential.subject as subject, attributes.tokentrail.credential.fingerprint as fingerprint\n| filter attributes.tokentrail.hop.name = \"target.api\"\n| stats count(*) as requests by pattern, kind, subject\n| sort requests desc",
        ),
    },
    Panel {
        id: "cold-starts",
        title: "Cold starts per hop",
        about: "First invocations of a Lambda execution environment (none when hops run as processes).",
        metrics: &[metric::HOP_COLD_STARTS],
        lambda_only: true,
        promql: &[(
            "{{pattern}} {{hop}}",
            "sum by (pattern, hop) (increase(tokentrail_hop_cold_starts_total{pattern=~\"$pattern\", hop=~\"$hop\"}[$__range]))",
        )],
        cloudwatch: &[(
            "cold starts",
            "SEARCH('{TokenTrail,Pattern,Hop} MetricName=\"ColdStart\"', 'Sum', 300)",
        )],
        logs_insights: None,
    },
];

/// The Prometheus name of an OTLP metric, as Prometheus' OTLP receiver and the OTel
/// Collector's Prometheus exporters translate it: dots to underscores, the unit as a suffix
/// (`ms` → `_milliseconds`), `_total` for counters.
pub fn prometheus_name(name: &str, unit: &str, counter: bool) -> String {
    let mut out = name.replace(['.', '-'], "_");
    let unit = match unit {
        "ms" => "milliseconds",
        "s" => "seconds",
        "By" => "bytes",
        "" | "1" => "",
        other => other,
    };
    if !unit.is_empty() && !out.ends_with(unit) {
        out.push('_');
        out.push_str(unit);
    }
    if counter {
        out.push_str("_total");
    }
    out
}

/// The CloudWatch metric names (EMF) a panel's expressions may use: the OTLP names plus the
/// EMF `ColdStart`.
fn cloudwatch_name(otlp: &str) -> &str {
    if otlp == metric::HOP_COLD_STARTS {
        metric::EMF_COLD_START
    } else {
        otlp
    }
}

fn grafana(panels: &[Panel]) -> Value {
    let prom = json!({"type": "prometheus", "uid": "${prometheus}"});
    let jaeger = json!({"type": "jaeger", "uid": "${jaeger}"});
    let mut out = Vec::new();
    for (i, p) in panels.iter().enumerate() {
        let grid = json!({"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8});
        let description = format!("{} [tokentrail:{}]", p.about, p.id);
        let panel = if p.promql.is_empty() {
            json!({
                "id": i + 1,
                "type": "table",
                "title": p.title,
                "description": description,
                "gridPos": grid,
                "datasource": jaeger,
                "targets": [{
                    "refId": "A",
                    "datasource": jaeger,
                    "queryType": "search",
                    "service": "target",
                    "operation": "target.api",
                    "tags": "tokentrail.hop.name=target.api",
                    "limit": 100,
                }],
            })
        } else {
            let table = p.id == "failure-points";
            let targets: Vec<Value> = p
                .promql
                .iter()
                .enumerate()
                .map(|(n, (legend, expr))| {
                    let mut t = json!({
                        "refId": char::from(b'A' + n as u8).to_string(),
                        "datasource": prom,
                        "expr": expr,
                        "legendFormat": legend,
                    });
                    if table {
                        t["instant"] = json!(true);
                        t["format"] = json!("table");
                    }
                    t
                })
                .collect();
            let unit = if p.metrics.contains(&metric::HOP_DURATION) && p.id != "critical-path" {
                "ms"
            } else if p.id == "critical-path" {
                "percentunit"
            } else {
                "short"
            };
            json!({
                "id": i + 1,
                "type": if table { "table" } else { "timeseries" },
                "title": p.title,
                "description": description,
                "gridPos": grid,
                "datasource": prom,
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": targets,
                "links": [{
                    "title": "Traces of this pattern in Jaeger",
                    "url": "/explore?left={\"datasource\":\"${jaeger}\",\"queries\":[{\"refId\":\"A\",\"queryType\":\"search\",\"service\":\"app\",\"tags\":\"tokentrail.pattern=${pattern}\"}]}",
                }],
            })
        };
        out.push(panel);
    }
    let var = |name: &str, label: &str, query: &str| {
        json!({
            "name": name,
            "label": label,
            "type": "query",
            "datasource": prom,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query,
            "refresh": 2,
            "includeAll": true,
            "multi": true,
            "allValue": ".*",
            "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "sort": 1,
        })
    };
    json!({
        "uid": "tokentrail-patterns",
        "title": "tokentrail: passthrough vs broker",
        "description": "Latency and failure points of the two AgentCore authentication-propagation patterns, from the hops' OTLP metrics. Generated by `tokentrail dashboards`.",
        "tags": ["tokentrail", "agentcore"],
        "editable": true,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": {"list": [
            {"name": "prometheus", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}, "options": [], "refresh": 1},
            {"name": "jaeger", "label": "Jaeger", "type": "datasource", "query": "jaeger", "current": {}, "options": [], "refresh": 1},
            var("pattern", "Pattern", "label_values(tokentrail_hop_outcomes_total, pattern)"),
            var("hop", "Hop", "label_values(tokentrail_hop_outcomes_total{pattern=~\"$pattern\"}, hop)"),
        ]},
        "annotations": {"list": []},
        "links": [],
        "panels": out,
    })
}

/// Region of the CloudWatch widgets when `--region` is not given.
pub const DEFAULT_REGION: &str = "us-east-1";

fn cloudwatch(panels: &[Panel], region: &str) -> Value {
    let mut widgets = Vec::new();
    for (i, p) in panels.iter().enumerate() {
        let (x, y) = ((i % 2) * 12, (i / 2) * 6);
        if !p.cloudwatch.is_empty() {
            let metrics: Vec<Value> = p
                .cloudwatch
                .iter()
                .enumerate()
                .map(|(n, (label, expr))| {
                    json!([{"expression": expr, "label": label, "id": format!("e{n}")}])
                })
                .collect();
            widgets.push(json!({
                "type": "metric",
                "x": x, "y": y, "width": 12, "height": 6,
                "properties": {
                    "title": p.title,
                    "view": "timeSeries",
                    "region": region,
                    "period": 60,
                    "metrics": metrics,
                },
            }));
        } else if let Some(q) = p.logs_insights {
            let source = if p.id == "identities" {
                "SOURCE 'aws/spans'"
            } else {
                "SOURCE '/aws/lambda/tokentrail-interceptor' | SOURCE '/aws/lambda/tokentrail-target'"
            };
            widgets.push(json!({
                "type": "log",
                "x": x, "y": y, "width": 12, "height": 6,
                "properties": {
                    "title": p.title,
                    "view": "table",
                    "region": region,
                    "query": format!("{source} | {}", q.replace('\n', " ")),
                },
            }));
        }
    }
    json!({"start": "-PT3H", "periodOverride": "inherit", "widgets": widgets})
}

/// Every file `tokentrail dashboards` writes, relative to its output directory.
pub fn files(region: &str) -> Result<Vec<(PathBuf, String)>> {
    let pretty = |v: &Value| -> Result<String> {
        Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(v).context("encoding a dashboard")?
        ))
    };
    let mut out = vec![
        (
            PathBuf::from("grafana/tokentrail.json"),
            pretty(&grafana(PANELS))?,
        ),
        (
            PathBuf::from("cloudwatch/dashboard-body.json"),
            pretty(&cloudwatch(PANELS, region))?,
        ),
    ];
    for p in PANELS {
        if let Some(q) = p.logs_insights {
            let header = format!("# {}\n# {}\n", p.title, p.about);
            out.push((
                PathBuf::from(format!("cloudwatch/queries/{}.logsinsights", p.id)),
                format!("{header}{q}\n"),
            ));
        }
    }
    Ok(out)
}

/// `tokentrail dashboards --out DIR [--region R] [--check]`: write the files, or (check) fail
/// when the files in `DIR` differ from what this version generates.
pub fn run(out: &Path, region: &str, check: bool) -> Result<()> {
    let mut stale = Vec::new();
    let files = files(region)?;
    let count = files.len();
    for (rel, text) in files {
        let path = out.join(&rel);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "out of date (run `tokentrail dashboards --out {}`): {}",
            out.display(),
            stale.join(", ")
        );
    }
    if check {
        println!(
            "{count} dashboard files in {} are what this version generates",
            out.display()
        );
    }
    Ok(())
}

/// The metric names (Prometheus, CloudWatch) the panels reference, for tests.
pub fn referenced_names() -> (Vec<String>, Vec<String>) {
    let mut prom = Vec::new();
    let mut cw = Vec::new();
    for p in PANELS {
        for m in p.metrics {
            cw.push(cloudwatch_name(m).to_owned());
        }
        for (_, expr) in p.promql {
            prom.extend(prom_identifiers(expr));
        }
    }
    prom.sort();
    prom.dedup();
    cw.sort();
    cw.dedup();
    (prom, cw)
}

/// Metric identifiers in a PromQL expression: words followed by `{` (selectors).
pub fn prom_identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if bytes.get(i) == Some(&b'{') && (start == 0 || bytes[start - 1] != b'$') {
                out.push(expr[start..i].to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// CloudWatch metric names in a SEARCH expression (`MetricName="..."`).
pub fn cloudwatch_identifiers(expr: &str) -> Vec<String> {
    expr.split("MetricName=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_otlp_translation() {
        assert_eq!(
            prometheus_name(metric::HOP_DURATION, "ms", false),
            "tokentrail_hop_duration_milliseconds"
        );
        assert_eq!(
            prometheus_name(metric::HOP_OUTCOMES, "", true),
            "tokentrail_hop_outcomes_total"
        );
    }

    #[test]
    fn panel_expressions_use_only_the_panels_metrics() {
        for p in PANELS {
            let allowed: Vec<String> = p
                .metrics
                .iter()
                .flat_map(|m| {
                    let base = prometheus_name(m, "ms", false);
                    [
                        format!("{base}_bucket"),
                        format!("{base}_sum"),
                        format!("{base}_count"),
                        prometheus_name(m, "", true),
                    ]
                })
                .collect();
            for (_, expr) in p.promql {
                for id in prom_identifiers(expr) {
                    assert!(allowed.contains(&id), "{}: {id} in {expr}", p.id);
                }
            }
            for (_, expr) in p.cloudwatch {
                for id in cloudwatch_identifiers(expr) {
                    assert!(
                        p.metrics.iter().any(|m| cloudwatch_name(m) == id),
                        "{}: {id}",
                        p.id
                    );
                }
            }
        }
    }
}
