//! The `[server]` and `[health]` tables: how `nexus serve` listens, waits, retries and
//! checks its backends.
//!
//! They live in the facade's schema (not in the gateway) so that `nexus check` validates
//! and shows them like every other key, with errors at their line, and so that a config
//! file means the same to every program that loads it. The gateway reads them through
//! [`Router::server`](crate::Router::server) and [`Router::health`](crate::Router::health).
//! Durations carry their unit in the key's name (`_ms`, `_secs`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Config, ConfigError, Seg, Source};

/// The `[server]` table: the gateway's listener, queue, retries, timeouts and limits.
///
/// ```
/// let router = nexus_router::Router::from_toml("inline.toml", r#"
///     [server]
///     listen = "0.0.0.0:9000"
///     max_attempts = 2
/// "#)?;
/// assert_eq!(router.server().listen_addr().port(), 9000);
/// assert_eq!(router.server().queue_timeout(), std::time::Duration::from_secs(30));
/// # Ok::<(), nexus_router::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The address to listen on; default `127.0.0.1:8800` (loopback: opening the
    /// gateway to the network is a decision to write down).
    pub listen: String,
    /// How long a queued request waits for a backend before it is refused with 503
    /// `queue_timeout`; default 30 000 ms.
    pub queue_timeout_ms: u64,
    /// How many requests may wait at once before more are refused with 503
    /// `queue_full`; default 256.
    pub max_queued: usize,
    /// How many backends one request may be sent to, failing over before the first
    /// byte of the answer; default 3 (at least 1).
    pub max_attempts: u32,
    /// The time to open a connection to a backend; default 2 000 ms.
    pub connect_timeout_ms: u64,
    /// The time from sending a request to the answer's headers; default 120 000 ms (a
    /// non-streamed answer's headers come when the whole answer is generated).
    pub first_byte_timeout_ms: u64,
    /// The longest silence inside an answer's body once it has started; default
    /// 60 000 ms.
    pub idle_timeout_ms: u64,
    /// The time to read a client's request body; default 30 000 ms.
    pub body_read_timeout_ms: u64,
    /// The time a client connection may take to send a request's headers, counted from
    /// when it opens or, kept alive, from its previous answer; a connection silent for
    /// longer is closed. Default 30 000 ms.
    pub header_read_timeout_ms: u64,
    /// The largest request body accepted, in bytes; default 16 MiB (images travel
    /// inline as data URLs).
    pub max_body_bytes: usize,
    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish; default
    /// 30 s.
    pub shutdown_grace_secs: u64,
    /// The environment variable holding the admin key, for admin endpoints; none by
    /// default.
    pub admin_key_env: Option<String>,
    /// How `nexus serve` writes its log lines to stderr: `text` (default, for a
    /// terminal) or `json` (one object a line, for a log collector).
    pub log_format: LogFormat,
    /// The output cap the gateway sets on a chat or completions request whose client set
    /// none (`max_tokens`, forwarded to the backend), so that the budget reserves a bound
    /// of the request's cost instead of a guess; none by default (such a request then
    /// reserves for half its input as output, and the limit can be passed by what the
    /// guess missed). Per choice, like `max_tokens`.
    pub default_max_tokens: Option<u32>,
}

/// `[server] log_format`: how the gateway's log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines: time, level, message, then `key=value` fields.
    #[default]
    Text,
    /// One JSON object a line, the fields under `fields`.
    Json,
}

impl LogFormat {
    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8800".to_owned(),
            queue_timeout_ms: 30_000,
            max_queued: 256,
            max_attempts: 3,
            connect_timeout_ms: 2_000,
            first_byte_timeout_ms: 120_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            header_read_timeout_ms: 30_000,
            max_body_bytes: 16 * 1024 * 1024,
            shutdown_grace_secs: 30,
            admin_key_env: None,
            log_format: LogFormat::Text,
            default_max_tokens: None,
        }
    }
}

impl ServerConfig {
    /// `listen` as an address (validated when the config loads; the default if it ever
    /// does not parse).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8800)))
    }

    /// `queue_timeout_ms` as a duration.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `first_byte_timeout_ms` as a duration.
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }

    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// `body_read_timeout_ms` as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// `shutdown_grace_secs` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The `[health]` table: active health checks of every backend.
///
/// An `openai` backend is checked with `GET /v1/models` (or `/models` when its URL
/// already ends in `/v1`), an `ollama` one with `GET /api/tags` and `/api/ps`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds between two checks of a backend; default 10. 0 turns checks off (each
    /// backend keeps its configured `status`).
    pub interval_secs: u64,
    /// How long one check may take; default 2 000 ms.
    pub timeout_ms: u64,
    /// Consecutive failed checks before a backend is marked unhealthy; default 3. One
    /// success marks it healthy again.
    pub unhealthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: 10,
            timeout_ms: 2_000,
            unhealthy_after: 3,
        }
    }
}

impl HealthConfig {
    /// The interval as a duration, `None` when checks are off.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_secs > 0).then(|| Duration::from_secs(self.interval_secs))
    }

    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The longest timeout accepted: a day. Longer is a typo (seconds written as ms is
/// the other way round) and would overflow nothing, but would hang a client forever.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Whether `name` can be an environment variable's name.
fn bad_env_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('=') || name.contains('\0') {
        Some("contains '=' or a NUL, which no environment variable name can")
    } else if name.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else {
        None
    }
}

/// Refuses values of `[server]`, `[health]` and the backends' `api_key_env` that cannot
/// work, each at its key.
pub(crate) fn check(source: &Source<'_>, config: &Config) -> Result<(), ConfigError> {
    let server = &config.server;
    let at = |table: &'static str, key: &'static str| [Seg::Key(table), Seg::Key(key)];
    if server.listen.parse::<SocketAddr>().is_err() {
        return Err(source.error(
            &at("server", "listen"),
            format!(
                "[server] listen = '{}' is not an address and port",
                server.listen
            ),
            Some("write an IP address and a port, e.g. listen = \"127.0.0.1:8800\" (or \"0.0.0.0:8800\" for every interface)".to_owned()),
        ));
    }
    for (key, value) in [
        ("queue_timeout_ms", server.queue_timeout_ms),
        ("connect_timeout_ms", server.connect_timeout_ms),
        ("first_byte_timeout_ms", server.first_byte_timeout_ms),
        ("idle_timeout_ms", server.idle_timeout_ms),
        ("body_read_timeout_ms", server.body_read_timeout_ms),
        ("header_read_timeout_ms", server.header_read_timeout_ms),
    ] {
        let zero_ok = key == "queue_timeout_ms";
        if (value == 0 && !zero_ok) || value > MAX_TIMEOUT_MS {
            return Err(source.error(
                &at("server", key),
                format!("[server] {key} = {value} is out of range"),
                Some(format!(
                    "give a time in milliseconds from {} to {MAX_TIMEOUT_MS} (a day)",
                    u64::from(!zero_ok)
                )),
            ));
        }
    }
    if server.default_max_tokens == Some(0) {
        return Err(source.error(
            &at("server", "default_max_tokens"),
            "[server] default_max_tokens = 0 would ask every backend for an empty answer",
            Some("give the output cap for requests that set none, e.g. default_max_tokens = 4096, or remove the key".to_owned()),
        ));
    }
    if let Some(var) = &server.admin_key_env {
        if var.trim().is_empty() {
            return Err(source.error(
                &at("server", "admin_key_env"),
                "[server] admin_key_env is empty",
                Some("name the environment variable that holds the admin key, e.g. admin_key_env = \"NEXUS_ADMIN_KEY\"".to_owned()),
            ));
        }
    }
    if server.max_attempts == 0 {
        return Err(source.error(
            &at("server", "max_attempts"),
            "[server] max_attempts = 0 would send no request at all",
            Some(
                "set max_attempts = 1 to never fail over, or more to try other backends".to_owned(),
            ),
        ));
    }
    if server.max_body_bytes == 0 {
        return Err(source.error(
            &at("server", "max_body_bytes"),
            "[server] max_body_bytes = 0 refuses every request",
            Some("give the largest body in bytes, e.g. 16777216 (16 MiB)".to_owned()),
        ));
    }
    if server.shutdown_grace_secs > MAX_TIMEOUT_MS / 1000 {
        return Err(source.error(
            &at("server", "shutdown_grace_secs"),
            format!(
                "[server] shutdown_grace_secs = {} is longer than a day",
                server.shutdown_grace_secs
            ),
            Some("give the seconds to wait for requests in flight on shutdown, e.g. 30".to_owned()),
        ));
    }
    if let Some(problem) = server.admin_key_env.as_deref().and_then(bad_env_name) {
        return Err(source.error(
            &at("server", "admin_key_env"),
            format!("[server] admin_key_env {problem}"),
            Some("name the environment variable that holds the key, e.g. admin_key_env = \"NEXUS_ADMIN_KEY\"".to_owned()),
        ));
    }
    let health = &config.health;
    if health.timeout_ms == 0 || health.timeout_ms > MAX_TIMEOUT_MS {
        return Err(source.error(
            &at("health", "timeout_ms"),
            format!(
                "[health] timeout_ms = {} is out of range",
                health.timeout_ms
            ),
            Some(format!(
                "give a time in milliseconds from 1 to {MAX_TIMEOUT_MS}"
            )),
        ));
    }
    if health.interval_secs > MAX_TIMEOUT_MS / 1000 {
        return Err(source.error(
            &at("health", "interval_secs"),
            format!(
                "[health] interval_secs = {} is longer than a day",
                health.interval_secs
            ),
            Some("check every few seconds, e.g. interval_secs = 10; 0 turns checks off".to_owned()),
        ));
    }
    if health.unhealthy_after == 0 {
        return Err(source.error(
            &at("health", "unhealthy_after"),
            "[health] unhealthy_after = 0 would mark a backend unhealthy before any check failed",
            Some("give the consecutive failures that make a backend unhealthy, e.g. 3".to_owned()),
        ));
    }
    for (index, backend) in config.backends.iter().enumerate() {
        if let Some(problem) = backend.api_key_env.as_deref().and_then(bad_env_name) {
            return Err(source.error(
                &[
                    Seg::Key("backends"),
                    Seg::Index(index),
                    Seg::Key("api_key_env"),
                ],
                format!("backend '{}': api_key_env {problem}", backend.id),
                Some("name the environment variable that holds the key, e.g. api_key_env = \"OPENAI_API_KEY\"; never the key itself".to_owned()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<crate::Router, ConfigError> {
        crate::Router::from_toml("f.toml", text)
    }

    #[test]
    fn defaults_are_documented_values() {
        let router = load("").unwrap();
        let server = router.server();
        assert_eq!(server.listen_addr(), "127.0.0.1:8800".parse().unwrap());
        assert_eq!(server.max_attempts, 3);
        assert_eq!(server.max_queued, 256);
        assert_eq!(router.health().interval(), Some(Duration::from_secs(10)));
        assert_eq!(router.health().unhealthy_after, 3);
    }

    #[test]
    fn bad_values_are_refused_at_their_line() {
        for (text, line, words) in [
            ("[server]\nlisten = \"localhost\"\n", 2, "not an address"),
            ("[server]\nmax_attempts = 0\n", 2, "max_attempts = 0"),
            ("[server]\n\nconnect_timeout_ms = 0\n", 3, "out of range"),
            ("[server]\nmax_body_bytes = 0\n", 2, "refuses every request"),
            ("[server]\nadmin_key_env = \"A B\"\n", 2, "whitespace"),
            ("[health]\nunhealthy_after = 0\n", 2, "unhealthy_after = 0"),
            ("[health]\ntimeout_ms = 0\n", 2, "out of range"),
            (
                "[[backends]]\nid = \"a\"\nurl = \"http://h\"\napi_key_env = \"\"\n",
                4,
                "api_key_env is empty",
            ),
        ] {
            let err = load(text).unwrap_err();
            assert_eq!(err.position.map(|p| p.0), Some(line), "{text}: {err}");
            assert!(err.message.contains(words), "{text}: {err}");
            assert!(err.help.is_some(), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        let err = load("[server]\nmax_atempts = 2\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2));
        assert_eq!(err.help.as_deref(), Some("did you mean `max_attempts`?"));
        let err = load("[health]\ninterval = 2\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2));
        let err =
            load("[[backends]]\nid = \"a\"\nurl = \"http://h\"\ntype = \"olama\"\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(4));
        assert_eq!(err.help.as_deref(), Some("did you mean `ollama`?"));
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(load("").unwrap().server().log_format, LogFormat::Text);
        let router = load("[server]\nlog_format = \"json\"\n").unwrap();
        assert_eq!(router.server().log_format, LogFormat::Json);
        let err = load("[server]\n\nlog_format = \"jsn\"\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
        assert_eq!(err.help.as_deref(), Some("did you mean `json`?"), "{err}");
    }
}
