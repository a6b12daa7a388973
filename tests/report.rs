//! The comparison as users see it: `tokentrail demo` ends by writing `report.html`, which headless
//! Chromium renders with no console error, no request leaving the page, and data for both patterns
//! in every panel; `tokentrail report --png` renders the screenshot. The hops' metrics reach the
//! collector (OTLP) and the app's EMF lines follow CloudWatch's format; the Grafana and CloudWatch
//! dashboards are current, structurally valid, reference only metrics the hops emit, and show the
//! same metrics per panel as the report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use telemetry::attrs::metric;
use tokentrail::dashboards::{PANELS, cloudwatch_identifiers, prom_identifiers, prometheus_name};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Run the demo (both patterns) into `out` with EMF lines on, returning its stdout.
fn demo(out: &Path) -> String {
    let run = std::process::Command::new(support::bin())
        .args(["demo", "--out"])
        .arg(out)
        .env("TOKENTRAIL_EMF", "on")
        .output()
        .expect("demo runs");
    support::succeeded(&run)
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 10_000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// Metric names per panel id: the report's `data-metrics`, and the OTLP names behind the
/// Grafana expressions and the CloudWatch SEARCH expressions of the committed files.
type PerPanel = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_demo_report_renders_in_chromium_with_both_patterns_in_every_panel() {
    let Some(_) = support::tool(
        "TOKENTRAIL_CHROMIUM",
        "Debian's chromium renders the report",
    ) else {
        return;
    };
    let Some(_) = support::tool(
        "TOKENTRAIL_NODE_MODULES",
        "playwright-core from npm drives Chromium",
    ) else {
        return;
    };
    let out = support::tempdir("report");
    let stdout = demo(&out);
    let html_path = out.join("report.html");
    assert!(
        stdout.contains(&format!("report: {}", html_path.display())),
        "the demo prints the report's path: {stdout}"
    );

    // Self-contained: no script, stylesheet link, image or frame to fetch.
    let html = std::fs::read_to_string(&html_path).unwrap();
    for needle in ["<script", "<link", "src=", "<iframe", "@import", "url("] {
        assert!(!html.contains(needle), "{needle} in the report");
    }

    // Chromium: no error, nothing requested, every panel with data for both patterns.
    let shot = out.join("dom-check.png");
    let run = std::process::Command::new("node")
        .arg(repo().join("tests/report_check.mjs"))
        .arg(&html_path)
        .arg(&shot)
        .output()
        .expect("node runs");
    support::succeeded(&run);
    let dom: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(dom["consoleErrors"], serde_json::json!([]), "{dom}");
    assert_eq!(dom["pageErrors"], serde_json::json!([]), "{dom}");
    assert_eq!(
        dom["requests"],
        serde_json::json!([]),
        "nothing fetched: {dom}"
    );
    let panels = dom["panels"].as_array().unwrap();
    let ids: Vec<&str> = panels.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = PANELS
        .iter()
        .filter(|p| !p.lambda_only)
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, expected);
    for p in panels {
        assert_eq!(p["visible"], true, "{p}");
        for pattern in ["passthrough", "broker"] {
            let d = &p["patterns"][pattern];
            let series_with_data = d["series"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_u64().unwrap() >= 2);
            assert!(
                d["elements"].as_u64().unwrap() > 0
                    && d["empty"] == 0
                    && (d["rows"].as_u64().unwrap() > 0
                        || d["bars"].as_u64().unwrap() > 0
                        || series_with_data),
                "panel {} has no data for {pattern}: {p}",
                p["id"]
            );
        }
    }
    for chart in ["e2e-latency", "throughput"] {
        let p = panels.iter().find(|p| p["id"] == chart).unwrap();
        for pattern in ["passthrough", "broker"] {
            assert!(
                !p["patterns"][pattern]["series"]
                    .as_array()
                    .unwrap()
                    .is_empty(),
                "{chart} draws {pattern}: {p}"
            );
        }
    }
    assert!(is_png(&shot), "the DOM check took a screenshot");

    // `report --png` with a Jaeger URL: links per trace, and the PNG.
    let run = std::process::Command::new(support::bin())
        .args([
            "report",
            "--png",
            "--jaeger",
            "http://jaeger.example:16686",
            "--store",
        ])
        .arg(&out)
        .arg("--out")
        .arg(out.join("linked.html"))
        .output()
        .expect("report runs");
    let printed = support::succeeded(&run);
    assert!(printed.contains("screenshot: "), "{printed}");
    assert!(is_png(&out.join("linked.png")));
    let linked = std::fs::read_to_string(out.join("linked.html")).unwrap();
    let link = "href=\"http://jaeger.example:16686/trace/";
    let first = linked.find(link).expect("trace links");
    let id = &linked[first + link.len()..first + link.len() + 32];
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    // The report's metrics per panel, for the dashboards' comparison.
    let report_metrics: PerPanel = panels
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();

    // Metrics the hops emitted over OTLP (to the collector's metrics.jsonl) in that run.
    let points = telemetry::otlp::read_metrics_store(&out.join("metrics.jsonl")).unwrap();
    let emitted: BTreeSet<(String, String, &str)> = points
        .iter()
        .map(|p| (p.name.clone(), p.unit.clone(), p.kind))
        .collect();
    let services: BTreeSet<&str> = points.iter().map(|p| p.service.as_str()).collect();
    for s in support::BROKER_SERVICES {
        assert!(
            services.contains(s),
            "{s} exported hop metrics: {services:?}"
        );
    }
    for p in &points {
        assert!(metric::ALL.contains(&p.name.as_str()), "{}", p.name);
        let keys: Vec<&str> = p.attributes.keys().map(String::as_str).collect();
        assert_eq!(keys, ["hop", "outcome", "pattern", "reason"], "{p:?}");
    }
    // Hop metrics agree with the hop spans: per pattern, hop and outcome, the final cumulative
    // count of each process equals the spans in the store.
    let mut counted: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut last: BTreeMap<(String, String, String, String, String), u64> = BTreeMap::new();
    for p in points.iter().filter(|p| p.name == metric::HOP_OUTCOMES) {
        let a = |k: &str| p.attributes[k].clone();
        let key = (
            p.instance.clone(),
            a("pattern"),
            a("hop"),
            a("outcome"),
            a("reason"),
        );
        let v = last.entry(key).or_default();
        *v = (*v).max(p.count);
    }
    for ((_, pattern, hop, outcome, _), n) in last {
        *counted.entry((pattern, hop, outcome)).or_default() += n;
    }
    let mut spans: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for s in telemetry::otlp::read_store(&out.join("traces.jsonl")).unwrap() {
        if let Some(hop) = s.attr_str(telemetry::attrs::HOP_NAME) {
            let key = (
                s.attr_str(telemetry::attrs::PATTERN)
                    .unwrap_or("?")
                    .to_owned(),
                hop.to_owned(),
                s.attr_str(telemetry::attrs::HOP_OUTCOME)
                    .unwrap_or("unset")
                    .to_owned(),
            );
            *spans.entry(key).or_default() += 1;
        }
    }
    assert_eq!(counted, spans, "hop metrics = hop spans");

    // EMF lines (the app's, on the demo's stdout) follow CloudWatch's format.
    let mut emf_names = BTreeSet::new();
    for line in stdout.lines().filter(|l| l.starts_with("{\"_aws\"")) {
        let doc: Value = serde_json::from_str(line).unwrap();
        for d in doc["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(d["Namespace"], metric::EMF_NAMESPACE);
            assert_eq!(d["Dimensions"], serde_json::json!([metric::EMF_DIMENSIONS]));
            for dim in metric::EMF_DIMENSIONS {
                assert!(doc[dim].is_string(), "{line}");
            }
            for m in d["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                assert!(doc[name].is_number(), "{line}");
                emf_names.insert(name.to_owned());
            }
        }
    }
    assert_eq!(
        emf_names,
        BTreeSet::from([metric::HOP_DURATION.into(), metric::HOP_OUTCOMES.into()]),
        "the app wrote EMF lines"
    );

    check_dashboards(&emitted, &emf_names, &report_metrics);

    // A second demo into the same store: its report shows its own run; `report` with no window
    // shows every run in the store.
    let first = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        first.contains("40 requests (20 passthrough, 20 broker)"),
        "one demo run"
    );
    demo(&out);
    let second = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        second.contains("40 requests (20 passthrough, 20 broker)"),
        "its own run"
    );
    let run = std::process::Command::new(support::bin())
        .args(["report", "--store"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success());
    let both = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        both.contains("80 requests (40 passthrough, 40 broker)"),
        "the whole store"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The committed dashboards are what `tokentrail dashboards` generates, are structurally valid
/// for Grafana and CloudWatch, reference only metric names the hops emit, and show per panel the
/// same metrics as the report.
fn check_dashboards(
    emitted: &BTreeSet<(String, String, &str)>,
    emf: &BTreeSet<String>,
    report: &PerPanel,
) {
    let dir = repo().join("dashboards");
    let check = std::process::Command::new(support::bin())
        .args(["dashboards", "--check", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("are what this version generates"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Prometheus names of what was emitted (histograms: _bucket/_sum/_count series).
    let mut prom: BTreeMap<String, String> = BTreeMap::new();
    for (name, unit, kind) in emitted {
        if *kind == "histogram" {
            let base = prometheus_name(name, unit, false);
            for suffix in ["_bucket", "_sum", "_count"] {
                prom.insert(format!("{base}{suffix}"), name.clone());
            }
        } else {
            prom.insert(prometheus_name(name, unit, *kind == "sum"), name.clone());
        }
    }
    // Cold starts happen only in Lambda (the EMF ColdStart / OTLP cold_starts counter).
    let lambda_only: BTreeMap<&str, &[&str]> = PANELS
        .iter()
        .filter(|p| p.lambda_only)
        .map(|p| (p.id, p.metrics))
        .collect();
    prom.insert(
        prometheus_name(metric::HOP_COLD_STARTS, "", true),
        metric::HOP_COLD_STARTS.into(),
    );

    // Grafana.
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("grafana/tokentrail.json")).unwrap(),
    )
    .unwrap();
    assert!(
        g["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(g["title"].is_string());
    assert!(g["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars = g["templating"]["list"].as_array().unwrap();
    let var_names: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    for v in ["prometheus", "jaeger", "pattern", "hop"] {
        assert!(var_names.contains(v), "variable {v}");
    }
    for v in vars {
        let t = v["type"].as_str().unwrap();
        assert!(["datasource", "query"].contains(&t), "{v}");
        if t == "datasource" {
            assert!(["prometheus", "jaeger"].contains(&v["query"].as_str().unwrap()));
        }
    }
    let mut grafana: PerPanel = BTreeMap::new();
    let mut panel_ids = BTreeSet::new();
    for p in g["panels"].as_array().unwrap() {
        assert!(
            panel_ids.insert(p["id"].as_u64().unwrap()),
            "unique panel ids"
        );
        assert!(["timeseries", "table"].contains(&p["type"].as_str().unwrap()));
        let gp = &p["gridPos"];
        let (x, w) = (gp["x"].as_u64().unwrap(), gp["w"].as_u64().unwrap());
        assert!(x + w <= 24 && gp["h"].as_u64().unwrap() > 0 && gp["y"].is_u64());
        let uid = p["datasource"]["uid"].as_str().unwrap();
        assert!(
            var_names.contains(uid.trim_start_matches("${").trim_end_matches('}')),
            "{uid}"
        );
        let desc = p["description"].as_str().unwrap();
        let id = desc
            .rsplit("[tokentrail:")
            .next()
            .unwrap()
            .trim_end_matches(']')
            .to_owned();
        let mut refs = BTreeSet::new();
        let mut ref_ids = BTreeSet::new();
        for t in p["targets"].as_array().unwrap() {
            assert!(ref_ids.insert(t["refId"].as_str().unwrap().to_owned()));
            if let Some(expr) = t["expr"].as_str() {
                for ident in prom_identifiers(expr) {
                    let otlp = prom
                        .get(&ident)
                        .unwrap_or_else(|| panic!("{ident} is not a metric the hops emit"));
                    refs.insert(otlp.clone());
                }
            }
        }
        grafana.insert(id, refs);
    }

    // CloudWatch.
    let cw: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("cloudwatch/dashboard-body.json")).unwrap(),
    )
    .unwrap();
    let by_title: BTreeMap<&str, &str> = PANELS.iter().map(|p| (p.title, p.id)).collect();
    let mut cloudwatch: PerPanel = BTreeMap::new();
    for w in cw["widgets"].as_array().unwrap() {
        let (x, width) = (w["x"].as_u64().unwrap(), w["width"].as_u64().unwrap());
        assert!(x + width <= 24 && w["height"].as_u64().unwrap() > 0 && w["y"].is_u64());
        let props = &w["properties"];
        assert!(props["region"].as_str().is_some_and(|r| r.contains('-')));
        let id = by_title[props["title"].as_str().unwrap()].to_owned();
        let mut refs = BTreeSet::new();
        match w["type"].as_str().unwrap() {
            "metric" => {
                for row in props["metrics"].as_array().unwrap() {
                    let e = &row.as_array().unwrap()[0];
                    let eid = e["id"].as_str().unwrap();
                    assert!(
                        eid.starts_with(|c: char| c.is_ascii_lowercase())
                            && eid.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    );
                    for name in cloudwatch_identifiers(e["expression"].as_str().unwrap()) {
                        let otlp = if name == metric::EMF_COLD_START {
                            metric::HOP_COLD_STARTS.to_owned()
                        } else {
                            assert!(
                                emf.contains(&name),
                                "{name} is not an EMF metric the hops emit"
                            );
                            name
                        };
                        refs.insert(otlp);
                    }
                }
            }
            "log" => {
                let q = props["query"].as_str().unwrap();
                assert!(q.starts_with("SOURCE '"), "{q}");
            }
            other => panic!("widget type {other}"),
        }
        cloudwatch.insert(id, refs);
    }

    // Same panels, same metrics, in all three (the report leaves out the Lambda-only ones).
    let mut report = report.clone();
    for (id, metrics) in &lambda_only {
        report.insert(
            (*id).to_owned(),
            metrics.iter().map(|m| (*m).to_owned()).collect(),
        );
    }
    assert_eq!(grafana, report, "Grafana vs report");
    assert_eq!(cloudwatch, report, "CloudWatch vs report");
}
