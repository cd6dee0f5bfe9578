//! A client that goes away mid-stream cancels the upstream request, and the route
//! guard settles what was used: in flight back to 0, nothing left reserved. A thousand
//! going away at once leave nothing behind either.

mod common;

use std::time::Duration;

use common::checks::{after_fault, open_fds, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, serve, NO_HEALTH};
use futures_util::StreamExt;
use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test]
async fn a_disconnect_cancels_the_upstream_and_settles_the_guard() {
    let _serial = serial().await;
    let mut config = MockConfig::serving(["m"]);
    config.chunks = 10;
    config.chunk_interval = Duration::from_millis(100);
    let mock = MockUpstream::start(config).await.unwrap();
    let config = format!(
        "[[backends]]\nid = \"cloud\"\nurl = \"{}\"\nzone = \"cloud\"\n  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = 1000.0\n  output_usd_per_mtok = 1000.0\n[routing.budget]\nmonthly_limit_usd = 100.0\n{NO_HEALTH}",
        mock.url()
    );
    let served = serve(&config).await;
    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let first = body.next().await.expect("a first event").unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(served.in_flight(), 1);
    assert!(served.reserved_usd() > 0.0);
    drop(body);

    served
        .eventually("the guard settled", |s| s.in_flight() == 0)
        .await;
    assert_eq!(served.reserved_usd(), 0.0, "the reservation is settled");
    assert!(
        served.settled_usd() > 0.0,
        "what was used is billed (an estimate)"
    );
    // Had the upstream kept streaming, its usage event would have been sent by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        mock.declared_usage().answers,
        0,
        "the upstream request was cancelled"
    );
}

/// Streams opened, then dropped at once.
const STREAMS: usize = 1000;

/// Raises this process's open-file limit to what the thousand streams need (four
/// sockets each: the client's, the gateway's two, the mock's), as far as the hard limit
/// allows; a hard limit below that fails the test with how to raise it.
fn raise_fd_limit(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= needed,
        "this test needs {needed} open files and the hard limit is {hard}: raise it (ulimit -Hn {needed}) and run again"
    );
    limit.current = Some(needed);
    setrlimit(Resource::Nofile, limit).expect("raising the soft open-file limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_disconnects_at_once_leave_nothing_behind() {
    let _serial = serial().await;
    raise_fd_limit(4 * STREAMS as u64 + 1024);
    let mut config = MockConfig::serving(["m"]);
    // Long enough that no stream ends by itself while the test runs (600 s), and slow
    // enough that a thousand open streams are little work.
    config.reply = "word ".repeat(120);
    config.chunks = 600;
    config.chunk_interval = Duration::from_secs(1);
    config.record = false;
    let mock = MockUpstream::start(config).await.unwrap();
    let config = format!(
        "{}{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), &format!("max_concurrency = {STREAMS}"))
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;

    let started = std::time::Instant::now();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = served.url("/v1/chat/completions");
    let body = chat_body("m", true);
    // Opened a hundred at a time (a thousand connects at once overflow the listeners'
    // backlogs on a loaded machine, which is not what this test is about), dropped at once.
    let open = futures_util::stream::iter((0..STREAMS).map(|_| {
        let request = client.post(&url).json(&body);
        async move {
            let answer = request.send().await.expect("the gateway answers");
            let status = answer.status();
            if status != 200 {
                panic!("{status}: {}", answer.text().await.unwrap_or_default());
            }
            let mut stream = answer.bytes_stream();
            let first = stream.next().await.expect("a first event").unwrap();
            assert!(first.starts_with(b"data: "));
            stream
        }
    }))
    .buffer_unordered(100)
    .collect::<Vec<_>>();
    let streams = tokio::time::timeout(Duration::from_secs(60), open)
        .await
        .expect("a thousand streams open within 60 s");
    assert_eq!(served.in_flight(), STREAMS as u32);
    assert!(open_fds() >= 4 * STREAMS, "{} fds", open_fds());
    eprintln!("opened in {:?}", started.elapsed());
    drop(streams);
    drop(client);

    served
        .eventually("every guard settled", |s| s.in_flight() == 0)
        .await;
    eprintln!("settled in {:?}", started.elapsed());
    // Each was billed its estimate at most: no usage had arrived.
    after_fault(&served, &base, &[&mock], 0.2 * STREAMS as f64).await;
    eprintln!("checked in {:?}", started.elapsed());
    assert_eq!(
        mock.declared_usage().answers,
        2,
        "only the two normal requests finished: every stream was cancelled upstream"
    );
}
