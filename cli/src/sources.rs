//! Where `tokentrail audit` reads spans from: the local store, Jaeger's query API, or X-Ray
//! (`GetTraceSummaries` then `BatchGetTraces`). Every source yields the store's flat spans, so
//! the audit is the same whichever one holds the traces.
//!
//! Server-side filtering: Jaeger filters by time window and trace id; X-Ray by time window, trace
//! id and a filter expression on the tokentrail annotations (pattern, subject). What a source
//! cannot filter is filtered here, and the audit says so on stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use telemetry::otlp::StoredSpan;

use crate::audit::Filter;

/// Spans fetched from a source, and what the reader should know about how they were selected.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The spans.
    pub spans: Vec<StoredSpan>,
    /// Notes for stderr (window used, filters applied client-side).
    pub notes: Vec<String>,
}

/// Default look-back for remote sources when `--since` is not given.
pub const DEFAULT_WINDOW_S: i64 = 3600;

fn window(filter: &Filter, now: i64) -> (i64, i64) {
    let until = filter.until.unwrap_or(now + 1);
    let since = filter.since.unwrap_or(until - DEFAULT_WINDOW_S);
    (since, until)
}

/// The store scan of an audit: only the hop spans' audited attributes are decoded; every
/// JWT-shaped value, in any span and any attribute, is still found.
pub fn audit_scan_filter() -> telemetry::otlp::ScanFilter<'static> {
    fn audited(k: &str) -> bool {
        crate::audit::AUDITED.contains(&k)
    }
    telemetry::otlp::ScanFilter {
        keep: &audited,
        only_with: Some(telemetry::attrs::HOP_NAME),
    }
}

// ---------------------------------------------------------------- Jaeger

/// Jaeger search results per query: a full page means the window is split and queried again.
const JAEGER_PAGE: usize = 1000;

fn tag_value(tag: &Value) -> Value {
    let v = tag.get("value").cloned().unwrap_or(Value::Null);
    match (tag.get("type").and_then(Value::as_str), &v) {
        (Some("int64"), Value::String(s)) => s.parse::<i64>().map(Value::from).unwrap_or(v),
        _ => v,
    }
}

/// One Jaeger trace (query API JSON: `traceID`, `spans`, `processes`) as flat spans.
pub fn jaeger_trace_spans(trace: &Value) -> Vec<StoredSpan> {
    let processes = trace.get("processes").and_then(Value::as_object);
    let mut out = Vec::new();
    for span in trace
        .get("spans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = span.to_string();
        let process = span
            .get("processID")
            .and_then(Value::as_str)
            .and_then(|p| processes.and_then(|ps| ps.get(p)));
        let service = process
            .and_then(|p| p.get("serviceName"))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let mut attributes = BTreeMap::new();
        let (mut kind, mut status) = ("internal".to_owned(), "unset".to_owned());
        for tag in span
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(key) = tag.get("key").and_then(Value::as_str) else {
                continue;
            };
            let value = tag_value(tag);
            match key {
                "span.kind" => kind = value.as_str().unwrap_or("internal").to_owned(),
                "otel.status_code" => {
                    status = value.as_str().unwrap_or("unset").to_ascii_lowercase();
                }
                "error" if value == Value::Bool(true) => status = "error".to_owned(),
                "otel.status_description" | "internal.span.format" => {}
                k if k.starts_with("otel.scope.") => {}
                _ => {
                    attributes.insert(key.to_owned(), value);
                }
            }
        }
        let events = span
            .get("logs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|log| {
                log.get("fields")?.as_array()?.iter().find_map(|f| {
                    (f.get("key")?.as_str()? == "event")
                        .then(|| f.get("value")?.as_str().map(str::to_owned))
                        .flatten()
                })
            })
            .collect();
        let parent = span
            .get("references")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r.get("refType").and_then(Value::as_str) == Some("CHILD_OF"))
            .and_then(|r| r.get("spanID").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        let start_us = span.get("startTime").and_then(Value::as_u64).unwrap_or(0);
        let dur_us = span.get("duration").and_then(Value::as_u64).unwrap_or(0);
        let mut jwt_shaped = Vec::new();
        if telemetry::redact::contains_jwt(&text) {
            jwt_shaped.push("Jaeger span".to_owned());
        }
        if process.is_some_and(|p| telemetry::redact::contains_jwt(&p.to_string())) {
            jwt_shaped.push("Jaeger process tags".to_owned());
        }
        out.push(StoredSpan {
            trace_id: pad_id(span.get("traceID").and_then(Value::as_str), 32),
            span_id: pad_id(span.get("spanID").and_then(Value::as_str), 16),
            parent_span_id: if parent.is_empty() {
                parent
            } else {
                pad_id(Some(&parent), 16)
            },
            name: span
                .get("operationName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            kind,
            service,
            start_unix_nano: start_us * 1000,
            end_unix_nano: (start_us + dur_us) * 1000,
            status,
            attributes,
            events,
            jwt_shaped,
        });
    }
    out
}

/// Jaeger drops leading zeros from ids; W3C ids are fixed width.
fn pad_id(id: Option<&str>, width: usize) -> String {
    let id = id.unwrap_or_default().to_ascii_lowercase();
    format!("{id:0>width$}")
}

async fn jaeger_get(http: &reqwest::Client, url: &str) -> Result<Value> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach Jaeger at {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(Value::Null);
    }
    if !status.is_success() {
        bail!(
            "Jaeger answered {status} for {url}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
    serde_json::from_str(&body).with_context(|| format!("Jaeger's answer to {url} is not JSON"))
}

/// Read traces from Jaeger's query API (`URL` as the UI is served, e.g. `http://127.0.0.1:16686`).
pub async fn jaeger(base: &str, filter: &Filter, now: i64) -> Result<Fetched> {
    let base = base.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut traces: BTreeMap<String, Vec<StoredSpan>> = BTreeMap::new();
    let mut notes = Vec::new();
    if let Some(id) = &filter.trace {
        let v = jaeger_get(&http, &format!("{base}/api/traces/{id}")).await?;
        for t in v
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for s in jaeger_trace_spans(t) {
                traces.entry(s.trace_id.clone()).or_default().push(s);
            }
        }
    } else {
        let (since, until) = window(filter, now);
        notes.push(format!(
            "Jaeger {base}: traces between {} and {}",
            auth::iam::epoch_to_rfc3339(since),
            auth::iam::epoch_to_rfc3339(until)
        ));
        let services = jaeger_get(&http, &format!("{base}/api/services")).await?;
        let known: BTreeSet<&str> = telemetry::Service::ALL.iter().map(|s| s.as_str()).collect();
        let services: Vec<String> = services
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|s| known.contains(s))
            .map(str::to_owned)
            .collect();
        // Every request has a span of at least one tokentrail service; asking each one finds
        // requests that never reached a later hop.
        for service in services {
            let mut windows = vec![(since * 1_000_000, until * 1_000_000)];
            while let Some((start, end)) = windows.pop() {
                let url = format!(
                    "{base}/api/traces?service={service}&start={start}&end={end}&limit={JAEGER_PAGE}"
                );
                let v = jaeger_get(&http, &url).await?;
                let page = v.get("data").and_then(Value::as_array);
                let n = page.map(Vec::len).unwrap_or(0);
                if n >= JAEGER_PAGE && end - start > 1_000 {
                    let mid = start + (end - start) / 2;
                    windows.push((start, mid));
                    windows.push((mid, end));
                    continue;
                }
                for t in page.into_iter().flatten() {
                    let spans = jaeger_trace_spans(t);
                    if let Some(first) = spans.first() {
                        traces.insert(first.trace_id.clone(), spans);
                    }
                }
            }
        }
    }
    if filter.user.is_some() || filter.pattern.is_some() || filter.violations_only {
        notes
            .push("Jaeger: --user, --pattern and --violations-only are applied client-side".into());
    }
    Ok(Fetched {
        spans: traces.into_values().flatten().collect(),
        notes,
    })
}

// ---------------------------------------------------------------- X-Ray

/// X-Ray is asked in windows of at most this many seconds.
const XRAY_WINDOW_S: i64 = 6 * 3600;
/// `BatchGetTraces` takes at most 5 trace ids per call.
const XRAY_BATCH: usize = 5;

/// The X-Ray filter expression for the filters X-Ray can apply (annotations and `user`).
pub fn xray_filter_expression(filter: &Filter) -> Option<String> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut parts = Vec::new();
    if let Some(p) = &filter.pattern {
        parts.push(format!("annotation.tokentrail_pattern = \"{}\"", quote(p)));
    }
    if let Some(u) = &filter.user {
        parts.push(format!(
            "(annotation.tokentrail_subject = \"{0}\" OR user = \"{0}\")",
            quote(u)
        ));
    }
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

/// Where to reach X-Ray.
#[derive(Debug, Clone, Default)]
pub struct XrayTarget {
    /// Endpoint override (an emulator such as moto).
    pub endpoint_url: Option<String>,
    /// Region override.
    pub region: Option<String>,
}

async fn xray_client(target: &XrayTarget) -> aws_sdk_xray::Client {
    let mut loader = telemetry::aws_http::config_loader();
    if let Some(r) = &target.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &target.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    aws_sdk_xray::Client::new(&loader.load().await)
}

/// An SDK error as the service's code and message when it answered, the whole chain otherwise.
fn sdk_error<E, R>(e: &aws_sdk_xray::error::SdkError<E, R>) -> String
where
    E: aws_sdk_xray::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_xray::error::ProvideErrorMetadata;
    match (e.code(), e.message()) {
        (Some(code), message) => format!("{code}: {}", message.unwrap_or("-")),
        _ => aws_sdk_xray::error::DisplayErrorContext(e).to_string(),
    }
}

/// The token of the next page, `None` on the last one (an empty token ends pagination too).
fn next_page(token: Option<&str>) -> Option<String> {
    token.filter(|t| !t.is_empty()).map(str::to_owned)
}

fn dt(secs: i64) -> aws_sdk_xray::primitives::DateTime {
    aws_sdk_xray::primitives::DateTime::from_secs(secs)
}

async fn summaries(
    client: &aws_sdk_xray::Client,
    since: i64,
    until: i64,
    expression: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    let mut start = since;
    while start < until {
        let end = (start + XRAY_WINDOW_S).min(until);
        let mut next: Option<String> = None;
        loop {
            let out = client
                .get_trace_summaries()
                .start_time(dt(start))
                .end_time(dt(end))
                .set_filter_expression(expression.map(str::to_owned))
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            ids.extend(
                out.trace_summaries()
                    .iter()
                    .filter_map(|s| s.id().map(str::to_owned)),
            );
            next = next_page(out.next_token());
            if next.is_none() {
                break;
            }
        }
        start = end;
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Read traces from X-Ray: `GetTraceSummaries` (with a filter expression when the filters allow
/// one; if X-Ray refuses it, without, filtering here) then `BatchGetTraces`.
pub async fn xray(target: &XrayTarget, filter: &Filter, now: i64) -> Result<Fetched> {
    let client = xray_client(target).await;
    let mut notes = Vec::new();
    let ids = if let Some(id) = &filter.trace {
        vec![telemetry::propagation::xray_trace_id(id)]
    } else {
        let (since, until) = window(filter, now);
        notes.push(format!(
            "X-Ray{}: traces between {} and {}",
            target
                .endpoint_url
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default(),
            auth::iam::epoch_to_rfc3339(since),
            auth::iam::epoch_to_rfc3339(until)
        ));
        let expression = xray_filter_expression(filter);
        match summaries(&client, since, until, expression.as_deref()).await {
            Ok(ids) => {
                if let Some(e) = &expression {
                    notes.push(format!("X-Ray filter expression: {e}"));
                }
                ids
            }
            Err(why) if expression.is_some() => {
                notes.push(format!(
                    "X-Ray did not accept the filter expression ({}); filtering client-side",
                    why.lines().next().unwrap_or_default()
                ));
                summaries(&client, since, until, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("X-Ray GetTraceSummaries failed: {e}"))?
            }
            Err(why) => bail!("X-Ray GetTraceSummaries failed: {why}"),
        }
    };
    if filter.violations_only {
        notes.push("X-Ray: --violations-only is applied client-side".into());
    }
    let mut spans = Vec::new();
    for chunk in ids.chunks(XRAY_BATCH) {
        let mut next: Option<String> = None;
        loop {
            let out = client
                .batch_get_traces()
                .set_trace_ids(Some(chunk.to_vec()))
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("X-Ray BatchGetTraces failed: {}", sdk_error(&e)))?;
            for trace in out.traces() {
                for seg in trace.segments() {
                    let Some(doc) = seg.document() else { continue };
                    spans.extend(telemetry::xray::spans_from_document(doc).with_context(|| {
                        format!(
                            "X-Ray segment {} of trace {}",
                            seg.id().unwrap_or("?"),
                            trace.id().unwrap_or("?")
                        )
                    })?);
                }
            }
            next = next_page(out.next_token());
            if next.is_none() {
                break;
            }
        }
    }
    Ok(Fetched { spans, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jaeger_json_becomes_flat_spans() {
        let t = json!({
            "traceID": "6b0aeb080123456789abcdef01234567",
            "spans": [{
                "traceID": "6b0aeb080123456789abcdef01234567",
                "spanID": "de5b6f19ff9a0a",
                "operationName": "target.api",
                "references": [{"refType": "CHILD_OF", "traceID": "6b0aeb080123456789abcdef01234567", "spanID": "53995c3f42cd8ad8"}],
                "startTime": 1_795_877_638_500_000u64,
                "duration": 1500,
                "tags": [
                    {"key": "span.kind", "type": "string", "value": "server"},
                    {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                    {"key": "tokentrail.hop.index", "type": "int64", "value": 6},
                    {"key": "enduser.id", "type": "string", "value": "alice"}
                ],
                "logs": [{"timestamp": 1, "fields": [{"key": "event", "type": "string", "value": "rejected"}]}],
                "processID": "p1"
            }],
            "processes": {"p1": {"serviceName": "target", "tags": []}}
        });
        let spans = jaeger_trace_spans(&t);
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.span_id, "00de5b6f19ff9a0a");
        assert_eq!(s.parent_span_id, "53995c3f42cd8ad8");
        assert_eq!(s.kind, "server");
        assert_eq!(s.status, "error");
        assert_eq!(s.service, "target");
        assert_eq!(s.attributes["tokentrail.hop.index"], json!(6));
        assert_eq!(s.attr_str("enduser.id"), Some("alice"));
        assert_eq!(s.events, vec!["rejected".to_owned()]);
        assert_eq!(s.duration_us(), 1500);
        assert!(s.jwt_shaped.is_empty());
    }

    #[test]
    fn filter_expressions_quote_their_values() {
        let f = Filter {
            pattern: Some("broker".into()),
            user: Some("b\"ob".into()),
            ..Filter::default()
        };
        assert_eq!(
            xray_filter_expression(&f).unwrap(),
            r#"annotation.tokentrail_pattern = "broker" AND (annotation.tokentrail_subject = "b\"ob" OR user = "b\"ob")"#
        );
        assert!(xray_filter_expression(&Filter::default()).is_none());
    }
}
