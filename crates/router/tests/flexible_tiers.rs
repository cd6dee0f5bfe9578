//! Flexible tiers never do worse than strict ones: a fallback that meets `min_tier` is
//! preferred to downgrading the requested model; only when no model of the plan meets
//! it does flexible keep the best tier below it, with a warning.
#![allow(clippy::unwrap_used)]

use nexus_core::{pipeline::TierMode, Request};
use nexus_router::{DecisionReport, Router};

/// `m` served only at tier 1, its fallback `n` at tier `n_tier`, `min_tier = 3` on `m`
/// (which its fallback inherits).
fn config(n_tier: u8) -> String {
    format!(
        r#"[[backends]]
id = "small"
url = "http://127.0.0.1:1"
zone = "local"
  [[backends.models]]
  name = "m"
  tier = 1

[[backends]]
id = "big"
url = "http://127.0.0.1:2"
zone = "local"
  [[backends.models]]
  name = "n"
  tier = {n_tier}

[routing.fallbacks]
"m" = ["n"]

[[routing.policies]]
model_pattern = "m"
min_tier = 3
"#
    )
}

fn decide(config: &str, mode: TierMode) -> DecisionReport {
    let router = Router::from_toml("tiers.toml", config).unwrap();
    let mut decision = router.route(&Request::new("m").tier_mode(mode));
    if let Some(guard) = decision.take_guard() {
        guard.cancel();
    }
    DecisionReport::new("m", &decision)
}

#[test]
fn flexible_takes_a_fallback_that_meets_the_tier_before_downgrading() {
    let config = config(3);
    let strict = decide(&config, TierMode::Strict);
    assert_eq!(strict.backend.as_deref(), Some("big"), "{strict:#?}");
    assert_eq!(strict.model.as_deref(), Some("n"));

    let flexible = decide(&config, TierMode::Flexible);
    assert_eq!(flexible.decision, "route");
    assert_eq!(flexible.backend.as_deref(), Some("big"), "{flexible:#?}");
    assert_eq!(flexible.model.as_deref(), Some("n"));
    assert!(flexible.fallback_used);
    assert!(flexible.warnings.is_empty(), "{:?}", flexible.warnings);
    // The explanation is that of the strict route it took: small is below the tier.
    assert_eq!(flexible.rejections.len(), 1, "{:#?}", flexible.rejections);
    assert_eq!(flexible.rejections[0].backend, "small");
    assert_eq!(
        flexible.rejections[0].reason,
        "tier 1, policy 'm' (#0) requires tier 3 or higher"
    );
}

#[test]
fn flexible_still_downgrades_when_no_model_of_the_plan_meets_the_tier() {
    let config = config(2);
    let strict = decide(&config, TierMode::Strict);
    assert_eq!(strict.decision, "reject", "{strict:#?}");

    // Nothing meets tier 3: the requested model's best tier is kept, in plan order.
    let flexible = decide(&config, TierMode::Flexible);
    assert_eq!(flexible.decision, "route", "{flexible:#?}");
    assert_eq!(flexible.backend.as_deref(), Some("small"));
    assert_eq!(flexible.model.as_deref(), Some("m"));
    assert!(!flexible.fallback_used);
    assert_eq!(
        flexible.warnings,
        ["served by tier 1, policy 'm' (#0) asks for 3"]
    );
    // Only the flexible pass is explained: no leftover strict rejection of small.
    assert!(flexible.rejections.is_empty(), "{:#?}", flexible.rejections);
}
