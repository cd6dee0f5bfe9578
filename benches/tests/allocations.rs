//! A Route decision through the default pipeline does not touch the heap once warm.
//!
//! A counting global allocator counts allocations made by this thread while a flag is
//! set; the decisions, guard finishes and the drop of the decision run inside it. The
//! count is per thread too: the tests run in parallel, and one test's allocations (or
//! its reset of the count) must not show up in another's.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use nexus_benches::{fleet_config, MODEL, REQUESTED};
use nexus_core::{Outcome, Request, RoutingDecision};
use nexus_router::Router;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one allocation if this thread is counting.
fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

fn reset() {
    ALLOCATIONS.with(|n| n.set(0));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations in 1000 warm Route decisions for `model` (plus each guard's finish),
/// borrowed (`Router::route`) or owned (`Router::route_owned`).
fn allocations_per_route(backends: usize, model: &str, owned: bool) -> usize {
    allocations_per_route_in(&fleet_config(backends), model, owned, None)
}

/// [`allocations_per_route`] over `config`, for `tenant` when given.
fn allocations_per_route_in(
    config: &str,
    model: &str,
    owned: bool,
    tenant: Option<nexus_core::pipeline::TenantId>,
) -> usize {
    let router = Router::from_toml("alloc.toml", config).unwrap();
    let mut request = Request::new(model)
        .input_tokens(1200)
        .max_output_tokens(300);
    request.tenant = tenant;
    let outcome = Outcome::success(Duration::from_millis(120)).usage(1200, 250);
    let run = || {
        if owned {
            let mut decision = router.route_owned(&request);
            assert!(matches!(decision.kind(), RoutingDecision::Route { .. }));
            decision.take_guard().unwrap().finish(outcome);
        } else {
            let mut decision = router.route(&request);
            assert!(matches!(decision.kind(), RoutingDecision::Route { .. }));
            decision.take_guard().unwrap().finish(outcome);
        }
    };
    // Warm-up: the per-thread scratch buffers grow to the fleet's size.
    for _ in 0..10 {
        run();
    }
    reset();
    COUNTING.with(|c| c.set(true));
    for _ in 0..1000 {
        run();
    }
    COUNTING.with(|c| c.set(false));
    allocations()
}

#[test]
fn route_decision_allocates_nothing() {
    for backends in [100, 1000] {
        for owned in [false, true] {
            // The restricted alias: privacy excludes the cloud half, a local backend wins.
            assert_eq!(
                allocations_per_route(backends, REQUESTED, owned),
                0,
                "allocations in 1000 Route decisions for {REQUESTED} at {backends} backends (owned: {owned})"
            );
            // The model itself, unrestricted: priced cloud backends compete, and a cloud
            // win reserves and settles its cost in the budget ledger.
            assert_eq!(
                allocations_per_route(backends, MODEL, owned),
                0,
                "allocations in 1000 Route decisions for {MODEL} at {backends} backends (owned: {owned})"
            );
        }
    }
}

#[test]
fn a_tenants_route_decision_allocates_nothing() {
    // A tenant with a limit of its own and an override: the pipeline tightens its
    // constraints and the budget reserves in its ledger as well as the global one.
    let config = format!(
        "{}\n[[tenants]]\nid = \"team-a\"\nkey_sha256 = \"{}\"\nmonthly_limit_usd = 1000000.0\nmax_cost_per_request = 100.0\n",
        fleet_config(100),
        "ab".repeat(32)
    );
    let tenant = Some(nexus_core::pipeline::TenantId::new(0));
    for owned in [false, true] {
        for model in [REQUESTED, MODEL] {
            assert_eq!(
                allocations_per_route_in(&config, model, owned, tenant),
                0,
                "allocations in 1000 Route decisions for {model} of a tenant (owned: {owned})"
            );
        }
    }
}

#[test]
fn recording_an_outcome_allocates_nothing() {
    use nexus_core::{clock::SystemClock, fleet::BackendId};
    use nexus_quality::{QualitySettings, QualityTracker};
    use std::sync::Arc;

    let tracker = QualityTracker::new(100, QualitySettings::default(), Arc::new(SystemClock));
    reset();
    COUNTING.with(|c| c.set(true));
    for i in 0..10_000u32 {
        tracker.record(
            BackendId::new(i % 100),
            i % 10 != 0,
            Duration::from_millis(200),
            Some(Duration::from_millis(50)),
        );
        std::hint::black_box(tracker.weight_at(BackendId::new(i % 100), tracker.now_secs()));
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(allocations(), 0);
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a counter that never counts.
    reset();
    COUNTING.with(|c| c.set(true));
    let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(10));
    COUNTING.with(|c| c.set(false));
    drop(v);
    assert!(allocations() >= 1);
}

#[test]
fn a_live_router_decides_without_allocating_after_reloads() {
    use nexus_router::LiveRouter;

    let config = fleet_config(100);
    let router = Router::from_toml("alloc.toml", &config).unwrap();
    let live = LiveRouter::new(Router::builder(), router, None);
    for _ in 0..3 {
        live.reload_str("alloc.toml", &config).unwrap();
    }
    let request = Request::new(MODEL)
        .input_tokens(1200)
        .max_output_tokens(300);
    let outcome = Outcome::success(Duration::from_millis(120)).usage(1200, 250);
    let run = || {
        let mut decision = live.route_owned(&request);
        assert!(matches!(decision.kind(), RoutingDecision::Route { .. }));
        decision.take_guard().unwrap().finish(outcome);
    };
    for _ in 0..10 {
        run();
    }
    reset();
    COUNTING.with(|c| c.set(true));
    for _ in 0..1000 {
        run();
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        allocations(),
        0,
        "allocations in 1000 Route decisions through a reloaded LiveRouter"
    );
}
