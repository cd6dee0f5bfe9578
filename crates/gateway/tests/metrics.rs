//! `GET /metrics` after known traffic through mock upstreams: the design's names, the
//! counts and the spend that traffic makes, and no label a client can grow.
//!
//! The recorder is process-wide, so this file holds one test: its counts start at 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{chat_body, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

/// One sample: its labels, sorted, as `k="v"` joined by commas.
type Samples = BTreeMap<(String, String), f64>;

/// Parses the Prometheus text format into (name, labels) -> value.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                (name, labels.join(","))
            }
            None => (series, String::new()),
        };
        samples.insert((name.to_owned(), labels), value.parse().unwrap());
    }
    samples
}

fn get(samples: &Samples, name: &str, labels: &str) -> f64 {
    let mut sorted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    sorted.sort_unstable();
    *samples
        .get(&(name.to_owned(), sorted.join(",")))
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_and_its_spend() {
    let local = MockUpstream::start(MockConfig::serving(["small"]))
        .await
        .unwrap();
    let cloud = MockUpstream::start(MockConfig::serving(["big"]))
        .await
        .unwrap();
    // 10 tokens in at $1000 per million and 20 out at $2000: $0.05 a request.
    let config = format!(
        r#"[[backends]]
id = "local"
url = "{}"
zone = "local"
  [[backends.models]]
  name = "small"

[[backends]]
id = "cloud"
url = "{}"
zone = "cloud"
  [[backends.models]]
  name = "big"
  input_usd_per_mtok = 1000.0
  output_usd_per_mtok = 2000.0

[routing.budget]
monthly_limit_usd = 10.0

[routing.quality]
min_samples = 1000
{NO_HEALTH}"#,
        local.url(),
        cloud.url()
    );
    let served = serve(&config).await;

    for _ in 0..3 {
        let answer = served
            .post("/v1/chat/completions", &chat_body("small", false))
            .await;
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap();
    }
    for _ in 0..2 {
        let answer = served
            .post("/v1/chat/completions", &chat_body("big", true))
            .await;
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap();
    }
    // Models nobody serves, each a new name: refused, and never a label.
    for n in 0..4 {
        let answer = served.chat(&format!("client-made-up-model-{n}")).await;
        assert_eq!(answer.status(), 404);
    }
    // The only backend for `small` answers 500: one failed attempt, then 502.
    local.fault_next(1, Fault::status(500));
    let answer = served.chat("small").await;
    assert_eq!(answer.status(), 502);
    served
        .eventually("every request settled", |s| s.in_flight() == 0)
        .await;

    let scrape = served
        .client
        .get(served.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = scrape.text().await.unwrap();
    assert!(!text.contains("client-made-up-model"), "{text}");
    assert!(!text.contains("req-"), "a request id in a label:\n{text}");
    let m = parse(&text);

    // 3 + 2 routed, 1 routed then failed, then decided again without it: rejected;
    // 4 unknown models rejected.
    assert_eq!(get(&m, "nexus_decisions_total", "decision=\"route\""), 6.0);
    assert_eq!(get(&m, "nexus_decisions_total", "decision=\"reject\""), 5.0);
    assert_eq!(
        get(&m, "nexus_decision_duration_seconds_count", ""),
        11.0,
        "{text}"
    );
    let ok_local = "backend=\"local\",status=\"200\"";
    let ok_cloud = "backend=\"cloud\",status=\"200\"";
    assert_eq!(get(&m, "nexus_upstream_requests_total", ok_local), 3.0);
    assert_eq!(get(&m, "nexus_upstream_requests_total", ok_cloud), 2.0);
    assert_eq!(
        get(
            &m,
            "nexus_upstream_requests_total",
            "backend=\"local\",status=\"500\""
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nexus_upstream_duration_seconds_count",
            "backend=\"local\""
        ),
        4.0
    );
    assert_eq!(
        get(
            &m,
            "nexus_time_to_first_token_seconds_count",
            "backend=\"cloud\""
        ),
        2.0
    );
    let tokens = |backend: &str, model: &str, direction: &str| {
        get(
            &m,
            "nexus_tokens_total",
            &format!("backend=\"{backend}\",direction=\"{direction}\",model=\"{model}\""),
        )
    };
    assert_eq!(tokens("local", "small", "input"), 30.0);
    assert_eq!(tokens("local", "small", "output"), 60.0);
    assert_eq!(tokens("cloud", "big", "input"), 20.0);
    assert_eq!(tokens("cloud", "big", "output"), 40.0);
    let spend = get(&m, "nexus_spend_usd_total", "zone=\"cloud\"");
    assert!((spend - 0.10).abs() < 1e-9, "{spend}");
    assert!(!m
        .keys()
        .any(|(n, l)| n == "nexus_spend_usd_total" && l.contains("local")));
    let remaining = get(&m, "nexus_budget_remaining_usd", "");
    assert!((remaining - 9.90).abs() < 1e-9, "{remaining}");
    assert_eq!(get(&m, "nexus_backend_up", "backend=\"local\""), 1.0);
    assert_eq!(get(&m, "nexus_backend_up", "backend=\"cloud\""), 1.0);
    assert_eq!(get(&m, "nexus_circuit_open", "backend=\"local\""), 0.0);
    assert_eq!(get(&m, "nexus_queue_depth", ""), 0.0);
    // Backends excluded in rejected decisions: `local`, once, in the decision after its
    // failed attempt (the request excluded it: "pipeline"); an unknown model excludes
    // no backend.
    assert_eq!(
        get(&m, "nexus_rejections_total", "reconciler=\"pipeline\""),
        1.0
    );
    // Every metric the design names is exported, and described.
    for name in nexus_gateway::METRIC_NAMES {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} undescribed"
        );
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    served.stop().await;
}
