//! OTLP export of the gateway's traces (the `otlp` feature, off by default).
//!
//! The spans the gateway makes (`nexus.request`, `nexus.decide`, `nexus.upstream`,
//! `nexus.stream`, with the OpenTelemetry GenAI attribute names) go through
//! `tracing-opentelemetry` to an OTLP/HTTP (protobuf) exporter, batched on the SDK's own
//! thread. The exporter is configured by the standard variables, which it reads
//! itself: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (export
//! is on only when one of them is set), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default `nexus`).
//!
//! The HTTP client is reqwest (over the hyper and rustls the gateway's upstream client
//! uses, on the crypto provider it installs), run on the server's Tokio runtime: the
//! exporter's thread hands each batch to the runtime and waits for it, so no second HTTP
//! stack or TLS library is compiled in.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The gateway's HTTP client on the server's runtime, for the exporter.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let sent = self.runtime.spawn(async move {
            let answer = client.execute(request).await?;
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            let body = answer.bytes().await?;
            Ok::<_, HttpError>(response.body(body)?)
        });
        sent.await?
    }
}

/// Whether the environment asks for export.
fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// The tracer provider exporting to the configured endpoint, or `None` when no endpoint
/// is set; an endpoint that cannot be used is an error that says which variable.
pub(crate) fn provider(
    runtime: tokio::runtime::Handle,
) -> Result<Option<SdkTracerProvider>, String> {
    if !configured() {
        return Ok(None);
    }
    nexus_gateway::upstream::install_crypto_provider();
    let client = reqwest::Client::builder()
        .user_agent(nexus_gateway::upstream::USER_AGENT)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(RuntimeClient { client, runtime })
        .build()
        .map_err(|e| {
            format!(
                "OTLP export: {e}; check OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318)"
            )
        })?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nexus".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The tracing layer sending spans to `provider`.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("nexus"))
}

/// Sends what is still batched, bounded in time.
pub(crate) fn shutdown(provider: &SdkTracerProvider) {
    if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
        crate::print_err(&format!("nexus: OTLP export did not finish: {error}"));
    }
}
