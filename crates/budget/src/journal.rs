//! The background side of the budget: the [`Journal`] that makes settled spend durable,
//! and the [`ReconciliationLoop`] that folds the store and external [`SpendSource`]s
//! into the ledger the decisions read.
//!
//! Both run on a small runtime of their own, on one background thread, so that a
//! router built from a config file needs no wiring; the loop can also be spawned on an
//! application's own tokio runtime. Neither is ever waited on by a decision.
//!
//! Shutdown is bounded: dropping the owner closes the journal, waits up to its flush
//! deadline for the queue to reach the store, then tells the writer to give up (it logs
//! what was left unpersisted) and waits a moment more for the thread to end. A thread
//! stuck inside the store (a hung file system) is left behind rather than waited on.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    nanos_to_usd, usd_to_nanos, Month, SpendLedger, SpendStore, StoreError, StoreErrorKind,
};

/// A source of spend the router did not settle itself, e.g. a provider's billing API.
#[async_trait]
pub trait SpendSource: Send + Sync + fmt::Debug {
    /// A name for logs.
    fn name(&self) -> &str;

    /// Month-to-date spend in USD for `month`.
    async fn month_to_date_usd(&self, month: Month) -> Result<f64, StoreError>;
}

/// One settled amount on its way to the store: the global spend (`tenant: None`) or a
/// tenant's share of it.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    tenant: Option<Arc<str>>,
    month: Month,
    nanos: u64,
}

/// Where an amount is summed before it is written: the global month or a tenant's.
/// Global months sort first, so they are written first.
type Slot = (Option<Arc<str>>, Month);

/// What the writer has done, shared by the journal, the writer and the thread.
#[derive(Debug, Default)]
struct Progress {
    /// Every entry up to this sequence number is durable.
    durable: u64,
    /// The last write error, while writes fail.
    error: Option<String>,
    /// The background thread has ended (and dropped everything it held).
    thread_done: bool,
}

/// The state behind a [`Journal`] that its background writer updates.
#[derive(Debug)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Nano-dollars recorded and not yet durable.
    pending_nanos: AtomicU64,
    /// How long dropping the journal's owner waits for the queue to be written, in ms.
    flush_deadline_ms: AtomicU64,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut lock(&self.progress));
        self.changed.notify_all();
    }

    /// Waits until `done` holds or `timeout` passes; whether it holds.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&Progress) -> bool) -> bool {
        let guard = lock(&self.progress);
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |p| !done(p))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        done(&guard)
    }
}

/// How far the [`Journal`] is behind: settled spend recorded but not yet durable. A
/// gateway reports it (a health endpoint, a metric); it only grows while the store
/// refuses writes, e.g. on a full disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalLag {
    /// Settlements recorded and not yet durable.
    pub entries: u64,
    /// Their amount in nano-dollars.
    pub nanos: u64,
    /// The last write error, while writes are failing; `None` when the store takes them.
    pub error: Option<String>,
}

impl JournalLag {
    /// The amount not yet durable, in USD.
    pub fn usd(&self) -> f64 {
        nanos_to_usd(self.nanos)
    }

    /// Whether anything is waiting to be written.
    pub fn is_behind(&self) -> bool {
        self.entries > 0
    }
}

/// How long a journal's owner waits, when dropped, for the queue to be written.
pub const DEFAULT_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// Writes settled spend to a [`SpendStore`] in the background, in batches; see
/// [`Journal::wait_durable`] for acknowledgements and [`Journal::lag`] for what is not
/// durable yet.
///
/// A write that fails (a full disk) keeps its entries queued, with everything recorded
/// after them, and is retried with backoff; the failure is logged at error level with
/// the amount at stake, and the store reopens itself so that writes succeed once the
/// cause is gone. Dropping the stage that owns the journal waits up to
/// [`flush_deadline`](Self::set_flush_deadline) for the queue, then gives up, logs what
/// was left unpersisted, and returns.
#[derive(Debug)]
pub struct Journal {
    sender: Mutex<(u64, Option<mpsc::UnboundedSender<Entry>>)>,
    shared: Arc<Shared>,
    location: String,
}

impl Journal {
    fn new(sender: mpsc::UnboundedSender<Entry>, location: String) -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
            pending_nanos: AtomicU64::new(0),
            flush_deadline_ms: AtomicU64::new(millis(DEFAULT_FLUSH_DEADLINE)),
        });
        (
            Self {
                sender: Mutex::new((0, Some(sender))),
                shared: Arc::clone(&shared),
                location,
            },
            shared,
        )
    }

    /// Queues `nanos` of settled spend for `month`; returns its sequence number.
    pub fn record(&self, month: Month, nanos: u64) -> u64 {
        self.queue(None, month, nanos)
    }

    /// Queues `nanos` of tenant `tenant`'s settled spend for `month` (its share of what
    /// [`record`](Self::record) counts globally, so it is not counted again in
    /// [`lag`](Self::lag)'s amount); returns its sequence number. Cloning the id's `Arc`
    /// allocates nothing.
    pub fn record_tenant(&self, tenant: &Arc<str>, month: Month, nanos: u64) -> u64 {
        self.queue(Some(Arc::clone(tenant)), month, nanos)
    }

    fn queue(&self, tenant: Option<Arc<str>>, month: Month, nanos: u64) -> u64 {
        let mut sender = lock(&self.sender);
        sender.0 += 1;
        let seq = sender.0;
        let counted = if tenant.is_none() { nanos } else { 0 };
        let entry = Entry {
            seq,
            tenant,
            month,
            nanos,
        };
        let lost = match &sender.1 {
            Some(tx) => {
                self.shared
                    .pending_nanos
                    .fetch_add(counted, Ordering::AcqRel);
                let sent = tx.send(entry);
                sent.err().map(|e| {
                    self.shared
                        .pending_nanos
                        .fetch_sub(counted, Ordering::AcqRel);
                    (e.0, "budget journal stopped; settled spend not persisted")
                })
            }
            None => Some((entry, "budget journal closed; settled spend not persisted")),
        };
        if let Some((entry, message)) = lost {
            let tenant = entry.tenant.as_deref().unwrap_or("(global)");
            tracing::error!(store = %self.location, tenant, %month, usd = nanos_to_usd(nanos), "{message}");
        }
        seq
    }

    /// The sequence number of the last entry queued.
    pub fn last_queued(&self) -> u64 {
        lock(&self.sender).0
    }

    /// The highest sequence number whose spend is durable.
    pub fn durable(&self) -> u64 {
        lock(&self.shared.progress).durable
    }

    /// Waits until entry `seq` (and every one before it) is durable; `false` on timeout.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        self.shared.wait_for(timeout, |p| p.durable >= seq)
    }

    /// What is recorded but not yet durable, and why when writes are failing.
    pub fn lag(&self) -> JournalLag {
        let last = self.last_queued();
        let progress = lock(&self.shared.progress);
        JournalLag {
            entries: last.saturating_sub(progress.durable),
            nanos: self.shared.pending_nanos.load(Ordering::Acquire),
            error: progress.error.clone(),
        }
    }

    /// The store it writes to.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Sets how long dropping the journal's owner waits for queued spend to be written
    /// before giving up (default [`DEFAULT_FLUSH_DEADLINE`]).
    pub fn set_flush_deadline(&self, deadline: Duration) {
        self.shared
            .flush_deadline_ms
            .store(millis(deadline), Ordering::Release);
    }

    fn flush_deadline(&self) -> Duration {
        Duration::from_millis(self.shared.flush_deadline_ms.load(Ordering::Acquire))
    }

    fn close(&self) {
        lock(&self.sender).1 = None;
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often a journal whose writes keep failing says so again at error level.
const REPEAT_FAILURE_LOG: Duration = Duration::from_secs(60);

/// Drains the journal's channel into the store: everything queued is summed per month
/// and written, month by month; a month whose write fails stays queued (with what
/// arrives meanwhile) and is retried with backoff until it succeeds or `give_up`.
async fn write_entries(
    mut receiver: mpsc::UnboundedReceiver<Entry>,
    store: Arc<dyn SpendStore>,
    shared: Arc<Shared>,
    give_up: CancellationToken,
) {
    let location = store.location();
    let mut pending: BTreeMap<Slot, u64> = BTreeMap::new();
    let mut last_seq = 0u64;
    let mut open = true;
    let mut delay = Duration::from_millis(10);
    let mut failing_since: Option<(Instant, Instant)> = None;
    loop {
        if pending.is_empty() {
            if !open {
                break;
            }
            match receiver.recv().await {
                Some(entry) => last_seq = add_entry(&mut pending, entry),
                None => break,
            }
        }
        loop {
            match receiver.try_recv() {
                Ok(entry) => last_seq = add_entry(&mut pending, entry),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let mut failure = None;
        while let Some(((tenant, month), &nanos)) = pending.first_key_value() {
            let written = match tenant {
                None => store.add(*month, nanos).await,
                Some(tenant) => store.add_tenant(tenant, *month, nanos).await,
            };
            match written {
                Ok(()) => {
                    if let Some(((tenant, _), _)) = pending.pop_first() {
                        if tenant.is_none() {
                            shared.pending_nanos.fetch_sub(nanos, Ordering::AcqRel);
                        }
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let Some(error) = failure else {
            if let Some((since, _)) = failing_since.take() {
                tracing::warn!(store = %location, after = ?since.elapsed(), "the spend store takes writes again; queued settled spend is durable");
            }
            delay = Duration::from_millis(10);
            shared.update(|p| {
                p.durable = last_seq;
                p.error = None;
            });
            continue;
        };
        let behind = last_seq.saturating_sub(lock(&shared.progress).durable);
        let usd = nanos_to_usd(shared.pending_nanos.load(Ordering::Acquire));
        let now = Instant::now();
        match &mut failing_since {
            None => {
                failing_since = Some((now, now));
                tracing::error!(store = %location, %error, settlements = behind, usd, "settled spend is NOT durable: writing to the spend store failed; it stays queued in memory and is retried, but is lost if the process ends before the store takes it");
            }
            Some((since, reported)) if now.duration_since(*reported) >= REPEAT_FAILURE_LOG => {
                *reported = now;
                tracing::error!(store = %location, %error, settlements = behind, usd, failing_for = ?since.elapsed(), "settled spend is still NOT durable: the spend store keeps refusing writes");
            }
            Some(_) => {
                tracing::debug!(store = %location, %error, "writing settled spend failed again; retrying");
            }
        }
        shared.update(|p| p.error = Some(error.to_string()));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = give_up.cancelled() => break,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    if !pending.is_empty() {
        let behind = last_seq.saturating_sub(lock(&shared.progress).durable);
        let usd = nanos_to_usd(shared.pending_nanos.load(Ordering::Acquire));
        tracing::error!(store = %location, settlements = behind, usd, "the budget journal stopped before the spend store took everything: this settled spend is lost, and the store undercounts the month by that much");
    }
}

/// Sums `entry` into its slot; returns its sequence number.
fn add_entry(pending: &mut BTreeMap<Slot, u64>, entry: Entry) -> u64 {
    let sum = pending.entry((entry.tenant, entry.month)).or_default();
    *sum = sum.saturating_add(entry.nanos);
    entry.seq
}

/// Folds the store's settled spend (which includes what other routers sharing it
/// settled) and external sources into the ledger, every `interval`.
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

/// How long a background thread that was told to give up gets to end before it is left
/// behind: it only has to finish the store call it is in.
const GIVE_UP_GRACE: Duration = Duration::from_secs(2);

/// The journal and the reconciliation loop on their own background thread; stopped
/// when dropped, within the journal's flush deadline (see the module docs).
#[derive(Debug)]
pub(crate) struct Background {
    pub(crate) journal: Journal,
    /// Each tenant's settled spend in the store when it started, for the month the
    /// ledger was in: folded into the tenant's ledger when the router attaches tenants.
    tenants_at_start: (Month, BTreeMap<Box<str>, u64>),
    shared: Arc<Shared>,
    /// Stops the reconciliation loop.
    cancel: CancellationToken,
    /// Tells the writer to stop retrying.
    give_up: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Marks the background thread done when dropped: after its runtime, and with it every
/// task and the store they held, is gone; also if the thread panics.
struct ThreadDone(Arc<Shared>);

impl Drop for ThreadDone {
    fn drop(&mut self) {
        self.0.update(|p| p.thread_done = true);
    }
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
        let failed = |what: &str, e: std::io::Error| {
            StoreError::new(StoreErrorKind::Other, what, e.to_string())
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| failed("budget background runtime", e))?;
        let month = ledger.month();
        let settled = runtime.block_on(store.month_total(month))?;
        ledger.fold_settled(month, settled);
        let tenants = runtime
            .block_on(store.tenant_months(month))?
            .into_iter()
            .map(|(id, nanos)| (id.into_boxed_str(), nanos))
            .collect();

        let (sender, receiver) = mpsc::unbounded_channel();
        let (journal, shared) = Journal::new(sender, store.location());
        let cancel = CancellationToken::new();
        let give_up = CancellationToken::new();
        let reconciliation = interval.map(|interval| {
            ReconciliationLoop::new(
                Arc::clone(ledger),
                Some(Arc::clone(&store)),
                sources,
                interval,
            )
        });
        let stop = cancel.clone();
        let writer = write_entries(receiver, store, Arc::clone(&shared), give_up.clone());
        let done = ThreadDone(Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("nexus-budget".to_owned())
            .spawn(move || {
                let _done = done;
                runtime.block_on(async move {
                    let writer = tokio::spawn(writer);
                    if let Some(reconciliation) = reconciliation {
                        tokio::spawn(reconciliation.run(stop.clone()));
                    }
                    // The writer ends when the journal closes its sender and the
                    // channel is drained, or when told to give up.
                    let _ = writer.await;
                    stop.cancel();
                });
                // Dropping the runtime drops the loop's task and the store it holds,
                // before `_done` says the thread is done.
                drop(runtime);
            })
            .map_err(|e| failed("budget background thread", e))?;
        Ok(Self {
            journal,
            tenants_at_start: (month, tenants),
            shared,
            cancel,
            give_up,
            thread: Some(thread),
        })
    }
}

impl Background {
    /// Folds tenant `id`'s settled spend, as the store held it at start, into `ledger`
    /// (a no-op once the month has turned, or when the ledger already counts more).
    pub(crate) fn fold_tenant(&self, id: &str, ledger: &SpendLedger) {
        let (month, tenants) = &self.tenants_at_start;
        if let Some(&nanos) = tenants.get(id) {
            ledger.fold_settled(*month, nanos);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.journal.close();
        self.cancel.cancel();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = self.journal.flush_deadline();
        let mut done = self.shared.wait_for(deadline, |p| p.thread_done);
        if !done {
            let lag = self.journal.lag();
            tracing::error!(
                store = %self.journal.location,
                settlements = lag.entries,
                usd = lag.usd(),
                error = lag.error.as_deref().unwrap_or("none"),
                "the spend store did not take the queued settled spend within the {deadline:?} flush deadline; giving up on it"
            );
            self.give_up.cancel();
            done = self.shared.wait_for(GIVE_UP_GRACE, |p| p.thread_done);
        }
        if done {
            let _ = thread.join();
        } else {
            tracing::error!(
                store = %self.journal.location,
                "the budget background thread is stuck in a call to the spend store; leaving it behind"
            );
        }
    }
}
