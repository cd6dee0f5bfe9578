//! # nexus-tier
//!
//! The `tier` stage: stops silent downgrades to weaker models, and keeps requests off
//! backends that cannot serve them.
//!
//! - **Capability tier.** A backend's tier for a model is the model's `tier`, else the
//!   backend's, else 0. With a `min_tier` in the request's combined constraints:
//!   - *strict* (the default) excludes every candidate below it;
//!   - *flexible* ([`TierMode::Flexible`](nexus_core::TierMode), `--flexible`, or the
//!     `X-Nexus-Flexible` header via [`TierMode::from_headers`](nexus_core::TierMode::from_headers)):
//!     when no candidate meets it, keeps the highest tier that exists below it and adds
//!     a warning ("served by tier 2, policy 'gpt-4*' (#0) asks for 3"); when some
//!     candidates meet it, behaves as strict. The pipeline first decides a flexible
//!     request strictly over the whole plan (requested model, then fallbacks) and asks
//!     this stage to be flexible only if that fails, so a fallback that meets the tier
//!     is preferred to downgrading the requested model;
//!   - `fallback_allowed = false` in any matched policy forces strict.
//! - **Features.** A request that needs vision, tools or JSON mode excludes backends
//!   whose model lacks them.
//! - **Context window.** A request whose input plus estimated output tokens exceed the
//!   model's `context_window` excludes that backend.
//!
//! Strict checks, features and context windows depend only on the backend and the
//! request, so they run in [`reconcile`](Reconciler::reconcile). Flexible mode depends on
//! which candidates the other stages left, so it runs in
//! [`refine`](Reconciler::refine), after every stage: the outcome is the same wherever
//! the stage sits in the pipeline.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use nexus_core::{
    BuildContext, BuildError, ExplainContext, Explanation, Features, Reason, ReconcileError,
    Reconciler, RoutingIntent, TierMode, Verdict,
};
use serde::Deserialize;

/// Reason code: below the required tier. `values = [tier, required, policy or -1]`.
pub const BELOW_TIER: u16 = 1;
/// Reason code (flexible mode): below the best tier available.
/// `values = [tier, best available, policy or -1]`.
pub const BELOW_BEST_AVAILABLE: u16 = 2;
/// Reason code: the model lacks needed features. `values = [missing feature bits, 0, 0]`.
pub const MISSING_FEATURES: u16 = 3;
/// Reason code: the context window is too small. `values = [tokens needed, window, 0]`.
pub const CONTEXT_TOO_SMALL: u16 = 4;
/// Warning code: served below the required tier. `values = [tier, required, policy or -1]`.
pub const DOWNGRADED: u16 = 10;

/// The `[routing.tier]` settings: none yet; the table must be empty if present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {}

/// The `tier` stage; see the crate docs.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::*;
/// use nexus_tier::TierReconciler;
///
/// let fleet = Arc::new(Fleet::new(vec![
///     BackendSpec::new("small", "http://127.0.0.1:1").with_model(ModelSpec::new("m").with_tier(2)),
/// ])?);
/// let policies = Arc::new(PolicySet::new(vec![TrafficPolicy::new("m").min_tier(3)])?);
/// let pipeline = Pipeline::builder(fleet).policies(policies).stage(TierReconciler).build()?;
///
/// let strict = pipeline.decide(&Request::new("m"));
/// assert_eq!(strict.kind().as_str(), "reject");
///
/// let flexible = pipeline.decide(&Request::new("m").tier_mode(TierMode::Flexible));
/// assert_eq!(flexible.backend().unwrap().name(), "small");
/// assert_eq!(flexible.warnings(), ["served by tier 2, policy 'm' (#0) asks for 3"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TierReconciler;

impl TierReconciler {
    /// Builds the stage from `[routing.tier]`; the factory registered as `"tier"`.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        let _: TierSettings = ctx.settings()?;
        Ok(Box::new(TierReconciler))
    }
}

/// Whether flexible mode applies: the request asks for it and every matched policy
/// allows fallbacks.
fn is_flexible(intent: &RoutingIntent<'_>) -> bool {
    intent.requirements().tier_mode == TierMode::Flexible && intent.constraints().fallback_allowed
}

impl Reconciler for TierReconciler {
    fn name(&self) -> &'static str {
        "tier"
    }

    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        let requirements = *intent.requirements();
        let needed = requirements.features;
        let total = requirements.total_tokens();
        let min_tier = intent.constraints().min_tier;
        let strict = min_tier > 0 && !is_flexible(intent);
        // When every server of the model passes every check, there is nothing to visit.
        let summary = intent.model_entry().summary();
        if summary.common_features.contains(needed)
            && summary
                .min_context_window
                .is_none_or(|w| total <= u64::from(w))
            && (!strict || summary.min_tier >= min_tier)
        {
            return Ok(());
        }
        let policy = Reason::policy_value(intent.constraints().min_tier_policy);
        intent.visit_candidates(|candidate| {
            let offer = candidate.offer();
            let missing = needed.missing_from(offer.features);
            if !missing.is_empty() {
                Verdict::Exclude(Reason::with(
                    MISSING_FEATURES,
                    [f64::from(missing.bits()), 0.0, 0.0],
                ))
            } else if let Some(window) = offer.context_window.filter(|w| total > u64::from(*w)) {
                Verdict::Exclude(Reason::with(
                    CONTEXT_TOO_SMALL,
                    [total as f64, f64::from(window), 0.0],
                ))
            } else if strict && offer.tier < min_tier {
                Verdict::Exclude(Reason::with(
                    BELOW_TIER,
                    [f64::from(offer.tier), f64::from(min_tier), policy],
                ))
            } else {
                Verdict::Keep
            }
        });
        Ok(())
    }

    fn refine(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        let min_tier = intent.constraints().min_tier;
        if min_tier == 0 || !is_flexible(intent) {
            return Ok(());
        }
        let policy = Reason::policy_value(intent.constraints().min_tier_policy);
        let offers = intent.model_entry().offers();
        let best = offers
            .iter()
            .filter(|(b, _)| intent.is_candidate(*b))
            .map(|(_, offer)| offer.tier)
            .max();
        let Some(best) = best else {
            return Ok(());
        };
        // Some candidates meet the tier: strict. None do: the best tier below it.
        let floor = best.min(min_tier);
        let code = if best >= min_tier {
            BELOW_TIER
        } else {
            BELOW_BEST_AVAILABLE
        };
        for &(backend, offer) in offers {
            if offer.tier < floor {
                intent.exclude(
                    backend,
                    Reason::with(code, [f64::from(offer.tier), f64::from(floor), policy]),
                );
            }
        }
        if best < min_tier {
            intent.warn(
                None,
                Reason::with(DOWNGRADED, [f64::from(best), f64::from(min_tier), policy]),
            );
        }
        Ok(())
    }

    fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        let [a, b, c] = reason.values();
        let model = ctx.fleet.model(ctx.model).name();
        match reason.code() {
            BELOW_TIER => {
                let policy = ctx.policy_label(Reason::policy_index(c));
                let flexible = if ctx.constraints.fallback_allowed {
                    ", ask for flexible tiers (--flexible, header X-Nexus-Flexible) to accept the best available"
                } else {
                    ""
                };
                Explanation::new(
                    format!("tier {a}, {policy} requires tier {b} or higher"),
                    format!("serve '{model}' from a backend of tier {b} or more{flexible}, or lower min_tier in {policy}"),
                )
            }
            BELOW_BEST_AVAILABLE => Explanation::new(
                format!(
                    "tier {a}, below tier {b}, the best available ({} asks for {})",
                    ctx.policy_label(Reason::policy_index(c)),
                    ctx.constraints.min_tier
                ),
                "none needed: flexible mode keeps only the best tier available",
            ),
            MISSING_FEATURES => {
                let missing = Features::from_bits(a as u8);
                Explanation::new(
                    format!("'{model}' here lacks {missing}, which the request needs"),
                    format!("declare {missing} on this model if it supports it, or serve the request from a model that does"),
                )
            }
            CONTEXT_TOO_SMALL => Explanation::new(
                format!("context window of {b} tokens is smaller than the {a} the request needs (input + estimated output)"),
                "send fewer tokens, lower max output tokens, or serve from a model with a larger context_window",
            ),
            DOWNGRADED => Explanation::new(
                format!("served by tier {a}, {} asks for {b}", ctx.policy_label(Reason::policy_index(c))),
                format!("add a backend of tier {b} or more for '{model}'"),
            ),
            code => Explanation::new(format!("excluded by tier (code {code})"), "see nexus-tier's documentation"),
        }
    }
}
