//! Windows, the error-rate rule, the circuit breaker and its single probe, with a fake
//! clock; and recording from many threads.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use nexus_core::{
    clock::FakeClock, fleet::BackendId, BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request,
    Zone,
};
use nexus_quality::{Circuit, OpenCause, QualityReconciler, QualitySettings, QualityTracker};
use nexus_scheduler::Scheduler;

const T0: u64 = 1_800_000_000; // a whole hour

fn tracker(settings: QualitySettings) -> (Arc<FakeClock>, QualityTracker) {
    let clock = Arc::new(FakeClock::at_secs(T0));
    (clock.clone(), QualityTracker::new(4, settings, clock))
}

const A: BackendId = BackendId::new(0);
const MS: Duration = Duration::from_millis(100);

#[test]
fn windows_roll_over() {
    let (clock, tracker) = tracker(QualitySettings::default());
    tracker.record(A, true, MS, Some(Duration::from_millis(200)));
    tracker.record(A, false, MS, None);
    let stats = tracker.stats_at(A, clock.now_secs()).unwrap();
    assert_eq!((stats.successes_1h, stats.failures_1h), (1, 1));
    assert_eq!(stats.avg_ttft_ms, Some(200.0));

    clock.advance(Duration::from_secs(3600));
    let stats = tracker.stats_at(A, clock.now_secs()).unwrap();
    assert_eq!(
        (stats.successes_1h, stats.failures_1h),
        (0, 0),
        "the hour has passed"
    );
    assert_eq!(stats.avg_ttft_ms, None);
    assert_eq!(
        (stats.successes_24h, stats.failures_24h),
        (1, 1),
        "still within the day"
    );

    clock.advance(Duration::from_secs(23 * 3600));
    let stats = tracker.stats_at(A, clock.now_secs()).unwrap();
    assert_eq!((stats.successes_24h, stats.failures_24h), (0, 0));
}

use nexus_core::clock::Clock;

#[test]
fn the_error_rate_rule_waits_for_min_samples() {
    let settings = QualitySettings {
        failure_threshold: 100, // keep the consecutive rule out of the way
        ..QualitySettings::default()
    };
    let (_, tracker) = tracker(settings);
    // 4 failures, 5 successes: 9 samples, below min_samples = 10 though 44% ...
    for i in 0..9 {
        tracker.record(A, i % 2 == 1, MS, None);
    }
    assert_eq!(tracker.circuit(A), Circuit::Closed);
    // ... the 10th outcome, a failure, makes 5 of 10: the rate reaches 0.5.
    tracker.record(A, false, MS, None);
    assert_eq!(
        tracker.circuit(A),
        Circuit::Open {
            cause: OpenCause::ErrorRate,
            seconds_left: 30
        }
    );
}

#[test]
fn consecutive_failures_open_then_half_open_then_a_good_probe_closes() {
    let (clock, tracker) = tracker(QualitySettings::default());
    for _ in 0..4 {
        tracker.record(A, false, MS, None);
    }
    assert_eq!(
        tracker.circuit(A),
        Circuit::Closed,
        "4 < failure_threshold 5"
    );
    tracker.record(A, true, MS, None);
    for _ in 0..4 {
        tracker.record(A, false, MS, None);
    }
    assert_eq!(
        tracker.circuit(A),
        Circuit::Closed,
        "a success resets the count"
    );
    tracker.record(A, false, MS, None);
    assert!(matches!(
        tracker.circuit(A),
        Circuit::Open {
            cause: OpenCause::ConsecutiveFailures,
            seconds_left: 30
        }
    ));

    clock.advance(Duration::from_secs(29));
    assert!(matches!(
        tracker.circuit(A),
        Circuit::Open {
            seconds_left: 1,
            ..
        }
    ));
    clock.advance(Duration::from_secs(1));
    assert!(matches!(tracker.circuit(A), Circuit::HalfOpen { .. }));
    assert!(tracker.try_claim_probe(A, clock.now_secs(), 1));
    assert!(
        !tracker.try_claim_probe(A, clock.now_secs(), 2),
        "one probe at a time"
    );
    assert!(matches!(tracker.circuit(A), Circuit::Probing { .. }));
    tracker.record(A, true, MS, None);
    assert!(
        matches!(tracker.circuit(A), Circuit::Probing { .. }),
        "an outcome of no route does not decide the probe"
    );
    tracker.record_route_at(A, 1, clock.now_secs(), true, MS, None);
    assert_eq!(tracker.circuit(A), Circuit::Closed);
}

#[test]
fn a_failed_probe_reopens_for_another_cooldown() {
    let (clock, tracker) = tracker(QualitySettings::default());
    for _ in 0..5 {
        tracker.record(A, false, MS, None);
    }
    clock.advance(Duration::from_secs(30));
    assert!(tracker.try_claim_probe(A, clock.now_secs(), 1));
    tracker.record_route_at(A, 1, clock.now_secs(), false, MS, None);
    assert!(matches!(
        tracker.circuit(A),
        Circuit::Open {
            seconds_left: 30,
            ..
        }
    ));
    // A probe that was claimed but never sent is given back.
    clock.advance(Duration::from_secs(30));
    assert!(tracker.try_claim_probe(A, clock.now_secs(), 2));
    tracker.release_probe(A, 3);
    assert!(
        matches!(tracker.circuit(A), Circuit::Probing { .. }),
        "only the route that claimed the probe gives it back"
    );
    tracker.release_probe(A, 2);
    assert!(matches!(tracker.circuit(A), Circuit::HalfOpen { .. }));
}

#[test]
fn only_one_probe_at_a_time_under_concurrent_decisions() {
    let clock = Arc::new(FakeClock::at_secs(T0));
    let fleet = Arc::new(
        Fleet::new(vec![
            BackendSpec::new("flaky", "http://127.0.0.1:1")
                .with_zone(Zone::Local)
                .with_priority(10)
                .with_max_concurrency(1_000)
                .with_model(ModelSpec::new("m")),
            BackendSpec::new("steady", "http://127.0.0.1:2")
                .with_zone(Zone::Local)
                .with_max_concurrency(1_000)
                .with_model(ModelSpec::new("m")),
        ])
        .unwrap(),
    );
    let quality = Arc::new(
        QualityReconciler::new(&fleet, QualitySettings::default(), clock.clone()).unwrap(),
    );
    let pipeline = Arc::new(
        Pipeline::builder(Arc::clone(&fleet))
            .clock(clock.clone())
            .stage(Arc::clone(&quality))
            .selector(Scheduler::new())
            .build()
            .unwrap(),
    );
    for _ in 0..5 {
        quality.tracker().record(BackendId::new(0), false, MS, None);
    }
    clock.advance(Duration::from_secs(30));

    const THREADS: usize = 16;
    let barrier = Arc::new(Barrier::new(THREADS));
    let (tx, rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let pipeline = Arc::clone(&pipeline);
            let barrier = Arc::clone(&barrier);
            let tx = tx.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut decision = pipeline.decide(&Request::new("m"));
                let name = decision.backend().unwrap().name().to_owned();
                // Hold the route until every thread has decided.
                let guard = decision.take_guard().unwrap();
                tx.send(name).unwrap();
                barrier.wait();
                guard.finish(Outcome::success(MS));
            })
        })
        .collect();
    drop(tx);
    let routed: Vec<String> = rx.iter().collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(routed.len(), THREADS);
    assert_eq!(
        routed.iter().filter(|n| *n == "flaky").count(),
        1,
        "{routed:?}"
    );
    assert_eq!(
        quality.tracker().circuit(BackendId::new(0)),
        Circuit::Closed,
        "the probe succeeded"
    );
}

#[test]
fn recording_from_many_threads_loses_nothing() {
    let clock = Arc::new(FakeClock::at_secs(T0));
    let tracker = Arc::new(QualityTracker::new(
        2,
        QualitySettings {
            failure_threshold: u32::MAX,
            max_error_rate: 1.0,
            ..QualitySettings::default()
        },
        clock.clone(),
    ));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let tracker = Arc::clone(&tracker);
            let clock = clock.clone();
            std::thread::spawn(move || {
                for i in 0..25_000u64 {
                    if t == 0 && i % 1000 == 0 {
                        clock.advance(Duration::from_secs(7)); // cross bucket boundaries while recording
                    }
                    tracker.record(A, (i + t) % 3 != 0, MS, Some(Duration::from_millis(10)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = tracker.stats_at(A, clock.now_secs()).unwrap();
    assert_eq!(stats.successes_1h + stats.failures_1h, 200_000);
    let expected_failures: u64 = (0..8u64)
        .map(|t| (0..25_000u64).filter(|i| (i + t) % 3 == 0).count() as u64)
        .sum();
    assert_eq!(stats.failures_1h, expected_failures);
    assert_eq!(stats.successes_24h + stats.failures_24h, 200_000);
    assert_eq!(stats.avg_ttft_ms, Some(10.0));
}

#[test]
fn weights_follow_the_documented_formula() {
    let (clock, tracker) = tracker(QualitySettings::default());
    assert_eq!(
        tracker.weight_at(A, clock.now_secs()),
        1.0,
        "no history: neutral"
    );
    // 20 outcomes, 4 failures (never 5 in a row), TTFT 2 s against the 1 s target.
    for i in 0..20 {
        tracker.record(A, i % 5 != 0, MS, Some(Duration::from_millis(2000)));
    }
    clock.advance(Duration::from_secs(1));
    let e: f64 = 0.2;
    let expected = (1.0 - e).powi(2) * 0.5 * (0.5 + 0.5 * 0.8);
    assert!((tracker.weight_at(A, clock.now_secs()) - expected).abs() < 1e-6);
}

#[test]
fn settings_are_validated() {
    let bad = QualitySettings {
        max_error_rate: 50.0,
        ..QualitySettings::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "`max_error_rate` is a fraction in (0, 1], got 50; did you mean 0.5?"
    );
}
