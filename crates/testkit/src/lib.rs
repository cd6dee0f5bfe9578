//! # nexus-testkit
//!
//! Test and bench helpers for Nexus. [`MockUpstream`] is an OpenAI-compatible server (and
//! an Ollama one, as far as health checks look) on a loopback port the OS picks: it
//! answers chat completions (JSON, or server-sent events with a usage chunk when asked),
//! completions, embeddings and the model listings, declares the usage it was configured
//! with, records what reached it, and plays the faults a gateway must survive (refused
//! connections, hangs, resets, trickles, garbage, error statuses, delays). The
//! `nexus-mock` binary serves the same on a given address for load tests. [`MockProxy`]
//! is an HTTP egress proxy (`CONNECT` tunnels and absolute-form forwarding) that records
//! what went through it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use nexus_testkit::{Fault, MockConfig, MockUpstream};
//!
//! let mock = MockUpstream::start(MockConfig::serving(["llama3:8b"])).await?;
//! mock.fault_next(1, Fault::status(500)); // the next inference request fails
//! assert!(mock.base_url().starts_with("http://127.0.0.1:"));
//! assert_eq!(mock.request_count(), 0);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod handlers;
mod openai;
mod proxy;
mod server;

pub use config::{DeclaredUsage, Fault, FaultMix, MockConfig, MockUsage, Recorded};
pub use proxy::{MockProxy, ProxyRequest};

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use server::Serving;

/// A mock OpenAI-compatible upstream, serving until dropped.
///
/// Settings and faults can change while it serves; each request reads them when it
/// arrives. Dropping it closes the listener and every connection (hung answers included).
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Mutex<Option<Serving>>,
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1` and a port the OS picks.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a mock on `addr` (port 0 lets the OS pick).
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound.
    pub async fn start_on(addr: SocketAddr, config: MockConfig) -> io::Result<MockUpstream> {
        let listener = server::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let serving = Serving::start(listener, handlers::router(Arc::clone(&shared)));
        Ok(MockUpstream {
            addr,
            shared,
            serving: Mutex::new(Some(serving)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the root (Ollama's `/api/...` live here).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/v1`, the base URL an OpenAI client takes.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops listening and closes every open connection: new connections are refused
    /// until [`resume_listening`](Self::resume_listening). Returns once the port is closed.
    pub async fn stop_listening(&self) {
        let serving = lock(&self.serving).take();
        if let Some(serving) = serving {
            serving.stop().await;
        }
    }

    /// Listens again on the same address.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound again (another process took the port).
    pub async fn resume_listening(&self) -> io::Result<()> {
        if lock(&self.serving).is_some() {
            return Ok(());
        }
        let listener = server::bind(self.addr).await?;
        let serving = Serving::start(listener, handlers::router(Arc::clone(&self.shared)));
        let mut slot = lock(&self.serving);
        match slot.as_ref() {
            // Resumed twice at once: keep the first, drop this one.
            Some(_) => serving.abort(),
            None => *slot = Some(serving),
        }
        Ok(())
    }

    /// Whether it is listening.
    pub fn is_listening(&self) -> bool {
        lock(&self.serving).is_some()
    }

    /// Plays `fault` on every inference request from now on (`None` clears it).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.shared.fault) = FaultPlan {
            fault,
            ..FaultPlan::default()
        };
    }

    /// Plays `fault` on the next `requests` inference requests, then answers normally.
    pub fn fault_next(&self, requests: u64, fault: Fault) {
        *lock(&self.shared.fault) = FaultPlan {
            fault: (requests > 0).then_some(fault),
            remaining: Some(requests),
            ..FaultPlan::default()
        };
    }

    /// Plays a fault from `mix` on a random share of inference requests from now on (a
    /// soak's background noise); replaces any other fault plan. The draw is a hash of the
    /// mix's seed and the request's number, so a run is repeatable.
    pub fn set_fault_mix(&self, mix: FaultMix) {
        let mut plan = lock(&self.shared.fault);
        *plan = FaultPlan::default();
        plan.played = vec![0; mix.faults.len()];
        plan.mix = (!mix.faults.is_empty() && mix.rate > 0.0).then_some(mix);
    }

    /// How many times each fault of the current [`FaultMix`] was played, in the mix's order
    /// (empty without a mix).
    pub fn faults_played(&self) -> Vec<u64> {
        lock(&self.shared.fault).played.clone()
    }

    /// Makes the listing endpoints (`/v1/models`, `/api/tags`, `/api/ps`) answer 503, as
    /// a backend that is up but unwell would, for health checks.
    pub fn set_listings_failing(&self, failing: bool) {
        self.shared
            .listings_failing
            .store(failing, Ordering::SeqCst);
    }

    /// Sets the delay before every answer's headers.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.config).delay = delay;
    }

    /// Changes the config for the requests that arrive from now on.
    pub fn configure(&self, change: impl FnOnce(&mut MockConfig)) {
        change(&mut lock(&self.shared.config));
    }

    /// The requests received so far, in order (empty when recording is off).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The requests received so far on `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests arrived (counted whether recording is on or off).
    pub fn request_count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests and the counts.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
        self.shared.count.store(0, Ordering::SeqCst);
        *lock(&self.shared.declared) = DeclaredUsage::default();
    }

    /// The usage declared in answers sent so far.
    pub fn declared_usage(&self) -> DeclaredUsage {
        *lock(&self.shared.declared)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(serving) = lock(&self.serving).take() {
            serving.abort();
        }
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("listening", &self.is_listening())
            .field("requests", &self.request_count())
            .finish()
    }
}

/// A fault and how many more requests it applies to (`None`: all), or a random mix.
#[derive(Default)]
struct FaultPlan {
    fault: Option<Fault>,
    remaining: Option<u64>,
    mix: Option<FaultMix>,
    /// Requests drawn for by the mix so far.
    drawn: u64,
    /// Plays of each fault of the mix.
    played: Vec<u64>,
}

/// SplitMix64: a well-mixed 64-bit hash of `x`, for the fault mix's draws.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the handlers share with the [`MockUpstream`] handle. Locks are held for a copy
/// or a push, never across an `.await`.
pub(crate) struct Shared {
    config: Mutex<MockConfig>,
    fault: Mutex<FaultPlan>,
    listings_failing: AtomicBool,
    requests: Mutex<Vec<Recorded>>,
    count: AtomicU64,
    declared: Mutex<DeclaredUsage>,
}

impl Shared {
    fn new(config: MockConfig) -> Shared {
        Shared {
            config: Mutex::new(config),
            fault: Mutex::new(FaultPlan::default()),
            listings_failing: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            declared: Mutex::new(DeclaredUsage::default()),
        }
    }

    /// A copy of the config, for one request.
    pub(crate) fn config(&self) -> MockConfig {
        lock(&self.config).clone()
    }

    /// Counts a request, keeps it if given; returns its number, from 1.
    pub(crate) fn count(&self, recorded: Option<Recorded>) -> u64 {
        if let Some(recorded) = recorded {
            lock(&self.requests).push(recorded);
        }
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The fault for the next inference request, using up one of a limited plan.
    pub(crate) fn take_fault(&self) -> Option<Fault> {
        let mut plan = lock(&self.fault);
        if let Some(mix) = &plan.mix {
            let n = plan.drawn;
            let draw = splitmix64(mix.seed ^ splitmix64(n));
            // The top 53 bits as a fraction in [0, 1).
            let fraction = (draw >> 11) as f64 / (1u64 << 53) as f64;
            let pick = (fraction < mix.rate)
                .then(|| (splitmix64(draw) % mix.faults.len() as u64) as usize);
            let fault = pick.map(|i| mix.faults[i].clone());
            plan.drawn += 1;
            if let Some(i) = pick {
                plan.played[i] += 1;
            }
            return fault;
        }
        match plan.remaining {
            None => plan.fault.clone(),
            Some(0) => None,
            Some(n) => {
                plan.remaining = Some(n - 1);
                if n == 1 {
                    plan.fault.take()
                } else {
                    plan.fault.clone()
                }
            }
        }
    }

    pub(crate) fn listings_failing(&self) -> bool {
        self.listings_failing.load(Ordering::SeqCst)
    }

    /// Adds an answer's usage to the tally.
    pub(crate) fn declare(&self, usage: MockUsage) {
        let mut declared = lock(&self.declared);
        declared.answers += 1;
        declared.prompt_tokens += usage.prompt_tokens;
        declared.completion_tokens += usage.completion_tokens;
    }
}

/// Locks, ignoring poison: a panicking test thread must not hide the mock's state from
/// the assertion that reports it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
