//! `nexus-mock`: the mock OpenAI-compatible upstream of `nexus-testkit`, served on a given
//! address for load tests and manual checks. It runs until Ctrl-C or SIGTERM, then prints
//! what it served and the usage it declared (one JSON line), so that a load or soak run can
//! compare the gateway's settled spend with the upstream's own tally.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nexus_testkit::{Fault, FaultMix, MockConfig, MockUpstream, MockUsage};

/// A mock OpenAI-compatible (and Ollama-listing) upstream for load tests.
#[derive(Debug, Parser)]
#[command(name = "nexus-mock", version)]
struct Args {
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The models served, comma separated; other models get a 404.
    #[arg(long, value_delimiter = ',', default_value = "mock-model")]
    models: Vec<String>,
    /// Serve any model name.
    #[arg(long, conflicts_with = "models")]
    any_model: bool,
    /// Milliseconds to wait before every answer's headers.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Milliseconds between the events of a stream.
    #[arg(long, default_value_t = 0)]
    chunk_interval_ms: u64,
    /// The usage declared in every answer, as PROMPT,COMPLETION tokens.
    #[arg(long, default_value = "10,20", value_parser = parse_usage)]
    usage: MockUsage,
    /// The assistant's reply.
    #[arg(long)]
    reply: Option<String>,
    /// How many content events a stream has.
    #[arg(long, default_value_t = 4)]
    chunks: usize,
    /// Keep every request in memory (off by default, so that memory stays flat under load).
    #[arg(long)]
    record: bool,
    /// The share of inference requests, from 0 to 1, that get one of `--faults` (picked
    /// evenly at random); 0 plays none.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fault_rate: f64,
    /// The faults `--fault-rate` picks from, comma separated: a status code (`500`, `503`;
    /// `429` comes with `retry-after: 1`), `hang` (no headers, ever), `hang-mid` and
    /// `reset` (after two events or half a body), `trickle` (a byte every millisecond),
    /// `non-json`, `malformed-sse`.
    #[arg(long, value_delimiter = ',', default_value = "500,429", value_parser = parse_fault)]
    faults: Vec<Fault>,
    /// Seeds the fault draws (the same seed faults the same request numbers).
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_usage(text: &str) -> Result<MockUsage, String> {
    let (prompt, completion) = text
        .split_once(',')
        .ok_or_else(|| format!("expected PROMPT,COMPLETION (e.g. 10,20), got {text:?}"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|e| format!("{s:?} in --usage {text:?}: {e}"))
    };
    Ok(MockUsage {
        prompt_tokens: number(prompt)?,
        completion_tokens: number(completion)?,
    })
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "expected a share from 0 to 1 (e.g. 0.05), got {text:?}"
        )),
    }
}

fn parse_fault(text: &str) -> Result<Fault, String> {
    Ok(match text.trim() {
        "429" => Fault::rate_limited(1),
        "hang" => Fault::HangBeforeHeaders,
        "hang-mid" => Fault::HangMidStream { after_events: 2 },
        "reset" => Fault::ResetMidStream { after_events: 2 },
        "trickle" => Fault::Trickle {
            interval: Duration::from_millis(1),
        },
        "non-json" => Fault::NonJson,
        "malformed-sse" => Fault::MalformedSse,
        code => match code.parse::<u16>() {
            Ok(status) if (400..600).contains(&status) => Fault::status(status),
            _ => {
                return Err(format!(
                    "unknown fault {code:?}: expected a status from 400 to 599, hang, hang-mid, reset, trickle, non-json or malformed-sse"
                ))
            }
        },
    })
}

/// A fault's name in the exit tally.
fn fault_name(fault: &Fault) -> String {
    match fault {
        Fault::HangBeforeHeaders => "hang".to_owned(),
        Fault::HangMidStream { .. } => "hang-mid".to_owned(),
        Fault::ResetMidStream { .. } => "reset".to_owned(),
        Fault::Trickle { .. } => "trickle".to_owned(),
        Fault::NonJson => "non-json".to_owned(),
        Fault::MalformedSse => "malformed-sse".to_owned(),
        Fault::Status { status, .. } => status.to_string(),
        _ => format!("{fault:?}"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nexus-mock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let defaults = MockConfig::default();
    let config = MockConfig {
        models: if args.any_model {
            Vec::new()
        } else {
            args.models
        },
        usage: args.usage,
        reply: args.reply.unwrap_or(defaults.reply),
        chunks: args.chunks,
        delay: Duration::from_millis(args.delay_ms),
        chunk_interval: Duration::from_millis(args.chunk_interval_ms),
        record: args.record,
        ..defaults
    };
    let models = if config.models.is_empty() {
        "any".to_owned()
    } else {
        config.models.join(", ")
    };
    let mock = match MockUpstream::start_on(args.listen, config).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!(
                "nexus-mock: cannot listen on {}: {e}; pick another --listen address",
                args.listen
            );
            return ExitCode::from(2);
        }
    };
    let names: Vec<String> = args.faults.iter().map(fault_name).collect();
    if args.fault_rate > 0.0 {
        mock.set_fault_mix(FaultMix {
            rate: args.fault_rate,
            faults: args.faults,
            seed: args.fault_seed,
        });
    }
    println!("nexus-mock listening on {} (models: {models})", mock.url());
    shutdown_signal().await;
    let declared = mock.declared_usage();
    let played = mock.faults_played();
    let faults = names
        .iter()
        .zip(&played)
        .map(|(name, n)| format!("\"{name}\": {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{{\"requests\": {}, \"answers_with_usage\": {}, \"prompt_tokens\": {}, \"completion_tokens\": {}, \"faults\": {{{faults}}}}}",
        mock.request_count(),
        declared.answers,
        declared.prompt_tokens,
        declared.completion_tokens
    );
    ExitCode::SUCCESS
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
