//! A Queue's `fallback_backend` is committed like a Route: every stage accepts it (the
//! budget reserves its cost, and may veto it), it counts in flight, and the caller gets
//! its guard: finish it when the fallback serves, cancel it when waiting instead.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cloud, fleet, local};
use nexus_core::{
    pipeline::Decision,
    registry::BuildContext,
    stage::{Reason, RouteTicket},
    Outcome, Pipeline, Reconciler, Request, RoutingDecision, RoutingIntent,
};
use nexus_router::budget::BudgetReconciler;
use nexus_router::quality::QualityReconciler;
use nexus_router::{DecisionReport, Router};

/// `gpu` (preferred, loading) and a priced cloud backend serving `m`: every decision
/// queues for `gpu`, offering `cloud` instead. 1000 input tokens at $1000 a million
/// cost $1 there; the month's limit is $1.50.
fn test_fleet() -> String {
    fleet([
        local("gpu", 11434)
            .priority(10)
            .status("loading")
            .serves("m"),
        cloud("cloud").serves_priced("m", 1000.0, None),
    ]) + "\n[routing.budget]\nmonthly_limit_usd = 1.5\n"
}

fn request() -> Request<'static> {
    Request::new("m").input_tokens(1000).max_output_tokens(0)
}

fn fallback_of(decision: &Decision<&Pipeline>) -> Option<String> {
    match decision.kind() {
        RoutingDecision::Queue {
            fallback_backend, ..
        } => fallback_backend.map(|b| decision.pipeline().fleet().backend(b).name().to_owned()),
        other => panic!("expected a queue, got {}", other.as_str()),
    }
}

fn budget(router: &Router) -> &BudgetReconciler {
    router.pipeline().stage_of::<BudgetReconciler>().unwrap()
}

fn cloud_in_flight(router: &Router) -> u32 {
    router
        .fleet()
        .backend_by_name("cloud")
        .unwrap()
        .live()
        .in_flight()
}

#[test]
fn a_priced_fallback_is_offered_only_while_the_budget_can_pay_for_it() {
    let router = Router::from_toml("queue.toml", &test_fleet()).unwrap();
    // Five requests queue while the first one's offer is still open.
    let decisions: Vec<Decision<&Pipeline>> = (0..5).map(|_| router.route(&request())).collect();
    let offered: Vec<Option<String>> = decisions.iter().map(fallback_of).collect();
    assert_eq!(offered[0].as_deref(), Some("cloud"));
    assert!(
        offered[1..].iter().all(Option::is_none),
        "$1 offered more than once against $1.50: {offered:?}"
    );
    let snapshot = budget(&router).ledger().snapshot();
    assert_eq!(snapshot.reserved_usd, 1.0, "the open offer is reserved");
    assert_eq!(cloud_in_flight(&router), 1, "and counted in flight");
    // The reports still show the queue and the one offer.
    let report = DecisionReport::new("m", &decisions[0]);
    assert_eq!(report.decision, "queue");
    assert_eq!(report.fallback_backend.as_deref(), Some("cloud"));
    assert_eq!(report.queued_backend.as_deref(), Some("gpu"));

    // Dropping a decision with an unused offer withdraws it: nothing spent, no failure.
    drop(decisions);
    let snapshot = budget(&router).ledger().snapshot();
    assert_eq!((snapshot.reserved_usd, snapshot.total_usd), (0.0, 0.0));
    assert_eq!(cloud_in_flight(&router), 0);
    let quality = router.pipeline().stage_of::<QualityReconciler>().unwrap();
    let cloud = router.fleet().backend_by_name("cloud").unwrap().id();
    let stats = quality
        .tracker()
        .stats_at(cloud, quality.tracker().now_secs());
    assert_eq!(
        stats.unwrap().samples_1h(),
        0,
        "a withdrawn offer is no outcome"
    );

    // So the next request gets the offer again.
    assert_eq!(
        fallback_of(&router.route(&request())).as_deref(),
        Some("cloud")
    );
}

#[test]
fn serving_from_the_fallback_settles_it_and_waiting_cancels_it() {
    let router = Router::from_toml("queue.toml", &test_fleet()).unwrap();

    // Waiting: the caller cancels the offer.
    let mut decision = router.route(&request());
    let offer = decision
        .take_guard()
        .expect("a queue with a fallback holds its guard");
    assert_eq!(offer.backend().name(), "cloud");
    assert_eq!(offer.ticket().cost_estimate.cost_usd, 1.0);
    offer.cancel();
    assert_eq!(budget(&router).ledger().snapshot().reserved_usd, 0.0);
    assert_eq!(cloud_in_flight(&router), 0);
    drop(decision);

    // Serving: the caller finishes the offer with the outcome; the budget settles it.
    let mut decision = router.route(&request());
    let offer = decision.take_guard().unwrap();
    drop(decision);
    assert_eq!(cloud_in_flight(&router), 1, "the caller holds the offer");
    offer.finish(Outcome::success(Duration::from_millis(300)).usage(1000, 0));
    let snapshot = budget(&router).ledger().snapshot();
    assert_eq!((snapshot.reserved_usd, snapshot.settled_usd), (0.0, 1.0));
    assert_eq!(cloud_in_flight(&router), 0);

    // $1 of $1.50 spent: the next offer would pass the limit, so none is made.
    let mut decision = router.route(&request());
    assert_eq!(fallback_of(&decision), None);
    assert!(decision.take_guard().is_none());
}

/// Vetoes, in `on_route`, every backend whose id starts with "veto-".
#[derive(Debug)]
struct VetoStage;

impl Reconciler for VetoStage {
    fn name(&self) -> &'static str {
        "veto"
    }
    fn reconcile(
        &self,
        _intent: &mut RoutingIntent<'_>,
    ) -> Result<(), nexus_core::stage::ReconcileError> {
        Ok(())
    }
    fn on_route(&self, ticket: &RouteTicket) -> Result<(), Reason> {
        // Backend ids are assigned in declaration order: 1 and 2 are the veto- ones.
        if matches!(ticket.backend.index(), 1 | 2) {
            Err(Reason::new(1))
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_vetoed_fallback_gives_way_to_the_next_candidate_or_to_none() {
    let backend = |id: &str, priority: u32, status: &str, model: &str| {
        format!(
            "[[backends]]\nid = \"{id}\"\nurl = \"http://127.0.0.1:1\"\nzone = \"local\"\npriority = {priority}\nstatus = \"{status}\"\nmodels = [{{ name = \"{model}\" }}]\n"
        )
    };
    let load = |extra: &str| {
        let config = [
            backend("gpu", 10, "loading", "m"),
            backend("veto-a", 5, "healthy", "m"),
            backend("veto-b", 4, "healthy", "n"),
            extra.to_owned(),
            "[routing]\npipeline = [\"analyzer\", \"veto\", \"scheduler\"]\n[routing.fallbacks]\n\"m\" = [\"n\"]\n".to_owned(),
        ]
        .concat();
        Router::builder()
            .with_reconciler("veto", |_: &BuildContext<'_>| {
                Ok(Box::new(VetoStage) as Box<dyn Reconciler>)
            })
            .unwrap()
            .load_str("veto.toml", &config)
            .unwrap()
    };

    // veto-a (same model) and veto-b (fallback model) are vetoed: `ok` serves n.
    let router = load(&backend("ok", 1, "healthy", "n"));
    let mut decision = router.route(&Request::new("m"));
    assert_eq!(fallback_of(&decision).as_deref(), Some("ok"));
    let RoutingDecision::Queue { fallback_model, .. } = decision.kind() else {
        unreachable!()
    };
    assert_eq!(
        fallback_model.map(|m| router.fleet().model(m).name()),
        Some("n")
    );
    let report = DecisionReport::new("m", &decision);
    assert!(
        report
            .rejections
            .iter()
            .any(|r| r.backend == "veto-a" && r.reconciler == "veto"),
        "{:#?}",
        report.rejections
    );
    let offer = decision.take_guard().unwrap();
    assert_eq!(
        (offer.backend().name(), offer.ticket().fallback_used),
        ("ok", true)
    );
    offer.cancel();
    for id in ["veto-a", "veto-b", "ok"] {
        assert_eq!(
            router
                .fleet()
                .backend_by_name(id)
                .unwrap()
                .live()
                .in_flight(),
            0,
            "{id}"
        );
    }

    // Nothing but vetoed backends: the queue offers no fallback, and holds no guard.
    let router = load("");
    let mut decision = router.route(&Request::new("m"));
    assert_eq!(fallback_of(&decision), None);
    let RoutingDecision::Queue { fallback_model, .. } = decision.kind() else {
        unreachable!()
    };
    assert_eq!(*fallback_model, None);
    assert!(decision.take_guard().is_none());
}

/// A small xorshift generator, seeded per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn concurrent_queued_requests_never_pass_the_limit_through_their_fallbacks() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    use nexus_router::budget::usd_to_nanos;

    const THREADS: usize = 16;
    const DECISIONS: usize = 500;
    let limit = 20.0;
    let config = r#"
[[backends]]
id = "gpu"
url = "http://127.0.0.1:11434"
zone = "local"
priority = 1000
status = "loading"
models = [{ name = "m" }]

[[backends]]
id = "cloud-a"
url = "https://a.example.com"
zone = "cloud"
max_concurrency = 1000
models = [{ name = "m", input_usd_per_mtok = 100.0, output_usd_per_mtok = 200.0 }]

[[backends]]
id = "cloud-b"
url = "https://b.example.com"
zone = "cloud"
priority = 2
max_concurrency = 1000
models = [{ name = "m", input_usd_per_mtok = 250.0, output_usd_per_mtok = 500.0 }]

[routing.budget]
monthly_limit_usd = 20.0

[routing.quality]
failure_threshold = 1000000
max_error_rate = 1.0
"#;
    let router = Arc::new(Router::from_toml("queue.toml", config).unwrap());
    let settled = Arc::new(AtomicU64::new(0));
    let offers = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS + 1));

    let watcher = {
        let router = Arc::clone(&router);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut highest = 0u64;
            while !done.load(Ordering::Acquire) {
                highest = highest.max(budget(&router).ledger().total_nanos());
            }
            highest
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (router, settled, offers, start) = (
                Arc::clone(&router),
                Arc::clone(&settled),
                Arc::clone(&offers),
                Arc::clone(&start),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                start.wait();
                for _ in 0..DECISIONS {
                    let input = 100 + (rng.next() % 2_000) as u32;
                    let request = Request::new("m").input_tokens(input).max_output_tokens(200);
                    let mut decision = router.route(&request);
                    assert_eq!(decision.kind().as_str(), "queue");
                    if fallback_of(&decision).is_some() {
                        offers.fetch_add(1, Ordering::Relaxed);
                    }
                    let action = rng.next() % 5;
                    // Leave the offer in the decision: dropping it withdraws the offer.
                    if action == 0 {
                        continue;
                    }
                    let Some(guard) = decision.take_guard() else {
                        continue;
                    };
                    // Held across another decision, as a gateway holds it across awaits.
                    drop(decision);
                    let ticket = *guard.ticket();
                    let offer = router
                        .fleet()
                        .model(ticket.model)
                        .offer(ticket.backend)
                        .unwrap();
                    match action {
                        1 => guard.cancel(),
                        2 => drop(guard),
                        _ => {
                            let used_out = (rng.next() % 201) as u32;
                            settled.fetch_add(
                                usd_to_nanos(offer.cost_usd(input, used_out)),
                                Ordering::Relaxed,
                            );
                            guard.finish(
                                Outcome::success(Duration::from_millis(20)).usage(input, used_out),
                            );
                        }
                    }
                }
            })
        })
        .collect();
    start.wait();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let highest = watcher.join().unwrap();

    assert!(
        highest <= usd_to_nanos(limit),
        "the watcher saw {highest} nano-USD"
    );
    assert!(
        offers.load(Ordering::Relaxed) > 100,
        "the test made too few offers"
    );
    let snapshot = budget(&router).ledger().snapshot();
    assert_eq!(
        snapshot.reserved_usd, 0.0,
        "every offer was settled or withdrawn"
    );
    let expected = settled.load(Ordering::Relaxed);
    assert!(usd_to_nanos(snapshot.settled_usd).abs_diff(expected) <= 1);
    // The limit was reached: the last requests were offered nothing, not served past it.
    assert!(snapshot.total_usd > limit * 0.9, "{snapshot:?}");
    for backend in router.fleet().backends() {
        assert_eq!(backend.live().in_flight(), 0, "{}", backend.name());
    }
}
