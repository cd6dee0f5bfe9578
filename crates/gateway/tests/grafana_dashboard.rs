//! docs/grafana/nexus.json is valid dashboard JSON whose queries name only metrics the
//! gateway exports (and only their labels), and that charts every one of them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use serde_json::Value;

/// The labels of each exported metric (DESIGN.md, "Operating it").
const LABELS: &[(&str, &[&str])] = &[
    ("nexus_decisions_total", &["decision"]),
    ("nexus_rejections_total", &["reconciler"]),
    ("nexus_decision_duration_seconds", &[]),
    ("nexus_upstream_requests_total", &["backend", "status"]),
    ("nexus_upstream_duration_seconds", &["backend"]),
    ("nexus_time_to_first_token_seconds", &["backend"]),
    ("nexus_tokens_total", &["backend", "model", "direction"]),
    ("nexus_spend_usd_total", &["zone"]),
    ("nexus_budget_remaining_usd", &[]),
    ("nexus_backend_up", &["backend"]),
    ("nexus_circuit_open", &["backend"]),
    ("nexus_queue_depth", &[]),
];

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana/nexus.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(value: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in value["panels"].as_array().unwrap() {
        all.push(panel);
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            all.extend(nested);
        }
    }
    all
}

/// The metric names in a PromQL expression: identifiers starting with `nexus_`, with a
/// histogram's series suffix taken off.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("nexus_") {
        let start = i + at;
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if starts_word {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| base.ends_with("_seconds"))
                .unwrap_or(name);
            found.push(base.to_owned());
        }
        i = end;
    }
    found
}

/// The label names an expression groups or matches by.
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        let list = part.split(')').next().unwrap();
        labels.extend(list.split(',').map(|l| l.trim().to_owned()));
    }
    for part in expr.split('{').skip(1) {
        let inside = part.split('}').next().unwrap();
        for matcher in inside.split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
    }
    labels.remove("le");
    labels
}

#[test]
fn the_dashboard_queries_only_what_the_gateway_exports() {
    let exported: Vec<&str> = LABELS.iter().map(|(m, _)| *m).collect();
    assert_eq!(exported, nexus_gateway::METRIC_NAMES);
    let dashboard = dashboard();
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let mut queried = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let Some(targets) = panel.get("targets").and_then(Value::as_array) else {
            assert_eq!(panel["type"], "row", "{title}: a panel with no query");
            continue;
        };
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let metrics = metrics_in(expr);
            assert!(
                !metrics.is_empty(),
                "{title}: {expr} queries no nexus metric"
            );
            let mut allowed: BTreeSet<String> = BTreeSet::new();
            for metric in &metrics {
                let (_, labels) = LABELS
                    .iter()
                    .find(|(m, _)| m == metric)
                    .unwrap_or_else(|| panic!("{title}: {metric} is not exported"));
                allowed.extend(labels.iter().map(|l| (*l).to_owned()));
                queried.insert(metric.clone());
            }
            for label in labels_in(expr) {
                assert!(
                    allowed.contains(&label),
                    "{title}: label {label} is not one of {metrics:?}'s"
                );
            }
        }
    }
    let missing: Vec<&&str> = exported.iter().filter(|m| !queried.contains(**m)).collect();
    assert!(missing.is_empty(), "not charted: {missing:?}");
}

#[test]
fn the_metric_and_label_readers_read_promql() {
    assert_eq!(
        metrics_in("histogram_quantile(0.99, sum by (le) (rate(nexus_decision_duration_seconds_bucket[5m])))"),
        ["nexus_decision_duration_seconds"]
    );
    assert_eq!(
        metrics_in("sum(rate(nexus_tokens_total[1m])) / sum(my_nexus_x)"),
        ["nexus_tokens_total"]
    );
    let labels = labels_in(
        r#"sum by (backend, status) (rate(nexus_upstream_requests_total{backend=~"$backend",status!="200"}[5m]))"#,
    );
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        ["backend", "status"]
    );
}
