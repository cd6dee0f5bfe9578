//! The background side of the budget: the [`Journal`] that makes settled spend durable,
//! and the [`ReconciliationLoop`] that folds the store and external [`SpendSource`]s
//! into the ledger the decisions read.
//!
//! Both run on a small runtime of their own, on one background thread, so that a
//! router built from a config file needs no wiring; the loop can also be spawned on an
//! application's own tokio runtime. Neither is ever waited on by a decision.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{usd_to_nanos, Month, SpendLedger, SpendStore, StoreError};

/// A source of spend the router did not settle itself, e.g. a provider's billing API.
#[async_trait]
pub trait SpendSource: Send + Sync + fmt::Debug {
    /// A name for logs.
    fn name(&self) -> &str;

    /// Month-to-date spend in USD for `month`.
    async fn month_to_date_usd(&self, month: Month) -> Result<f64, StoreError>;
}

/// One settled amount on its way to the store.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    month: Month,
    nanos: u64,
}

#[derive(Debug, Default)]
struct Progress {
    durable: u64,
}

/// Writes settled spend to a [`SpendStore`] in the background, in batches; see
/// [`Journal::wait_durable`] for acknowledgements.
#[derive(Debug)]
pub struct Journal {
    sender: Mutex<(u64, Option<mpsc::UnboundedSender<Entry>>)>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

impl Journal {
    fn new(sender: mpsc::UnboundedSender<Entry>) -> (Self, Arc<(Mutex<Progress>, Condvar)>) {
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        (
            Self {
                sender: Mutex::new((0, Some(sender))),
                progress: Arc::clone(&progress),
            },
            progress,
        )
    }

    /// Queues `nanos` of settled spend for `month`; returns its sequence number.
    pub fn record(&self, month: Month, nanos: u64) -> u64 {
        let mut sender = lock(&self.sender);
        sender.0 += 1;
        let seq = sender.0;
        if let Some(tx) = &sender.1 {
            if tx.send(Entry { seq, month, nanos }).is_err() {
                tracing::error!(%month, nanos, "budget journal stopped; settled spend not persisted");
            }
        }
        seq
    }

    /// The sequence number of the last entry queued.
    pub fn last_queued(&self) -> u64 {
        lock(&self.sender).0
    }

    /// The highest sequence number whose spend is durable.
    pub fn durable(&self) -> u64 {
        lock(&self.progress.0).durable
    }

    /// Waits until entry `seq` (and every one before it) is durable; `false` on timeout.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let (progress, changed) = &*self.progress;
        let guard = lock(progress);
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |p| p.durable < seq)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.durable >= seq
    }

    fn close(&self) {
        lock(&self.sender).1 = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drains the journal's channel into the store: everything queued is summed per month
/// and added in one transaction, retried until it succeeds.
async fn write_entries(
    mut receiver: mpsc::UnboundedReceiver<Entry>,
    store: Arc<dyn SpendStore>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
) {
    let mut batch: Vec<Entry> = Vec::new();
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        while let Ok(entry) = receiver.try_recv() {
            batch.push(entry);
        }
        let mut per_month: Vec<(Month, u64)> = Vec::new();
        for entry in &batch {
            match per_month.iter_mut().find(|(m, _)| *m == entry.month) {
                Some((_, sum)) => *sum = sum.saturating_add(entry.nanos),
                None => per_month.push((entry.month, entry.nanos)),
            }
        }
        for (month, nanos) in per_month {
            let mut delay = Duration::from_millis(10);
            while let Err(error) = store.add(month, nanos).await {
                tracing::warn!(%error, %month, "writing settled spend failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        let last = batch.iter().map(|e| e.seq).max().unwrap_or(0);
        batch.clear();
        let (state, changed) = &*progress;
        lock(state).durable = last;
        changed.notify_all();
    }
}

/// Folds the store's settled spend (which includes other replicas' spend when they
/// share it) and external sources into the ledger, every `interval`.
#[derive(Debug, Clone)]
pub struct ReconciliationLoop {
    ledger: Arc<SpendLedger>,
    store: Option<Arc<dyn SpendStore>>,
    sources: Vec<Arc<dyn SpendSource>>,
    interval: Duration,
}

impl ReconciliationLoop {
    /// A loop over `ledger`, reading `store` (if any) and `sources` every `interval`.
    pub fn new(
        ledger: Arc<SpendLedger>,
        store: Option<Arc<dyn SpendStore>>,
        sources: Vec<Arc<dyn SpendSource>>,
        interval: Duration,
    ) -> Self {
        Self {
            ledger,
            store,
            sources,
            interval,
        }
    }

    /// One pass: folds the store and the sources into the ledger.
    pub async fn reconcile_once(&self) {
        let month = self.ledger.month();
        if let Some(store) = &self.store {
            match store.month_total(month).await {
                Ok(total) => {
                    self.ledger.fold_settled(month, total);
                }
                Err(error) => tracing::warn!(%error, "reading settled spend failed"),
            }
        }
        if !self.sources.is_empty() {
            let mut external = 0u64;
            for source in &self.sources {
                match source.month_to_date_usd(month).await {
                    Ok(usd) => external = external.saturating_add(usd_to_nanos(usd)),
                    Err(error) => {
                        // Keep the last known external spend rather than forgetting it.
                        tracing::warn!(source = source.name(), %error, "spend source failed; keeping its last value");
                        return;
                    }
                }
            }
            self.ledger.set_external(month, external);
        }
    }

    /// Runs until `cancel` is cancelled; the first pass runs at once.
    pub async fn run(self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticks.tick() => self.reconcile_once().await,
            }
        }
    }

    /// Spawns the loop on the current tokio runtime.
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }
}

/// The journal and the reconciliation loop on their own background thread; stopped
/// (after writing everything queued) when dropped.
#[derive(Debug)]
pub(crate) struct Background {
    pub(crate) journal: Journal,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Loads the current month from `store` into `ledger`, then starts the writer and
    /// (when `interval` is set) the loop.
    pub(crate) fn start(
        ledger: &Arc<SpendLedger>,
        store: Arc<dyn SpendStore>,
        sources: Vec<Arc<dyn SpendSource>>,
        interval: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StoreError {
                location: "budget background runtime".to_owned(),
                message: e.to_string(),
            })?;
        let month = ledger.month();
        let settled = runtime.block_on(store.month_total(month))?;
        ledger.fold_settled(month, settled);

        let (sender, receiver) = mpsc::unbounded_channel();
        let (journal, progress) = Journal::new(sender);
        let cancel = CancellationToken::new();
        let reconciliation = interval.map(|interval| {
            ReconciliationLoop::new(
                Arc::clone(ledger),
                Some(Arc::clone(&store)),
                sources,
                interval,
            )
        });
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("nexus-budget".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let writer = tokio::spawn(write_entries(receiver, store, progress));
                    if let Some(reconciliation) = reconciliation {
                        tokio::spawn(reconciliation.run(stop.clone()));
                    }
                    // The writer ends when the journal closes its sender and the
                    // channel is drained.
                    let _ = writer.await;
                    stop.cancel();
                });
            })
            .map_err(|e| StoreError {
                location: "budget background thread".to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            journal,
            cancel,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.journal.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.cancel.cancel();
    }
}
