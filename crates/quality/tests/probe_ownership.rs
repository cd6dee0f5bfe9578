//! The half-open probe belongs to the route that claimed it: a route decided before the
//! circuit opened, however it ends (cancelled, finished, dropped), neither releases nor
//! decides another request's probe, so there is never more than one probe at a time.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use nexus_core::{
    clock::FakeClock, fleet::BackendId, pipeline::RouteGuard, BackendSpec, Fleet, ModelSpec,
    Outcome, Pipeline, Request, Zone,
};
use nexus_quality::{Circuit, QualityReconciler, QualitySettings};
use nexus_scheduler::Scheduler;

const MS: Duration = Duration::from_millis(100);
const FLAKY: BackendId = BackendId::new(0);

struct Setup {
    clock: Arc<FakeClock>,
    quality: Arc<QualityReconciler>,
    pipeline: Pipeline,
}

/// `flaky` (preferred by priority) and `steady` serve `m`, behind a quality stage.
fn setup() -> Setup {
    let clock = Arc::new(FakeClock::at_secs(1_800_000_000));
    let fleet = Arc::new(
        Fleet::new(vec![
            BackendSpec::new("flaky", "http://127.0.0.1:1")
                .with_zone(Zone::Local)
                .with_priority(10)
                .with_model(ModelSpec::new("m")),
            BackendSpec::new("steady", "http://127.0.0.1:2")
                .with_zone(Zone::Local)
                .with_model(ModelSpec::new("m")),
        ])
        .unwrap(),
    );
    let quality = Arc::new(
        QualityReconciler::new(&fleet, QualitySettings::default(), clock.clone()).unwrap(),
    );
    let pipeline = Pipeline::builder(fleet)
        .clock(clock.clone())
        .stage(Arc::clone(&quality))
        .selector(Scheduler::with_seed(7))
        .build()
        .unwrap();
    Setup {
        clock,
        quality,
        pipeline,
    }
}

fn route(pipeline: &Pipeline) -> RouteGuard<&Pipeline> {
    pipeline.decide(&Request::new("m")).take_guard().unwrap()
}

/// How a route decided while the circuit was closed ends, while another request holds
/// the probe.
#[derive(Debug, Clone, Copy)]
enum StaleEnd {
    Cancel,
    Succeed,
    Fail,
    Drop,
}

#[test]
fn a_stale_route_leaves_another_requests_probe_alone() {
    for end in [
        StaleEnd::Cancel,
        StaleEnd::Succeed,
        StaleEnd::Fail,
        StaleEnd::Drop,
    ] {
        let Setup {
            clock,
            quality,
            pipeline,
        } = setup();
        let tracker = quality.tracker();

        // Decided while the circuit is closed, not sent yet.
        let stale = route(&pipeline);
        assert_eq!(stale.backend().name(), "flaky");
        // Other traffic trips the circuit; the cooldown passes.
        for _ in 0..5 {
            tracker.record(FLAKY, false, MS, None);
        }
        clock.advance(Duration::from_secs(30));
        assert!(matches!(tracker.circuit(FLAKY), Circuit::HalfOpen { .. }));

        // The next request is the probe.
        let probe = route(&pipeline);
        assert_eq!(probe.backend().name(), "flaky", "{end:?}");
        assert!(matches!(tracker.circuit(FLAKY), Circuit::Probing { .. }));

        match end {
            StaleEnd::Cancel => stale.cancel(),
            StaleEnd::Succeed => stale.finish(Outcome::success(MS)),
            StaleEnd::Fail => stale.finish(Outcome::failure(MS)),
            StaleEnd::Drop => drop(stale),
        }
        assert!(
            matches!(tracker.circuit(FLAKY), Circuit::Probing { .. }),
            "{end:?}: the stale route changed the probe's circuit: {:?}",
            tracker.circuit(FLAKY)
        );
        // So no second probe: the next request goes elsewhere.
        let next = route(&pipeline);
        assert_eq!(
            next.backend().name(),
            "steady",
            "{end:?}: a second probe ran"
        );
        next.cancel();

        // The probe itself decides.
        probe.finish(Outcome::success(MS));
        assert_eq!(tracker.circuit(FLAKY), Circuit::Closed, "{end:?}");
    }
}

#[test]
fn a_cancelled_probe_is_given_back_by_its_own_guard() {
    let Setup {
        clock,
        quality,
        pipeline,
    } = setup();
    let tracker = quality.tracker();
    for _ in 0..5 {
        tracker.record(FLAKY, false, MS, None);
    }
    clock.advance(Duration::from_secs(30));
    let probe = route(&pipeline);
    assert_eq!(probe.backend().name(), "flaky");
    probe.cancel();
    assert!(matches!(tracker.circuit(FLAKY), Circuit::HalfOpen { .. }));
    // Half-open again: the next request probes, and a failed probe re-opens.
    let probe = route(&pipeline);
    assert_eq!(probe.backend().name(), "flaky");
    probe.finish(Outcome::failure(MS));
    assert!(matches!(
        tracker.circuit(FLAKY),
        Circuit::Open {
            seconds_left: 30,
            ..
        }
    ));
}
