//! Property: no stage ever re-admits a backend that another stage excluded, whatever
//! the fleet, the stages and their order; and the final candidate set of pure
//! exclusion stages does not depend on their order.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use nexus_core::{
    analyzer::RequestAnalyzer,
    fleet::{BackendId, BackendSet, BackendStatus, ModelId},
    stage::{Reason, ReconcileError},
    BackendSpec, Fleet, ModelSpec, Pipeline, Reconciler, Request, RoutingDecision, RoutingIntent,
};
use proptest::prelude::*;

const MODELS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Excludes the backends whose bit is set in `mask`, and scales others' weights.
#[derive(Debug)]
struct MaskStage {
    mask: u64,
    weight: f64,
    fail: bool,
}

impl Reconciler for MaskStage {
    fn name(&self) -> &'static str {
        "mask"
    }
    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        for &(b, _) in intent.model_entry().offers() {
            if self.mask & (1 << (b.index() % 64)) != 0 {
                intent.exclude(b, Reason::new(1));
            } else {
                intent.scale_weight(b, self.weight);
            }
        }
        if self.fail {
            return Err(ReconcileError::retryable("injected failure"));
        }
        Ok(())
    }
    fn default_error_policy(&self) -> nexus_core::stage::ErrorPolicy {
        nexus_core::stage::ErrorPolicy::FailOpen
    }
}

/// Records the candidates it sees and fails the test if they ever grow within one
/// model's run.
#[derive(Debug, Default)]
struct Spy {
    seen: Mutex<Option<(ModelId, BackendSet)>>,
    violations: Mutex<Vec<String>>,
}

impl Reconciler for Spy {
    fn name(&self) -> &'static str {
        "spy"
    }
    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        if intent.is_explaining() {
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap();
        let now = intent.candidates().clone();
        if let Some((model, before)) = seen.as_ref() {
            if *model == intent.model() && !now.is_subset(before) {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("{before:?} grew to {now:?}"));
            }
        }
        *seen = Some((intent.model(), now));
        Ok(())
    }
}

fn fleet_strategy() -> impl Strategy<Value = Vec<BackendSpec>> {
    prop::collection::vec((1u8..8, 0u8..3, 1u32..4), 1..40).prop_map(|backends| {
        backends
            .into_iter()
            .enumerate()
            .map(|(i, (models, status, priority))| {
                let mut spec = BackendSpec::new(format!("b{i}"), "http://127.0.0.1:1")
                    .with_priority(priority)
                    .with_status(match status {
                        0 => BackendStatus::Healthy,
                        1 => BackendStatus::Loading,
                        _ => BackendStatus::Unhealthy,
                    });
                for (bit, name) in MODELS.iter().enumerate() {
                    if models & (1 << bit) != 0 {
                        spec = spec.with_model(ModelSpec::new(*name));
                    }
                }
                spec
            })
            .collect()
    })
}

fn stages_strategy() -> impl Strategy<Value = Vec<(u64, f64, bool)>> {
    prop::collection::vec(
        (any::<u64>(), 0.25f64..4.0, prop::bool::weighted(0.1)),
        0..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_stage_readmits_and_the_route_was_never_excluded(
        specs in fleet_strategy(),
        stages in stages_strategy(),
        model in 0usize..3,
        fallback in any::<bool>(),
    ) {
        let fleet = Arc::new(Fleet::new(specs).unwrap());
        let spy = Arc::new(Spy::default());
        let mut builder = Pipeline::builder(Arc::clone(&fleet))
            .stage(RequestAnalyzer)
            .stage(Arc::clone(&spy));
        for (mask, weight, fail) in &stages {
            builder = builder
                .stage(MaskStage { mask: *mask, weight: *weight, fail: *fail })
                .stage(Arc::clone(&spy));
        }
        if fallback && fleet.model_id(MODELS[(model + 1) % 3]).is_some() {
            builder = builder.fallback(MODELS[model], [MODELS[(model + 1) % 3]]);
        }
        let Ok(pipeline) = builder.build() else {
            // The requested model has no server, so it cannot have fallbacks.
            return Ok(());
        };
        let decision = pipeline.decide(&Request::new(MODELS[model]));
        let violations = spy.violations.lock().unwrap().clone();
        prop_assert!(violations.is_empty(), "{violations:?}");

        let rejections = decision.rejections();
        if let RoutingDecision::Route { backend, model, .. } = decision.kind() {
            let name = fleet.backend(*backend).name();
            let model = fleet.model(*model).name();
            prop_assert!(
                !rejections.iter().any(|r| &*r.backend == name && &*r.model == model),
                "routed to {name} for {model}, which was excluded: {rejections:?}"
            );
            prop_assert_ne!(fleet.backend(*backend).live().status(), BackendStatus::Unhealthy);
        }
    }

    #[test]
    fn exclusion_stages_commute(
        specs in fleet_strategy(),
        stages in stages_strategy(),
        seed in any::<u64>(),
    ) {
        let fleet = Arc::new(Fleet::new(specs).unwrap());
        let Some(model) = fleet.model_id("alpha") else { return Ok(()) };
        let run = |order: &[usize]| {
            let mut scratch = nexus_core::stage::Scratch::default();
            let policies = nexus_core::policy::PolicySet::default();
            let mut intent = RoutingIntent::new(
                &fleet,
                &policies,
                &mut scratch,
                model,
                Request::new("alpha").requirements(),
                nexus_core::policy::Constraints::NONE,
            );
            for &i in order {
                let (mask, weight, _) = stages[i];
                MaskStage { mask, weight, fail: false }.reconcile(&mut intent).unwrap();
            }
            let weights: Vec<u64> = intent
                .candidates()
                .iter()
                .map(|b: BackendId| (intent.weight(b) * 1e6).round() as u64)
                .collect();
            (intent.candidates().clone(), weights)
        };
        let forward: Vec<usize> = (0..stages.len()).collect();
        let mut shuffled = forward.clone();
        // A seeded Fisher-Yates shuffle.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(run(&forward), run(&shuffled));
    }
}
