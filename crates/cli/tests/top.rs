//! `nexus top --once` prints one frame of a gateway's fleet and budget: from a real
//! `nexus serve`, from a gateway with the budget endpoint and a key, and says so
//! plainly when there is no gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Json;
use nexus_testkit::{MockConfig, MockUpstream};
use serde_json::json;

fn top(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    command.arg("top").args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_of_a_running_gateway() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("nexus-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nexus.toml");
    std::fs::write(
        &config,
        format!(
            "[[backends]]\nid = \"gpu-box\"\nurl = \"{}\"\nzone = \"local\"\nmax_concurrency = 8\nmodels = [{{ name = \"m\" }}]\n\n[[backends]]\nid = \"gone\"\nurl = \"http://127.0.0.1:9\"\nzone = \"cloud\"\nstatus = \"unhealthy\"\nmodels = [{{ name = \"m\" }}]\n\n[health]\ninterval_secs = 0\n",
            mock.url()
        ),
    )
    .unwrap();
    let (mut child, addr) = common::start(&config);
    let url = format!("http://{addr}");
    let output = tokio::task::spawn_blocking(move || top(&["--url", &url, "--once"], &[]))
        .await
        .unwrap();
    common::terminate(&child);
    common::wait_exit(&mut child, Duration::from_secs(15));
    let frame = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{frame}");
    assert!(
        !frame.contains('\x1b'),
        "--once prints no escapes: {frame:?}"
    );
    assert!(
        frame.starts_with(&format!("nexus top  http://{addr}  ")),
        "{frame}"
    );
    let row = |id: &str| {
        frame
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{frame}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("gpu-box")[..4], ["gpu-box", "local", "healthy", "0/8"]);
    assert_eq!(row("gone")[..4], ["gone", "cloud", "unhealthy", "0/16"]);
    // Without the budget endpoint the view says so; with it, it shows the month.
    let budget = frame.lines().find(|l| l.starts_with("budget")).unwrap();
    assert!(
        budget == "budget: not served by this gateway (/v1/nexus/budget answered 404)"
            || budget.starts_with("budget 20"),
        "{frame}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_shown_and_the_key_sent() {
    // A gateway as the budget endpoint's contract describes it, that wants a key.
    let app = axum::Router::new()
        .route(
            "/v1/nexus/backends",
            get(|| async {
                Json(
                    json!({"backends": [{"id": "b", "zone": "local", "status": "loading",
                    "in_flight": 2, "max_concurrency": 4, "latency_ms": 80.0,
                    "error_rate": 0.5, "circuit": {"state": "half_open"}}]}),
                )
            }),
        )
        .route(
            "/v1/nexus/budget",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer tenant-key")
                {
                    return Err(StatusCode::UNAUTHORIZED);
                }
                Ok(Json(json!({"month": "2026-11",
                    "global": {"limit_usd": 100.0, "settled_usd": 40.0, "reserved_usd": 10.0,
                               "remaining_usd": 50.0, "shared": "local"},
                    "tenants": [{"id": "team-a", "limit_usd": 10.0, "settled_usd": 2.5,
                                 "reserved_usd": 0.0, "remaining_usd": 7.5}]})))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let with_key = url.clone();
    let output = tokio::task::spawn_blocking(move || {
        top(
            &[
                "--url",
                &with_key,
                "--once",
                "--key-env",
                "NEXUS_TOP_TEST_KEY",
            ],
            &[("NEXUS_TOP_TEST_KEY", "tenant-key")],
        )
    })
    .await
    .unwrap();
    let frame = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{frame}");
    let cells = |start: &str| -> Vec<String> {
        frame
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in:\n{frame}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        cells("b "),
        [
            "b",
            "local",
            "loading",
            "2/4",
            "80",
            "ms",
            "50.0%",
            "half_open"
        ]
    );
    assert!(frame.contains("\nbudget 2026-11, local\n"), "{frame}");
    assert_eq!(
        cells("global"),
        ["global", "$100.00", "$40.00", "$10.00", "$50.00", "50.0%"]
    );
    assert_eq!(
        cells("tenant team-a"),
        ["tenant", "team-a", "$10.00", "$2.50", "$0.00", "$7.50", "25.0%"]
    );

    // Without the key: the backends still, and how to pass one.
    let output = tokio::task::spawn_blocking(move || top(&["--url", &url, "--once"], &[]))
        .await
        .unwrap();
    let frame = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{frame}");
    assert!(frame.contains("\nb "), "{frame}");
    assert!(
        frame.contains(
            "budget: /v1/nexus/budget answered 401 Unauthorized: pass a key with --key-env VAR"
        ),
        "{frame}"
    );
}

#[test]
fn no_gateway_is_exit_1_with_a_hint() {
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = top(&["--url", &url, "--once"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let frame = String::from_utf8(output.stdout).unwrap();
    assert!(
        frame.contains(&format!("backends: cannot reach {url}: "))
            && frame.contains("(is `nexus serve` running there?)"),
        "{frame}"
    );
}

#[test]
fn a_key_variable_that_is_not_set_is_a_usage_error() {
    let output = top(
        &["--once", "--key-env", "NEXUS_TOP_TEST_UNSET_VARIABLE"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(
        err.contains("--key-env names NEXUS_TOP_TEST_UNSET_VARIABLE, which is not set"),
        "{err}"
    );
}
