//! Several replicas share one budget through one Redis and reserve concurrently with
//! random costs: together they never pass the limit, every settled nano-dollar reaches
//! Redis, and refusals only begin once at least 95 % of the limit is committed (a
//! budget that is "safe" by refusing early would fail this).
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_budget::lease::{LeaseClient, RedisBudgetSettings, Refusal};
use nexus_core::clock::{Clock, SystemClock};
use redis_server::RedisServer;

const LIMIT: u64 = 1_000_000_000; // 1 USD in nano-dollars
const REPLICAS: usize = 4;
const WORKERS_PER_REPLICA: usize = 3;

/// xorshift64*: random enough for costs, reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

#[derive(Default)]
struct Totals {
    /// Actual spend settled by the workers.
    spent: AtomicU64,
    /// Reserved by requests in flight.
    in_flight: AtomicU64,
    /// Committed spend (spent + in flight) when the first worker met a refusal that no
    /// lease could cure: the pool had less than its cost left once every replica had
    /// given back what it held above its target.
    first_refusal: Mutex<Option<u64>>,
}

#[test]
fn replicas_never_pass_the_limit_and_spend_it_before_refusing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("seed {seed}");
    let mut settings = RedisBudgetSettings::new(server.url());
    settings.key_prefix = "concurrency".to_owned();
    settings.min_lease_usd = 0.002;
    settings.max_lease_usd = 0.05;
    settings.settle_interval_ms = 20;
    // Heartbeats every second (lease_ttl_secs / 6): a refused worker waits for every
    // replica's next calls, idle ones included.
    settings.lease_ttl_secs = 6;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let clients: Vec<Arc<LeaseClient>> = (0..REPLICAS)
        .map(|_| {
            let client =
                LeaseClient::start(&settings, "global", LIMIT, None, Arc::clone(&clock)).unwrap();
            assert!(client.wait_ready(Duration::from_secs(10)));
            Arc::new(client)
        })
        .collect();
    let totals = Arc::new(Totals::default());

    std::thread::scope(|scope| {
        for (r, client) in clients.iter().enumerate() {
            for w in 0..WORKERS_PER_REPLICA {
                let (client, clients, totals, clock) = (
                    Arc::clone(client),
                    &clients,
                    Arc::clone(&totals),
                    Arc::clone(&clock),
                );
                let mut rng = Rng(seed.wrapping_add((r * 31 + w) as u64 * 0x9E37_79B9));
                scope.spawn(move || worker(&client, clients, &totals, &*clock, &mut rng));
            }
        }
    });

    let committed_at_refusal = totals.first_refusal.lock().unwrap().unwrap_or(0);
    let spent = totals.spent.load(Ordering::SeqCst);
    eprintln!("spent {spent} of {LIMIT}; first refusal at {committed_at_refusal}");
    assert!(spent <= LIMIT, "spent {spent} > limit {LIMIT}");
    assert!(
        committed_at_refusal * 100 >= LIMIT * 95,
        "refusals began at {committed_at_refusal} committed, below 95 % of {LIMIT} (seed {seed})"
    );
    // Shutting the replicas down sends every settlement and gives back every lease.
    let month = clients[0].status().month.unwrap();
    drop(clients);
    let settled = server.integer(&["GET", &format!("concurrency:{{global}}:{month}:settled")]);
    assert_eq!(
        settled as u64, spent,
        "every settled nano-dollar reached Redis, once"
    );
    let leases = server.command(&["HLEN", &format!("concurrency:{{global}}:{month}:leases")]);
    assert_eq!(leases, ":0\r\n");
}

/// Reserves random costs until a refusal that no lease can cure (the budget is gone, not
/// just this replica's top-up late or taken by its other workers), settling each
/// request at 50 to 100 % of its reservation.
fn worker(
    client: &LeaseClient,
    clients: &[Arc<LeaseClient>],
    totals: &Totals,
    clock: &dyn Clock,
    rng: &mut Rng,
) {
    let allowance = client.allowance();
    loop {
        let cost = rng.between(10_000, 1_000_000);
        let mut decided = clock.now_secs();
        let mut drawn = allowance.try_draw(cost, decided);
        // A refusal is final only when the pool cannot cover the cost once the leases
        // have been cut to size. How soon that is depends on when each replica's thread
        // gets to run, so wait for the calls themselves, never for a time.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut others_synced = false;
        while let Err(Refusal::Insufficient { .. }) = drawn {
            // Two calls of this replica: the second, at least, asks for a lease that
            // fits `cost`.
            let syncs = client.status().syncs;
            assert!(client.wait_for_syncs(syncs + 2, Duration::from_secs(10)));
            decided = clock.now_secs();
            drawn = allowance.try_draw(cost, decided);
            if drawn.is_ok() {
                break;
            }
            let status = client.status();
            let free = status
                .limit_nanos
                .saturating_sub(status.settled_nanos + status.leased_nanos);
            if free >= cost {
                // The pool has it: this replica's other workers drew the top-up first.
                others_synced = false;
            } else if others_synced {
                break; // the rest is spent, or held by the replicas within their targets
            } else {
                // Held by the other replicas: each gives back what it holds above its
                // target at its next calls (two: the first gives back above the target
                // it last heard, the second above the one the first brought).
                let seen: Vec<u64> = clients.iter().map(|c| c.status().syncs).collect();
                for (replica, syncs) in clients.iter().zip(seen) {
                    assert!(replica.wait_for_syncs(syncs + 2, Duration::from_secs(10)));
                }
                others_synced = true;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "refused for 30 s while the pool had {free} nano-dollars free: {status:?}"
            );
        }
        match drawn {
            Ok(()) => {
                totals.in_flight.fetch_add(cost, Ordering::SeqCst);
                std::thread::yield_now();
                let actual = cost * rng.between(50, 100) / 100;
                totals.spent.fetch_add(actual, Ordering::SeqCst);
                totals.in_flight.fetch_sub(cost, Ordering::SeqCst);
                allowance.settle(cost, actual, decided);
            }
            Err(Refusal::Insufficient { .. }) => {
                let committed =
                    totals.spent.load(Ordering::SeqCst) + totals.in_flight.load(Ordering::SeqCst);
                totals
                    .first_refusal
                    .lock()
                    .unwrap()
                    .get_or_insert(committed);
                return;
            }
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
}
