//! Reserve a bound, not a guess: with `[server] default_max_tokens`, a request without
//! an output cap is given one (forwarded as `max_tokens`) and reserves its cost at most
//! (the prompt's bytes as input tokens, the cap as output). Every upstream here reports
//! far more tokens than the four-bytes rule estimates (all the prompt's bytes as tokens,
//! all the cap as output), and 16 clients spend at once: the monthly limit holds, and
//! the last refusal comes less than one request's cost before it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{backend, serve, Served, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream, MockUsage};
use serde_json::{json, Value};

const INPUT_USD_PER_MTOK: f64 = 10.0;
const OUTPUT_USD_PER_MTOK: f64 = 30.0;
const DEFAULT_MAX_TOKENS: u64 = 64;
const LIMIT: f64 = 0.20;
const CLIENTS: usize = 16;

/// No `max_tokens`: the gateway sets the default.
fn body() -> Value {
    json!({
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "Write a limerick about budgets and replicas."}],
    })
}

fn config(mock: &MockUpstream, default_max_tokens: Option<u64>) -> String {
    let mut text = backend("cloud", &mock.base_url(), "cloud", &[], "");
    text.push_str(&format!(
        "  [[backends.models]]\n  name = \"gpt-x\"\n  input_usd_per_mtok = {INPUT_USD_PER_MTOK}\n  output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}\n"
    ));
    text.push_str(&format!(
        "[routing.budget]\nmonthly_limit_usd = {LIMIT}\nhard_limit_action = \"block_all\"\n"
    ));
    if let Some(tokens) = default_max_tokens {
        text.push_str(&format!("[server]\ndefault_max_tokens = {tokens}\n"));
    }
    text.push_str(NO_HEALTH);
    text
}

/// Spends from `CLIENTS` clients until each is refused; returns the requests served.
async fn spend(served: &Arc<Served>) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let served = Arc::clone(served);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..200 {
                let answer = served.post("/v1/chat/completions", &body()).await;
                match answer.status().as_u16() {
                    200 => {
                        answer.bytes().await.expect("a body");
                        ok += 1;
                    }
                    429 => return ok,
                    other => panic!("unexpected {other}: {}", answer.text().await.unwrap()),
                }
            }
            panic!("never refused after 200 requests");
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a client");
    }
    served
        .eventually("reservations released", |s| s.reserved_usd() == 0.0)
        .await;
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_holds_when_upstreams_report_more_than_the_estimate() {
    let prompt_bytes = serde_json::to_vec(&body()).expect("JSON").len() as u64;
    let mut mock_config = MockConfig::serving(["gpt-x"]);
    mock_config.usage = MockUsage {
        prompt_tokens: prompt_bytes,
        completion_tokens: DEFAULT_MAX_TOKENS,
    };
    let mock = MockUpstream::start(mock_config).await.expect("a mock");
    let per_request = (prompt_bytes as f64 * INPUT_USD_PER_MTOK
        + DEFAULT_MAX_TOKENS as f64 * OUTPUT_USD_PER_MTOK)
        / 1e6;

    let served = Arc::new(serve(&config(&mock, Some(DEFAULT_MAX_TOKENS))).await);
    let requests = spend(&served).await;
    let settled = served.settled_usd();
    let declared = mock.declared_usage();
    let declared_usd = (declared.prompt_tokens as f64 * INPUT_USD_PER_MTOK
        + declared.completion_tokens as f64 * OUTPUT_USD_PER_MTOK)
        / 1e6;
    eprintln!(
        "bound: {requests} requests, settled ${settled:.6} of ${LIMIT} ({:.2} %), ${per_request:.6} a request",
        settled / LIMIT * 100.0
    );
    assert!(
        settled <= LIMIT,
        "settled {settled} passed the limit {LIMIT}"
    );
    assert!(
        declared_usd <= LIMIT + 1e-9,
        "the mock declared {declared_usd}"
    );
    assert!((declared_usd - settled).abs() < 1e-6);
    assert!(
        LIMIT - settled < per_request,
        "refusals began ${} before the limit",
        LIMIT - settled
    );
    // The cap reached the upstream.
    let sent = mock.requests_to("/v1/chat/completions");
    assert!(!sent.is_empty());
    for request in &sent {
        let body = request.json().expect("a JSON body");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS, "{body}");
    }
    Arc::try_unwrap(served)
        .ok()
        .expect("one owner")
        .stop()
        .await;

    // The cost of the bound: answers that use less than it (a quarter of the prompt's
    // bytes as tokens, a third of the cap) leave part of the limit unspent when the
    // last requests are refused. Printed for docs/budget.md; the limit still holds.
    mock.clear();
    mock.configure(|c| {
        c.usage = MockUsage {
            prompt_tokens: prompt_bytes / 4,
            completion_tokens: DEFAULT_MAX_TOKENS / 3,
        }
    });
    let served = Arc::new(serve(&config(&mock, Some(DEFAULT_MAX_TOKENS))).await);
    let requests = spend(&served).await;
    let settled = served.settled_usd();
    eprintln!(
        "bound, lighter answers: {requests} requests, settled ${settled:.6} of ${LIMIT} ({:.2} %)",
        settled / LIMIT * 100.0
    );
    assert!(settled <= LIMIT);
    Arc::try_unwrap(served)
        .ok()
        .expect("one owner")
        .stop()
        .await;
    mock.configure(|c| {
        c.usage = MockUsage {
            prompt_tokens: prompt_bytes,
            completion_tokens: DEFAULT_MAX_TOKENS,
        }
    });

    // Without the default the budget reserves a guess (half the input as output) and
    // the same traffic is expected to pass the limit; printed for docs/budget.md, not
    // asserted (by how much depends on the interleaving).
    mock.clear();
    let served = Arc::new(serve(&config(&mock, None)).await);
    let requests = spend(&served).await;
    let settled = served.settled_usd();
    eprintln!(
        "guess: {requests} requests, settled ${settled:.6} of ${LIMIT} ({:.2} %)",
        settled / LIMIT * 100.0
    );
    assert!(
        mock.requests_to("/v1/chat/completions")
            .iter()
            .all(|r| r.json().is_some_and(|b| b.get("max_tokens").is_none())),
        "without the default, bodies go as sent"
    );
}
