//! [`RedisBudgetSettings`]: the `[routing.budget.redis]` table.

use std::time::Duration;

use serde::Deserialize;

use crate::usd_to_nanos;

/// What decisions do while Redis cannot be reached and the lease has expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Spend only what the lease held allows, until it expires; then paid backends
    /// count as over budget until Redis answers again. The limit holds across replicas.
    #[default]
    FailClosed,
    /// Keep routing paid requests on local accounting (this replica's ledger against
    /// the limit) from the first call Redis does not answer, with a warning once a
    /// minute; what was spent is sent to Redis when it is back. Replicas together can
    /// pass the limit during the outage.
    FailOpen,
}

impl OnUnavailable {
    /// The mode as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::FailClosed => "fail_closed",
            OnUnavailable::FailOpen => "fail_open",
        }
    }
}

fn default_key_prefix() -> String {
    "nexus:budget".to_owned()
}
const fn default_min_lease() -> f64 {
    0.05
}
const fn default_max_lease() -> f64 {
    5.0
}
/// The shortest lease lifetime. A replica draws for half the lifetime after each answer,
/// counted in whole seconds (a decision's time has one-second resolution, so up to a
/// second of that half is lost), and renews every sixth of it: below 6 s, draws would
/// pause between heartbeats.
pub const MIN_TTL_SECS: u64 = 6;

const fn default_ttl() -> u64 {
    30
}
const fn default_renew_below() -> f64 {
    0.5
}
const fn default_timeout_ms() -> u64 {
    500
}
const fn default_connect_timeout_ms() -> u64 {
    1_000
}
const fn default_settle_interval_ms() -> u64 {
    1_000
}

/// The `[routing.budget.redis]` settings: one monthly limit shared by every replica
/// that points at the same Redis and `key_prefix`.
///
/// ```
/// use nexus_budget::lease::{OnUnavailable, RedisBudgetSettings};
/// let settings: RedisBudgetSettings = toml::from_str(r#"
///     url_env = "NEXUS_REDIS_URL"
///     on_unavailable = "fail_open"
/// "#).unwrap();
/// assert_eq!(settings.on_unavailable, OnUnavailable::FailOpen);
/// assert_eq!(settings.lease_ttl_secs, 30);
/// settings.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisBudgetSettings {
    /// The server, e.g. `redis://10.0.0.5:6379/0` (`redis://:password@host` for auth).
    #[serde(default)]
    pub url: Option<String>,
    /// An environment variable holding the URL instead (keeps passwords out of files).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Prefix of every key. Replicas with the same prefix share one budget. Default
    /// `nexus:budget`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The smallest lease a replica asks for, in USD (also what an idle replica may
    /// keep near the end of the month). Default 0.05.
    #[serde(default = "default_min_lease")]
    pub min_lease_usd: f64,
    /// The largest lease, in USD (what one replica may hold while plenty is left).
    /// Default 5.0.
    #[serde(default = "default_max_lease")]
    pub max_lease_usd: f64,
    /// Seconds a lease lives without renewal, at least 6; a dead replica's lease comes
    /// back after this. Replicas renew every sixth of it and stop drawing after half of
    /// it without an answer. Default 30.
    #[serde(default = "default_ttl")]
    pub lease_ttl_secs: u64,
    /// Top up when what is left falls below this fraction of the lease size, in (0, 1).
    /// Default 0.5.
    #[serde(default = "default_renew_below")]
    pub renew_below: f64,
    /// What paid decisions do while Redis is unreachable (see [`OnUnavailable`]).
    /// Default `fail_closed`.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Time limit of one Redis call, in ms. Default 500.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Time limit of connecting, in ms. Default 1000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How often spend settled here is sent to Redis, in ms. Default 1000.
    #[serde(default = "default_settle_interval_ms")]
    pub settle_interval_ms: u64,
}

impl RedisBudgetSettings {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            url_env: None,
            key_prefix: default_key_prefix(),
            min_lease_usd: default_min_lease(),
            max_lease_usd: default_max_lease(),
            lease_ttl_secs: default_ttl(),
            renew_below: default_renew_below(),
            on_unavailable: OnUnavailable::default(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            settle_interval_ms: default_settle_interval_ms(),
        }
    }

    /// Checks the values; the error names the key and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.url, &self.url_env) {
            (Some(_), Some(_)) => {
                return Err("url_env and url are both set: set one, not both (url_env keeps a password out of the file)".to_owned())
            }
            (None, None) => {
                return Err("url is missing: set url = \"redis://host:6379\" or url_env = \"NAME\" (an environment variable holding the URL)".to_owned())
            }
            (Some(url), None) => check_url("url", url)?,
            (None, Some(name)) if name.trim().is_empty() => {
                return Err("url_env is empty: name the environment variable that holds the Redis URL".to_owned())
            }
            (None, Some(_)) => {}
        }
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(format!("key_prefix must be non-empty, without spaces or braces (braces are used for cluster hash tags), got {prefix:?}; e.g. key_prefix = \"nexus:budget\""));
        }
        let positive = |key: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "{key} must be a positive amount of USD, got {value}"
                ))
            }
        };
        positive("min_lease_usd", self.min_lease_usd)?;
        positive("max_lease_usd", self.max_lease_usd)?;
        if self.max_lease_usd < self.min_lease_usd {
            return Err(format!(
                "max_lease_usd ({}) is below min_lease_usd ({}): raise max_lease_usd or lower min_lease_usd",
                self.max_lease_usd, self.min_lease_usd
            ));
        }
        if usd_to_nanos(self.min_lease_usd) == 0 {
            return Err(format!(
                "min_lease_usd ({}) is below one nano-dollar",
                self.min_lease_usd
            ));
        }
        if !(MIN_TTL_SECS..=86_400).contains(&self.lease_ttl_secs) {
            return Err(format!("lease_ttl_secs must be between {MIN_TTL_SECS} and 86400, got {}; 30 suits most deployments (set it to at least twice the longest request)", self.lease_ttl_secs));
        }
        if !(self.renew_below > 0.0 && self.renew_below < 1.0) {
            return Err(format!(
                "renew_below is a fraction of the lease size in (0, 1), got {}; e.g. 0.5",
                self.renew_below
            ));
        }
        let heartbeat_ms = self.lease_ttl_secs * 1000 / 6;
        if self.timeout_ms == 0 || self.timeout_ms > heartbeat_ms {
            return Err(format!("timeout_ms must be between 1 and a sixth of lease_ttl_secs ({heartbeat_ms} ms) so that a slow call cannot outlive a heartbeat, got {}", self.timeout_ms));
        }
        if self.connect_timeout_ms == 0 {
            return Err("connect_timeout_ms must be at least 1".to_owned());
        }
        if !(10..=60_000).contains(&self.settle_interval_ms) {
            return Err(format!(
                "settle_interval_ms must be between 10 and 60000, got {}",
                self.settle_interval_ms
            ));
        }
        Ok(())
    }

    /// The URL: `url`, or the value of the variable `url_env` names.
    pub fn resolve_url(&self) -> Result<String, String> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let name = self.url_env.as_deref().unwrap_or_default();
        let url = std::env::var(name).map_err(|_| {
            format!("url_env = \"{name}\": the environment variable {name} is not set (or not UTF-8); set it to the Redis URL, e.g. redis://host:6379")
        })?;
        check_url(&format!("the value of {name} (url_env)"), &url)?;
        Ok(url)
    }

    /// Lease lifetime.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }
}

fn check_url(what: &str, url: &str) -> Result<(), String> {
    // The URL may hold a password: never echo it.
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis" | "unix" | "redis+unix") => Ok(()),
        Some("rediss") => Err(format!("{what}: rediss:// (TLS) is not supported by this build; use redis:// through a TLS tunnel, or a private network")),
        _ => Err(format!("{what} must start with redis:// (e.g. redis://127.0.0.1:6379/0) or unix://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RedisBudgetSettings, String> {
        let settings: RedisBudgetSettings =
            toml::from_str(text).map_err(|e| e.message().to_owned())?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn defaults_and_a_full_table() {
        let settings = parse("url = \"redis://127.0.0.1:6379\"").unwrap();
        assert_eq!(settings, RedisBudgetSettings::new("redis://127.0.0.1:6379"));
        let settings = parse(
            r#"
            url = "redis://r:6379/2"
            key_prefix = "acme:prod"
            min_lease_usd = 0.5
            max_lease_usd = 50.0
            lease_ttl_secs = 60
            renew_below = 0.25
            on_unavailable = "fail_open"
            timeout_ms = 200
            connect_timeout_ms = 300
            settle_interval_ms = 250
            "#,
        )
        .unwrap();
        assert_eq!(settings.on_unavailable, OnUnavailable::FailOpen);
        assert_eq!(settings.lease_ttl(), Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let url = "url = \"redis://h\"\n";
        for (text, expected) in [
            ("", "url is missing"),
            ("url = \"redis://h\"\nurl_env = \"X\"", "not both"),
            ("url = \"http://h\"", "must start with redis://"),
            ("url = \"rediss://h\"", "TLS"),
            ("url_env = \" \"", "url_env is empty"),
            ("key_prefix = \"a b\"", "key_prefix"),
            ("key_prefix = \"{x}\"", "braces"),
            ("min_lease_usd = 0.0", "min_lease_usd must be a positive"),
            ("max_lease_usd = -1.0", "max_lease_usd must be a positive"),
            (
                "min_lease_usd = 2.0\nmax_lease_usd = 1.0",
                "raise max_lease_usd",
            ),
            ("lease_ttl_secs = 5", "lease_ttl_secs must be between 6"),
            ("renew_below = 1.0", "renew_below"),
            ("timeout_ms = 10000", "a sixth of lease_ttl_secs"),
            ("timeout_ms = 0", "timeout_ms"),
            ("connect_timeout_ms = 0", "connect_timeout_ms"),
            ("settle_interval_ms = 1", "settle_interval_ms"),
            ("on_unavailable = \"fail_opne\"", "fail_open"),
            ("lease_ttl = 3", "unknown field `lease_ttl`"),
        ] {
            let text = if text.starts_with("url") {
                text.to_owned()
            } else {
                format!("{url}{text}")
            };
            let text = if expected == "url is missing" {
                String::new()
            } else {
                text
            };
            let error = parse(&text).expect_err(&text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn url_env_is_read_at_start_and_never_echoed() {
        let mut settings = RedisBudgetSettings::new("redis://unused");
        settings.url = None;
        settings.url_env = Some("NEXUS_TEST_REDIS_URL_UNSET_8731".to_owned());
        settings.validate().unwrap();
        let error = settings.resolve_url().unwrap_err();
        assert!(error.contains("is not set"), "{error}");
        let error = check_url("url", "http://user:secret@host").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }
}
