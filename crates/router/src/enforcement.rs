//! Whatever a config sets is enforced, or the config is refused at that key.
//!
//! A policy key or a `[routing.<kind>]` table only does something when the stage that
//! reads it runs. A pipeline that leaves that stage out (an explicit `[routing] pipeline`,
//! or a build without the stage's feature) would parse the key and ignore it: a
//! `privacy = "restricted"` policy would route to the cloud with no word said. So the
//! key is an error, at its line, with the two ways out.

use nexus_core::{
    policy::{Privacy, TrafficPolicy},
    registry::Registry,
};

use crate::config::{ConfigError, Seg, Source};

/// The policy keys and the stage that enforces each, for docs and tests.
///
/// `model_pattern` selects rather than constrains. `fallback_allowed = false` is enforced
/// when the pipeline is built (the fallbacks after a forbidding policy are dropped from
/// the route plan), whatever the stages; the tier stage also reads it, to refuse
/// flexible downgrades, which only exist with a `min_tier`, itself a tier key.
pub const POLICY_KEY_STAGES: [(&str, Option<&str>); 5] = [
    ("model_pattern", None),
    ("privacy", Some("privacy")),
    ("min_tier", Some("tier")),
    ("max_cost_per_request", Some("budget")),
    ("fallback_allowed", None),
];

/// The stage a policy key needs, and the key as written, when the policy sets it to
/// something that constrains.
fn demands(policy: &TrafficPolicy) -> [Option<(&'static str, &'static str, String)>; 3] {
    [
        (policy.privacy == Privacy::Restricted)
            .then(|| ("privacy", "privacy", "\"restricted\"".to_owned())),
        policy
            .min_tier
            .map(|tier| ("min_tier", "tier", tier.to_string())),
        policy
            .max_cost_per_request
            .map(|cap| ("max_cost_per_request", "budget", cap.to_string())),
    ]
}

/// How to get a stage the pipeline lacks, or drop what needs it.
pub(crate) fn way_out(registry: &Registry, stage: &str, drop: &str) -> String {
    if registry.contains(stage) {
        format!("add \"{stage}\" to [routing] pipeline, or remove {drop}")
    } else {
        format!(
            "this build has no '{stage}' stage (the `{stage}` feature of nexus-router): build with it, or remove {drop}"
        )
    }
}

/// Refuses every policy key and stage settings table whose stage is not in `kinds`.
pub(crate) fn check(
    source: &Source<'_>,
    registry: &Registry,
    kinds: &[String],
    policies: &[TrafficPolicy],
    stage_tables: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<(), ConfigError> {
    let runs = |stage: &str| kinds.iter().any(|k| k == stage);
    for (index, policy) in policies.iter().enumerate() {
        for (key, stage, value) in demands(policy).into_iter().flatten() {
            if runs(stage) {
                continue;
            }
            return Err(source.error(
                &[
                    Seg::Key("routing"),
                    Seg::Key("policies"),
                    Seg::Index(index),
                    Seg::Key(key),
                ],
                format!(
                    "policy {index} ('{}'): {key} = {value} needs the '{stage}' stage, which the pipeline leaves out, so it would be ignored",
                    policy.model_pattern
                ),
                Some(way_out(registry, stage, key)),
            ));
        }
    }
    for table in stage_tables {
        let kind = table.as_ref();
        if !runs(kind) {
            return Err(source.error(
                &[Seg::Key("routing"), Seg::Key(kind)],
                format!(
                    "[routing.{kind}] configures the '{kind}' stage, which the pipeline leaves out, so it would be ignored"
                ),
                Some(way_out(registry, kind, "the table")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_missing_from_the_build_says_which_feature_brings_it() {
        let text = "[[routing.policies]]\nmodel_pattern = \"m\"\nprivacy = \"restricted\"\n";
        let source = Source::new("f.toml", text);
        // Core's registry alone: no privacy stage compiled in.
        let err = check(
            &source,
            &Registry::new(),
            &["analyzer".to_owned()],
            &[TrafficPolicy::new("m").privacy(Privacy::Restricted)],
            std::iter::empty::<&str>(),
        )
        .unwrap_err();
        assert_eq!(err.position, Some((3, 1)));
        assert_eq!(
            err.help.as_deref(),
            Some("this build has no 'privacy' stage (the `privacy` feature of nexus-router): build with it, or remove privacy")
        );
    }
}
