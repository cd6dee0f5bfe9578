//! [`LeaseClient`]: the background side of a shared budget. It owns the [`Allowance`]
//! decisions draw from and keeps it true to Redis: top-ups before it runs out,
//! settlements in batches, heartbeats, the month change, and the give-back at shutdown.
//!
//! It runs on a small runtime of its own, on one thread, like the journal, so that a
//! router built from a config file needs no async wiring; decisions never wait for it.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nexus_core::clock::Clock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::MAX_EXACT_NANOS;
use super::script::SyncScript;
use super::state::{LeaseParams, LeaseState};
use super::{Allowance, OnUnavailable, RedisBudgetSettings};
use crate::{usd_to_nanos, Month, SpendLedger};

/// How often the task looks at the allowance (a few atomic loads; no I/O unless due).
const POLL: Duration = Duration::from_millis(10);
/// While no free budget is left, top-ups are asked for at most this often.
const STARVED_RETRY: Duration = Duration::from_millis(250);
/// Retries after a failed call wait this long, doubling up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between retries while Redis does not answer: how long paid
/// requests may stay refused (`fail_closed`) after Redis is back.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Warnings about an unreachable Redis: at most one per this.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The lease client could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A setting is wrong; the message names the key and the fix.
    #[error("[routing.budget.redis] {0}")]
    Settings(String),
    /// The background thread or its runtime could not start.
    #[error("budget lease background task: {0}")]
    Runtime(String),
}

/// What the lease client knows, for `nexus check`, status pages and tests. Amounts in
/// nano-dollars, as of the last answer from Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseStatus {
    /// This process's name in Redis (unique per process).
    pub replica: String,
    /// The budget scope (`global`, or a tenant).
    pub scope: String,
    /// The month of the current lease.
    pub month: Option<Month>,
    /// The limit the leases are cut from.
    pub limit_nanos: u64,
    /// Settled spend of the month, every replica.
    pub settled_nanos: u64,
    /// Every replica's lease, this one's included.
    pub leased_nanos: u64,
    /// This replica's lease.
    pub lease_nanos: u64,
    /// The lease size this replica aims for.
    pub target_nanos: u64,
    /// What decisions here can still draw (negative: a debt).
    pub allowance_nanos: i64,
    /// Spend settled here that Redis has not confirmed yet.
    pub unconfirmed_nanos: u64,
    /// Replicas holding a live lease.
    pub live_replicas: u64,
    /// Whether the last call answered.
    pub connected: bool,
    /// Calls that answered, and calls that failed or timed out.
    pub syncs: u64,
    /// See `syncs`.
    pub failures: u64,
    /// Lease that expired in Redis while this replica held it (it was cut off).
    pub lost_nanos: u64,
    /// The last error, if the last call failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    allowance: Allowance,
    status: Mutex<LeaseStatus>,
    changed: Condvar,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, LeaseStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Holds this replica's lease of a shared budget; see the [module docs](super).
///
/// Dropping it gives back what is left of the lease and sends what was settled
/// (bounded by `timeout_ms`), then stops the background thread.
#[derive(Debug)]
pub struct LeaseClient {
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl LeaseClient {
    /// Starts the background task for budget `scope` (`"global"`, or a tenant id) with
    /// `limit_nanos` a month. Returns at once: the first lease arrives when Redis
    /// answers, and until then nothing paid is drawn. With a `ledger`, every answer
    /// folds the month's settled spend (every replica's) into it, so that its status
    /// reflects the shared budget.
    pub fn start(
        settings: &RedisBudgetSettings,
        scope: &str,
        limit_nanos: u64,
        ledger: Option<Arc<SpendLedger>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LeaseError> {
        Self::start_with(settings, scope, limit_nanos, ledger, clock, None)
    }

    /// [`start`](Self::start), with the script's clock replaced by `server_clock`
    /// (tests of the month change only).
    fn start_with(
        settings: &RedisBudgetSettings,
        scope: &str,
        limit_nanos: u64,
        ledger: Option<Arc<SpendLedger>>,
        clock: Arc<dyn Clock>,
        server_clock: Option<Arc<dyn Clock>>,
    ) -> Result<Self, LeaseError> {
        settings.validate().map_err(LeaseError::Settings)?;
        super::check_scope(scope).map_err(LeaseError::Settings)?;
        if limit_nanos >= MAX_EXACT_NANOS {
            return Err(LeaseError::Settings(format!(
                "a shared budget holds at most {} USD a month (amounts must stay exact in Redis's Lua numbers); lower monthly_limit_usd",
                MAX_EXACT_NANOS / 1_000_000_000
            )));
        }
        let url = settings.resolve_url().map_err(LeaseError::Settings)?;
        let client = redis::Client::open(url.as_str()).map_err(|e| {
            // The error may quote the URL, which may hold a password: say only what kind.
            LeaseError::Settings(format!(
                "url is not a valid Redis URL ({:?}); e.g. redis://host:6379/0",
                e.kind()
            ))
        })?;
        let replica = replica_name();
        let shared = Arc::new(Shared {
            allowance: Allowance::new(settings.on_unavailable == OnUnavailable::FailOpen),
            status: Mutex::new(LeaseStatus {
                replica: replica.clone(),
                scope: scope.to_owned(),
                limit_nanos,
                ..LeaseStatus::default()
            }),
            changed: Condvar::new(),
        });
        let state = LeaseState::new(LeaseParams {
            replica,
            limit: limit_nanos,
            min_lease: usd_to_nanos(settings.min_lease_usd),
            max_lease: usd_to_nanos(settings.max_lease_usd),
            ttl_ms: settings.lease_ttl_secs * 1000,
            renew_below: settings.renew_below,
        });
        let task = Task {
            shared: Arc::clone(&shared),
            state,
            script: SyncScript::new(&settings.key_prefix, scope),
            client,
            connection: None,
            settings: settings.clone(),
            ledger,
            clock,
            server_clock,
            last_attempt: None,
            last_answer: None,
            retry_at: None,
            backoff: Duration::ZERO,
            warned_at: None,
            need: 0,
            need_until: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LeaseError::Runtime(e.to_string()))?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nexus-budget-lease".to_owned())
            .spawn(move || runtime.block_on(task.run(stopped)))
            .map_err(|e| LeaseError::Runtime(e.to_string()))?;
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// What decisions draw from.
    pub fn allowance(&self) -> &Allowance {
        &self.shared.allowance
    }

    /// A copy of the current status.
    pub fn status(&self) -> LeaseStatus {
        let mut status = self.shared.status().clone();
        status.allowance_nanos = self.shared.allowance.left();
        status
    }

    /// Waits until Redis has answered `count` calls in all (the first answer makes the
    /// replica ready); `false` on timeout.
    pub fn wait_for_syncs(&self, count: u64, timeout: Duration) -> bool {
        let status = self.shared.status();
        let (status, _) = self
            .shared
            .changed
            .wait_timeout_while(status, timeout, |s| s.syncs < count)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        status.syncs >= count
    }

    /// Waits for the first answer; `false` on timeout.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_for_syncs(1, timeout)
    }
}

impl Drop for LeaseClient {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A name no other process uses: settlements are counted per replica name, so a
/// restarted process must not continue an old one's count.
fn replica_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .unwrap_or_else(|| "nexus".to_owned());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        hasher.finish() as u32
    )
}

struct Task {
    shared: Arc<Shared>,
    state: LeaseState,
    script: SyncScript,
    client: redis::Client,
    connection: Option<ConnectionManager>,
    settings: RedisBudgetSettings,
    ledger: Option<Arc<SpendLedger>>,
    clock: Arc<dyn Clock>,
    server_clock: Option<Arc<dyn Clock>>,
    last_attempt: Option<Instant>,
    last_answer: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    warned_at: Option<Instant>,
    /// The largest request refused recently, and until when it counts: a refusal asks
    /// for a lease that fits it for one heartbeat period (while others may give back
    /// theirs), not only for the next call.
    need: u64,
    need_until: Option<Instant>,
}

impl Task {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            if self.due(Instant::now()) {
                self.sync(false).await;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        self.sync(true).await;
        let unsent = self.state.unconfirmed();
        if unsent > 0 {
            tracing::error!(
                unsent_nanos = unsent,
                "budget lease: settled spend could not be sent to Redis before shutdown"
            );
        }
    }

    /// Whether a call is due: no lease yet, a heartbeat, the month's end, a low
    /// allowance, or settlements waiting.
    fn due(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        let Some(current) = self.state.current else {
            return true;
        };
        let since = |at: Option<Instant>| at.map_or(Duration::MAX, |at| now - at);
        let ttl = self.settings.lease_ttl();
        if since(self.last_answer.max(self.last_attempt)) >= ttl / 6 {
            return true;
        }
        let server_now_ms = i128::from(self.now_ms()) + i128::from(self.state.offset_ms);
        if server_now_ms >= i128::from(current.month.next().start_unix_secs() * 1000) {
            return true;
        }
        let refused = self.need(now);
        let allowance = &self.shared.allowance;
        if self.state.below_low_water(allowance, refused)
            && (!current.starved || since(self.last_attempt) >= STARVED_RETRY)
        {
            return true;
        }
        let interval = Duration::from_millis(self.settings.settle_interval_ms);
        since(self.last_attempt) >= interval && self.state.has_unsent(allowance)
    }

    /// The recent need, after taking in the refusals since the last call.
    fn need(&mut self, now: Instant) -> u64 {
        let refused = self.shared.allowance.take_largest_refused();
        if refused > 0 {
            self.need = self.need.max(refused);
            self.need_until = Some(now + self.settings.lease_ttl() / 6);
        }
        if self.need_until.is_some_and(|until| now >= until) {
            self.need = 0;
            self.need_until = None;
        }
        self.need
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_nanos() / 1_000_000
    }

    fn connection(&mut self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(
                self.settings.connect_timeout_ms,
            )))
            .set_response_timeout(Some(Duration::from_millis(self.settings.timeout_ms)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn sync(&mut self, release: bool) {
        let started = Instant::now();
        self.last_attempt = Some(started);
        let sent_ms = self.now_ms();
        let server_now = self
            .server_clock
            .as_ref()
            .map(|c| c.now_nanos() / 1_000_000);
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let shared = Arc::clone(&self.shared);
        let allowance = &shared.allowance;
        let need = if release { 0 } else { self.need(started) };
        let result = match self.connection() {
            Ok(mut connection) => {
                let request = self.state.prepare(allowance, need, release, server_now);
                match tokio::time::timeout(timeout, self.script.call(&mut connection, &request))
                    .await
                {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!(
                        "no answer within timeout_ms = {}",
                        timeout.as_millis()
                    )),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(reply) => {
                let received_ms = self.now_ms();
                let applied = self
                    .state
                    .apply(allowance, reply, sent_ms, received_ms, release);
                self.last_answer = Some(Instant::now());
                if allowance.left() >= i64::try_from(self.need).unwrap_or(i64::MAX) {
                    self.need = 0;
                    self.need_until = None;
                }
                self.retry_at = None;
                self.backoff = Duration::ZERO;
                if let Some(ledger) = &self.ledger {
                    // Ignored by the ledger once that month has closed.
                    ledger.fold_settled(reply.month, reply.settled);
                }
                if applied.new_month {
                    tracing::info!(month = %reply.month, lease_nanos = reply.lease, "budget lease: month started");
                }
                if applied.lost > 0 {
                    tracing::warn!(lost_nanos = applied.lost, "budget lease: the lease expired in Redis while this replica was cut off; taken back from the allowance");
                }
                let mut status = self.shared.status();
                if !status.connected && status.failures > 0 {
                    tracing::info!("budget lease: Redis answers again");
                }
                status.month = Some(reply.month);
                status.settled_nanos = reply.settled;
                status.leased_nanos = reply.leased;
                status.lease_nanos = reply.lease;
                status.target_nanos = reply.target;
                status.live_replicas = reply.live;
                status.unconfirmed_nanos = self.state.unconfirmed();
                status.connected = true;
                status.syncs += 1;
                status.lost_nanos += applied.lost;
                status.last_error = None;
                drop(status);
                self.shared.changed.notify_all();
            }
            Err(error) => {
                if self.settings.on_unavailable == OnUnavailable::FailOpen && !release {
                    // No top-up can come while Redis does not answer, and fail_open
                    // promises local accounting meanwhile: expire the lease now, so
                    // that a lease spent before its deadline does not refuse paid
                    // requests. The next answer sets the deadline again.
                    allowance.set_deadline(0);
                    if let Some(month) = self.state.start_month_locally(allowance, self.now_ms()) {
                        tracing::warn!(%month, "budget lease: the month changed while Redis is unreachable; its spend is counted here until Redis answers");
                    }
                }
                // redis's connection manager would hand the next call the outcome of the
                // reconnect this failure started: a call just after Redis is back would
                // still fail, and recovery would wait one back-off more. Start afresh, so
                // that the next call connects by itself.
                self.connection = None;
                self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                self.retry_at = Some(Instant::now() + self.backoff);
                self.warn_unavailable(&error);
                let mut status = self.shared.status();
                status.connected = false;
                status.failures += 1;
                status.unconfirmed_nanos = self.state.unconfirmed();
                status.last_error = Some(error);
                drop(status);
                self.shared.changed.notify_all();
            }
        }
    }

    /// One warning a minute while Redis is unreachable, never one per request.
    fn warn_unavailable(&mut self, error: &str) {
        let now = Instant::now();
        if self.warned_at.is_some_and(|at| now - at < WARN_EVERY) {
            return;
        }
        self.warned_at = Some(now);
        let mode = self.settings.on_unavailable;
        let then = match mode {
            OnUnavailable::FailClosed => "spending only what the lease holds, then paid backends count as over budget",
            OnUnavailable::FailOpen => "paid requests are routed on local accounting until it answers; spend is sent when Redis is back",
        };
        tracing::warn!(
            error,
            on_unavailable = mode.as_str(),
            unsent_nanos = self.state.unconfirmed(),
            "budget lease: Redis unreachable; {then}"
        );
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
