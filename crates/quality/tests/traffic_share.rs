//! A simulated run of 10,000 requests through the whole pipeline with a fake clock: a
//! slow backend loses traffic share to a fast one, and gets it back when it recovers.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use nexus_core::{
    analyzer::RequestAnalyzer,
    clock::{Clock, FakeClock},
    pipeline::RouteGuard,
    BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, Zone,
};
use nexus_quality::{QualityReconciler, QualitySettings};
use nexus_scheduler::Scheduler;

/// Latency and time to first token of a backend, in milliseconds.
#[derive(Clone, Copy)]
struct Profile {
    latency_ms: u64,
    ttft_ms: u64,
}

const FAST: Profile = Profile {
    latency_ms: 300,
    ttft_ms: 150,
};
const SLOW: Profile = Profile {
    latency_ms: 3_000,
    ttft_ms: 2_500,
};

#[test]
fn a_slow_backend_loses_share_and_wins_it_back_when_it_recovers() {
    let clock = Arc::new(FakeClock::at_secs(1_800_000_000));
    let fleet = Arc::new(
        Fleet::new(
            ["fast", "slow"]
                .into_iter()
                .map(|id| {
                    BackendSpec::new(id, "http://127.0.0.1:1")
                        .with_zone(Zone::Local)
                        .with_max_concurrency(64)
                        .with_model(ModelSpec::new("m"))
                })
                .collect(),
        )
        .unwrap(),
    );
    let quality =
        QualityReconciler::new(&fleet, QualitySettings::default(), clock.clone()).unwrap();
    let pipeline = Pipeline::builder(Arc::clone(&fleet))
        .clock(clock.clone())
        .stage(RequestAnalyzer)
        .stage(quality)
        .selector(Scheduler::with_seed(11))
        .build()
        .unwrap();

    let mut profiles = [FAST, SLOW];
    // Requests in flight, by completion time.
    let mut in_flight: VecDeque<(u64, RouteGuard<&Pipeline>, Profile)> = VecDeque::new();
    let mut slow_share = Vec::new();
    for phase in 0..2 {
        if phase == 1 {
            profiles[1] = FAST; // the slow backend recovers
        }
        let mut slow = 0u32;
        let mut counted = 0u32;
        for i in 0..5_000u32 {
            // One arrival every 100 ms of simulated time (each phase lasts 500 s);
            // either backend alone has room for all of it, so only scores decide.
            clock.advance(Duration::from_millis(100));
            let now = clock.now_nanos() / 1_000_000;
            while in_flight.front().is_some_and(|(done, _, _)| *done <= now) {
                let (_, guard, profile) = in_flight.pop_front().unwrap();
                guard.finish(
                    Outcome::success(Duration::from_millis(profile.latency_ms))
                        .time_to_first_token(Duration::from_millis(profile.ttft_ms)),
                );
            }
            let mut decision = pipeline.decide(&Request::new("m"));
            let Some(guard) = decision.take_guard() else {
                continue; // a queue decision: not expected with this much room
            };
            let index = guard.backend().id().index();
            let profile = profiles[index];
            // Measure the second half of each phase, once the router has learned.
            if i >= 2_500 {
                counted += 1;
                slow += u32::from(index == 1);
            }
            let done = now + profile.latency_ms;
            let at = in_flight.partition_point(|(d, _, _)| *d <= done);
            in_flight.insert(at, (done, guard, profile));
        }
        slow_share.push(f64::from(slow) / f64::from(counted));
    }
    for (_, guard, _) in in_flight.drain(..) {
        guard.cancel();
    }
    let [before, after] = [slow_share[0], slow_share[1]];
    println!("slow backend's share: {before:.3} while slow, {after:.3} after it recovered");
    assert!(
        before < 0.25,
        "the slow backend kept {before:.2} of the traffic"
    );
    assert!(
        after > 0.35,
        "the recovered backend only won back {after:.2} of the traffic"
    );
    assert!(after > 2.0 * before, "share {before:.2} -> {after:.2}");
}
