//! `nexus top`: a live view of a running gateway's fleet in the terminal.
//!
//! It reads `GET /v1/nexus/backends` and `GET /v1/nexus/budget` every `--interval`
//! seconds and redraws one frame with plain ANSI (home the cursor, clear, print) on the
//! terminal's alternate screen, so that it needs no terminal library and works over
//! any SSH session; `--once` prints a single frame without escapes and exits, for
//! scripts and tests. A gateway that does not serve the budget endpoint (404) or wants
//! a key for it (401) still shows its backends, with a line that says so.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use serde_json::Value;

/// What one frame is drawn from.
pub(crate) struct Snapshot {
    pub(crate) url: String,
    pub(crate) backends: Result<Value, String>,
    pub(crate) budget: Result<Value, String>,
}

/// The options of `nexus top`.
pub(crate) struct Options {
    pub(crate) url: String,
    pub(crate) interval: Duration,
    pub(crate) once: bool,
    /// The key sent as `Authorization: Bearer` (a tenant's, or the admin key).
    pub(crate) key: Option<String>,
}

/// Runs `nexus top`; the exit code is 1 when `--once` could not reach the gateway.
pub(crate) fn run(options: &Options) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            crate::print_err(&format!("nexus: cannot start the async runtime: {error}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        nexus_gateway::upstream::install_crypto_provider();
        let client = match reqwest::Client::builder()
            .user_agent(nexus_gateway::upstream::USER_AGENT)
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                crate::print_err(&format!("nexus: cannot build an HTTP client: {error}"));
                return std::process::ExitCode::FAILURE;
            }
        };
        if options.once {
            let snapshot = fetch(&client, options).await;
            let reachable = snapshot.backends.is_ok();
            let frame = render(&snapshot, now_utc());
            let _ = std::io::stdout().lock().write_all(frame.as_bytes());
            return if reachable {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            };
        }
        let mut out = std::io::stdout();
        // The alternate screen, left again on Ctrl-C, so the shell's scrollback stays.
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let snapshot = fetch(&client, options).await;
            let frame = render(&snapshot, now_utc()).replace('\n', "\x1b[K\r\n");
            let mut screen = String::from("\x1b[H");
            screen.push_str(&frame);
            screen.push_str(&format!(
                "\x1b[K\r\nevery {} s; Ctrl-C to quit\x1b[J",
                options.interval.as_secs_f64()
            ));
            if out.write_all(screen.as_bytes()).is_err() || out.flush().is_err() {
                break;
            }
            tokio::select! {
                _ = &mut ctrl_c => break,
                () = tokio::time::sleep(options.interval) => {}
            }
        }
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        std::process::ExitCode::SUCCESS
    })
}

async fn fetch(client: &reqwest::Client, options: &Options) -> Snapshot {
    let base = options.url.trim_end_matches('/');
    let get = |path: &str| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(key) = &options.key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let (backends, budget) = tokio::join!(get("/v1/nexus/backends"), get("/v1/nexus/budget"));
    Snapshot {
        url: base.to_owned(),
        backends: read(backends, base, "/v1/nexus/backends").await,
        budget: read(budget, base, "/v1/nexus/budget").await,
    }
}

/// The JSON of an answer, or why there is none, in a few words.
async fn read(
    answer: Result<reqwest::Response, reqwest::Error>,
    base: &str,
    path: &str,
) -> Result<Value, String> {
    let answer = answer.map_err(|e| {
        format!(
            "cannot reach {base}: {} (is `nexus serve` running there?)",
            nexus_gateway::error::with_causes(&e)
        )
    })?;
    let status = answer.status();
    match status.as_u16() {
        200 => {}
        404 => return Err(format!("not served by this gateway ({path} answered 404)")),
        401 | 403 => {
            return Err(format!(
                "{path} answered {status}: pass a key with --key-env VAR (a tenant's, or the admin key)"
            ))
        }
        _ => return Err(format!("{path} answered {status}")),
    }
    let text = answer
        .text()
        .await
        .map_err(|e| format!("{path}: the answer broke off: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: not JSON: {e}"))
}

/// Now, as `YYYY-MM-DD HH:MM:SS UTC`.
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn usd(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("${x:.2}"))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// One frame: a header, a row per backend, the budget. Pure, for the tests.
pub(crate) fn render(snapshot: &Snapshot, now: String) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "nexus top  {}  {now}", snapshot.url);
    let _ = writeln!(out);
    match &snapshot.backends {
        Err(why) => {
            let _ = writeln!(out, "backends: {why}");
        }
        Ok(value) => {
            let list = value
                .get("backends")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<10} {:>9} {:>10} {:>7}  {:<10}",
                "BACKEND", "ZONE", "STATUS", "IN FLIGHT", "LATENCY", "ERRORS", "CIRCUIT"
            );
            for b in list {
                let in_flight = format!(
                    "{}/{}",
                    b.get("in_flight").and_then(Value::as_u64).unwrap_or(0),
                    b.get("max_concurrency")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                );
                let latency = b
                    .get("latency_ms")
                    .and_then(Value::as_f64)
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"));
                let errors = b
                    .get("error_rate")
                    .and_then(Value::as_f64)
                    .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
                let circuit = match b.get("circuit") {
                    Some(Value::Object(c)) => {
                        let state = c.get("state").and_then(Value::as_str).unwrap_or("-");
                        match c.get("seconds_left").and_then(Value::as_u64) {
                            Some(left) => format!("{state} ({left} s)"),
                            None => state.to_owned(),
                        }
                    }
                    Some(Value::String(s)) => s.clone(),
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:>9} {:>10} {:>7}  {:<10}",
                    text(b, "id"),
                    text(b, "zone"),
                    text(b, "status"),
                    in_flight,
                    latency,
                    errors,
                    circuit
                );
            }
            if list.is_empty() {
                let _ = writeln!(out, "(no backends)");
            }
        }
    }
    let _ = writeln!(out);
    match &snapshot.budget {
        Err(why) => {
            let _ = writeln!(out, "budget: {why}");
        }
        Ok(value) => {
            let month = text(value, "month");
            let global = value.get("global").unwrap_or(&Value::Null);
            let shared = global
                .get("shared")
                .and_then(Value::as_str)
                .map(|s| format!(", {s}"))
                .unwrap_or_default();
            let _ = writeln!(out, "budget {month}{shared}");
            let _ = writeln!(
                out,
                "{:<20} {:>12} {:>12} {:>12} {:>12} {:>7}",
                "", "LIMIT", "SETTLED", "RESERVED", "REMAINING", "USED"
            );
            let mut row = |name: &str, v: &Value| {
                let limit = v.get("limit_usd").unwrap_or(&Value::Null);
                let used = match (
                    limit.as_f64(),
                    v.get("settled_usd").and_then(Value::as_f64),
                    v.get("reserved_usd").and_then(Value::as_f64),
                ) {
                    (Some(l), Some(s), r) if l > 0.0 => {
                        format!("{:.1}%", (s + r.unwrap_or(0.0)) / l * 100.0)
                    }
                    _ => "-".to_owned(),
                };
                let limit = if limit.is_null() {
                    "none".to_owned()
                } else {
                    usd(limit)
                };
                let _ = writeln!(
                    out,
                    "{:<20} {:>12} {:>12} {:>12} {:>12} {:>7}",
                    name,
                    limit,
                    usd(v.get("settled_usd").unwrap_or(&Value::Null)),
                    usd(v.get("reserved_usd").unwrap_or(&Value::Null)),
                    usd(v.get("remaining_usd").unwrap_or(&Value::Null)),
                    used
                );
            };
            row("global", global);
            for tenant in value
                .get("tenants")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
            {
                row(&format!("tenant {}", text(tenant, "id")), tenant);
            }
        }
    }
    out.lines()
        .fold(String::with_capacity(out.len()), |mut all, line| {
            all.push_str(line.trim_end());
            all.push('\n');
            all
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(budget: Result<Value, String>) -> Snapshot {
        Snapshot {
            url: "http://127.0.0.1:8800".to_owned(),
            backends: Ok(json!({"backends": [
                {"id": "gpu-box", "zone": "local", "status": "healthy", "in_flight": 3,
                 "max_concurrency": 8, "latency_ms": 120.4, "error_rate": 0.025,
                 "circuit": {"state": "closed"}},
                {"id": "openai", "zone": "cloud", "status": "unhealthy", "in_flight": 0,
                 "max_concurrency": 16, "latency_ms": null, "error_rate": null,
                 "circuit": {"state": "open", "seconds_left": 12}}
            ]})),
            budget,
        }
    }

    #[test]
    fn a_frame_shows_each_backend_and_the_budget() {
        let frame = render(
            &snapshot(Ok(json!({"month": "2026-11",
                "global": {"limit_usd": 100.0, "settled_usd": 1.25, "reserved_usd": 0.02,
                           "remaining_usd": 98.73, "shared": "redis"},
                "tenants": [{"id": "team-a", "limit_usd": null, "settled_usd": 0.5,
                             "reserved_usd": 0.0, "remaining_usd": null}]}))),
            "2026-11-23 12:00:00 UTC".to_owned(),
        );
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(
            lines[0],
            "nexus top  http://127.0.0.1:8800  2026-11-23 12:00:00 UTC"
        );
        let gpu = lines.iter().find(|l| l.starts_with("gpu-box")).unwrap();
        for cell in ["local", "healthy", "3/8", "120 ms", "2.5%", "closed"] {
            assert!(gpu.contains(cell), "{cell} in {gpu}");
        }
        let openai = lines.iter().find(|l| l.starts_with("openai")).unwrap();
        for cell in ["unhealthy", "0/16", "open (12 s)"] {
            assert!(openai.contains(cell), "{cell} in {openai}");
        }
        assert!(frame.contains("budget 2026-11, redis"), "{frame}");
        let global = lines.iter().find(|l| l.starts_with("global")).unwrap();
        for cell in ["$100.00", "$1.25", "$0.02", "$98.73", "1.3%"] {
            assert!(global.contains(cell), "{cell} in {global}");
        }
        let tenant = lines
            .iter()
            .find(|l| l.starts_with("tenant team-a"))
            .unwrap();
        assert!(
            tenant.contains("none") && tenant.contains("$0.50"),
            "{tenant}"
        );
    }

    #[test]
    fn a_missing_budget_endpoint_is_one_line() {
        let frame = render(
            &snapshot(Err("not served by this gateway (404)".to_owned())),
            String::new(),
        );
        assert!(frame.contains("gpu-box"));
        assert!(frame.ends_with("budget: not served by this gateway (404)\n"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
