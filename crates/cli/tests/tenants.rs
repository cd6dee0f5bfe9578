//! `[[tenants]]`: a bad or loosening entry is an error at its line; `nexus check` shows
//! every tenant, its limit and overrides, and never a key.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use nexus_router::{ConfigError, Router};

const BACKENDS: &str = r#"[[backends]]
id = "gpu"
url = "http://127.0.0.1:11434"
zone = "local"
  [[backends.models]]
  name = "llama3:70b"
"#;

/// A SHA-256 digest in hex (of no key in particular).
const A_SHA: &str = "9d0f1ab3c1a8d3ee0ef4a3a2e6b0e5bd5d4b4ea1b0a56a7d1a7e2c8c0d1f2e3a";

fn load(extra: &str) -> Result<Router, ConfigError> {
    Router::from_toml("nexus.toml", &format!("{BACKENDS}{extra}"))
}

/// The 1-based line of the first line of `extra` containing `needle`.
fn line_of(extra: &str, needle: &str) -> usize {
    BACKENDS.lines().count() + 1 + extra.lines().position(|l| l.contains(needle)).unwrap()
}

fn tenant(id: &str, extra: &str) -> String {
    format!("[[tenants]]\nid = \"{id}\"\nkey_sha256 = \"{A_SHA}\"\n{extra}")
}

#[test]
fn a_loosening_override_is_an_error_at_its_line() {
    let extra = tenant("team-a", "privacy = \"unrestricted\"\n");
    let err = load(&extra).unwrap_err();
    assert_eq!(err.position.map(|p| p.0), Some(line_of(&extra, "privacy")));
    assert!(err.message.contains("tenant 'team-a'"), "{err}");
    assert!(err.message.contains("only tighten"), "{err}");
}

#[test]
fn bad_tenant_values_are_errors_at_their_line() {
    let cases: [(&str, &str, &str); 5] = [
        ("min_tier = 0\n", "min_tier", "demands nothing"),
        (
            "max_cost_per_request = -2.0\n",
            "max_cost_per_request",
            "positive",
        ),
        (
            "monthly_limit_usd = 0.0\n",
            "monthly_limit_usd",
            "from 1e-6",
        ),
        ("models = []\n", "models", "no model"),
        ("models = [\"llama[\"]\n", "models", "not a valid glob"),
    ];
    for (line, key, words) in cases {
        let extra = format!(
            "[routing.budget]\nmonthly_limit_usd = 5.0\n{}",
            tenant("t", line)
        );
        let err = load(&extra).unwrap_err();
        assert_eq!(
            err.position.map(|p| p.0),
            Some(line_of(&extra, line.trim())),
            "{err}"
        );
        assert!(err.message.contains(words), "{key}: {err}");
    }
    // A digest that is not one.
    let extra = "[[tenants]]\nid = \"t\"\nkey_sha256 = \"abc\"\n";
    let err = load(extra).unwrap_err();
    assert_eq!(
        err.position.map(|p| p.0),
        Some(line_of(extra, "key_sha256"))
    );
    assert!(
        !err.to_string().contains("\"abc\""),
        "the digest is not echoed: {err}"
    );
    // No key, two keys, two tenants with one id.
    let err = load("[[tenants]]\nid = \"t\"\n").unwrap_err();
    assert!(err.message.contains("no key"), "{err}");
    let extra = format!("{}key_env = \"T_KEY\"\n", tenant("t", ""));
    assert!(load(&extra).unwrap_err().message.contains("both"));
    let extra = format!("{}{}", tenant("t", ""), tenant("t", ""));
    let err = load(&extra).unwrap_err();
    assert!(err.message.contains("used by tenant 0"), "{err}");
    assert_eq!(
        err.position.map(|p| p.0),
        Some(BACKENDS.lines().count() + 5)
    );
    // An unknown key, with a suggestion.
    let extra = tenant("t", "monthly_limit = 3.0\n");
    let err = load(&extra).unwrap_err();
    assert_eq!(
        err.position.map(|p| p.0),
        Some(line_of(&extra, "monthly_limit"))
    );
}

#[test]
fn an_override_whose_stage_is_left_out_is_an_error() {
    let extra = format!(
        "[routing]\npipeline = [\"analyzer\", \"privacy\", \"scheduler\"]\n{}",
        tenant("t", "monthly_limit_usd = 5.0\n")
    );
    let err = load(&extra).unwrap_err();
    assert_eq!(
        err.position.map(|p| p.0),
        Some(line_of(&extra, "monthly_limit_usd"))
    );
    assert!(err.message.contains("needs the 'budget' stage"), "{err}");
}

#[test]
fn check_shows_tenants_but_never_keys() {
    let dir = std::env::temp_dir().join(format!("nexus-tenants-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nexus.toml");
    let config = format!(
        "{BACKENDS}[routing.budget]\nmonthly_limit_usd = 50.0\n{}[[tenants]]\nid = \"team-b\"\nkey_env = \"NEXUS_CHECK_TEST_UNSET_KEY\"\nprivacy = \"restricted\"\nmodels = [\"llama*\"]\n",
        tenant("team-a", "monthly_limit_usd = 10.0\nmax_cost_per_request = 0.5\n"),
    );
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("NEXUS_CHECK_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("tenants: 2"), "{stdout}");
    assert!(stdout.contains("team-a"), "{stdout}");
    assert!(stdout.contains("$10 a month"), "{stdout}");
    assert!(stdout.contains("max $0.5 per request"), "{stdout}");
    assert!(
        stdout.contains("key from $NEXUS_CHECK_TEST_UNSET_KEY"),
        "{stdout}"
    );
    assert!(stdout.contains("restricted, models llama*"), "{stdout}");
    assert!(
        !stdout.contains(A_SHA) && !stderr.contains(A_SHA),
        "never a key or digest"
    );
    // The unset variable is a warning for check, which `serve` would refuse.
    assert!(
        format!("{stdout}{stderr}").contains("NEXUS_CHECK_TEST_UNSET_KEY is not set"),
        "{stdout}\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
