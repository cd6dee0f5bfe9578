//! Around midnight at the end of a month, every amount lands in one month: the ledger
//! and the journal agree on where a settlement goes, so that a restart shows what the
//! ledger showed, and spend read for a month that has just closed stays in it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nexus_budget::{
    usd_to_nanos, BudgetReconciler, BudgetSettings, MemoryStore, Month, ReconciliationLoop,
    SpendLedger, SpendSource, SpendStore, StoreError,
};
use nexus_core::{
    clock::FakeClock, BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, RoutingDecision,
    Zone,
};
use nexus_scheduler::Scheduler;

fn november() -> Month {
    Month::new(2026, 11).unwrap()
}

fn december() -> Month {
    november().next()
}

/// One cloud backend where 1000 input tokens cost $1.
fn fleet() -> Arc<Fleet> {
    Arc::new(
        Fleet::new(vec![BackendSpec::new("cloud", "https://api.example.com")
            .with_zone(Zone::Cloud)
            .with_model(ModelSpec::new("m").with_prices(1000.0, 0.0))])
        .unwrap(),
    )
}

fn budget_over(store: &Arc<MemoryStore>, clock: &Arc<FakeClock>) -> Arc<BudgetReconciler> {
    let budget = BudgetReconciler::new(fleet(), BudgetSettings::new(100.0), clock.clone())
        .unwrap()
        .with_store(store.clone(), Vec::new())
        .unwrap();
    Arc::new(budget)
}

#[test]
fn a_request_decided_before_midnight_and_settled_after_is_journaled_where_the_ledger_counted_it() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    // 23:59:59 on 30 November.
    let clock = Arc::new(FakeClock::at_secs(december().start_unix_secs() - 1));
    let budget = budget_over(&store, &clock);
    let pipeline = Pipeline::builder(fleet())
        .clock(clock.clone())
        .stage(Arc::clone(&budget))
        .selector(Scheduler::new())
        .build()
        .unwrap();
    let request = Request::new("m").input_tokens(1000).max_output_tokens(0);

    let mut before_midnight = pipeline.decide(&request);
    let guard = before_midnight.take_guard().unwrap();
    clock.advance(Duration::from_secs(2));
    // A request decided after midnight rolls the ledger over to December.
    let after_midnight = pipeline.decide(&request);
    assert!(matches!(
        after_midnight.kind(),
        RoutingDecision::Route { .. }
    ));
    drop(after_midnight);
    assert_eq!(budget.ledger().month(), december());

    guard.finish(Outcome::success(Duration::from_millis(500)).usage(1000, 0));
    assert_eq!(budget.ledger().month_spend(december()), Some(1.0));
    let journal = budget.journal().unwrap();
    assert!(journal.wait_durable(journal.last_queued(), Duration::from_secs(10)));
    assert_eq!(
        runtime.block_on(store.month_total(december())).unwrap(),
        usd_to_nanos(1.0)
    );
    assert_eq!(runtime.block_on(store.month_total(november())).unwrap(), 0);

    // A restart loads December as the ledger showed it.
    drop(before_midnight);
    drop(pipeline);
    drop(budget);
    let restarted = budget_over(&store, &clock);
    assert_eq!(restarted.ledger().snapshot().settled_usd, 1.0);
}

/// A billing API whose answer arrives after midnight: reading it moves the clock.
#[derive(Debug)]
struct SlowBilling {
    clock: Arc<FakeClock>,
}

#[async_trait]
impl SpendSource for SlowBilling {
    fn name(&self) -> &str {
        "slow-billing"
    }

    async fn month_to_date_usd(&self, month: Month) -> Result<f64, StoreError> {
        assert_eq!(month, november());
        self.clock.set_secs(december().start_unix_secs() + 1);
        Ok(250.0)
    }
}

#[test]
fn spend_read_for_a_month_that_closed_meanwhile_does_not_land_in_the_next() {
    let clock = Arc::new(FakeClock::at_secs(december().start_unix_secs() - 1));
    let ledger = Arc::new(SpendLedger::new(clock.clone()));
    let reconciliation = ReconciliationLoop::new(
        Arc::clone(&ledger),
        None,
        vec![Arc::new(SlowBilling { clock }) as Arc<dyn SpendSource>],
        Duration::from_secs(60),
    );
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(reconciliation.reconcile_once());
    assert_eq!(ledger.month(), december());
    assert_eq!(
        ledger.snapshot().total_usd,
        0.0,
        "November's $250 stayed out"
    );
}
