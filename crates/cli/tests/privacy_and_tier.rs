//! Privacy zones and capability tiers, through the facade and through `nexus route`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use nexus_core::{
    pipeline::{Features, TierMode},
    Request,
};
use nexus_router::{DecisionReport, Router};

fn report(config: &str, request: Request<'_>) -> DecisionReport {
    let router = Router::from_toml("test.toml", config).unwrap();
    let decision = router.route(&request);
    DecisionReport::new(request.model, &decision)
}

fn backend(id: &str, zone: Option<&str>, model: &str, tier: u8) -> String {
    let zone = zone
        .map(|z| format!("zone = \"{z}\"\n"))
        .unwrap_or_default();
    format!(
        "[[backends]]\nid = \"{id}\"\nurl = \"http://127.0.0.1:1\"\n{zone}\
         [[backends.models]]\nname = \"{model}\"\ntier = {tier}\ncontext_window = 8192\ntools = true\n\n"
    )
}

const RESTRICTED: &str =
    "[[routing.policies]]\nmodel_pattern = \"gpt-4-*\"\nprivacy = \"restricted\"\n";

fn mixed_fleet() -> String {
    [
        backend("gpu", Some("local"), "gpt-4-turbo", 3),
        backend("vpc", Some("private"), "gpt-4-turbo", 3),
        backend("openai", Some("cloud"), "gpt-4-turbo", 4),
        backend("mystery", None, "gpt-4-turbo", 4),
    ]
    .concat()
}

#[test]
fn a_restricted_policy_excludes_every_cloud_backend_with_a_privacy_reason() {
    let report = report(
        &format!("{}{RESTRICTED}", mixed_fleet()),
        Request::new("gpt-4-turbo"),
    );
    assert_eq!(report.decision, "route");
    assert!(["gpu", "vpc"].contains(&report.backend.as_deref().unwrap()));
    let excluded: Vec<(&str, &str)> = report
        .rejections
        .iter()
        .map(|r| (r.backend.as_str(), r.reconciler.as_str()))
        .collect();
    assert_eq!(excluded, [("openai", "privacy"), ("mystery", "privacy")]);
    assert_eq!(
        report.rejections[0].reason,
        "zone cloud; policy 'gpt-4-*' (#0) requires restricted (local or private backends only)"
    );
    assert!(report.rejections[1]
        .reason
        .starts_with("no zone set (treated as cloud)"));
    assert!(report.rejections[1]
        .suggested_action
        .contains("set its zone to \"local\" or \"private\""));
}

#[test]
fn only_cloud_backends_reject_saying_no_compliant_backend_exists() {
    let config = [
        backend("openai", Some("cloud"), "gpt-4-turbo", 4),
        backend("azure", Some("cloud"), "gpt-4-turbo", 4),
        RESTRICTED.to_owned(),
    ]
    .concat();
    let report = report(&config, Request::new("gpt-4-turbo"));
    assert_eq!(report.decision, "reject");
    assert_eq!(report.rejections.len(), 2);
    assert!(report.rejections.iter().all(|r| r.reconciler == "privacy"));
    let fix = report.suggested_fix.unwrap();
    assert_eq!(fix.reconciler, "privacy");
    assert_eq!(fix.admits, ["openai", "azure"]);
    assert!(
        fix.suggested_action
            .starts_with("no privacy-compliant backend serves 'gpt-4-turbo'"),
        "{}",
        fix.suggested_action
    );
}

#[test]
fn an_unrestricted_policy_keeps_cloud_backends() {
    let config = format!(
        "{}[[routing.policies]]\nmodel_pattern = \"gpt-4-*\"\nprivacy = \"unrestricted\"\n",
        mixed_fleet()
    );
    let report = report(&config, Request::new("gpt-4-turbo"));
    assert!(report.rejections.is_empty(), "{:?}", report.rejections);
    assert_eq!(report.candidates.len(), 4);
}

#[test]
fn a_restricted_name_stays_home_through_its_alias_and_fallback() {
    // The alias target and the fallback match no restrictive policy themselves.
    let config = [
        backend("openai", Some("cloud"), "big-model", 4),
        backend("gpu", Some("local"), "small-model", 2),
        backend("api", Some("cloud"), "small-model", 2),
        "[routing.aliases]\n\"secret-chat\" = \"big-model\"\n\n".to_owned(),
        "[routing.fallbacks]\n\"big-model\" = [\"small-model\"]\n\n".to_owned(),
        "[[routing.policies]]\nmodel_pattern = \"secret-*\"\nprivacy = \"restricted\"\n".to_owned(),
    ]
    .concat();
    let report = report(&config, Request::new("secret-chat"));
    assert_eq!(report.backend.as_deref(), Some("gpu"));
    assert!(report.fallback_used);
    let privacy: Vec<&str> = report
        .rejections
        .iter()
        .filter(|r| r.reconciler == "privacy")
        .map(|r| r.backend.as_str())
        .collect();
    assert_eq!(privacy, ["openai", "api"]);
}

fn tiered_fleet(tiers: &[(&str, u8)]) -> String {
    let mut config: String = tiers
        .iter()
        .map(|(id, tier)| backend(id, Some("local"), "gpt-4", *tier))
        .collect();
    config.push_str("[[routing.policies]]\nmodel_pattern = \"gpt-4*\"\nmin_tier = 3\n");
    config
}

#[test]
fn strict_min_tier_excludes_tiers_below_it() {
    let report = report(
        &tiered_fleet(&[("t1", 1), ("t2", 2), ("t3", 3), ("t4", 4)]),
        Request::new("gpt-4"),
    );
    assert_eq!(report.decision, "route");
    let excluded: Vec<&str> = report
        .rejections
        .iter()
        .map(|r| r.backend.as_str())
        .collect();
    assert_eq!(excluded, ["t1", "t2"]);
    assert!(report.rejections.iter().all(|r| r.reconciler == "tier"));
    assert_eq!(
        report.rejections[1].reason,
        "tier 2, policy 'gpt-4*' (#0) requires tier 3 or higher"
    );
}

#[test]
fn flexible_with_no_tier_3_serves_tier_2_with_a_warning() {
    let request = Request::new("gpt-4").tier_mode(TierMode::Flexible);
    let report = report(&tiered_fleet(&[("t1", 1), ("t2", 2), ("t2b", 2)]), request);
    assert_eq!(report.decision, "route");
    assert!(["t2", "t2b"].contains(&report.backend.as_deref().unwrap()));
    assert_eq!(
        report.warnings,
        ["served by tier 2, policy 'gpt-4*' (#0) asks for 3"]
    );
    let excluded: Vec<&str> = report
        .rejections
        .iter()
        .map(|r| r.backend.as_str())
        .collect();
    assert_eq!(excluded, ["t1"]);
}

#[test]
fn flexible_with_a_tier_3_behaves_as_strict() {
    let request = Request::new("gpt-4").tier_mode(TierMode::Flexible);
    let report = report(&tiered_fleet(&[("t2", 2), ("t3", 3)]), request);
    assert_eq!(report.backend.as_deref(), Some("t3"));
    assert!(report.warnings.is_empty());
    assert_eq!(report.rejections.len(), 1);
    assert_eq!(report.rejections[0].backend, "t2");
}

#[test]
fn fallback_allowed_false_forces_strict() {
    let config = tiered_fleet(&[("t2", 2)])
        .replace("min_tier = 3\n", "min_tier = 3\nfallback_allowed = false\n");
    let report = report(&config, Request::new("gpt-4").tier_mode(TierMode::Flexible));
    assert_eq!(report.decision, "reject");
    assert!(!report.rejections[0].suggested_action.contains("flexible"));
}

#[test]
fn strict_with_no_qualifying_backend_rejects_with_a_tier_reason_for_every_backend() {
    let report = report(
        &tiered_fleet(&[("t1", 1), ("t2", 2)]),
        Request::new("gpt-4"),
    );
    assert_eq!(report.decision, "reject");
    assert_eq!(report.rejections.len(), 2);
    assert!(report
        .rejections
        .iter()
        .all(|r| r.reconciler == "tier" && r.reason.contains("requires tier 3")));
    assert_eq!(report.suggested_fix.unwrap().reconciler, "tier");
}

#[test]
fn features_and_context_windows_exclude_with_their_own_reasons() {
    let config = [
        backend("no-vision", Some("local"), "m", 1),
        "[[backends]]\nid = \"vision\"\nurl = \"http://127.0.0.1:1\"\nzone = \"local\"\n[[backends.models]]\nname = \"m\"\nvision = true\ncontext_window = 2048\n\n".to_owned(),
    ]
    .concat();
    let report_vision = report(&config, Request::new("m").needs(Features::VISION));
    assert_eq!(report_vision.backend.as_deref(), Some("vision"));
    assert_eq!(
        report_vision.rejections[0].reason,
        "'m' here lacks vision, which the request needs"
    );

    let report_long = report(
        &config,
        Request::new("m").needs(Features::VISION).input_tokens(2000),
    );
    assert_eq!(report_long.decision, "reject");
    let reasons: Vec<&str> = report_long
        .rejections
        .iter()
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "'m' here lacks vision, which the request needs",
            "context window of 2048 tokens is smaller than the 3000 the request needs (input + estimated output)"
        ]
    );
}

fn nexus(args: &[&str]) -> (String, i32) {
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8(output.stdout).unwrap(),
        output.status.code().unwrap(),
    )
}

#[test]
fn nexus_route_shows_privacy_and_tier_rejections() {
    let dir = std::env::temp_dir().join(format!("nexus-privacy-tier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fleet.toml");
    let mut config = mixed_fleet();
    config.push_str(&backend("small", Some("local"), "gpt-4-turbo", 2));
    config.push_str(RESTRICTED);
    config.push_str("min_tier = 3\n");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();

    let (json, code) = nexus(&[
        "route",
        "--config",
        path,
        "--model",
        "gpt-4-turbo",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let stages: Vec<(&str, &str)> = json["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["backend"].as_str().unwrap(),
                r["reconciler"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("openai", "privacy"),
            ("mystery", "privacy"),
            ("small", "tier")
        ]
    );

    let (text, code) = nexus(&["route", "--config", path, "--model", "gpt-4-turbo"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("  by privacy (2):\n    openai: zone cloud"),
        "{text}"
    );
    assert!(
        text.contains("  by tier (1):\n    small: tier 2, policy 'gpt-4-*' (#0) requires tier 3"),
        "{text}"
    );

    let (text, _) = nexus(&[
        "route",
        "--config",
        path,
        "--model",
        "gpt-4-turbo",
        "--flexible",
    ]);
    assert!(
        text.contains("by tier (1)"),
        "flexible still strict when tier 3 exists: {text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
