//! `[routing.budget.redis]`: bad values fail at their line with the fix; `nexus check`
//! shows the table without contacting Redis (and never prints the URL).
#![allow(clippy::unwrap_used)]

use nexus_router::{ConfigError, Router};

const BASE: &str = r#"[[backends]]
id = "cloud"
url = "http://127.0.0.1:9/v1"
zone = "cloud"
models = [{ name = "m", input_usd_per_mtok = 1.0, output_usd_per_mtok = 2.0 }]

[routing.budget]
monthly_limit_usd = 100.0

[routing.budget.redis]
"#;

fn load(redis: &str) -> Result<Router, ConfigError> {
    Router::from_toml("nexus.toml", &format!("{BASE}{redis}"))
}

/// The 1-based line of the first line of `redis` containing `needle`.
fn line_of(redis: &str, needle: &str) -> usize {
    BASE.lines().count() + 1 + redis.lines().position(|l| l.contains(needle)).unwrap()
}

#[test]
fn bad_values_fail_at_their_key_with_the_fix() {
    let url = "url = \"redis://127.0.0.1:9\"\n";
    for (redis, at, expected) in [
        (
            format!("{url}min_lease_usd = -1.0\n"),
            "min_lease_usd",
            "min_lease_usd must be a positive amount",
        ),
        (
            format!("{url}lease_ttl_secs = 2\n"),
            "lease_ttl_secs",
            "lease_ttl_secs must be between 6 and 86400",
        ),
        (
            format!("{url}on_unavailable = \"fail_opne\"\n"),
            "on_unavailable",
            "unknown variant `fail_opne`",
        ),
        (
            format!("{url}min_leas_usd = 1.0\n"),
            "min_leas_usd",
            "unknown field `min_leas_usd`",
        ),
        (format!("{url}url_env = \"X\"\n"), "url_env", "not both"),
        (
            "url = \"http://127.0.0.1:6379\"\n".to_owned(),
            "url =",
            "must start with redis://",
        ),
        (
            "url_env = \"NEXUS_TEST_SHARED_BUDGET_UNSET_URL\"\n".to_owned(),
            "url_env",
            "the environment variable NEXUS_TEST_SHARED_BUDGET_UNSET_URL is not set",
        ),
    ] {
        let err = load(&redis).expect_err(&redis);
        assert_eq!(
            err.position.map(|p| p.0),
            Some(line_of(&redis, at)),
            "{redis}: {err}"
        );
        assert!(err.to_string().contains(expected), "{redis}: {err}");
        assert!(err.to_string().starts_with("nexus.toml:"), "{err}");
    }
    // The typo gets the right spelling.
    let err = load(&format!("{url}on_unavailable = \"fail_opne\"\n")).unwrap_err();
    assert_eq!(err.help.as_deref(), Some("did you mean `fail_open`?"));
}

#[test]
fn a_missing_url_or_limit_fails_at_the_table() {
    let err = load("key_prefix = \"acme\"\n").unwrap_err();
    assert_eq!(
        err.position.map(|p| p.0),
        Some(BASE.lines().count()),
        "{err}"
    );
    assert!(err.message.contains("redis.url is missing"), "{err}");
    let text =
        format!("{BASE}url = \"redis://127.0.0.1:9\"\n").replace("monthly_limit_usd = 100.0\n", "");
    let err = Router::from_toml("nexus.toml", &text).unwrap_err();
    assert!(
        err.message.contains("a shared budget needs a limit"),
        "{err}"
    );
    assert!(
        err.help
            .as_deref()
            .unwrap_or("")
            .contains("monthly_limit_usd"),
        "{err}"
    );
}

#[test]
fn check_shows_the_table_without_contacting_redis_or_printing_the_url() {
    let dir = std::env::temp_dir().join(format!("nexus-shared-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nexus.toml");
    // Nothing listens on port 9; a password is in the URL.
    std::fs::write(
        &config,
        format!("{BASE}url = \"redis://:s3cret@127.0.0.1:9/0\"\nkey_prefix = \"acme:prod\"\non_unavailable = \"fail_open\"\n"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("shared budget: Redis (url), keys acme:prod:{global}:*; leases $0.05 to $5, expiring after 30 s; on_unavailable = \"fail_open\""),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
