//! A damaged spend store is a clear error, exit 2, naming the file and what to do;
//! never a panic (exit 101) and never read as some other amount.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nexus_router::Router;
use redb::ReadableDatabase;

const CONFIG: &str = r#"
[[backends]]
id = "cloud"
url = "https://api.example.com"
zone = "cloud"
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 3.0

[routing.budget]
monthly_limit_usd = 100.0
store = "spend.redb"
"#;

struct TempDir(PathBuf);

impl TempDir {
    fn with_config(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nexus-damage-{name}-{}", std::process::id()));
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

/// `check` and `route` both refuse the store: exit 2, the config's `store` line, the
/// file, that it is damaged, and what to do; and a router refuses to start on it.
fn assert_refused(dir: &TempDir) {
    let file = dir.store().canonicalize().unwrap();
    for args in [&["check"][..], &["route", "--model", "m"][..]] {
        let output = nexus(args, &dir.config());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("nexus.toml:12:"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("damaged"), "{args:?}: {stderr}");
        assert!(stderr.contains("move it aside"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let error = Router::from_file(dir.config()).unwrap_err().to_string();
    assert!(error.contains("damaged"), "{error}");
}

#[test]
fn garbage_in_the_store_is_refused_clearly() {
    let dir = TempDir::with_config("garbage");
    let garbage: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(dir.store(), garbage).unwrap();
    assert_refused(&dir);
}

/// A real store with its pages scrambled after the header: before, `nexus check`
/// panicked inside redb ("entered unreachable code", exit 101).
#[test]
fn a_scrambled_store_is_refused_clearly() {
    let dir = TempDir::with_config("scrambled");
    drop(Router::from_file(dir.config()).unwrap());
    let mut bytes = std::fs::read(dir.store()).unwrap();
    for (i, byte) in bytes.iter_mut().enumerate().skip(4096).take(64 * 1024) {
        *byte ^= (i as u8).wrapping_mul(31) | 1;
    }
    std::fs::write(dir.store(), bytes).unwrap();
    assert_refused(&dir);
}

const LEGACY: redb::TableDefinition<'static, u32, u64> =
    redb::TableDefinition::new("spend_by_month");

/// A store of the first format holding an absurd amount: before, read as
/// $4,702,111,234.47 of spend.
#[test]
fn an_absurd_amount_is_refused_clearly() {
    let dir = TempDir::with_config("absurd");
    {
        let db = redb::Database::create(dir.store()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(LEGACY).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let month = nexus_router::budget::Month::from_unix_secs(now);
            table
                .insert(month.key(), 4_702_111_234_470_000_000)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    assert_refused(&dir);
}

/// A store of the first format with a plausible amount is read, then migrated by the
/// first router that opens it.
#[test]
fn a_first_format_store_keeps_its_spend() {
    let dir = TempDir::with_config("legacy");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let month = nexus_router::budget::Month::from_unix_secs(now);
    {
        let db = redb::Database::create(dir.store()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(LEGACY)
            .unwrap()
            .insert(month.key(), 12_340_000_000)
            .unwrap();
        txn.commit().unwrap();
    }
    let check = nexus(&["check"], &dir.config());
    assert!(String::from_utf8_lossy(&check.stdout).contains("$12.34 spent"));
    drop(Router::from_file(dir.config()).unwrap());
    let check = nexus(&["check"], &dir.config());
    assert!(String::from_utf8_lossy(&check.stdout).contains("$12.34 spent"));
    let db = redb::Database::create(dir.store()).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(
        txn.open_table(LEGACY).is_err(),
        "the first format's table is gone"
    );
}
