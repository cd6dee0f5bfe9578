//! Issue 11's report, through the gateway: a policy's `max_cost_per_request` with no
//! `[routing.budget]` section holds. A request whose estimate passes the cap never
//! reaches the dear backend: it goes to the cheaper one, or is refused with 429
//! `budget_exceeded` naming the policy when nothing cheaper serves it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_request_cap_holds_without_a_budget_section() {
    let local = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let cloud = MockUpstream::start(MockConfig::serving(["m", "only-cloud"]))
        .await
        .unwrap();
    // $1 per million tokens either way; the cloud is preferred (priority 3).
    let config = format!(
        r#"[[backends]]
id = "local"
url = "{}"
zone = "local"
  [[backends.models]]
  name = "m"

[[backends]]
id = "cloud"
url = "{}"
zone = "cloud"
priority = 3
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 1.0
  output_usd_per_mtok = 1.0
  [[backends.models]]
  name = "only-cloud"
  input_usd_per_mtok = 1.0
  output_usd_per_mtok = 1.0

[[routing.policies]]
model_pattern = "*"
max_cost_per_request = 0.01
{NO_HEALTH}"#,
        local.url(),
        cloud.url()
    );
    let served = serve(&config).await;
    let cheap_at = |model: &str, max_tokens: u32| {
        json!({"model": model, "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": "Say hello."}]})
    };

    // A few tokens: $0.000 at the cloud, under the cap; the cloud serves.
    let answer = served
        .post("/v1/chat/completions", &cheap_at("m", 100))
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "cloud");

    // 25 000 output tokens: $0.025 at the cloud, over the $0.01 cap; local serves.
    cloud.clear();
    let answer = served
        .post("/v1/chat/completions", &cheap_at("m", 25_000))
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "local");
    assert_eq!(
        cloud.request_count(),
        0,
        "the dear backend was sent the request"
    );

    // Only the cloud serves it: refused as the budget's, with the policy named.
    let answer = served
        .post("/v1/chat/completions", &cheap_at("only-cloud", 25_000))
        .await;
    assert_eq!(answer.status(), 429);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    let rejection = &body["error"]["nexus"]["rejections"][0];
    assert_eq!(rejection["reconciler"], "budget", "{body}");
    assert!(
        rejection["reason"]
            .as_str()
            .unwrap()
            .contains("exceeds the $0.0100 per request of policy '*'"),
        "{body}"
    );
    assert_eq!(cloud.request_count(), 0);
    served.stop().await;
}
