//! The OpenAI wire format, as far as the gateway needs it.
//!
//! A request body is read once, in a single pass, into a [`RequestBody`]: the
//! [`RequestSummary`] that routing needs (model, output cap, features, stream flags, input
//! token estimate and upper bound) and the byte positions of the few values the gateway
//! changes. The body is never turned into a `serde_json::Value` tree: top-level members are
//! visited in place, values the gateway does not read are skipped, and the ones it rewrites
//! are kept as borrowed [`serde_json::value::RawValue`]s whose offsets in the body say where
//! to splice. So the upstream receives the client's bytes, key order, number formats and
//! whitespace included, except `model` and, for streams, `stream_options.include_usage`.
//!
//! The modules split the one idea into its rooms: [`read`](RequestBody::parse) walks the
//! top level, `prompt` measures the prompt text without copying it, `rewrite` splices,
//! [`Usage`] reads what an upstream says it used, and [`WireError`] names what was wrong.

mod error;
mod prompt;
mod read;
mod rewrite;
mod usage;

pub use error::WireError;
pub use read::{RequestBody, RequestSummary, IMAGE_TOKENS_MAX};
pub use usage::Usage;

use std::fmt;

/// The proxied OpenAI endpoints whose bodies the gateway reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`: `messages`, may stream.
    ChatCompletions,
    /// `POST /v1/completions`: `prompt`, may stream.
    Completions,
    /// `POST /v1/embeddings`: `input`, never streams and produces no output tokens.
    Embeddings,
}

impl Endpoint {
    /// Every endpoint, in the order of the OpenAI reference.
    pub const ALL: [Endpoint; 3] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
    ];

    /// The path of the endpoint, as clients and upstreams spell it.
    ///
    /// ```
    /// use nexus_gateway::wire::Endpoint;
    /// assert_eq!(Endpoint::Embeddings.path(), "/v1/embeddings");
    /// assert_eq!(Endpoint::from_path("/v1/chat/completions"), Some(Endpoint::ChatCompletions));
    /// ```
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The endpoint served at `path`, if the gateway proxies it.
    pub fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// Whether a request to this endpoint may ask for a server-sent event stream.
    pub const fn can_stream(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }

    /// The top-level key that holds the prompt.
    pub const fn prompt_key(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// The kind of a JSON value, named as error messages say it, judged from its first byte
/// (the value is known to be valid JSON when this is asked).
pub(crate) fn json_kind(raw: &[u8]) -> &'static str {
    match raw.iter().find(|b| !b.is_ascii_whitespace()) {
        None => "nothing",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(_) => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
            assert_eq!(endpoint.to_string(), endpoint.path());
        }
        assert_eq!(Endpoint::from_path("/v1/models"), None);
    }

    #[test]
    fn kinds_are_named_from_the_first_byte() {
        assert_eq!(json_kind(b"  {}"), "an object");
        assert_eq!(json_kind(b"[1]"), "an array");
        assert_eq!(json_kind(b"\"x\""), "a string");
        assert_eq!(json_kind(b"false"), "a boolean");
        assert_eq!(json_kind(b"null"), "null");
        assert_eq!(json_kind(b"-1.5"), "a number");
        assert_eq!(json_kind(b"  "), "nothing");
    }
}
