//! `nexus`: check a routing config, ask where a request would go and why, or serve.
//!
//! Without `--config` it uses the built-in example config, so that it does something
//! useful on a fresh checkout. Exit codes: 0 for a valid config or any decision, 2 for
//! a bad config or bad arguments, 1 when the output cannot be written. A reader that
//! stops early (`nexus check | head -1`) ends the command quietly with 0, as ripgrep
//! does: output is written through handles that report a closed pipe instead of the
//! print macros, which panic on one.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use nexus_core::{
    pipeline::{Features, TierMode},
    Request,
};
use nexus_router::{ConfigError, DecisionReport, Router, EXAMPLE_CONFIG_NAME};

#[cfg(feature = "otlp")]
mod otlp;
mod text_log;
mod top;

/// Nexus: decide where each LLM request goes, and say why.
#[derive(Debug, Parser)]
#[command(name = "nexus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config and show what it builds.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Decide where a request would go and explain the decision.
    Route(RouteArgs),
    /// Serve the OpenAI-compatible gateway: every request is routed through the pipeline.
    Serve(ServeArgs),
    /// Watch a running gateway live: backends, status, in flight, latency, errors,
    /// circuits and budget.
    Top(TopArgs),
}

#[derive(Debug, Args)]
struct TopArgs {
    /// The gateway's base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8800")]
    url: String,
    /// Seconds between redraws.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_interval)]
    interval: std::time::Duration,
    /// Print one frame, without terminal escapes, and exit (1 if the gateway cannot be
    /// reached).
    #[arg(long)]
    once: bool,
    /// The environment variable holding a key to send (a tenant's key, or the admin
    /// key), for a gateway that asks for one. Keys are never taken on the command line,
    /// where other users' `ps` would show them.
    #[arg(long, value_name = "VAR")]
    key_env: Option<String>,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!(
            "{secs} s is out of range: give 0.1 to 3600 seconds"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The address to listen on, over `[server] listen` (default 127.0.0.1:8800).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: tracing::Level,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The TOML config; the built-in example when omitted.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("tier_mode").args(["strict", "flexible"])))]
struct RouteArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The model the client asks for (a model name or an alias).
    #[arg(long, value_name = "NAME")]
    model: String,
    /// Input tokens of the request (0 when omitted).
    #[arg(long, value_name = "N")]
    input_tokens: Option<u32>,
    /// The request's cap on output tokens (half the input when omitted).
    #[arg(long, value_name = "N")]
    max_output_tokens: Option<u32>,
    /// The request carries images.
    #[arg(long)]
    vision: bool,
    /// The request uses tool calls.
    #[arg(long)]
    tools: bool,
    /// The request asks for JSON output.
    #[arg(long)]
    json_mode: bool,
    /// Never serve below a policy's min_tier (the default).
    #[arg(long)]
    strict: bool,
    /// Serve the best tier below min_tier when none meets it, with a warning.
    #[arg(long)]
    flexible: bool,
    /// Month-to-date spend in USD to decide with.
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    spent: Option<f64>,
    /// Outcomes to replay into the quality stage before deciding: JSON lines of
    /// {"backend", "success", "latency_ms", "ttft_ms", "seconds_ago"}.
    #[arg(long, value_name = "FILE")]
    outcomes: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

fn parse_usd(text: &str) -> Result<f64, String> {
    // Spend past the largest limit the budget enforces is over every limit: a larger
    // amount would only test the ledger's arithmetic, not a decision.
    #[cfg(feature = "budget")]
    const MAX_USD: f64 = nexus_router::budget::MAX_LIMIT_USD;
    #[cfg(not(feature = "budget"))]
    const MAX_USD: f64 = f64::MAX;
    match text.parse::<f64>() {
        Ok(v) if (0.0..=MAX_USD).contains(&v) => Ok(v),
        Ok(v) if v.is_finite() && v > MAX_USD => Err(format!(
            "'{text}' is more than ${MAX_USD}, the largest monthly limit the budget enforces; --spent {MAX_USD} is already at or over every limit"
        )),
        _ => Err(format!(
            "'{text}' is not an amount of USD (a number of 0 or more)"
        )),
    }
}

/// Loads the config for a dry run: stores are read, never created or locked, so that
/// `check` and `route` work beside a running router.
fn load(config: &ConfigArg) -> Result<Router, ConfigError> {
    let builder = Router::builder().dry_run(true);
    let router = match &config.config {
        Some(path) => builder.load_file(path),
        None => builder.load_example(),
    }?;
    if let Some(warning) = store_warning(&router) {
        eprintln!("warning: {warning}");
    }
    Ok(router)
}

fn config_name(config: &ConfigArg) -> String {
    config.config.as_ref().map_or_else(
        || EXAMPLE_CONFIG_NAME.to_owned(),
        |p| p.display().to_string(),
    )
}

/// Writes `text` to stdout: success also when the reader has gone (a closed pipe),
/// exit code 1 with a message for any other failure (a full disk).
fn print_out(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            print_err(&format!("nexus: cannot write the output: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr; if stderr itself is gone there is nowhere left to say so.
pub(crate) fn print_err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Route(args) => route(&args),
        Command::Serve(args) => serve(&args),
        Command::Top(args) => top(&args),
    }
}

/// `nexus top`: the key, if any, from its variable, then the view.
fn top(args: &TopArgs) -> ExitCode {
    let key = match &args.key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.is_empty() => Some(key),
            _ => {
                print_err(&format!(
                    "nexus top: --key-env names {var}, which is not set; export the key in it, or leave --key-env out"
                ));
                return ExitCode::from(2);
            }
        },
    };
    top::run(&top::Options {
        url: args.url.clone(),
        interval: args.interval,
        once: args.once,
        key,
    })
}

/// `nexus serve`: builds the router (outside any async runtime: the budget's store runs
/// its own), serves until SIGTERM or Ctrl-C, drains, then drops the router so that the
/// spend journal is flushed before the process exits.
fn serve(args: &ServeArgs) -> ExitCode {
    let builder = Router::builder();
    let loaded = match &args.config.config {
        Some(path) => builder.load_file(path),
        None => builder.load_example(),
    };
    let router = match loaded {
        Ok(router) => router,
        Err(error) => {
            print_err(&error.to_string());
            return ExitCode::from(2);
        }
    };
    for warning in router.warnings() {
        print_err(&warning.to_string());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nexus-serve")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            print_err(&format!("nexus: cannot start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match init_logs(args.log_level, router.server().log_format, runtime.handle()) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            print_err(&format!("nexus: {message}"));
            return ExitCode::from(2);
        }
    };
    let listen = args.listen.unwrap_or_else(|| router.server().listen_addr());
    // Reloads (SIGHUP, a change of the file, POST /v1/nexus/reload) read the same file
    // with the same stages.
    let live = nexus_router::LiveRouter::new(builder, router, args.config.config.clone());
    let gateway = match nexus_gateway::Gateway::reloadable(live) {
        Ok(gateway) => gateway,
        Err(error) => {
            print_err(&format!("nexus: {error}"));
            return ExitCode::FAILURE;
        }
    };
    let name = config_name(&args.config);
    let served = runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                return Err(format!(
                    "nexus: cannot listen on {listen}: {error}; choose another address with --listen or [server] listen"
                ))
            }
        };
        let local = listener.local_addr().map_or(listen, |a| a);
        // The line scripts (and the tests) wait for; printed once the socket is bound.
        print_err(&format!(
            "nexus: serving {name} on http://{local} (OpenAI base URL http://{local}/v1)"
        ));
        nexus_gateway::serve(gateway, listener, shutdown_signal())
            .await
            .map_err(|error| format!("nexus: serving failed: {error}"))
    });
    // Tasks still running (connections past the grace, health checks) end here, which
    // settles their route guards; then the router is dropped and the journal flushed.
    telemetry.flush();
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match served {
        Ok(()) => {
            print_err("nexus: stopped");
            ExitCode::SUCCESS
        }
        Err(message) => {
            print_err(&message);
            ExitCode::FAILURE
        }
    }
}

/// What must outlive serving: the trace exporter, which sends what is still batched
/// when the server stops (before the runtime it sends on is shut down).
struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes the exporter, if there is one; the runtime must still run.
    fn flush(&self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = &self.provider {
            otlp::shutdown(provider);
        }
    }
}

/// Logs to stderr at `level`, as `[server] log_format` says: text for a terminal, or
/// one JSON object a line for a collector. The request log line (target
/// `nexus::request`) is one of them. With the `otlp` feature and
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans at info and above are exported too.
fn init_logs(
    level: tracing::Level,
    format: nexus_router::LogFormat,
    runtime: &tokio::runtime::Handle,
) -> Result<Telemetry, String> {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    use tracing_subscriber::filter::FilterExt as _;

    let _ = runtime;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let level = LevelFilter::from_level(level);
    // At debug and trace, text lines show the spans they happen in. At info and above
    // (the default) they are events alone, as JSON lines always are: every line about a
    // request names it (`request_id`), and formatting each span's fields into text at its
    // start and at each `record`, for lines that never show them, was a third of a
    // proxied request's instructions (docs/performance.md).
    let spans_in_text = level >= LevelFilter::DEBUG;
    let fmt = match format {
        nexus_router::LogFormat::Text => fmt
            .fmt_fields(text_log::FastFields)
            .with_timer(text_log::Timestamp)
            .with_target(false)
            .with_filter(level.and(tracing_subscriber::filter::filter_fn(move |m| {
                spans_in_text || m.is_event()
            })))
            .boxed(),
        // JSON lines are events alone: each names its request itself, and keeping every
        // span's fields as JSON (re-serialized at each `record`) would cost about 35 µs
        // a request (docs/performance.md).
        nexus_router::LogFormat::Json => fmt
            .json()
            .with_target(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(level.and(tracing_subscriber::filter::filter_fn(|m| m.is_event())))
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otlp")]
    {
        let provider = otlp::provider(runtime.clone())?;
        let layer = provider
            .as_ref()
            .map(|p| otlp::layer(p).with_filter(LevelFilter::INFO));
        registry.with(layer).init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        Ok(Telemetry {})
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn check(config: &ConfigArg) -> ExitCode {
    let router = match load(config) {
        Ok(router) => router,
        Err(error) => {
            print_err(&error.to_string());
            return ExitCode::from(2);
        }
    };
    for warning in router.warnings() {
        print_err(&warning.to_string());
    }
    print_out(&router.summary(&config_name(config)))
}

/// Why the budget's spend so far could not be read, if it could not.
#[cfg(feature = "budget")]
fn store_warning(router: &Router) -> Option<String> {
    router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>()?
        .store_status()?
        .warning()
}

/// Without the budget feature there is no store.
#[cfg(not(feature = "budget"))]
fn store_warning(_router: &Router) -> Option<String> {
    None
}

fn route(args: &RouteArgs) -> ExitCode {
    let router = match load(&args.config) {
        Ok(router) => router,
        Err(error) => {
            print_err(&error.to_string());
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.outcomes {
        if let Err(error) = router.replay_outcomes(path) {
            print_err(&error.to_string());
            return ExitCode::from(2);
        }
    }
    if let Some(spent) = args.spent {
        if !set_spent(&router, spent) {
            print_err("warning: --spent has no effect: the pipeline has no budget stage; add \"budget\" to [routing] pipeline");
        }
    }
    let mut request = Request::new(&args.model)
        .needs(Features::from_flags(
            args.vision,
            args.tools,
            args.json_mode,
        ))
        .tier_mode(if args.flexible {
            TierMode::Flexible
        } else {
            TierMode::Strict
        });
    request.input_tokens = args.input_tokens;
    request.max_output_tokens = args.max_output_tokens;

    let mut decision = router.route(&request);
    // A dry run: nothing is sent, so release the route without recording an outcome
    // (before the report, so that its in-flight counts are not this dry run's).
    if let Some(guard) = decision.take_guard() {
        guard.cancel();
    }
    let report = DecisionReport::new(&args.model, &decision);
    match args.format {
        Format::Json => print_out(&format!("{}\n", report.to_json())),
        Format::Text => print_out(&report.to_text()),
    }
}

/// Sets the month-to-date spend of the budget stage; false when there is none.
#[cfg(feature = "budget")]
fn set_spent(router: &Router, usd: f64) -> bool {
    match router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>()
    {
        Some(budget) => {
            budget.ledger().set_month_to_date(usd);
            true
        }
        None => false,
    }
}

/// Without the budget feature there is no budget stage to set.
#[cfg(not(feature = "budget"))]
fn set_spent(_router: &Router, _usd: f64) -> bool {
    false
}
