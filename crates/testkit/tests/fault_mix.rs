//! A fault mix plays its faults on about its rate of requests, the same ones for the same
//! seed, and counts what it played; requests outside the share are answered normally.

mod common;

use common::client;
use nexus_testkit::{Fault, FaultMix, MockConfig, MockUpstream};
use serde_json::json;

/// Sends `n` chat requests; returns the statuses in order.
async fn statuses(mock: &MockUpstream, n: usize) -> Vec<u16> {
    let client = client();
    let body = json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]});
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let answer = client
            .post(format!("{}/v1/chat/completions", mock.url()))
            .json(&body)
            .send()
            .await
            .expect("an answer");
        out.push(answer.status().as_u16());
    }
    out
}

fn mix(seed: u64) -> FaultMix {
    FaultMix {
        rate: 0.25,
        faults: vec![Fault::status(500), Fault::rate_limited(1)],
        seed,
    }
}

#[tokio::test]
async fn plays_its_share_repeatably_and_counts_each_fault() {
    let config = MockConfig {
        record: false,
        ..MockConfig::default()
    };
    let mock = MockUpstream::start(config).await.expect("a mock");
    mock.set_fault_mix(mix(7));
    let first = statuses(&mock, 200).await;
    let played = mock.faults_played();
    let errors_500 = first.iter().filter(|&&s| s == 500).count() as u64;
    let errors_429 = first.iter().filter(|&&s| s == 429).count() as u64;
    let ok = first.iter().filter(|&&s| s == 200).count() as u64;
    assert_eq!(played, vec![errors_500, errors_429]);
    assert_eq!(ok + errors_500 + errors_429, 200);
    // 50 expected; the draws are a fixed hash of the seed, so this cannot flake.
    let faulted = errors_500 + errors_429;
    assert!((25..=75).contains(&faulted), "{faulted} faults in 200");
    assert!(errors_500 > 0 && errors_429 > 0, "{played:?}");
    // Only answered requests declare usage.
    assert_eq!(mock.declared_usage().answers, ok);

    // The same seed on a fresh mix plays the same faults on the same requests.
    mock.set_fault_mix(mix(7));
    assert_eq!(statuses(&mock, 200).await, first);
    // Another seed does not.
    mock.set_fault_mix(mix(8));
    assert_ne!(statuses(&mock, 200).await, first);
    // A plain fault plan replaces the mix.
    mock.set_fault(None);
    assert!(statuses(&mock, 20).await.iter().all(|&s| s == 200));
    assert!(mock.faults_played().is_empty());
}
