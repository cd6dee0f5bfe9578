//! The pipeline's own Rejects, worded by the router: their fix names the config's
//! tables (`[routing.aliases]`, `[routing.on_error]`), where core's defaults name the
//! pipeline builder's calls.
#![allow(clippy::unwrap_used)]

mod common;

use common::{backend, fleet};
use nexus_core::{
    registry::{BuildContext, BuildError},
    stage::ReconcileError,
    Reconciler, Request, RoutingDecision, RoutingIntent,
};
use nexus_router::{Router, RouterBuilder};

fn test_fleet() -> String {
    fleet([backend("gpu-box", "http://127.0.0.1:1").serves("llama3:70b")])
}

/// A stage that always fails (fail-closed by default).
#[derive(Debug)]
struct Broken;

impl Reconciler for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn reconcile(&self, _intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        Err(ReconcileError::unresolvable("the map is not loaded"))
    }
}

fn fix_of(router: &Router, model: &str) -> String {
    match router.route(&Request::new(model)).kind() {
        RoutingDecision::Reject { fix: Some(fix), .. } => fix.suggested_action.clone(),
        other => panic!("expected a Reject with a fix, got {other:?}"),
    }
}

#[test]
fn an_unknown_name_is_fixed_in_routing_aliases() {
    let router = Router::from_toml("fleet.toml", &test_fleet()).unwrap();
    assert_eq!(
        fix_of(&router, "llama3:70"),
        "did you mean 'llama3:70b'? add a backend that serves 'llama3:70', or an alias in [routing.aliases]"
    );
}

#[test]
fn a_failing_stage_is_fixed_in_routing_on_error() {
    let config = format!(
        "{fleet}\n[routing]\npipeline = [\"analyzer\", \"broken\", \"scheduler\"]\n",
        fleet = test_fleet()
    );
    let router = RouterBuilder::new()
        .with_reconciler("broken", |_: &BuildContext<'_>| {
            Ok::<_, BuildError>(Box::new(Broken) as Box<dyn Reconciler>)
        })
        .unwrap()
        .load_str("broken.toml", &config)
        .unwrap();
    let decision = router.route(&Request::new("llama3:70b"));
    let rejections = decision.rejections();
    assert_eq!(rejections[0].reconciler, "broken");
    assert_eq!(
        &*rejections[0].suggested_action,
        "fix what the error names, or set [routing.on_error] broken = \"fail_open\" to skip the stage when it fails"
    );
    assert_eq!(
        fix_of(&router, "llama3:70b"),
        "fix what the error names, or set [routing.on_error] broken = \"fail_open\" to skip the stage when it fails"
    );
}
