//! Dry runs beside a running router: `nexus check` and `nexus route` read the budget's
//! store without creating it or locking the router out (or being locked out by it), a
//! second router in the same process (a reload) shares the store, and a store that
//! another process holds whole is a warning, not a broken config.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nexus_core::{Outcome, Request};
use nexus_router::budget::{BudgetReconciler, StoreStatus};
use nexus_router::Router;

const CONFIG: &str = r#"
[[backends]]
id = "cloud"
url = "https://api.example.com"
zone = "cloud"
max_concurrency = 1000
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 1000.0
  output_usd_per_mtok = 0.0

[routing.budget]
monthly_limit_usd = 100.0
store = "spend.redb"
"#;

struct TempDir(PathBuf);

impl TempDir {
    fn with_config(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nexus-beside-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nexus.toml"), CONFIG).unwrap();
        Self(dir)
    }
    fn config(&self) -> PathBuf {
        self.0.join("nexus.toml")
    }
    fn store(&self) -> PathBuf {
        self.0.join("spend.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nexus(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn budget(router: &Router) -> &BudgetReconciler {
    router.pipeline().stage_of::<BudgetReconciler>().unwrap()
}

/// Routes one request of 1000 input tokens ($1.00) and settles it durably.
fn spend_one_dollar(router: &Router) {
    let mut decision = router.route(&Request::new("m").input_tokens(1000).max_output_tokens(0));
    decision
        .take_guard()
        .unwrap()
        .finish(Outcome::success(Duration::from_millis(1)).usage(1000, 0));
    let journal = budget(router).journal().unwrap();
    assert!(journal.wait_durable(journal.last_queued(), Duration::from_secs(30)));
}

#[test]
fn check_and_route_read_the_store_of_a_running_router() {
    let dir = TempDir::with_config("running");
    let router = Router::from_file(dir.config()).unwrap();
    spend_one_dollar(&router);

    // Before: exit 2, "Database already open", for a valid config.
    let check = nexus(&["check"], &dir.config());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    let out = text(&check.stdout);
    assert!(out.contains("$1.00 spent"), "{out}");
    assert!(out.contains("read from"), "{out}");

    // Before: 18 of 20 failed.
    let routes: Vec<_> = (0..20)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_nexus"))
                .args([
                    "route",
                    "--model",
                    "m",
                    "--input-tokens",
                    "1000",
                    "--format",
                    "json",
                ])
                .arg("--config")
                .arg(dir.config())
                .output()
        })
        .collect();
    for route in routes {
        let route = route.unwrap();
        assert_eq!(route.status.code(), Some(0), "{}", text(&route.stderr));
        let json: serde_json::Value = serde_json::from_slice(&route.stdout).unwrap();
        assert_eq!(json["decision"], "route", "{json}");
    }

    // The router kept its store through all of it.
    spend_one_dollar(&router);
    drop(router);
    let check = nexus(&["check"], &dir.config());
    assert!(
        text(&check.stdout).contains("$2.00 spent"),
        "{}",
        text(&check.stdout)
    );
}

#[test]
fn parallel_dry_runs_succeed_with_no_router_running() {
    let dir = TempDir::with_config("parallel");
    drop(Router::from_file(dir.config()).unwrap());
    let children: Vec<_> = (0..20)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_nexus"))
                .args(["route", "--model", "m", "--format", "json"])
                .arg("--config")
                .arg(dir.config())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    }
}

#[test]
fn a_second_router_in_the_process_shares_the_store() {
    let dir = TempDir::with_config("reload");
    let old = Router::from_file(dir.config()).unwrap();
    spend_one_dollar(&old);
    // Before: "Database already open"; a reload builds the new router beside the old.
    let new = Router::from_file(dir.config()).unwrap();
    assert_eq!(budget(&new).ledger().snapshot().settled_usd, 1.0);
    spend_one_dollar(&new);
    spend_one_dollar(&old);
    drop(old);
    let dry = Router::builder()
        .dry_run(true)
        .load_file(dir.config())
        .unwrap();
    assert_eq!(budget(&dry).ledger().snapshot().settled_usd, 3.0);
    assert!(matches!(
        budget(&dry).store_status(),
        Some(StoreStatus::Read { .. })
    ));
    drop(new);
}

#[test]
fn check_creates_no_store() {
    let dir = TempDir::with_config("create");
    let check = nexus(&["check"], &dir.config());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("does not exist yet"),
        "{}",
        text(&check.stdout)
    );
    let route = nexus(&["route", "--model", "m"], &dir.config());
    assert_eq!(route.status.code(), Some(0), "{}", text(&route.stderr));
    assert!(!dir.store().exists(), "a dry run created the store");
}

#[test]
fn a_store_held_whole_by_another_process_is_a_warning() {
    let dir = TempDir::with_config("held");
    // What a nexus before this change, or any redb user in its default mode, does.
    let holder = redb::Database::create(dir.store()).unwrap();
    let check = nexus(&["check"], &dir.config());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    let err = text(&check.stderr);
    assert!(err.contains("could not be read"), "{err}");
    assert!(err.contains("another process has the file open"), "{err}");
    assert!(
        text(&check.stdout).contains("not read from"),
        "{}",
        text(&check.stdout)
    );
    let route = nexus(
        &["route", "--model", "m", "--format", "json"],
        &dir.config(),
    );
    assert_eq!(route.status.code(), Some(0), "{}", text(&route.stderr));
    serde_json::from_slice::<serde_json::Value>(&route.stdout).unwrap();
    drop(holder);
}
