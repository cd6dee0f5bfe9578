//! What the mock answers, which faults it plays, and what it records.

use std::time::Duration;

use axum::http::{HeaderMap, Method};
use bytes::Bytes;

/// Token counts the mock declares in every answer's `usage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockUsage {
    /// `prompt_tokens`.
    pub prompt_tokens: u64,
    /// `completion_tokens` (0 for embeddings, which generate nothing).
    pub completion_tokens: u64,
}

impl Default for MockUsage {
    fn default() -> Self {
        MockUsage {
            prompt_tokens: 10,
            completion_tokens: 20,
        }
    }
}

/// How the mock answers when no fault is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// The models served (`GET /v1/models`, `/api/tags`). A request for another model gets
    /// OpenAI's 404 `model_not_found`; an empty list serves any model.
    pub models: Vec<String>,
    /// The models Ollama's `/api/ps` reports loaded; `None` means all of `models`.
    pub loaded: Option<Vec<String>>,
    /// The usage declared in answers.
    pub usage: MockUsage,
    /// The assistant's reply (completions and chat).
    pub reply: String,
    /// How many content events a stream splits the reply into (at least 1).
    pub chunks: usize,
    /// Waited before the headers of every request (listings included).
    pub delay: Duration,
    /// Waited between the events of a stream.
    pub chunk_interval: Duration,
    /// The length of every embedding vector.
    pub embedding_dims: usize,
    /// Whether to keep each request (method, path, headers, body); request counts are kept
    /// either way. Load tests turn this off so that memory stays flat.
    pub record: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            models: vec!["mock-model".to_owned()],
            loaded: None,
            usage: MockUsage::default(),
            reply: "Hello from the mock upstream.".to_owned(),
            chunks: 4,
            delay: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            embedding_dims: 8,
            record: true,
        }
    }
}

impl MockConfig {
    /// The default config serving `models`.
    pub fn serving<S: Into<String>>(models: impl IntoIterator<Item = S>) -> Self {
        MockConfig {
            models: models.into_iter().map(Into::into).collect(),
            ..MockConfig::default()
        }
    }
}

/// A misbehaviour of the upstream, played on inference requests (`POST /v1/...`). Listing
/// endpoints (`/v1/models`, `/api/tags`, `/api/ps`) are answered normally, so that a
/// gateway's background health checks neither see nor use up a fault meant for traffic;
/// [`MockUpstream::set_listings_failing`](crate::MockUpstream::set_listings_failing) fails
/// them, and [`MockUpstream::stop_listening`](crate::MockUpstream::stop_listening) refuses
/// connections altogether.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Accept the request and never send headers.
    HangBeforeHeaders,
    /// Send the headers and the first `after_events` events of a stream, then nothing,
    /// never ending. A non-streaming body is then sent in two halves (chunked), so
    /// `after_events >= 1` stops after the first half; without a fault it is sent whole,
    /// with its `content-length`.
    HangMidStream {
        /// Events (or halves) sent before the hang.
        after_events: usize,
    },
    /// Like [`Fault::HangMidStream`], but reset the connection (TCP RST) instead of
    /// hanging, a tenth of a second after the last piece (a reset discards whatever the
    /// client has not read yet, so the pause lets it read what was sent).
    ResetMidStream {
        /// Events (or halves) sent before the reset.
        after_events: usize,
    },
    /// Send the body one byte at a time, `interval` apart.
    Trickle {
        /// The pause between bytes.
        interval: Duration,
    },
    /// Answer 200 with `content-type: application/json` and an HTML body.
    NonJson,
    /// For streams: events with broken JSON and a stray line before the real ones.
    /// Non-streaming requests are answered normally.
    MalformedSse,
    /// Answer with this status, these headers and this body.
    Status {
        /// The HTTP status.
        status: u16,
        /// Extra headers (e.g. `retry-after`).
        headers: Vec<(String, String)>,
        /// The body; OpenAI's error shape when `None`.
        body: Option<String>,
    },
}

impl Fault {
    /// Answer `status` with an OpenAI error body.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    /// A 429 with `retry-after: SECS`, as a rate-limited cloud API answers.
    pub fn rate_limited(retry_after_secs: u64) -> Fault {
        Fault::status(429).with_header("retry-after", retry_after_secs.to_string())
    }

    /// Adds a header to a [`Fault::Status`] (other faults are returned unchanged).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Fault {
        if let Fault::Status { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// Faults played at random: each inference request gets one of `faults` (picked evenly)
/// with probability `rate`, else a normal answer. See
/// [`MockUpstream::set_fault_mix`](crate::MockUpstream::set_fault_mix).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultMix {
    /// The share of requests that get a fault, from 0 to 1.
    pub rate: f64,
    /// The faults to pick from.
    pub faults: Vec<Fault>,
    /// Seeds the draws: the same seed plays the same faults on the same request numbers.
    pub seed: u64,
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The method.
    pub method: Method,
    /// The path (no query).
    pub path: String,
    /// The headers, `authorization` included.
    pub headers: HeaderMap,
    /// The body as received.
    pub body: Bytes,
}

impl Recorded {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `model` of a JSON body.
    pub fn model(&self) -> Option<String> {
        self.json()?.get("model")?.as_str().map(str::to_owned)
    }
}

/// The usage the mock declared in the answers it finished sending (a stream counts once
/// its usage event is handed to the connection; an answer cut by a fault before its usage
/// does not count). Issue 12's soak compares the gateway's settled spend with this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeclaredUsage {
    /// Answers whose usage was sent.
    pub answers: u64,
    /// Sum of `prompt_tokens`.
    pub prompt_tokens: u64,
    /// Sum of `completion_tokens`.
    pub completion_tokens: u64,
}
