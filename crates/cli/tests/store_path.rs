//! A relative `store` path is relative to the config file's folder, so the same config
//! names the same file from any working directory: spend settled from one folder is
//! seen from another, and a dry run elsewhere does not report (or create) an empty one.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nexus_core::{Outcome, Request};
use nexus_router::budget::BudgetReconciler;
use nexus_router::Router;

const CONFIG: &str = r#"
[[backends]]
id = "cloud"
url = "https://api.example.com"
zone = "cloud"
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 1000.0

[routing.budget]
monthly_limit_usd = 100.0
store = "state/spend.redb"
"#;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_relative_store_is_relative_to_the_config_file() {
    let root =
        TempDir(std::env::temp_dir().join(format!("nexus-store-path-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&root.0);
    let config_dir = root.0.join("etc");
    let elsewhere = root.0.join("elsewhere");
    for dir in [config_dir.join("state"), elsewhere.join("state")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let config = config_dir.join("nexus.toml");
    std::fs::write(&config, CONFIG).unwrap();

    {
        let router = Router::from_file(&config).unwrap();
        let budget = router.pipeline().stage_of::<BudgetReconciler>().unwrap();
        let store = budget.store_status().unwrap().path().to_owned();
        assert_eq!(
            store,
            config_dir.join("state/spend.redb").canonicalize().unwrap()
        );
        let mut decision = router.route(&Request::new("m").input_tokens(1000).max_output_tokens(0));
        decision
            .take_guard()
            .unwrap()
            .finish(Outcome::success(Duration::from_millis(1)).usage(1000, 0));
    }
    assert!(config_dir.join("state/spend.redb").exists());

    // From another working directory, through a relative path to the config: the same
    // file, with the dollar spent above. Before: a new, empty store in `elsewhere`.
    let check = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["check", "--config", "../etc/nexus.toml"])
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.contains("$1.00 spent"), "{stdout}");
    assert!(stdout.contains("etc/state/spend.redb"), "{stdout}");
    assert!(!elsewhere.join("state/spend.redb").exists());
}

#[test]
fn config_text_without_a_file_resolves_against_the_working_directory() {
    let router = Router::builder()
        .dry_run(true)
        .load_str("inline.toml", CONFIG)
        .unwrap();
    let budget = router.pipeline().stage_of::<BudgetReconciler>().unwrap();
    let path = budget.store_status().unwrap().path();
    assert!(path.ends_with("state/spend.redb"), "{}", path.display());
    assert!(
        path.starts_with(std::env::current_dir().unwrap()),
        "{}",
        path.display()
    );
}
