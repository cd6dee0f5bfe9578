//! The **stream** and **settle** phases: an answer's body relayed chunk by chunk, and
//! its route guard finished when the body ends, breaks, or is dropped.
//!
//! [`Relay`] is the response body. Each upstream chunk is forwarded as it arrives (an
//! event stream through [`SseInspector`], which forwards whole events and drops the
//! usage chunk a client did not ask for; a JSON body as is, with a copy kept to read
//! its `usage` at the end). Silence longer than `[server] idle_timeout_ms` breaks the
//! stream. What is already sent cannot be retried: a broken event stream ends with an
//! error event, a broken JSON body ends the connection (an incomplete body is the only
//! signal HTTP/1.1 has left).
//!
//! Settling happens exactly once, in whichever comes first: the end, the break, or
//! `Drop`, which is how a client that disconnects is seen (hyper drops the body). The
//! upstream's body stream is dropped with the relay, which closes that connection and
//! so cancels the upstream request. The guard is then settled with what was used: the
//! reported usage if the usage chunk was seen, else the request's input estimate and
//! one output token per event streamed (OpenAI-compatible servers stream about one
//! token per event). A client going away is not the backend's fault, so it settles as a
//! success for the quality stage.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::Stream;
use nexus_core::{pipeline::OwnedRouteGuard, Outcome};
use tokio::time::Sleep;

use crate::sse::SseInspector;
use crate::wire::Usage;
use crate::{Gateway, GatewayError};

/// The most of a JSON answer kept to read its usage: 8 MiB (an embeddings answer for a
/// large batch is a few megabytes). A larger answer settles at the estimate.
const MAX_JSON_COPY: usize = 8 * 1024 * 1024;

/// The upstream's body.
pub(crate) type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

/// How the body is read.
enum Reading {
    Events(SseInspector),
    Json { copy: Option<Vec<u8>> },
}

/// How an answer ended.
enum Ending {
    /// The upstream finished the body.
    Complete,
    /// The upstream broke off or went silent mid-body.
    Broken,
    /// The client went away first.
    ClientGone,
}

/// The guard and what settling it needs.
pub(crate) struct Settle {
    pub(crate) gateway: Gateway,
    pub(crate) guard: OwnedRouteGuard,
    pub(crate) sent_at: Instant,
    pub(crate) status: StatusCode,
    /// The input tokens estimated from the request, for an answer without usage.
    pub(crate) input_tokens: u32,
    pub(crate) request_id: HeaderValue,
    /// The body's span; closed when the guard is settled.
    pub(crate) stream_span: tracing::Span,
    /// The request's span and what its log line says.
    pub(crate) record: crate::trace::RequestRecord,
}

/// A response body relaying an upstream's; see the module docs.
pub(crate) struct Relay {
    upstream: UpstreamBody,
    reading: Reading,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    settle: Option<Settle>,
    first_content: Option<Duration>,
    done: bool,
}

impl Relay {
    /// A relay of `upstream`: an event stream when `events` is `Some(forward_usage)`,
    /// else a JSON body.
    pub(crate) fn new(
        upstream: UpstreamBody,
        events: Option<bool>,
        idle_timeout: Duration,
        settle: Settle,
    ) -> Relay {
        let reading = match events {
            Some(forward_usage) => Reading::Events(SseInspector::new(forward_usage)),
            None => Reading::Json {
                copy: Some(Vec::new()),
            },
        };
        Relay {
            upstream,
            reading,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            settle: Some(settle),
            first_content: None,
            done: false,
        }
    }

    /// The usage the upstream reported, and the events streamed.
    fn usage(&self) -> (Option<Usage>, u64) {
        match &self.reading {
            Reading::Events(sse) => (sse.usage(), sse.events()),
            Reading::Json { copy } => (copy.as_deref().and_then(Usage::from_response), 0),
        }
    }

    fn settle(&mut self, ending: Ending) {
        let Some(settle) = self.settle.take() else {
            return;
        };
        let (usage, events) = self.usage();
        settle.finish(ending, usage, events, self.first_content);
    }

    /// Ends a stream the upstream broke: an error event for an event stream, an I/O
    /// error (the connection closes mid-body) for a JSON body.
    fn broken(&mut self, why: String) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        if let Some(settle) = &self.settle {
            tracing::warn!(request_id = ?settle.request_id, backend = settle.guard.backend().name(), error = %why, "the upstream broke off mid-answer");
        }
        self.settle(Ending::Broken);
        match &self.reading {
            Reading::Events(sse) => {
                let error = GatewayError::upstream_error(why);
                Poll::Ready(Some(Ok(sse.error_event(&error))))
            }
            Reading::Json { .. } => Poll::Ready(Some(Err(io::Error::other(why)))),
        }
    }
}

impl Stream for Relay {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let forward = match &mut this.reading {
                        Reading::Events(sse) => {
                            let found = sse.push(chunk);
                            if found.first_content && this.first_content.is_none() {
                                if let Some(settle) = &this.settle {
                                    this.first_content = Some(settle.sent_at.elapsed());
                                }
                            }
                            for problem in &found.problems {
                                tracing::debug!(?problem, "upstream event stream");
                            }
                            found.forward
                        }
                        Reading::Json { copy } => {
                            if let Some(kept) = copy {
                                if kept.len() + chunk.len() <= MAX_JSON_COPY {
                                    kept.extend_from_slice(&chunk);
                                } else {
                                    *copy = None;
                                }
                            }
                            chunk
                        }
                    };
                    if !forward.is_empty() {
                        return Poll::Ready(Some(Ok(forward)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.broken(format!("the upstream broke off mid-answer: {e}"));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let tail = match &mut this.reading {
                        Reading::Events(sse) => sse.finish().forward,
                        Reading::Json { .. } => Bytes::new(),
                    };
                    this.settle(Ending::Complete);
                    return Poll::Ready((!tail.is_empty()).then_some(Ok(tail)));
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        return this.broken(format!(
                            "the upstream sent nothing for {} ms ([server] idle_timeout_ms)",
                            this.idle_timeout.as_millis()
                        ));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Still unsettled here means the client went away before the end.
        self.settle(Ending::ClientGone);
    }
}

/// Saturates a token count to the `u32` the pipeline counts in.
fn tokens(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Settle {
    fn finish(
        self,
        ending: Ending,
        usage: Option<Usage>,
        events: u64,
        first_content: Option<Duration>,
    ) {
        let latency = self.sent_at.elapsed();
        let backend = self.guard.backend();
        let ticket = *self.guard.ticket();
        // What was used: the usage reported, else nothing for a refusal (4xx), else an
        // estimate from what was sent and streamed.
        let (input, output) = match (usage, &ending) {
            (Some(u), _) => (tokens(u.prompt_tokens), tokens(u.completion_tokens)),
            (None, _) if self.status.is_client_error() => (0, 0),
            (None, Ending::Complete) => (
                ticket.cost_estimate.input_tokens,
                ticket.cost_estimate.estimated_output_tokens,
            ),
            (None, _) => (
                self.input_tokens,
                tokens(events).min(ticket.cost_estimate.estimated_output_tokens.max(1)),
            ),
        };
        let success = match ending {
            Ending::Complete => !self.status.is_server_error(),
            Ending::Broken => false,
            Ending::ClientGone => true,
        };
        let mut outcome = if success {
            Outcome::success(latency)
        } else {
            Outcome::failure(latency)
        }
        .usage(input, output);
        if let Some(ttft) = first_content {
            outcome = outcome.time_to_first_token(ttft);
        }
        let label = match ending {
            Ending::Complete => crate::proxy::status_label(self.status),
            Ending::Broken => "broken",
            Ending::ClientGone => "client_closed",
        };
        let ending_name = match ending {
            Ending::Complete => "complete",
            Ending::Broken => "broken",
            Ending::ClientGone => "client_closed",
        };
        let fleet = self.guard.pipeline().fleet();
        let usd = fleet
            .model(ticket.model)
            .offer(ticket.backend)
            .map_or(0.0, |offer| offer.cost_usd(input, output));
        self.gateway.with_metrics(backend, |cached| {
            if let Some(ttft) = first_content {
                crate::metrics::ttft(cached, backend, ttft);
            }
            crate::metrics::upstream(cached, backend, label, latency);
            crate::metrics::usage(
                cached,
                backend,
                self.guard.model(),
                u64::from(input),
                u64::from(output),
                usd,
            );
        });
        self.stream_span
            .record("nexus.ending", ending_name)
            .record("gen_ai.usage.input_tokens", input)
            .record("gen_ai.usage.output_tokens", output);
        if let Some(ttft) = first_content {
            self.stream_span
                .record("nexus.time_to_first_token_ms", crate::trace::millis(ttft));
        }
        self.record.settled(&crate::trace::Settled {
            request_id: &self.request_id,
            backend,
            model: self.guard.model(),
            status: self.status.as_u16(),
            ending: ending_name,
            input_tokens: input,
            output_tokens: output,
            cost_usd: usd,
            upstream: latency,
            ttft: first_content,
        });
        self.guard.finish(outcome);
        self.gateway.wake_queue();
    }
}
