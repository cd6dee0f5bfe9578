//! Float settings outside a sane range fail at load, at their key's line: a subnormal
//! `default_latency_ms` made every score infinite, so priority was ignored.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fleet, local};
use nexus_core::Request;
use nexus_router::Router;

fn test_fleet() -> String {
    fleet([
        local("small", 1).serves("m"),
        local("big", 2).priority(3).serves("m"),
    ])
}

/// Loads the test fleet with `table` holding `key = value`; the error, and the key's line.
fn load(table: &str, key: &str, value: &str) -> (Result<Router, nexus_router::ConfigError>, usize) {
    let config = format!(
        "{fleet}\n[{table}]\n{key} = {value}\n",
        fleet = test_fleet()
    );
    let line = 1 + config.lines().position(|l| l.starts_with(key)).unwrap();
    (Router::from_toml("floats.toml", &config), line)
}

#[test]
fn default_latency_ms_must_be_a_sane_latency() {
    for value in ["1e-320", "0.0", "-5.0", "nan", "inf", "0.5", "3600001.0"] {
        let (result, line) = load("routing.scheduler", "default_latency_ms", value);
        let err = result.unwrap_err();
        assert_eq!(err.position, Some((line, 1)), "{value}: {err}");
        assert!(
            err.message.contains(
                "`default_latency_ms` must be a latency in milliseconds from 1 to 3600000"
            ),
            "{value}: {err}"
        );
    }
    for value in ["1", "100.0", "3600000"] {
        let (result, _) = load("routing.scheduler", "default_latency_ms", value);
        let router = result.unwrap();
        // Priority decides between two backends that have not answered yet.
        for _ in 0..16 {
            let mut decision = router.route(&Request::new("m"));
            assert_eq!(decision.backend().unwrap().name(), "big", "{value}");
            decision.take_guard().unwrap().cancel();
        }
    }
}

#[test]
fn target_ttft_ms_must_be_a_sane_time() {
    for value in ["1e-320", "0.0", "nan", "inf", "1e9"] {
        let (result, line) = load("routing.quality", "target_ttft_ms", value);
        let err = result.unwrap_err();
        assert_eq!(err.position, Some((line, 1)), "{value}: {err}");
        assert!(
            err.message.contains("`target_ttft_ms` must be"),
            "{value}: {err}"
        );
    }
    let (result, _) = load("routing.quality", "target_ttft_ms", "250.0");
    result.unwrap();
}
