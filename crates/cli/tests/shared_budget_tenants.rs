//! Tenants on a shared budget: two gateways on one Redis, two tenants with limits of
//! their own under one global limit, clients of both tenants on both gateways at once.
//! Each tenant's spend counts through its own Redis scope (`{tenant:<id>}`) as well as
//! the global one: no scope's settled spend passes its limit, and the scopes agree with
//! each other and with what the mock upstream declared.
#![allow(clippy::unwrap_used)]

mod shared;

use std::sync::Arc;
use std::time::Duration;

use nexus_testkit::{MockConfig, MockUpstream, MockUsage};
use serde_json::{json, Value};
use shared::RedisServer;

const INPUT_USD_PER_MTOK: u64 = 10;
const OUTPUT_USD_PER_MTOK: u64 = 30;
const MAX_TOKENS: u64 = 40;
const GLOBAL_NANOS: u64 = 300_000_000; // $0.30
const A_NANOS: u64 = 100_000_000; // $0.10
const B_NANOS: u64 = 1_000_000_000; // $1.00: out of reach, the global limit stops B
const CLIENTS: usize = 8;

/// SHA-256 of "sk-team-a" and "sk-team-b" (`printf %s sk-team-a | sha256sum`).
fn digest(key: &str) -> String {
    use std::process::Command;
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(key.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

fn body() -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Summarise the quarterly report in three lines."}],
        "max_tokens": MAX_TOKENS,
    })
}

async fn serve(
    text: &str,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let router = nexus_router::Router::from_toml("tenants.toml", text).expect("a valid config");
    let gateway = nexus_gateway::Gateway::new(router).expect("a gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = nexus_gateway::serve(gateway, listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    (addr, stop, task)
}

/// Spends as `key` through `addr` from `CLIENTS` clients until each is refused 20 times
/// in a row, 50 ms apart (a refusal can be a lease whose top-up is on its way); returns
/// the requests served.
async fn spend(client: reqwest::Client, addr: String, key: &'static str) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, addr) = (client.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut refused_in_a_row = 0;
            for _ in 0..600 {
                let answer = client
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&body())
                    .send()
                    .await
                    .expect("the gateway answers");
                match answer.status().as_u16() {
                    200 => {
                        answer.bytes().await.expect("a body");
                        ok += 1;
                        refused_in_a_row = 0;
                    }
                    429 => {
                        refused_in_a_row += 1;
                        if refused_in_a_row == 20 {
                            return ok;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("unexpected {other}: {}", answer.text().await.unwrap()),
                }
            }
            panic!("never refused");
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a client");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_tenant_counts_through_its_own_scope_and_the_global_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prompt_bound = serde_json::to_vec(&body()).expect("JSON").len() as u64;
    let mut config = MockConfig::serving(["m"]);
    config.record = false;
    config.usage = MockUsage {
        prompt_tokens: prompt_bound,
        completion_tokens: MAX_TOKENS,
    };
    let mock = MockUpstream::start(config).await.expect("a mock");
    let prefix = format!("tenants{}", std::process::id());
    let usd = |nanos: u64| nanos as f64 / 1e9;
    let text = format!(
        r#"[[backends]]
id = "cloud"
url = "{}"
zone = "cloud"
max_concurrency = 64
models = [{{ name = "m", input_usd_per_mtok = {INPUT_USD_PER_MTOK}, output_usd_per_mtok = {OUTPUT_USD_PER_MTOK} }}]

[routing.budget]
monthly_limit_usd = {}
hard_limit_action = "block_all"

[routing.budget.redis]
url = "{}"
key_prefix = "{prefix}"
min_lease_usd = 0.004
max_lease_usd = 0.02
lease_ttl_secs = 6
settle_interval_ms = 100

[[tenants]]
id = "team-a"
key_sha256 = "{}"
monthly_limit_usd = {}

[[tenants]]
id = "team-b"
key_sha256 = "{}"
monthly_limit_usd = {}

[health]
interval_secs = 0
"#,
        mock.url(),
        usd(GLOBAL_NANOS),
        redis.url(),
        digest("sk-team-a"),
        usd(A_NANOS),
        digest("sk-team-b"),
        usd(B_NANOS),
    );
    let (addr1, stop1, task1) = serve(&text).await;
    let (addr2, stop2, task2) = serve(&text).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    // Both gateways have their first leases before traffic starts.
    let month = shared::month_base(&prefix);
    let month = month.rsplit(':').next().expect("a month").to_owned();
    let base = |scope: &str| format!("{prefix}:{{{scope}}}:{month}");
    for scope in ["global", "tenant:team-a", "tenant:team-b"] {
        shared::wait_for_leases(&redis, &base(scope), 2, Duration::from_secs(20));
    }

    let served = Arc::new(std::sync::Mutex::new(0usize));
    let runs = [
        (addr1.clone(), "sk-team-a"),
        (addr2.clone(), "sk-team-a"),
        (addr1.clone(), "sk-team-b"),
        (addr2.clone(), "sk-team-b"),
    ];
    let mut tasks = Vec::new();
    for (addr, key) in runs {
        let (client, served) = (client.clone(), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            let n = spend(client, addr, key).await;
            *served.lock().unwrap() += n;
        }));
    }
    for task in tasks {
        task.await.expect("a run");
    }
    // Stopping the gateways drops their leases, which sends what was settled.
    for (stop, task) in [(stop1, task1), (stop2, task2)] {
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let settled_of = |scope: &str| shared::redis_settled(&redis, &base(scope));
    let mut settled = (0, 0, 0);
    for _ in 0..100 {
        settled = (
            settled_of("global"),
            settled_of("tenant:team-a"),
            settled_of("tenant:team-b"),
        );
        if settled.0 == settled.1 + settled.2 && settled.0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (global, a, b) = settled;
    let declared = mock.declared_usage();
    let tally = (declared.prompt_tokens * INPUT_USD_PER_MTOK
        + declared.completion_tokens * OUTPUT_USD_PER_MTOK)
        * 1_000;
    eprintln!(
        "{} requests served; Redis settled: global ${:.6}, team-a ${:.6}, team-b ${:.6}; the mock declared ${:.6}",
        served.lock().unwrap(),
        usd(global),
        usd(a),
        usd(b),
        usd(tally)
    );
    assert!(
        a <= A_NANOS,
        "team-a's scope settled ${} > its limit",
        usd(a)
    );
    assert!(b <= B_NANOS);
    assert!(
        global <= GLOBAL_NANOS,
        "global settled ${} > the limit",
        usd(global)
    );
    assert_eq!(
        global,
        a + b,
        "every tenant's spend counts in the global scope"
    );
    assert_eq!(tally, global, "Redis holds what the mock declared");
    // Near the limits, not far before them (leases at the end are small).
    assert!(a > A_NANOS * 9 / 10, "team A spent only ${}", usd(a));
    assert!(
        global > GLOBAL_NANOS * 9 / 10,
        "only ${} spent",
        usd(global)
    );
}
