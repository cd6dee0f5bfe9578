//! Inspecting an upstream's server-sent events while passing them through.
//!
//! The gateway forwards a stream chunk by chunk, but it must also see inside it: the usage
//! chunk settles spend, `data: [DONE]` says the answer is whole, the first chunk with
//! content is the time to first token, and the usage chunk is dropped for a client that
//! did not ask for it. So the inspector cuts the byte stream into events (split anywhere,
//! `\n` or `\r\n` line ends), holds at most the one event still incomplete, and forwards
//! each complete event as soon as it has looked at it. Forwarding whole events only means
//! the client's stream is always at an event boundary, so an error event can be appended
//! whenever the upstream breaks.
//!
//! When an upstream's chunks hold whole events (the usual case), what is forwarded is a
//! slice of the chunk received: no copy. A lone `\r` is not taken as a line end (no
//! OpenAI-compatible server sends one); an event that grows past
//! [`SseInspector::with_max_event_bytes`] without ending is passed through uninspected
//! rather than buffered without bound.

use std::mem;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::wire::Usage;
use crate::GatewayError;

/// The largest incomplete event held by default: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Something wrong in an upstream's stream. None of these stops the stream: the caller
/// logs or counts the problem. A [`SseProblem::Malformed`] event is dropped (no OpenAI
/// client can parse it, and the official ones raise on it, ending a stream that is
/// otherwise fine); every other event is forwarded as the upstream sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseProblem {
    /// An event's data is neither `[DONE]` nor a JSON chunk: not forwarded.
    Malformed {
        /// The event's index in the stream, from 0.
        event: u64,
        /// What is wrong, with line and column in the data.
        detail: String,
    },
    /// The upstream sent an error event (`data: {"error": ...}`).
    UpstreamError {
        /// The event's index in the stream, from 0.
        event: u64,
        /// The error's message, if it had one.
        message: Option<String>,
    },
    /// An event grew past the size limit without ending; it is passed through uninspected.
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The stream ended inside an event (no blank line after it).
    Unterminated {
        /// The bytes of the unfinished event.
        bytes: usize,
    },
}

/// What one [`SseInspector::push`] found.
#[derive(Debug, Default)]
#[must_use]
pub struct Inspected {
    /// The bytes to send the client now (empty when the chunk held no complete event).
    pub forward: Bytes,
    /// Whether this chunk completed the first event that carries content: the moment of
    /// the time to first token.
    pub first_content: bool,
    /// What was wrong in the events completed by this chunk.
    pub problems: Vec<SseProblem>,
}

/// Cuts an upstream's event stream into events, looks at each, and says what to forward.
///
/// ```
/// use bytes::Bytes;
/// use nexus_gateway::sse::SseInspector;
///
/// // The client did not ask for usage: the usage-only chunk is counted, not forwarded.
/// let mut sse = SseInspector::new(false);
/// let a = sse.push(Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\nda"));
/// assert!(a.first_content);
/// assert_eq!(&a.forward[..], b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
/// let b = sse.push(Bytes::from_static(
///     b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
/// ));
/// assert_eq!(&b.forward[..], b"data: [DONE]\n\n");
/// assert_eq!(sse.usage().map(|u| u.completion_tokens), Some(1));
/// assert!(sse.is_done());
/// ```
#[derive(Debug)]
pub struct SseInspector {
    forward_usage: bool,
    max_event_bytes: usize,
    /// The incomplete event so far.
    pending: BytesMut,
    /// Bytes of the current line so far (over chunks), and its last byte.
    line_len: usize,
    line_last: u8,
    /// Passing an oversized event through until it ends.
    passthrough: bool,
    events: u64,
    usage: Option<Usage>,
    done: bool,
    content_seen: bool,
}

impl SseInspector {
    /// An inspector for a stream whose client did (`true`) or did not ask for the usage
    /// chunk (`stream_options.include_usage`).
    pub fn new(forward_usage: bool) -> Self {
        SseInspector {
            forward_usage,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            pending: BytesMut::new(),
            line_len: 0,
            line_last: 0,
            passthrough: false,
            events: 0,
            usage: None,
            done: false,
            content_seen: false,
        }
    }

    /// Sets the largest incomplete event held before it is passed through uninspected.
    #[must_use]
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// Takes the next chunk of the upstream's body.
    pub fn push(&mut self, chunk: Bytes) -> Inspected {
        let mut out = Forward::new(&chunk);
        let mut found = Inspected::default();
        let mut event_start = 0;
        let mut line_start = 0;
        for pos in memchr::memchr_iter(b'\n', &chunk) {
            let len = self.line_len + (pos - line_start);
            let last = if pos > line_start {
                chunk[pos - 1]
            } else {
                self.line_last
            };
            line_start = pos + 1;
            self.line_len = 0;
            let blank = len == 0 || (len == 1 && last == b'\r');
            if !blank {
                continue;
            }
            let end = pos + 1;
            if self.passthrough {
                self.passthrough = false;
                out.keep(event_start..end);
            } else if self.pending.is_empty() {
                if self.inspect(&chunk[event_start..end], &mut found) {
                    out.keep(event_start..end);
                }
            } else {
                self.pending.extend_from_slice(&chunk[event_start..end]);
                let event = mem::take(&mut self.pending);
                if self.inspect(&event, &mut found) {
                    out.keep_copy(&event);
                }
                // Reuse the buffer for the next event that straddles chunks.
                self.pending = event;
                self.pending.clear();
            }
            event_start = end;
        }

        let rest = &chunk[event_start..];
        if line_start < chunk.len() {
            self.line_len += chunk.len() - line_start;
            self.line_last = chunk[chunk.len() - 1];
        }
        if self.passthrough {
            out.keep(event_start..chunk.len());
        } else if self.pending.len() + rest.len() > self.max_event_bytes {
            found.problems.push(SseProblem::EventTooLarge {
                limit: self.max_event_bytes,
            });
            let held = mem::take(&mut self.pending);
            out.keep_copy(&held);
            out.keep(event_start..chunk.len());
            self.passthrough = true;
        } else {
            self.pending.extend_from_slice(rest);
        }
        found.forward = out.finish();
        found
    }

    /// Ends the stream: inspects and forwards an unfinished last event, if any (the client
    /// gets what the upstream sent), and reports it.
    pub fn finish(&mut self) -> Inspected {
        let mut found = Inspected::default();
        if self.passthrough || self.pending.is_empty() {
            self.passthrough = false;
            return found;
        }
        let event = mem::take(&mut self.pending);
        found
            .problems
            .push(SseProblem::Unterminated { bytes: event.len() });
        if self.inspect(&event, &mut found) {
            found.forward = event.freeze();
        }
        self.line_len = 0;
        found
    }

    /// The last usage the upstream reported, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether any event carried content.
    pub fn content_seen(&self) -> bool {
        self.content_seen
    }

    /// Events completed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The event to send the client when the upstream breaks after the first byte:
    /// `data: {"error": {...}}` in the OpenAI shape, which the OpenAI clients raise as an
    /// `APIError`. It starts a new event even if an oversized event was being passed
    /// through.
    pub fn error_event(&self, error: &GatewayError) -> Bytes {
        let mut event = BytesMut::new();
        if self.passthrough {
            event.extend_from_slice(b"\n\n");
        }
        event.extend_from_slice(&error_event(error));
        event.freeze()
    }

    /// Looks at one complete event; says whether to forward it.
    fn inspect(&mut self, event: &[u8], found: &mut Inspected) -> bool {
        let index = self.events;
        self.events += 1;
        let data = event_data(event);
        let Some(data) = data.as_deref() else {
            return true; // a comment or a keep-alive: forward as is
        };
        if data == b"[DONE]" {
            self.done = true;
            return true;
        }
        let mut chunk = match serde_json::from_slice::<StreamChunk>(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                found.problems.push(SseProblem::Malformed {
                    event: index,
                    detail: e.to_string(),
                });
                return false;
            }
        };
        if let Some(error) = chunk.error.take() {
            found.problems.push(SseProblem::UpstreamError {
                event: index,
                message: error.message(),
            });
        }
        if chunk.has_content() && !self.content_seen {
            self.content_seen = true;
            found.first_content = true;
        }
        let usage_only = chunk.usage.is_some() && chunk.choices.as_ref().is_none_or(Vec::is_empty);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        !usage_only || self.forward_usage
    }
}

/// `data: {"error": {...}}` followed by the blank line that ends the event.
///
/// ```
/// let event = nexus_gateway::sse::error_event(&nexus_gateway::GatewayError::upstream_error("reset"));
/// assert!(event.starts_with(b"data: {\"error\":{\"message\":\"reset\""));
/// assert!(event.ends_with(b"}}\n\n"));
/// ```
pub fn error_event(error: &GatewayError) -> Bytes {
    let body = error.body();
    let mut event = BytesMut::with_capacity(body.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&body);
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

/// The data of an event: its `data:` lines' values (one leading space removed) joined by
/// `\n`, as the SSE standard says; `None` when it has no data line.
fn event_data(event: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let mut data: Option<std::borrow::Cow<'_, [u8]>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data") else {
            continue;
        };
        let value = match value {
            [] => value,
            [b':', b' ', rest @ ..] | [b':', rest @ ..] => rest,
            _ => continue, // a field named "data..." but longer: not data
        };
        data = Some(match data {
            None => std::borrow::Cow::Borrowed(value),
            Some(before) => {
                let mut joined = before.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                std::borrow::Cow::Owned(joined)
            }
        });
    }
    data
}

/// The parts of a streamed chunk that the gateway reads.
#[derive(Deserialize)]
struct StreamChunk {
    choices: Option<Vec<Choice>>,
    usage: Option<Usage>,
    error: Option<StreamError>,
}

/// An upstream's error: usually `{"message": ...}`, sometimes a bare string.
#[derive(Deserialize)]
#[serde(untagged)]
enum StreamError {
    Object { message: Option<String> },
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl StreamError {
    fn message(self) -> Option<String> {
        match self {
            StreamError::Object { message } => message,
            StreamError::Text(message) => Some(message),
            StreamError::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Delta>,
    /// Completions stream text here instead of in a delta.
    text: Option<Text>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<Text>,
    refusal: Option<Text>,
    /// Reasoning tokens: vLLM says `reasoning_content`, Ollama and others `reasoning`.
    reasoning_content: Option<Text>,
    reasoning: Option<Text>,
    tool_calls: Option<Vec<serde::de::IgnoredAny>>,
    function_call: Option<serde::de::IgnoredAny>,
}

/// Whether a text field is non-empty, without keeping it.
struct Text(bool);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(!v.is_empty()))
            }
        }
        d.deserialize_str(V)
    }
}

impl StreamChunk {
    fn has_content(&self) -> bool {
        let some = |t: &Option<Text>| t.as_ref().is_some_and(|t| t.0);
        self.choices.iter().flatten().any(|c| {
            some(&c.text)
                || c.delta.as_ref().is_some_and(|d| {
                    some(&d.content)
                        || some(&d.refusal)
                        || some(&d.reasoning_content)
                        || some(&d.reasoning)
                        || d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                        || d.function_call.is_some()
                })
        })
    }
}

/// The bytes to forward from one chunk: a slice of it while the kept ranges are
/// contiguous, a copy once they are not.
struct Forward<'c> {
    chunk: &'c Bytes,
    range: Option<std::ops::Range<usize>>,
    copy: Option<BytesMut>,
}

impl<'c> Forward<'c> {
    fn new(chunk: &'c Bytes) -> Self {
        Forward {
            chunk,
            range: None,
            copy: None,
        }
    }

    fn keep(&mut self, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        match (&mut self.range, &mut self.copy) {
            (_, Some(copy)) => copy.extend_from_slice(&self.chunk[range]),
            (Some(kept), None) if kept.end == range.start => kept.end = range.end,
            (None, None) => self.range = Some(range),
            (Some(_), None) => {
                self.flush();
                self.keep(range);
            }
        }
    }

    fn keep_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.flush();
        self.copy
            .get_or_insert_with(BytesMut::new)
            .extend_from_slice(bytes);
    }

    /// Moves the kept range into the copy.
    fn flush(&mut self) {
        let copy = self.copy.get_or_insert_with(BytesMut::new);
        if let Some(range) = self.range.take() {
            copy.extend_from_slice(&self.chunk[range]);
        }
    }

    fn finish(self) -> Bytes {
        match (self.range, self.copy) {
            (_, Some(copy)) => copy.freeze(),
            (Some(range), None) => self.chunk.slice(range),
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
