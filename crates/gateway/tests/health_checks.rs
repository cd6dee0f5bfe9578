//! Active health checks turn status live: a backend that fails its checks becomes
//! unhealthy (at once on the first round), one that answers again becomes healthy, and
//! an Ollama's loaded models are picked up.

mod common;

use common::{backend, serve};
use nexus_core::fleet::BackendStatus;
use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test]
async fn status_follows_the_checks() {
    let mut ollama_config = MockConfig::serving(["llama3:8b", "mistral:7b"]);
    ollama_config.loaded = Some(vec!["llama3:8b".to_owned()]);
    let ollama = MockUpstream::start(ollama_config).await.unwrap();
    let openai = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{}\n[health]\ninterval_secs = 1\ntimeout_ms = 500\nunhealthy_after = 2\n",
        backend(
            "ollama",
            &ollama.url(),
            "local",
            &["llama3:8b"],
            "type = \"ollama\""
        ),
        backend("vllm", &openai.base_url(), "local", &["m"], ""),
        backend("nothing", "http://127.0.0.1:9", "local", &["m"], ""),
    );
    let served = serve(&config).await;
    let status = |s: &common::Served, name: &str| {
        s.gateway
            .router()
            .fleet()
            .backend_by_name(name)
            .unwrap()
            .live()
            .status()
    };
    // The first round ran before serving: the dead one is unhealthy already. (Each
    // result counts as it arrives, so wait for the round's last request too.)
    served
        .eventually("first round", |s| {
            status(s, "nothing") == BackendStatus::Unhealthy
                && ollama.requests_to("/api/ps").len() == 1
                && openai.requests_to("/v1/models").len() == 1
        })
        .await;
    assert_eq!(status(&served, "ollama"), BackendStatus::Healthy);
    assert_eq!(status(&served, "vllm"), BackendStatus::Healthy);
    assert!(ollama.requests_to("/api/tags").len() == 1 && ollama.requests_to("/api/ps").len() == 1);
    assert_eq!(
        openai.requests_to("/v1/models").len(),
        1,
        "/models under a /v1 URL"
    );
    let listing: serde_json::Value = served
        .client
        .get(served.url("/v1/nexus/backends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listing["backends"][0]["loaded_models"],
        serde_json::json!(["llama3:8b"])
    );

    openai.set_listings_failing(true);
    served
        .eventually("two failed checks", |s| {
            status(s, "vllm") == BackendStatus::Unhealthy
        })
        .await;
    openai.set_listings_failing(false);
    served
        .eventually("a passed check", |s| {
            status(s, "vllm") == BackendStatus::Healthy
        })
        .await;
}

/// A periodic round does not ask every backend at once: the checks start evenly over
/// the first half of the interval (here 4 s, so 0, 0.67 and 1.33 s into the round),
/// so that a large fleet's checks are not one burst of requests and connections.
#[tokio::test]
async fn periodic_checks_are_spread_over_half_the_interval() {
    let mut mocks = Vec::new();
    for _ in 0..3 {
        mocks.push(
            MockUpstream::start(MockConfig::serving(["m"]))
                .await
                .unwrap(),
        );
    }
    let config = format!(
        "{}{}{}\n[health]\ninterval_secs = 4\ntimeout_ms = 500\n",
        backend("first", &mocks[0].base_url(), "local", &["m"], ""),
        backend("second", &mocks[1].base_url(), "local", &["m"], ""),
        backend("third", &mocks[2].base_url(), "local", &["m"], ""),
    );
    let served = serve(&config).await;
    served
        .eventually("the first round", |_| {
            mocks.iter().all(|m| m.requests_to("/v1/models").len() == 1)
        })
        .await;
    // When each was first seen asked again (a lower bound on the gap between them,
    // whatever the machine's load, up to the 5 ms polling).
    let mut seen: [Option<std::time::Instant>; 3] = [None; 3];
    for _ in 0..2400 {
        for (mock, at) in mocks.iter().zip(seen.iter_mut()) {
            if at.is_none() && mock.requests_to("/v1/models").len() >= 2 {
                *at = Some(std::time::Instant::now());
            }
        }
        if seen.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let [Some(first), Some(second), Some(third)] = seen else {
        panic!("not every backend was checked a second time: {seen:?}");
    };
    let gap = |later: std::time::Instant| later.saturating_duration_since(first);
    assert!(
        gap(second) >= std::time::Duration::from_millis(300),
        "the second check started {:?} after the first; its offset is 667 ms",
        gap(second)
    );
    assert!(
        gap(third) >= std::time::Duration::from_millis(1000),
        "the third check started {:?} after the first; its offset is 1.33 s",
        gap(third)
    );
    served.stop().await;
}
