//! The checks every fault test runs after its fault: the gateway still serves, nothing
//! is left in flight or reserved, no file descriptor or task leaked, and the spend
//! recorded is what the upstreams reported, at the configured prices.

use std::time::Duration;

use nexus_testkit::MockUpstream;
use serde_json::Value;

use super::Served;

/// The price of every model in the fault tests' configs, per million tokens.
pub const INPUT_USD_PER_MTOK: f64 = 1000.0;
/// See [`INPUT_USD_PER_MTOK`].
pub const OUTPUT_USD_PER_MTOK: f64 = 2000.0;

/// A cloud backend serving `m` at the fault tests' prices.
pub fn priced_backend(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[backends]]\nid = \"{id}\"\nurl = \"{url}\"\nzone = \"cloud\"\n{extra}\n  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = {INPUT_USD_PER_MTOK}\n  output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}\n"
    )
}

/// A budget large enough never to refuse, so that spend and reservations are tracked.
pub const BUDGET: &str = "\n[routing.budget]\nmonthly_limit_usd = 1000000.0\n";

/// Runs the tests of one file one at a time: file descriptors are counted for the whole
/// process, so a test that opens sockets while another counts would look like a leak.
/// Take it first thing in every test of a file that runs [`after_fault`].
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Open file descriptors of this process (the gateway, the mocks and the test's
/// clients all live in it).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(Iterator::count)
        .unwrap_or(0)
}

/// Tasks alive on the test's runtime (the gateway's and the mocks' included).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// What the process held before the fault, once the gateway had served one request.
pub struct Baseline {
    pub fds: usize,
    pub tasks: usize,
}

impl Baseline {
    /// Serves one normal request on `model` (so that the pools hold what a working
    /// gateway holds), then counts.
    pub async fn take(served: &Served, model: &str) -> Baseline {
        let answer = served.chat(model).await;
        assert_eq!(answer.status(), 200, "the gateway serves before the fault");
        answer.bytes().await.expect("a body");
        served
            .eventually("the warm-up request settled", |s| s.in_flight() == 0)
            .await;
        Baseline {
            fds: open_fds(),
            tasks: alive_tasks(),
        }
    }
}

/// In flight on every backend, as `GET /v1/nexus/backends` reports it.
pub async fn in_flight_reported(served: &Served) -> u64 {
    let listing: Value = served
        .client
        .get(served.url("/v1/nexus/backends"))
        .send()
        .await
        .expect("the gateway answers")
        .json()
        .await
        .expect("JSON");
    listing["backends"]
        .as_array()
        .expect("a list of backends")
        .iter()
        .map(|b| b["in_flight"].as_u64().expect("in_flight"))
        .sum()
}

/// What the mocks reported, at the fault tests' prices.
pub fn reported_usd(mocks: &[&MockUpstream]) -> f64 {
    mocks
        .iter()
        .map(|mock| {
            let usage = mock.declared_usage();
            usage.prompt_tokens as f64 * INPUT_USD_PER_MTOK / 1e6
                + usage.completion_tokens as f64 * OUTPUT_USD_PER_MTOK / 1e6
        })
        .sum()
}

/// Waits (bounded, 20 s) until `done` holds; says what it last saw otherwise.
async fn settles<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) {
    let mut seen = probe();
    for _ in 0..400 {
        if done(&seen) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = probe();
    }
    panic!("{what}: still {seen:?} after 20 s");
}

/// The checks after a fault, for a gateway serving `m` over `mocks` at the fault tests'
/// prices. `unreported_usd` is the most the gateway may have billed beyond what the
/// mocks reported: its estimate for answers that broke before their usage (0 when every
/// answer either completed or failed before its first byte).
///
/// Idle pooled connections may stay: one per mock (its two sockets and two tasks, the
/// gateway's end and the mock's) on top of the baseline.
pub async fn after_fault(
    served: &Served,
    base: &Baseline,
    mocks: &[&MockUpstream],
    unreported_usd: f64,
) {
    // Spend first: the normal request below adds to both sides alike.
    served
        .eventually("every route settled", |s| s.in_flight() == 0)
        .await;
    let billed = served.settled_usd() - reported_usd(mocks);
    assert!(
        (-1e-9..=unreported_usd + 1e-9).contains(&billed),
        "settled ${} against ${} reported by the upstreams: ${billed} beyond what they reported, at most ${unreported_usd} allowed",
        served.settled_usd(),
        reported_usd(mocks),
    );

    // Still serves.
    for mock in mocks {
        mock.set_fault(None);
    }
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200, "the gateway still serves");
    answer.bytes().await.expect("a body");

    // Nothing in flight, nothing reserved.
    for _ in 0..400 {
        if in_flight_reported(served).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        in_flight_reported(served).await,
        0,
        "in flight returns to 0"
    );
    served
        .eventually("every reservation released", |s| s.reserved_usd() == 0.0)
        .await;
    let billed_now = served.settled_usd() - reported_usd(mocks);
    assert!(
        (billed_now - billed).abs() < 1e-9,
        "the normal request settled at what its upstream reported"
    );

    // No leaks.
    let slack = 2 * mocks.len();
    eprintln!(
        "baseline: {} fds, {} tasks; now {} fds, {} tasks (slack {slack})",
        base.fds,
        base.tasks,
        open_fds(),
        alive_tasks()
    );
    settles(
        "open file descriptors return to the baseline",
        open_fds,
        |&fds| fds <= base.fds + slack,
    )
    .await;
    settles(
        "alive tasks return to the baseline",
        alive_tasks,
        |&tasks| tasks <= base.tasks + slack,
    )
    .await;
}
