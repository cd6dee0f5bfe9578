//! Properties over random fleets (zones including missing ones), random policies,
//! random alias and fallback graphs and random requests:
//! - a restricted request never reaches a cloud or zone-less backend, as a route or as
//!   a queue's fallback;
//! - strict tiers never route below the combined `min_tier`, and flexible ones never
//!   do either when a strict request would route;
//! - the decision and the final candidates do not depend on the order of the privacy,
//!   budget, tier and quality stages (with random month-to-date spend and random
//!   failure histories, so that budget and quality exclude and weigh too).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use nexus_budget::{BudgetReconciler, BudgetSettings};
use nexus_core::{
    analyzer::RequestAnalyzer,
    clock::FakeClock,
    fleet::{BackendId, BackendStatus},
    pipeline::{Features, TierMode},
    policy::{Constraints, PolicySet, Privacy, TrafficPolicy},
    BackendSpec, Fleet, ModelSpec, Pipeline, Reconciler, Request, RoutingDecision, Zone,
};
use nexus_privacy::PrivacyReconciler;
use nexus_quality::{QualityReconciler, QualitySettings};
use nexus_scheduler::Scheduler;
use nexus_tier::TierReconciler;
use proptest::prelude::*;

const MODELS: [&str; 4] = ["m0", "m1", "m2", "m3"];
const PATTERNS: [&str; 8] = ["*", "m*", "m1", "a*", "a0", "*1", "?2", "[am]3"];

#[derive(Debug, Clone)]
struct Case {
    backends: Vec<(Option<Zone>, u8, u8, bool, u8, u8)>,
    policies: Vec<(usize, bool, u8, bool)>,
    aliases: Vec<(usize, usize)>,
    fallbacks: Vec<(usize, Vec<usize>)>,
    requested: usize,
    features: u8,
    flexible: bool,
    input: u32,
    seed: u64,
}

fn zone() -> impl Strategy<Value = Option<Zone>> {
    prop_oneof![
        Just(None),
        Just(Some(Zone::Local)),
        Just(Some(Zone::Private)),
        Just(Some(Zone::Cloud)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        // zone, models served (bits), tier, features (vision), status, load
        prop::collection::vec(
            (zone(), 1u8..16, 0u8..5, any::<bool>(), 0u8..4, 0u8..3),
            1..12,
        ),
        prop::collection::vec(
            (
                0..PATTERNS.len(),
                any::<bool>(),
                0u8..5,
                prop::bool::weighted(0.8),
            ),
            0..4,
        ),
        // alias i -> target t: targets 0..4 are models, 4.. are aliases a(t-4)
        prop::collection::vec((0usize..3, 0usize..7), 0..3),
        prop::collection::vec((0usize..4, prop::collection::vec(0usize..6, 0..3)), 0..3),
        0usize..7,
        0u8..8,
        any::<bool>(),
        0u32..12_000,
        any::<u64>(),
    )
        .prop_map(
            |(
                backends,
                policies,
                aliases,
                fallbacks,
                requested,
                features,
                flexible,
                input,
                seed,
            )| Case {
                backends,
                policies,
                aliases,
                fallbacks,
                requested,
                features,
                flexible,
                input,
                seed,
            },
        )
}

/// The name of target `t`: a model for 0..4, alias `a{t-4}` above.
fn name(t: usize) -> String {
    if t < MODELS.len() {
        MODELS[t].to_owned()
    } else {
        format!("a{}", t - MODELS.len())
    }
}

struct Built {
    fleet: Arc<Fleet>,
    policies: Arc<PolicySet>,
    aliases: BTreeMap<String, String>,
    fallbacks: BTreeMap<String, Vec<String>>,
    clock: Arc<FakeClock>,
}

fn build(case: &Case) -> Option<Built> {
    let specs: Vec<BackendSpec> = case
        .backends
        .iter()
        .enumerate()
        .map(|(i, &(zone, models, tier, vision, status, _))| {
            let mut spec = BackendSpec::new(format!("b{i}"), "http://127.0.0.1:1")
                .with_tier(tier)
                .with_max_concurrency(2)
                .with_status(match status {
                    0 => BackendStatus::Loading,
                    1 => BackendStatus::Unhealthy,
                    _ => BackendStatus::Healthy,
                });
            spec.zone = zone;
            // Cloud and zone-less backends charge, more for higher tiers.
            let price = if zone.is_none() || zone == Some(Zone::Cloud) {
                1.0 + f64::from(tier)
            } else {
                0.0
            };
            for (bit, model) in MODELS.iter().enumerate() {
                if models & (1 << bit) != 0 {
                    spec = spec.with_model(
                        ModelSpec::new(*model)
                            .with_context_window(8192)
                            .with_features(Features::from_flags(vision, true, bit % 2 == 0))
                            .with_prices(price, 2.0 * price),
                    );
                }
            }
            spec
        })
        .collect();
    let fleet = Arc::new(Fleet::new(specs).ok()?);
    for (i, &(.., load)) in case.backends.iter().enumerate() {
        for _ in 0..load {
            fleet.backends()[i].live().begin_request();
        }
    }
    let policies = PolicySet::new(
        case.policies
            .iter()
            .map(|&(pattern, restricted, min_tier, fallback)| {
                let mut p = TrafficPolicy::new(PATTERNS[pattern]).fallback_allowed(fallback);
                if restricted {
                    p = p.privacy(Privacy::Restricted);
                }
                if min_tier > 0 {
                    p = p.min_tier(min_tier);
                }
                p
            })
            .collect(),
    )
    .ok()?;
    let aliases = case
        .aliases
        .iter()
        .map(|&(a, t)| (format!("a{a}"), name(t)))
        .collect();
    let fallbacks = case
        .fallbacks
        .iter()
        .map(|(m, list)| {
            (
                MODELS[*m].to_owned(),
                list.iter().map(|&t| name(t)).collect(),
            )
        })
        .collect();
    Some(Built {
        fleet,
        policies: Arc::new(policies),
        aliases,
        fallbacks,
        clock: Arc::new(FakeClock::at_secs(1_800_000_000)),
    })
}

fn pipeline(built: &Built, stages: Vec<Box<dyn Reconciler>>, seed: u64) -> Option<Pipeline> {
    let mut builder = Pipeline::builder(Arc::clone(&built.fleet))
        .clock(built.clock.clone())
        .policies(Arc::clone(&built.policies))
        .aliases(built.aliases.clone())
        .fallbacks(built.fallbacks.clone())
        .stage(RequestAnalyzer);
    for stage in stages {
        builder = builder.boxed_stage(stage, None);
    }
    builder.selector(Scheduler::with_seed(seed)).build().ok()
}

/// The constraints of the requested name and its alias chain, computed here from the
/// policies and the alias map, independently of the pipeline's route tables.
fn requested_constraints(built: &Built, requested: &str) -> Constraints {
    let mut constraints = Constraints::NONE;
    let mut current = requested.to_owned();
    for _ in 0..4 {
        built.policies.tighten_for(&mut constraints, &current);
        match built.aliases.get(&current) {
            Some(next) => current = next.clone(),
            None => break,
        }
    }
    constraints
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn privacy_and_strict_tiers_hold_and_stage_order_does_not_matter(
        case in case(),
        spent_percent in 0u32..130,
        failures in prop::collection::vec((0usize..12, 1u32..12), 0..4),
    ) {
        let Some(built) = build(&case) else { return Ok(()) };
        // A 5-cent budget, so that request costs (up to 12k tokens at up to $5 and $10
        // per million) meet it; spend anywhere from none to past the limit.
        let budget = Arc::new(
            BudgetReconciler::new(Arc::clone(&built.fleet), BudgetSettings::new(0.05), built.clock.clone())
                .unwrap(),
        );
        budget.ledger().set_month_to_date(0.05 * f64::from(spent_percent) / 100.0);
        let quality = Arc::new(
            QualityReconciler::new(&built.fleet, QualitySettings::default(), built.clock.clone()).unwrap(),
        );
        for (backend, count) in &failures {
            if *backend < built.fleet.len() {
                for _ in 0..*count {
                    quality.tracker().record(BackendId::new(*backend as u32), false, Duration::from_millis(50), None);
                }
            }
        }
        // The stages in the default pipeline's order, and in an order shuffled by the case's seed.
        let stages = |order: &[usize]| -> Vec<Box<dyn Reconciler>> {
            order
                .iter()
                .map(|&i| -> Box<dyn Reconciler> {
                    match i {
                        0 => Box::new(PrivacyReconciler::new(&built.fleet)),
                        1 => Box::new(Arc::clone(&budget)),
                        2 => Box::new(TierReconciler),
                        _ => Box::new(Arc::clone(&quality)),
                    }
                })
                .collect()
        };
        let mut shuffled = [0usize, 1, 2, 3];
        let mut state = case.seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        // Invalid alias graphs (too long, cycles) fail at build time; nothing to route.
        let Some(forward) = pipeline(&built, stages(&[0, 1, 2, 3]), case.seed) else { return Ok(()) };
        let backward = pipeline(&built, stages(&shuffled), case.seed).unwrap();

        let requested = name(case.requested);
        let mode = if case.flexible { TierMode::Flexible } else { TierMode::Strict };
        let request = Request::new(&requested)
            .input_tokens(case.input)
            .needs(Features::from_bits(case.features))
            .tier_mode(mode);
        // Both pipelines share the fleet's live state: withdraw each route before the
        // next decision so that both see the same load.
        let mut a = forward.decide(&request);
        if let Some(guard) = a.take_guard() {
            guard.cancel();
        }
        let mut b = backward.decide(&request);
        if let Some(guard) = b.take_guard() {
            guard.cancel();
        }

        let summary = |d: &nexus_core::pipeline::Decision<&Pipeline>| {
            let mut candidates: Vec<String> =
                d.scored_candidates().iter().map(|(b, _)| b.name().to_owned()).collect();
            candidates.sort();
            (d.kind().as_str(), d.backend().map(|b| b.name().to_owned()), d.model().map(str::to_owned), candidates)
        };
        prop_assert_eq!(summary(&a), summary(&b));

        let constraints = requested_constraints(&built, &requested);
        let fleet = &built.fleet;
        let strict = !case.flexible || !constraints.fallback_allowed;
        match a.kind() {
            RoutingDecision::Route { backend, model, .. } => {
                let backend = fleet.backend(*backend);
                if constraints.privacy == Privacy::Restricted {
                    prop_assert_ne!(backend.zone(), Zone::Cloud, "{} served a restricted request", backend.name());
                }
                let tier = fleet.model(*model).offer(backend.id()).unwrap().tier;
                if strict {
                    prop_assert!(tier >= constraints.min_tier, "tier {} < {}", tier, constraints.min_tier);
                }
                prop_assert_ne!(backend.live().status(), BackendStatus::Unhealthy);
            }
            RoutingDecision::Queue { backend, fallback_backend, .. } => {
                if constraints.privacy == Privacy::Restricted {
                    prop_assert_ne!(fleet.backend(*backend).zone(), Zone::Cloud);
                    if let Some(fallback) = fallback_backend {
                        prop_assert_ne!(fleet.backend(*fallback).zone(), Zone::Cloud, "cloud fallback offered");
                    }
                }
            }
            RoutingDecision::Reject { .. } => {}
        }

        // Flexible never does worse than strict: when strict routes, flexible routes
        // too, at or above the tier (a fallback that meets it beats a downgrade).
        if case.flexible {
            let mut strict_decision = forward.decide(&Request::new(&requested)
                .input_tokens(case.input)
                .needs(Features::from_bits(case.features))
                .tier_mode(TierMode::Strict));
            if let Some(guard) = strict_decision.take_guard() {
                guard.cancel();
            }
            if let RoutingDecision::Route { model: strict_model, .. } = strict_decision.kind() {
                let RoutingDecision::Route { backend, model, .. } = a.kind() else {
                    return Err(TestCaseError::fail(format!(
                        "strict routes ({}), flexible decided {}",
                        fleet.model(*strict_model).name(),
                        a.kind().as_str()
                    )));
                };
                let tier = fleet.model(*model).offer(*backend).unwrap().tier;
                prop_assert!(
                    tier >= constraints.min_tier,
                    "flexible served tier {} < {} where strict routes",
                    tier,
                    constraints.min_tier
                );
                prop_assert!(a.warnings().iter().all(|w| !w.starts_with("served by tier")));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        ..ProptestConfig::default()
    })]

    /// The case the broad property above rarely draws: `m0` and its fallbacks `m1`,
    /// `m2` on backends of random tiers and health, a random `min_tier` on `m0`.
    /// Whenever strict routes, flexible routes at or above the tier, without a
    /// downgrade warning; and flexible rejects only what strict rejects too.
    #[test]
    fn flexible_never_routes_below_the_tier_when_strict_would_route(
        // models served (bits over m0, m1, m2), tier, healthy
        backends in prop::collection::vec((1u8..8, 0u8..5, prop::bool::weighted(0.8)), 1..6),
        min_tier in 1u8..5,
        seed in any::<u64>(),
    ) {
        let specs: Vec<BackendSpec> = backends
            .iter()
            .enumerate()
            .map(|(i, &(models, tier, healthy))| {
                let mut spec = BackendSpec::new(format!("b{i}"), "http://127.0.0.1:1")
                    .with_zone(Zone::Local)
                    .with_tier(tier)
                    .with_status(if healthy { BackendStatus::Healthy } else { BackendStatus::Unhealthy });
                for (bit, model) in MODELS[..3].iter().enumerate() {
                    if models & (1 << bit) != 0 {
                        spec = spec.with_model(ModelSpec::new(*model));
                    }
                }
                spec
            })
            .collect();
        let fleet = Arc::new(Fleet::new(specs).unwrap());
        let policies = Arc::new(PolicySet::new(vec![TrafficPolicy::new("m0").min_tier(min_tier)]).unwrap());
        let Ok(pipeline) = Pipeline::builder(Arc::clone(&fleet))
            .policies(policies)
            .fallback("m0", ["m1", "m2"])
            .stage(RequestAnalyzer)
            .stage(TierReconciler)
            .selector(Scheduler::with_seed(seed))
            .build()
        else {
            // m0 served by no backend: nothing to route.
            return Ok(());
        };
        let decide = |mode| {
            let mut decision = pipeline.decide(&Request::new("m0").tier_mode(mode));
            if let Some(guard) = decision.take_guard() {
                guard.cancel();
            }
            decision
        };
        let strict = decide(TierMode::Strict);
        let flexible = decide(TierMode::Flexible);
        match (strict.kind(), flexible.kind()) {
            (RoutingDecision::Route { .. }, RoutingDecision::Route { backend, model, .. }) => {
                let tier = fleet.model(*model).offer(*backend).unwrap().tier;
                prop_assert!(tier >= min_tier, "flexible served tier {} < {} where strict routes", tier, min_tier);
                prop_assert!(flexible.warnings().is_empty(), "{:?}", flexible.warnings());
            }
            (RoutingDecision::Route { .. }, other) => {
                prop_assert!(false, "strict routes, flexible decided {}", other.as_str());
            }
            (_, RoutingDecision::Reject { .. }) => {
                prop_assert_eq!(strict.kind().as_str(), "reject", "flexible rejects what strict does not");
            }
            _ => {}
        }
    }
}
