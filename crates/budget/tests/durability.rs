//! Settled spend survives `kill -9`: a child process settles in a loop and acknowledges
//! each settle once the journal reports it durable; the parent kills it with SIGKILL at
//! a random moment, reopens the store, and finds every acknowledged settle. Three
//! rounds, each restarting from what the store holds: a restart never resets the month.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_budget::{usd_to_nanos, BudgetReconciler, BudgetSettings, Month, RedbStore, SpendStore};
use nexus_core::{
    clock::FakeClock, BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, Zone,
};
use nexus_scheduler::Scheduler;

const CHILD_ENV: &str = "NEXUS_DURABILITY_CHILD_STORE";

fn month() -> Month {
    Month::new(2026, 11).unwrap()
}

/// The child: settles forever, printing `ack <total nano-USD>` after each durable settle.
#[test]
#[ignore = "the child process of settled_spend_survives_sigkill; run by it"]
fn durability_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let clock = Arc::new(FakeClock::at_secs(month().start_unix_secs() + 3600));
    let fleet = Arc::new(
        Fleet::new(vec![BackendSpec::new("cloud", "https://api.example.com")
            .with_zone(Zone::Cloud)
            .with_max_concurrency(1_000)
            .with_model(ModelSpec::new("m").with_prices(3.0, 15.0))])
        .unwrap(),
    );
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let budget = Arc::new(
        BudgetReconciler::new(
            Arc::clone(&fleet),
            BudgetSettings::new(1_000_000.0),
            clock.clone(),
        )
        .unwrap()
        .with_store(store, Vec::new())
        .unwrap(),
    );
    let pipeline = Pipeline::builder(fleet)
        .clock(clock)
        .stage(Arc::clone(&budget))
        .selector(Scheduler::new())
        .build()
        .unwrap();
    let mut total = usd_to_nanos(budget.ledger().snapshot().settled_usd);
    let mut out = std::io::stdout().lock();
    writeln!(out, "start {total}").unwrap();
    out.flush().unwrap();
    let journal = budget.journal().unwrap();
    for i in 0u32.. {
        let input = 100 + i % 900;
        let mut decision =
            pipeline.decide(&Request::new("m").input_tokens(input).max_output_tokens(64));
        let guard = decision.take_guard().unwrap();
        let offer = *pipeline
            .fleet()
            .model(guard.ticket().model)
            .offer(guard.ticket().backend)
            .unwrap();
        guard.finish(Outcome::success(Duration::from_millis(1)).usage(input, 64));
        total += usd_to_nanos(offer.cost_usd(input, 64));
        assert!(journal.wait_durable(journal.last_queued(), Duration::from_secs(30)));
        writeln!(out, "ack {total}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn settled_spend_survives_sigkill() {
    let dir = std::env::temp_dir().join(format!("nexus-durability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spend.redb");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut acknowledged = 0u64;

    for round in 0..3u32 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "durability_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a pseudo-random number of acknowledgements: 1 to 300.
        let kill_after = 1 + (seed.rotate_left(round * 11) ^ (round * 7919)) % 300;
        let mut acks = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(start) = line.strip_prefix("start ") {
                let start: u64 = start.parse().unwrap();
                assert!(
                    start >= acknowledged,
                    "round {round}: restarted from {start} < acknowledged {acknowledged}"
                );
            } else if let Some(total) = line.strip_prefix("ack ") {
                acknowledged = total.parse().unwrap();
                acks += 1;
                if acks == kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed");
        assert_eq!(acks, kill_after, "round {round}: the child stopped early");

        let store = RedbStore::open(&path).unwrap();
        let stored = runtime.block_on(store.month_total(month())).unwrap();
        assert!(
            stored >= acknowledged,
            "round {round}: stored {stored} < acknowledged {acknowledged}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
