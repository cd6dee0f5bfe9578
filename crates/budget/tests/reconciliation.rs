//! The reconciliation loop folds stored and external spend into the ledger, keeps the
//! last value of a failing source, and stops when cancelled.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nexus_budget::{
    usd_to_nanos, MemoryStore, Month, ReconciliationLoop, SpendLedger, SpendSource, SpendStore,
    StoreError, StoreErrorKind,
};
use nexus_core::clock::FakeClock;
use tokio_util::sync::CancellationToken;

/// A billing API stand-in: reports what it is told, or fails when told to.
#[derive(Debug, Default)]
struct Billing {
    usd_cents: AtomicU64,
    failing: AtomicBool,
}

#[async_trait]
impl SpendSource for Billing {
    fn name(&self) -> &str {
        "billing"
    }

    async fn month_to_date_usd(&self, _month: Month) -> Result<f64, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                "billing",
                "503 from the provider",
            ));
        }
        Ok(self.usd_cents.load(Ordering::SeqCst) as f64 / 100.0)
    }
}

fn setup() -> (
    Arc<SpendLedger>,
    Arc<MemoryStore>,
    Arc<Billing>,
    ReconciliationLoop,
) {
    let month = Month::new(2026, 11).unwrap();
    let clock = Arc::new(FakeClock::at_secs(month.start_unix_secs() + 60));
    let ledger = Arc::new(SpendLedger::new(clock));
    let store = Arc::new(MemoryStore::new());
    let billing = Arc::new(Billing::default());
    let reconciliation = ReconciliationLoop::new(
        Arc::clone(&ledger),
        Some(store.clone() as Arc<dyn SpendStore>),
        vec![billing.clone() as Arc<dyn SpendSource>],
        Duration::from_millis(10),
    );
    (ledger, store, billing, reconciliation)
}

#[tokio::test]
async fn a_pass_folds_the_store_and_the_sources() {
    let (ledger, store, billing, reconciliation) = setup();
    // Another replica settled $2 into the shared store; the provider bills $0.50 more.
    store
        .add(Month::new(2026, 11).unwrap(), usd_to_nanos(2.0))
        .await
        .unwrap();
    billing.usd_cents.store(50, Ordering::SeqCst);
    reconciliation.reconcile_once().await;
    let snapshot = ledger.snapshot();
    assert_eq!(snapshot.settled_usd, 2.0);
    assert_eq!(snapshot.external_usd, 0.5);
    assert_eq!(snapshot.total_usd, 2.5);

    // A failing source keeps its last value instead of dropping to zero.
    billing.failing.store(true, Ordering::SeqCst);
    reconciliation.reconcile_once().await;
    assert_eq!(ledger.snapshot().external_usd, 0.5);

    // The store only ever raises what this process already counted.
    ledger.settle(0, usd_to_nanos(5.0));
    reconciliation.reconcile_once().await;
    assert_eq!(ledger.snapshot().settled_usd, 7.0);
}

#[tokio::test(start_paused = true)]
async fn the_loop_runs_every_interval_and_stops_when_cancelled() {
    let (ledger, _store, billing, reconciliation) = setup();
    let cancel = CancellationToken::new();
    let handle = reconciliation.spawn(cancel.clone());
    billing.usd_cents.store(125, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(25)).await;
    assert_eq!(ledger.snapshot().external_usd, 1.25);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("the loop stops when cancelled")
        .unwrap();
}
