//! What happens when a stage fails (fail-open, fail-closed), and stage timing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use nexus_core::{
    analyzer::RequestAnalyzer,
    stage::{ErrorPolicy, ReconcileError},
    BackendSpec, Fleet, ModelSpec, Pipeline, Reconciler, Request, RoutingDecision, RoutingIntent,
};

#[derive(Debug)]
struct Broken;

impl Reconciler for Broken {
    fn name(&self) -> &'static str {
        "geo"
    }
    fn reconcile(&self, _intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        Err(ReconcileError::retryable(
            "the region map is not loaded yet",
        ))
    }
}

fn pipeline(policy: Option<ErrorPolicy>) -> Pipeline {
    let fleet = Arc::new(
        Fleet::new(vec![
            BackendSpec::new("a", "http://127.0.0.1:1").with_model(ModelSpec::new("m")),
            BackendSpec::new("b", "http://127.0.0.1:2").with_model(ModelSpec::new("m")),
        ])
        .unwrap(),
    );
    Pipeline::builder(fleet)
        .stage(RequestAnalyzer)
        .boxed_stage(Box::new(Broken), policy)
        .build()
        .unwrap()
}

#[test]
fn fail_closed_is_the_default_and_rejects_naming_the_error() {
    let pipeline = pipeline(None);
    assert_eq!(pipeline.stages()[1].error_policy(), ErrorPolicy::FailClosed);
    let decision = pipeline.decide(&Request::new("m"));
    let RoutingDecision::Reject {
        rejections, fix, ..
    } = decision.kind()
    else {
        panic!("expected a reject");
    };
    assert_eq!(rejections.len(), 2);
    assert_eq!(rejections[0].reconciler, "geo");
    assert_eq!(
        &*rejections[0].reason,
        "stage 'geo' failed: the region map is not loaded yet"
    );
    assert_eq!(
        &*rejections[0].suggested_action,
        "fix what the error names, or give stage 'geo' the fail-open error policy to skip it when it fails"
    );
    assert_eq!(fix.as_ref().unwrap().reconciler, "geo");
}

#[test]
fn fail_open_skips_the_stage_with_a_warning() {
    let pipeline = pipeline(Some(ErrorPolicy::FailOpen));
    let decision = pipeline.decide(&Request::new("m"));
    assert!(matches!(decision.kind(), RoutingDecision::Route { .. }));
    assert_eq!(
        decision.warnings(),
        ["stage 'geo' failed: the region map is not loaded yet"]
    );
}

#[test]
fn stage_timing_counts_only_while_on() {
    let pipeline = pipeline(Some(ErrorPolicy::FailOpen));
    drop(pipeline.decide(&Request::new("m")));
    assert!(pipeline.stage_timings().iter().all(|t| t.calls == 0));
    pipeline.set_timing(true);
    for _ in 0..3 {
        drop(pipeline.decide(&Request::new("m")));
    }
    pipeline.set_timing(false);
    drop(pipeline.decide(&Request::new("m")));
    let timings = pipeline.stage_timings();
    assert_eq!(
        timings
            .iter()
            .map(|t| (t.name, t.calls))
            .collect::<Vec<_>>(),
        [("analyzer", 3), ("geo", 3)]
    );
    // The selector (the default one here) is timed apart from the stages.
    let selector = pipeline.selector_timing();
    assert_eq!((selector.name, selector.calls), ("heaviest", 3));
}
