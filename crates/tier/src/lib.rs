//! # nexus-tier
//!
//! The `tier` stage: stops silent downgrades to weaker models, and keeps requests off
//! backends that cannot serve them.
//!
//! - **Capability tier.** A backend's tier for a model is the model's `tier`, else the
//!   backend's, else 0. With a `min_tier` in the request's combined constraints:
//!   - *strict* (the default) excludes every candidate below it;
//!   - *flexible* ([`TierMode::Flexible`](nexus_core::pipeline::TierMode), `--flexible`, or the
//!     `X-Nexus-Flexible` header via [`TierMode::from_headers`](nexus_core::pipeline::TierMode::from_headers)):
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
    pipeline::{Features, TierMode},
    registry::{BuildContext, BuildError},
    stage::{ExplainContext, Explanation, Reason, ReconcileError, StageReason, Verdict},
    Reconciler, RoutingIntent,
};
use serde::Deserialize;

/// Why the tier stage excluded a backend (or, for [`Downgraded`](Self::Downgraded),
/// what it warned about). `policy` is the traffic policy that set `min_tier` (its
/// index), or `None` when the request itself asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierReason {
    /// Below the required tier.
    BelowTier {
        /// The backend's tier for the model.
        tier: u8,
        /// The tier required.
        required: u8,
        /// Who required it.
        policy: Option<usize>,
    },
    /// Flexible mode: below the best tier available.
    BelowBestAvailable {
        /// The backend's tier for the model.
        tier: u8,
        /// The best tier among the candidates.
        best: u8,
        /// Who required the (unavailable) higher tier.
        policy: Option<usize>,
    },
    /// The model here lacks features the request needs.
    MissingFeatures {
        /// The features it lacks.
        missing: Features,
    },
    /// The context window is smaller than the request needs.
    ContextTooSmall {
        /// Tokens the request needs (input + estimated output).
        needed: u64,
        /// The model's context window here.
        window: u32,
    },
    /// A warning, not an exclusion: served below the required tier (flexible mode).
    Downgraded {
        /// The tier served.
        served: u8,
        /// The tier required.
        required: u8,
        /// Who required it.
        policy: Option<usize>,
    },
}

// Compact codes: `values = [tier, required / best, policy or -1]`,
// `[missing feature bits, 0, 0]`, `[tokens needed, window, 0]`.
const BELOW_TIER: u16 = 1;
const BELOW_BEST_AVAILABLE: u16 = 2;
const MISSING_FEATURES: u16 = 3;
const CONTEXT_TOO_SMALL: u16 = 4;
const DOWNGRADED: u16 = 10;

impl From<TierReason> for Reason {
    #[inline]
    fn from(reason: TierReason) -> Reason {
        let tiers = |code, a: u8, b: u8, policy| {
            Reason::with(
                code,
                [f64::from(a), f64::from(b), Reason::policy_value(policy)],
            )
        };
        match reason {
            TierReason::BelowTier {
                tier,
                required,
                policy,
            } => tiers(BELOW_TIER, tier, required, policy),
            TierReason::BelowBestAvailable { tier, best, policy } => {
                tiers(BELOW_BEST_AVAILABLE, tier, best, policy)
            }
            TierReason::MissingFeatures { missing } => {
                Reason::with(MISSING_FEATURES, [f64::from(missing.bits()), 0.0, 0.0])
            }
            TierReason::ContextTooSmall { needed, window } => {
                Reason::with(CONTEXT_TOO_SMALL, [needed as f64, f64::from(window), 0.0])
            }
            TierReason::Downgraded {
                served,
                required,
                policy,
            } => tiers(DOWNGRADED, served, required, policy),
        }
    }
}

impl StageReason for TierReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        let [a, b, c] = reason.values();
        let policy = Reason::policy_index(c);
        Some(match reason.code() {
            BELOW_TIER => TierReason::BelowTier {
                tier: a as u8,
                required: b as u8,
                policy,
            },
            BELOW_BEST_AVAILABLE => TierReason::BelowBestAvailable {
                tier: a as u8,
                best: b as u8,
                policy,
            },
            MISSING_FEATURES => TierReason::MissingFeatures {
                missing: Features::from_bits(a as u8),
            },
            CONTEXT_TOO_SMALL => TierReason::ContextTooSmall {
                needed: a as u64,
                window: b as u32,
            },
            DOWNGRADED => TierReason::Downgraded {
                served: a as u8,
                required: b as u8,
                policy,
            },
            _ => return None,
        })
    }
}

/// The `[routing.tier]` settings: none yet; the table must be empty if present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {}

/// The `tier` stage; see the crate docs.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::pipeline::TierMode;
/// use nexus_core::policy::{PolicySet, TrafficPolicy};
/// use nexus_core::{BackendSpec, Fleet, ModelSpec, Pipeline, Request};
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
        let policy = intent.constraints().min_tier_policy;
        intent.visit_candidates(|candidate| {
            let offer = candidate.offer();
            let missing = needed.missing_from(offer.features);
            if !missing.is_empty() {
                Verdict::Exclude(TierReason::MissingFeatures { missing }.into())
            } else if let Some(window) = offer.context_window.filter(|w| total > u64::from(*w)) {
                Verdict::Exclude(
                    TierReason::ContextTooSmall {
                        needed: total,
                        window,
                    }
                    .into(),
                )
            } else if strict && offer.tier < min_tier {
                Verdict::Exclude(
                    TierReason::BelowTier {
                        tier: offer.tier,
                        required: min_tier,
                        policy,
                    }
                    .into(),
                )
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
        let policy = intent.constraints().min_tier_policy;
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
        for &(backend, offer) in offers {
            if offer.tier < floor {
                let tier = offer.tier;
                let reason = if best >= min_tier {
                    TierReason::BelowTier {
                        tier,
                        required: floor,
                        policy,
                    }
                } else {
                    TierReason::BelowBestAvailable {
                        tier,
                        best: floor,
                        policy,
                    }
                };
                intent.exclude(backend, reason.into());
            }
        }
        if best < min_tier {
            intent.warn(
                None,
                TierReason::Downgraded {
                    served: best,
                    required: min_tier,
                    policy,
                }
                .into(),
            );
        }
        Ok(())
    }

    fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        let model = ctx.fleet.model(ctx.model).name();
        let Some(typed) = TierReason::from_reason(*reason) else {
            return Explanation::new(
                format!("excluded by tier (code {})", reason.code()),
                "see nexus-tier's documentation",
            );
        };
        match typed {
            TierReason::BelowTier {
                tier: a,
                required: b,
                policy,
            } => {
                let policy = ctx.policy_label(policy);
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
            TierReason::BelowBestAvailable {
                tier: a,
                best: b,
                policy,
            } => Explanation::new(
                format!(
                    "tier {a}, below tier {b}, the best available ({} asks for {})",
                    ctx.policy_label(policy),
                    ctx.constraints.min_tier
                ),
                "none needed: flexible mode keeps only the best tier available",
            ),
            TierReason::MissingFeatures { missing } => {
                Explanation::new(
                    format!("'{model}' here lacks {missing}, which the request needs"),
                    format!("declare {missing} on this model if it supports it, or serve the request from a model that does"),
                )
            }
            TierReason::ContextTooSmall { needed, window } => Explanation::new(
                format!("context window of {window} tokens is smaller than the {needed} the request needs (input + estimated output)"),
                "send fewer tokens, lower max output tokens, or serve from a model with a larger context_window",
            ),
            TierReason::Downgraded {
                served,
                required,
                policy,
            } => Explanation::new(
                format!("served by tier {served}, {} asks for {required}", ctx.policy_label(policy)),
                format!("add a backend of tier {required} or more for '{model}'"),
            ),
        }
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reasons_convert_to_the_compact_form_and_back() {
        let all = [
            TierReason::BelowTier {
                tier: 2,
                required: 4,
                policy: Some(3),
            },
            TierReason::BelowTier {
                tier: 0,
                required: 1,
                policy: None,
            },
            TierReason::BelowBestAvailable {
                tier: 1,
                best: 3,
                policy: Some(0),
            },
            TierReason::MissingFeatures {
                missing: Features::TOOLS,
            },
            TierReason::ContextTooSmall {
                needed: 200_000,
                window: 8_192,
            },
            TierReason::Downgraded {
                served: 3,
                required: 5,
                policy: None,
            },
        ];
        for typed in all {
            let compact: Reason = typed.into();
            assert_eq!(TierReason::from_reason(compact), Some(typed), "{compact:?}");
        }
        assert_eq!(TierReason::from_reason(Reason::new(99)), None);
    }
}
