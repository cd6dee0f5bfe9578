//! A shared-budget fleet for tests: a throwaway Redis, mock cloud upstreams with random
//! prices, token counts and failures, `nexus serve` replicas on one `[routing.budget.redis]`,
//! and clients that drive them and keep a tally of what they were served.
#![allow(dead_code, unreachable_pub)]

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[path = "../../../budget/tests/support/redis_server.rs"]
mod redis_server;
pub use redis_server::RedisServer;

#[path = "../common/mod.rs"]
mod common;
pub use common::{terminate, wait_exit};

/// The prompt every client sends: `PROMPT_BYTES` bytes of text, so the gateway's input
/// bound (the body's bytes) is a little above it.
pub const PROMPT: &str = "Summarise the quarterly report in three short sentences, please. Keep it plain and brief, no lists, no tables, and no more than forty words overall.";
/// `max_tokens` of every request: the output bound the budget reserves.
pub const MAX_TOKENS: u64 = 40;

/// A small xorshift generator: tests print their seed so a failure can be replayed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn from_time() -> (Self, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        (Self::new(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// A cloud backend: a mock upstream and its prices (USD per million tokens).
pub struct Upstream {
    pub mock: MockUpstream,
    pub input_per_mtok: u64,
    pub output_per_mtok: u64,
}

impl Upstream {
    /// What the mock's declared usage costs, in nano-dollars.
    pub fn tally_nanos(&self) -> u64 {
        let usage = self.mock.declared_usage();
        // USD per million tokens = nano-dollars per thousandth of a token: exact.
        (usage.prompt_tokens * self.input_per_mtok + usage.completion_tokens * self.output_per_mtok)
            * 1_000
    }

    /// One answer's cost, in nano-dollars.
    pub fn cost_nanos(&self, prompt: u64, completion: u64) -> u64 {
        (prompt * self.input_per_mtok + completion * self.output_per_mtok) * 1_000
    }
}

/// Starts `count` mock cloud upstreams with random prices, and a task per mock that
/// changes the usage it declares every few milliseconds (prompt tokens from 3/4 of the
/// prompt's bytes to all of them, far above the 4-bytes-a-token estimate; completion
/// tokens from half of `MAX_TOKENS` to all of it) and, with `failures`, fails a request
/// with a 500 about 8 times a second.
pub async fn upstreams(
    count: usize,
    rng: &mut Rng,
    failures: bool,
    stop: &Arc<AtomicBool>,
) -> Vec<Arc<Upstream>> {
    let mut upstreams = Vec::new();
    for _ in 0..count {
        let mut config = MockConfig::serving(["m"]);
        config.record = false;
        config.delay = Duration::from_millis(3);
        let mock = MockUpstream::start(config).await.expect("mock upstream");
        let upstream = Arc::new(Upstream {
            mock,
            input_per_mtok: rng.range(1, 3),
            output_per_mtok: rng.range(4, 10),
        });
        let mut local = Rng::new(rng.next());
        let task_upstream = Arc::clone(&upstream);
        let stop = Arc::clone(stop);
        tokio::spawn(async move {
            let prompt_max = PROMPT.len() as u64;
            while !stop.load(Ordering::Relaxed) {
                let prompt = local.range(prompt_max * 3 / 4, prompt_max);
                let completion = local.range(MAX_TOKENS / 2, MAX_TOKENS);
                task_upstream.mock.configure(|c| {
                    c.usage.prompt_tokens = prompt;
                    c.usage.completion_tokens = completion;
                });
                if failures && local.range(0, 7) == 0 {
                    task_upstream.mock.fault_next(1, Fault::status(500));
                }
                tokio::time::sleep(Duration::from_millis(local.range(5, 15))).await;
            }
        });
        upstreams.push(upstream);
    }
    upstreams
}

/// The config every replica shares.
pub fn config_text(
    upstreams: &[Arc<Upstream>],
    limit_usd: f64,
    redis_url: &str,
    key_prefix: &str,
    redis_extra: &str,
) -> String {
    let mut text = String::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        text.push_str(&format!(
            "[[backends]]\nid = \"cloud-{i}\"\nurl = \"{}\"\nzone = \"cloud\"\nmax_concurrency = 64\nmodels = [{{ name = \"m\", input_usd_per_mtok = {}, output_usd_per_mtok = {} }}]\n\n",
            upstream.mock.url(),
            upstream.input_per_mtok,
            upstream.output_per_mtok,
        ));
    }
    text.push_str(&format!(
        "[routing.budget]\nmonthly_limit_usd = {limit_usd}\n\n[routing.budget.redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{key_prefix}\"\n{redis_extra}\n\n[server]\nshutdown_grace_secs = 5\nmax_attempts = 3\n\n[health]\ninterval_secs = 0\n"
    ));
    text
}

/// A `nexus serve` replica.
pub struct Replica {
    pub child: Child,
    pub addr: String,
    /// Lines of its log that warn that Redis is unreachable.
    pub unreachable_warnings: Arc<AtomicU64>,
    /// Lines of its log that say it panicked.
    pub panics: Arc<AtomicU64>,
    /// Lines of its log that say Redis answers again after failed calls.
    pub answers_again: Arc<AtomicU64>,
}

/// Starts `nexus serve` on a free port, reading its log: the address it listens on, and
/// counts of the lines the tests look for.
fn start_replica(config: &std::path::Path) -> Replica {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nexus runs");
    let stderr = child.stderr.take().expect("stderr");
    let unreachable_warnings = Arc::new(AtomicU64::new(0));
    let panics = Arc::new(AtomicU64::new(0));
    let answers_again = Arc::new(AtomicU64::new(0));
    let (warnings, panicked, answers) = (
        Arc::clone(&unreachable_warnings),
        Arc::clone(&panics),
        Arc::clone(&answers_again),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("budget lease: Redis unreachable") {
                warnings.fetch_add(1, Ordering::SeqCst);
            }
            if line.contains("budget lease: Redis answers again") {
                answers.fetch_add(1, Ordering::SeqCst);
            }
            if line.contains("panicked") {
                eprintln!("replica: {line}");
                panicked.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(rest) = line.split("on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("nexus serve says where it listens");
    Replica {
        child,
        addr,
        unreachable_warnings,
        panics,
        answers_again,
    }
}

/// Writes `text` to a fresh config file and starts `count` replicas on it.
pub fn start_replicas(name: &str, text: &str, count: usize) -> (Vec<Replica>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("nexus-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("nexus.toml");
    std::fs::write(&config, text).expect("config written");
    let replicas = (0..count).map(|_| start_replica(&config)).collect();
    (replicas, dir)
}

/// `<prefix>:{global}:<YYYY-MM>`, the month by this machine's clock (Redis runs here).
pub fn month_base(prefix: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let month = nexus_router::budget::Month::from_unix_secs(secs);
    format!("{prefix}:{{global}}:{month}")
}

/// Settled spend of the month in Redis, nano-dollars.
pub fn redis_settled(redis: &RedisServer, base: &str) -> u64 {
    redis.integer(&["GET", &format!("{base}:settled")]).max(0) as u64
}

/// The replicas holding a lease (entries of the month's lease hash).
pub fn redis_leases(redis: &RedisServer, base: &str) -> i64 {
    redis.integer(&["HLEN", &format!("{base}:leases")])
}

/// Waits until `count` replicas hold a lease in Redis (each has had its first answer).
pub fn wait_for_leases(redis: &RedisServer, base: &str, count: i64, within: Duration) {
    let deadline = Instant::now() + within;
    while redis_leases(redis, base) < count {
        assert!(
            Instant::now() < deadline,
            "{count} replicas did not take a lease within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: served by `backend` with this usage.
    Served {
        backend: usize,
        prompt: u64,
        completion: u64,
    },
    /// 429 `budget_exceeded`.
    Refused,
    /// Any other status (a 502 after failed attempts, say).
    Failed(u16),
    /// No answer: the connection failed or the client's time limit passed.
    Silent,
}

/// One request's record: which replica, when it was sent and answered, how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub replica: usize,
    pub sent: Instant,
    pub answered: Instant,
    pub answer: Answer,
}

/// Sends one chat request to `addr` (a 10 s limit: a hang is a failure of the test).
pub async fn one_request(client: &reqwest::Client, addr: &str) -> Answer {
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    });
    let sent = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await;
    let Ok(response) = sent else {
        return Answer::Silent;
    };
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get("x-nexus-backend")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("cloud-"))
        .and_then(|v| v.parse().ok());
    let Ok(json) = response.json::<serde_json::Value>().await else {
        return Answer::Silent;
    };
    match status {
        200 => Answer::Served {
            backend: backend.expect("x-nexus-backend names a cloud backend"),
            prompt: json["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion: json["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        },
        429 => {
            assert_eq!(json["error"]["code"], "budget_exceeded", "{json}");
            static SHOWN: AtomicBool = AtomicBool::new(false);
            if !SHOWN.swap(true, Ordering::Relaxed) {
                eprintln!("first refusal: {json}");
            }
            Answer::Refused
        }
        other => Answer::Failed(other),
    }
}

/// Clients driving replicas until `stop` is set; every request is recorded.
pub struct Load {
    pub records: Arc<Mutex<Vec<Record>>>,
    pub first_refusal: Arc<Mutex<Option<Instant>>>,
    pub in_flight: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `per_replica` clients on each of `addrs`; with `stop_on_refusal`, a client
    /// that sees a refusal sets `stop` (so that the load ends at the first refusal).
    pub fn start(
        addrs: &[String],
        per_replica: usize,
        stop: &Arc<AtomicBool>,
        stop_on_refusal: bool,
    ) -> Self {
        let client = {
            nexus_gateway::upstream::install_crypto_provider();
            reqwest::Client::builder()
        }
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
        let records = Arc::new(Mutex::new(Vec::new()));
        let first_refusal = Arc::new(Mutex::new(None));
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (replica, addr) in addrs.iter().enumerate() {
            for _ in 0..per_replica {
                let (client, addr, stop) = (client.clone(), addr.clone(), Arc::clone(stop));
                let (records, first_refusal, in_flight) = (
                    Arc::clone(&records),
                    Arc::clone(&first_refusal),
                    Arc::clone(&in_flight),
                );
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        let sent = Instant::now();
                        let answer = one_request(&client, &addr).await;
                        let answered = Instant::now();
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        if answer == Answer::Refused {
                            first_refusal.lock().expect("lock").get_or_insert(answered);
                            if stop_on_refusal {
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                        records.lock().expect("lock").push(Record {
                            replica,
                            sent,
                            answered,
                            answer,
                        });
                        if matches!(answer, Answer::Silent) {
                            // A replica that is gone: do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }));
            }
        }
        Self {
            records,
            first_refusal,
            in_flight,
            tasks,
        }
    }

    /// Waits for every client to finish its last request.
    pub async fn join(self) -> Vec<Record> {
        for task in self.tasks {
            task.await.expect("client task");
        }
        let records = self.records.lock().expect("lock").clone();
        records
    }
}

/// What the served answers in `records` cost, by the clients' own count, nano-dollars.
pub fn served_nanos<'a>(
    upstreams: &[Arc<Upstream>],
    records: impl IntoIterator<Item = &'a Record>,
) -> u64 {
    records
        .into_iter()
        .map(|r| match r.answer {
            Answer::Served {
                backend,
                prompt,
                completion,
            } => upstreams[backend].cost_nanos(prompt, completion),
            _ => 0,
        })
        .sum()
}

/// Counts of each kind of answer.
pub fn summary(records: &[Record]) -> (usize, usize, usize, usize) {
    let mut counts = (0, 0, 0, 0);
    for record in records {
        match record.answer {
            Answer::Served { .. } => counts.0 += 1,
            Answer::Refused => counts.1 += 1,
            Answer::Failed(_) => counts.2 += 1,
            Answer::Silent => counts.3 += 1,
        }
    }
    counts
}

/// Stops every replica still running with SIGTERM (they give their lease back and send
/// what they settled) and checks that each exits cleanly.
pub fn stop_replicas(replicas: &mut [Replica]) {
    let mut running = Vec::new();
    for replica in replicas.iter_mut() {
        if let Ok(None) = replica.child.try_wait() {
            terminate(&replica.child);
            running.push(replica);
        }
    }
    for replica in running {
        let status = wait_exit(&mut replica.child, Duration::from_secs(20));
        assert!(status.success(), "a replica exited with {status:?}");
        assert_eq!(
            replica.panics.load(Ordering::SeqCst),
            0,
            "a replica panicked"
        );
    }
}

/// Calls of the lease script Redis has served (`EVALSHA` and `EVAL`).
pub fn redis_script_calls(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]);
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// Nano-dollars as USD, for messages.
pub fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}
