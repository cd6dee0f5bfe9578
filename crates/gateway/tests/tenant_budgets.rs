//! Two tenants with their own monthly limits and one global limit, many clients at
//! once: no limit is passed, each tenant's spend counts against its own limit and the
//! global one, and each refusal names the limit that was hit. Spend is read back from
//! `GET /v1/nexus/budget` and from what the mock upstream declared.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{backend, serve, Served, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream, MockUsage};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const INPUT_USD_PER_MTOK: f64 = 10.0;
const OUTPUT_USD_PER_MTOK: f64 = 30.0;
const MAX_TOKENS: u64 = 50;
const GLOBAL_LIMIT: f64 = 0.30;
const A_LIMIT: f64 = 0.12;
const B_LIMIT: f64 = 1.00;
const CLIENTS: usize = 16;

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn body() -> Value {
    json!({
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "Summarise the quarterly report in three lines."}],
        "max_tokens": MAX_TOKENS,
    })
}

/// Sends requests as `key` from `CLIENTS` clients until each is refused; returns how
/// many were served and the refusals' messages.
async fn spend_until_refused(served: &Arc<Served>, key: &'static str) -> (usize, Vec<String>) {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let served = Arc::clone(served);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            // Bounded: the limits allow about 150 requests in all.
            for _ in 0..200 {
                let answer = served
                    .client
                    .post(served.url("/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&body())
                    .send()
                    .await
                    .expect("the gateway answers");
                let status = answer.status().as_u16();
                let text = answer.text().await.expect("a body");
                match status {
                    200 => ok += 1,
                    429 => {
                        let error: Value = serde_json::from_str(&text).expect("JSON");
                        assert_eq!(error["error"]["code"], "budget_exceeded", "{text}");
                        return (
                            ok,
                            error["error"]["message"].as_str().unwrap_or("").to_owned(),
                        );
                    }
                    other => panic!("unexpected {other}: {text}"),
                }
            }
            panic!("never refused after 200 requests");
        }));
    }
    let mut served_count = 0;
    let mut refusals = Vec::new();
    for task in tasks {
        let (ok, message) = task.await.expect("a client");
        served_count += ok;
        refusals.push(message);
    }
    (served_count, refusals)
}

async fn budget_as(served: &Served, key: &str) -> Value {
    let answer = served
        .client
        .get(served.url("/v1/nexus/budget"))
        .bearer_auth(key)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_and_global_limits_hold_under_concurrent_clients() {
    // Every answer declares the most the request can cost: the prompt's bytes as input
    // tokens (the bound the gateway reserves) and all of max_tokens as output.
    let prompt_bound = serde_json::to_vec(&body()).expect("JSON").len() as u64;
    let mut config = MockConfig::serving(["gpt-x"]);
    config.usage = MockUsage {
        prompt_tokens: prompt_bound,
        completion_tokens: MAX_TOKENS,
    };
    let mock = MockUpstream::start(config).await.expect("a mock");
    let mut text = backend("cloud", &mock.base_url(), "cloud", &[], "");
    text.push_str(&format!(
        "  [[backends.models]]\n  name = \"gpt-x\"\n  input_usd_per_mtok = {INPUT_USD_PER_MTOK}\n  output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}\n"
    ));
    text.push_str(&format!(
        "[routing.budget]\nmonthly_limit_usd = {GLOBAL_LIMIT}\nhard_limit_action = \"block_all\"\n"
    ));
    text.push_str(&format!(
        "[[tenants]]\nid = \"team-a\"\nkey_sha256 = \"{}\"\nmonthly_limit_usd = {A_LIMIT}\n",
        sha256_hex("sk-team-a")
    ));
    text.push_str(&format!(
        "[[tenants]]\nid = \"team-b\"\nkey_sha256 = \"{}\"\nmonthly_limit_usd = {B_LIMIT}\n",
        sha256_hex("sk-team-b")
    ));
    text.push_str(NO_HEALTH);
    let served = Arc::new(serve(&text).await);

    // Team A alone: its own limit (below the global one) stops it.
    let (a_served, a_refusals) = spend_until_refused(&served, "sk-team-a").await;
    assert!(a_served > 0);
    for message in &a_refusals {
        assert!(message.contains("tenant 'team-a'"), "{message}");
    }

    // Both at once: A stays refused by its limit; B spends what is left of the global
    // one, and its refusals name the global limit (its own is out of reach).
    let (a_again, b_run) = tokio::join!(
        spend_until_refused(&served, "sk-team-a"),
        spend_until_refused(&served, "sk-team-b"),
    );
    assert_eq!(a_again.0, 0, "team A is over its limit already");
    let (b_served, b_refusals) = b_run;
    assert!(b_served > 0);
    for message in &b_refusals {
        assert!(message.contains("global limit"), "{message}");
    }

    served
        .eventually("reservations released", |s| s.reserved_usd() == 0.0)
        .await;

    // Read back as each tenant: its own entry only, and the global one.
    let as_a = budget_as(&served, "sk-team-a").await;
    let as_b = budget_as(&served, "sk-team-b").await;
    let tenants_a = as_a["tenants"].as_array().expect("a list");
    assert_eq!(tenants_a.len(), 1, "{as_a}");
    assert_eq!(tenants_a[0]["id"], "team-a");
    let tenants_b = as_b["tenants"].as_array().expect("a list");
    assert_eq!(tenants_b.len(), 1, "{as_b}");
    assert_eq!(tenants_b[0]["id"], "team-b");

    let usd = |v: &Value| v.as_f64().expect("a number");
    let a_settled = usd(&tenants_a[0]["settled_usd"]);
    let b_settled = usd(&tenants_b[0]["settled_usd"]);
    let global = usd(&as_a["global"]["settled_usd"]);
    assert_eq!(usd(&as_a["global"]["limit_usd"]), GLOBAL_LIMIT);
    assert_eq!(usd(&tenants_a[0]["limit_usd"]), A_LIMIT);
    assert!(
        a_settled <= A_LIMIT,
        "team A spent {a_settled} of {A_LIMIT}"
    );
    assert!(
        b_settled <= B_LIMIT,
        "team B spent {b_settled} of {B_LIMIT}"
    );
    assert!(global <= GLOBAL_LIMIT, "spent {global} of {GLOBAL_LIMIT}");
    assert!(
        (a_settled + b_settled - global).abs() < 1e-6,
        "every tenant's spend counts in the global one: {a_settled} + {b_settled} != {global}"
    );
    // The refusals came near the limits, not far before them: within a request or so
    // of each (16 clients in flight each reserve one request's bound).
    let per_request =
        (prompt_bound as f64 * INPUT_USD_PER_MTOK + MAX_TOKENS as f64 * OUTPUT_USD_PER_MTOK) / 1e6;
    assert!(
        A_LIMIT - a_settled < per_request,
        "A stopped at {a_settled}"
    );
    assert!(GLOBAL_LIMIT - global < per_request, "stopped at {global}");

    // The mock's tally: what it declared is what was settled.
    let declared = mock.declared_usage();
    assert_eq!(declared.answers as usize, a_served + b_served);
    let declared_usd = (declared.prompt_tokens as f64 * INPUT_USD_PER_MTOK
        + declared.completion_tokens as f64 * OUTPUT_USD_PER_MTOK)
        / 1e6;
    assert!(
        (declared_usd - global).abs() < 1e-6,
        "the mock declared ${declared_usd}, the gateway settled ${global}"
    );
}
