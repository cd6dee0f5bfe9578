//! Reading a request body: one pass over the top level, the prompt measured on the way.
//!
//! Values the gateway routes on are small and are kept as borrowed raw JSON, then typed
//! one by one so that a wrong type is reported with the parameter's name. The prompt is
//! measured while it is parsed ([`super::prompt`]). Top-level keys are checked for
//! duplicates: servers disagree on which copy of a key wins, and a body whose `model`
//! depends on the reader must not be routed on one copy and served on the other.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use nexus_core::{
    pipeline::{Features, TierMode},
    Request,
};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::prompt::{Key, Messages, PromptInput, PromptMeasure};
use super::rewrite::Splice;
use super::{json_kind, Endpoint, WireError};

/// The tokens one image may cost, for [`RequestSummary::input_tokens_max`]. Generous on
/// purpose: OpenAI's vision models charge at most a few thousand tokens per image, and the
/// open models with the largest images (Qwen2-VL's default pixel cap) about sixteen
/// thousand. The image's own bytes (a data URL can be megabytes) are not counted instead.
pub const IMAGE_TOKENS_MAX: u32 = 16_384;

/// What routing needs to know about a request, read from its body.
///
/// ```
/// use nexus_core::pipeline::{Features, TierMode};
/// use nexus_gateway::wire::{Endpoint, RequestBody};
///
/// let body = br#"{
///     "model": "gpt-4o",
///     "messages": [{"role": "user", "content": [
///         {"type": "text", "text": "What is in this image?"},
///         {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
///     ]}],
///     "max_completion_tokens": 300,
///     "response_format": {"type": "json_object"}
/// }"#;
/// let read = RequestBody::parse(Endpoint::ChatCompletions, body)?;
/// let summary = read.summary();
/// assert_eq!(summary.features, Features::VISION | Features::JSON_MODE);
/// assert_eq!(summary.input_tokens, 6); // 22 bytes of text, four to a token
/// let request = summary.to_request(TierMode::Strict);
/// assert_eq!(request.max_output_tokens, Some(300));
/// # Ok::<(), nexus_gateway::wire::WireError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSummary<'a> {
    /// The endpoint the body was sent to.
    pub endpoint: Endpoint,
    /// The model the client asked for (borrowed from the body unless it had escapes).
    pub model: Cow<'a, str>,
    /// The cap on output tokens: `max_completion_tokens`, else `max_tokens`, times the
    /// number of choices (`n`, or `best_of` for completions); `Some(0)` for embeddings,
    /// which produce none. `None` when the client set no cap.
    pub max_output_tokens: Option<u32>,
    /// Vision (an `image_url` part), tools (non-empty `tools` or `functions`), JSON mode
    /// (`response_format` of type `json_object` or `json_schema`).
    pub features: Features,
    /// Whether the client asked for a server-sent event stream (`stream: true`).
    pub stream: bool,
    /// Whether a streaming client asked for the usage chunk
    /// (`stream_options.include_usage: true`); the gateway always asks the upstream for
    /// it and passes it on only when this is set.
    pub include_usage: bool,
    /// Input tokens estimated from the prompt text, four bytes to a token (the rule of
    /// [`nexus_core::pipeline::estimate_tokens`]), plus token ids counted exactly.
    pub input_tokens: u32,
    /// An upper bound of the input tokens: the body's bytes (every token of text, chat
    /// template or tool definition is at least one byte), with each image's bytes replaced
    /// by [`IMAGE_TOKENS_MAX`]. Reserving against it can never under-reserve.
    pub input_tokens_max: u32,
}

impl RequestSummary<'_> {
    /// The routing request for this body, with the tier mode the headers asked for.
    pub fn to_request(&self, tier_mode: TierMode) -> Request<'_> {
        let mut request = Request::new(&self.model)
            .input_tokens(self.input_tokens)
            .needs(self.features)
            .tier_mode(tier_mode);
        request.max_output_tokens = self.max_output_tokens;
        request
    }
}

/// A request body read for routing, ready to be rewritten for the upstream.
///
/// It borrows the body: parse, route, [`rewrite`](RequestBody::rewrite), then let go.
#[derive(Clone, Debug)]
pub struct RequestBody<'a> {
    pub(super) body: &'a [u8],
    summary: RequestSummary<'a>,
    /// Where the value of `model` is.
    pub(super) model_at: Range<usize>,
    /// How to make the upstream send usage, for streams.
    pub(super) usage_splice: Option<Splice>,
    /// The choices the output cap is multiplied by (`n`, or `best_of`).
    choices: u64,
    /// Where a `"max_tokens": null` value is, to be replaced by a default cap.
    pub(super) null_max_tokens_at: Option<Range<usize>>,
    /// The output cap the gateway set ([`RequestBody::default_max_tokens`]), written
    /// into the body for the upstream.
    pub(super) default_max_tokens: Option<u32>,
}

impl<'a> RequestBody<'a> {
    /// Reads `body`, sent to `endpoint`.
    ///
    /// # Errors
    ///
    /// A [`WireError`] naming what was wrong: an empty body, invalid JSON (with line and
    /// column), a non-object, a duplicate top-level key, a missing, empty or non-string
    /// `model`, or a value the gateway reads with the wrong type (naming the parameter).
    pub fn parse(endpoint: Endpoint, body: &'a [u8]) -> Result<Self, WireError> {
        let Some(&first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
            return Err(WireError::EmptyBody);
        };
        if first != b'{' {
            // Say "not valid JSON" for garbage and "not an object" for JSON of another kind.
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Err(e) => invalid_json(&e),
                Ok(_) => WireError::NotAnObject {
                    found: json_kind(body),
                },
            });
        }

        let mut measure = PromptMeasure::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        let top = TopLevel {
            endpoint,
            measure: &mut measure,
        }
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| {
            if e.is_data() {
                WireError::InvalidField {
                    param: endpoint.prompt_key(),
                    detail: e.to_string(),
                }
            } else {
                invalid_json(&e)
            }
        })?;
        top.check_duplicates("")?;
        Self::read(endpoint, body, top, measure)
    }

    fn read(
        endpoint: Endpoint,
        body: &'a [u8],
        top: Members<'a>,
        mut measure: PromptMeasure,
    ) -> Result<Self, WireError> {
        let raw = |key: &str| top.get(key);

        let model_raw = raw("model").ok_or(WireError::MissingModel)?;
        let model = match serde_json::from_str::<Key<'a>>(model_raw.get()) {
            Ok(Key(name)) if !name.is_empty() => name,
            _ => return Err(wrong_type("model", "a non-empty string", model_raw)),
        };

        let cap = |key| typed::<Option<u64>>(raw(key), key, "a non-negative integer or null");
        let choices = |key| -> Result<u64, WireError> {
            Ok(typed::<Option<u64>>(raw(key), key, "a positive integer or null")?.unwrap_or(1))
        };
        let mut n = 1;
        let max_output_tokens = match endpoint {
            Endpoint::Embeddings => Some(0),
            Endpoint::ChatCompletions | Endpoint::Completions => {
                let per_choice = match cap("max_completion_tokens")? {
                    Some(n) => Some(n),
                    None => cap("max_tokens")?,
                };
                n = choices("n")?;
                if endpoint == Endpoint::Completions {
                    n = n.max(choices("best_of")?);
                }
                per_choice.map(|t| saturate(t.saturating_mul(n.max(1))))
            }
        };
        let null_max_tokens_at = raw("max_tokens")
            .filter(|v| v.get() == "null")
            .map(|v| span_of(body, v));

        let tools = |key| -> Result<bool, WireError> {
            let list = typed::<Option<Vec<IgnoredAny>>>(raw(key), key, "an array or null")?;
            Ok(list.is_some_and(|l| !l.is_empty()))
        };
        let json_mode = match raw("response_format") {
            None => false,
            Some(v) if v.get() == "null" => false,
            Some(v) => {
                let format = Members::parse(v)
                    .map_err(|_| wrong_type("response_format", "an object or null", v))?;
                format.check_duplicates("response_format.")?;
                let kind = format
                    .get("type")
                    .map(|t| serde_json::from_str::<Key<'_>>(t.get()));
                matches!(kind, Some(Ok(Key(k))) if k == "json_object" || k == "json_schema")
            }
        };
        let vision = measure.images > 0;
        let features =
            Features::from_flags(vision, tools("tools")? || tools("functions")?, json_mode);

        if endpoint == Endpoint::Completions {
            if let Some(suffix) =
                typed::<Option<SuffixLen>>(raw("suffix"), "suffix", "a string or null")?
            {
                measure.text_bytes += suffix.0;
            }
        }

        let stream = endpoint.can_stream()
            && typed::<Option<bool>>(raw("stream"), "stream", "a boolean or null")?
                .unwrap_or(false);
        let (include_usage, usage_splice) = if stream {
            Splice::include_usage(body, raw("stream_options"))?
        } else {
            (false, None)
        };

        let input_tokens = saturate(measure.text_bytes.div_ceil(4) + measure.token_ids);
        let input_tokens_max = saturate(
            (body.len() as u64).saturating_sub(measure.image_bytes)
                + measure.images * u64::from(IMAGE_TOKENS_MAX),
        );
        Ok(RequestBody {
            body,
            model_at: span_of(body, model_raw),
            usage_splice,
            choices: n.max(1),
            null_max_tokens_at,
            default_max_tokens: None,
            summary: RequestSummary {
                endpoint,
                model,
                max_output_tokens,
                features,
                stream,
                include_usage,
                input_tokens,
                input_tokens_max,
            },
        })
    }

    /// Gives a chat or completions request whose client set no output cap (neither
    /// `max_completion_tokens` nor `max_tokens`) the cap `tokens` per choice: the summary's
    /// [`max_output_tokens`](RequestSummary::max_output_tokens) becomes `tokens` times the
    /// choices, and [`rewrite`](Self::rewrite) sends `"max_tokens": tokens` upstream, so
    /// that the budget reserves a bound of the answer's cost that the backend honours.
    /// Returns whether the cap was set. `[server] default_max_tokens` of the gateway.
    ///
    /// ```
    /// use nexus_gateway::wire::{Endpoint, RequestBody};
    /// let body = br#"{"model": "m", "messages": [], "n": 2}"#;
    /// let mut read = RequestBody::parse(Endpoint::ChatCompletions, body)?;
    /// assert!(read.default_max_tokens(500));
    /// assert_eq!(read.summary().max_output_tokens, Some(1000));
    /// assert_eq!(read.rewrite("m"), br#"{"max_tokens":500,"model": "m", "messages": [], "n": 2}"#);
    /// # Ok::<(), nexus_gateway::wire::WireError>(())
    /// ```
    pub fn default_max_tokens(&mut self, tokens: u32) -> bool {
        if self.summary.max_output_tokens.is_some() {
            return false;
        }
        self.summary.max_output_tokens =
            Some(saturate(u64::from(tokens).saturating_mul(self.choices)));
        self.default_max_tokens = Some(tokens);
        true
    }

    /// What routing needs to know.
    pub fn summary(&self) -> &RequestSummary<'a> {
        &self.summary
    }

    /// The body as received.
    pub fn bytes(&self) -> &'a [u8] {
        self.body
    }
}

/// Where `raw` lies in `body`. Raw values parsed from `body` borrow from it, so the
/// pointer difference is their offset.
pub(super) fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    debug_assert!(
        start + raw.get().len() <= body.len(),
        "raw value outside the body"
    );
    start..start + raw.get().len()
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn invalid_json(e: &serde_json::Error) -> WireError {
    WireError::InvalidJson {
        detail: e.to_string(),
    }
}

/// The value as it was sent when short, else its kind.
pub(super) fn wrong_type(param: &str, expected: &'static str, raw: &RawValue) -> WireError {
    let text = raw.get();
    let found = if text.len() <= 40 {
        text.to_owned()
    } else {
        json_kind(text.as_bytes()).to_owned()
    };
    WireError::WrongType {
        param: param.to_owned(),
        expected,
        found,
    }
}

/// Types an optional raw value, naming the parameter when it has the wrong type.
pub(super) fn typed<'a, T: Deserialize<'a> + Default>(
    raw: Option<&'a RawValue>,
    param: &str,
    expected: &'static str,
) -> Result<T, WireError> {
    match raw {
        None => Ok(T::default()),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| wrong_type(param, expected, raw)),
    }
}

/// A completions `suffix`: only its length counts.
#[derive(Default)]
struct SuffixLen(u64);

impl<'de> Deserialize<'de> for SuffixLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut m = PromptMeasure::default();
        PromptInput {
            measure: &mut m,
            key: "suffix",
        }
        .deserialize(deserializer)?;
        if m.token_ids > 0 {
            return Err(de::Error::custom("suffix must be a string"));
        }
        Ok(SuffixLen(m.text_bytes))
    }
}

/// An object's members in order, values kept raw.
#[derive(Debug, Default)]
pub(super) struct Members<'a>(pub(super) Vec<(Key<'a>, Option<&'a RawValue>)>);

impl<'a> Members<'a> {
    /// Reads an object from a raw value, every member kept raw.
    pub(super) fn parse(raw: &'a RawValue) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        AllRaw.deserialize(&mut de)
    }

    /// The raw value of `key` (the only one: duplicates are refused first).
    pub(super) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k.0 == key)
            .and_then(|(_, v)| *v)
    }

    /// Refuses a key that appears twice; `parent` prefixes the key in the error.
    pub(super) fn check_duplicates(&self, parent: &str) -> Result<(), WireError> {
        let mut keys: Vec<&str> = self.0.iter().map(|(k, _)| k.0.as_ref()).collect();
        keys.sort_unstable();
        match keys.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(WireError::DuplicateKey {
                key: format!("{parent}{}", w[0]),
            }),
            None => Ok(()),
        }
    }
}

/// Keeps every member raw (for small objects such as `stream_options`).
struct AllRaw;

impl<'de> DeserializeSeed<'de> for AllRaw {
    type Value = Members<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Members<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AllRaw {
    type Value = Members<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<&'de RawValue>()?;
            members.push((key, Some(value)));
        }
        Ok(Members(members))
    }
}

/// The top level of a request body: keeps raw the values routing reads, measures the
/// prompt, skips the rest (keeping only its key, for the duplicate check).
struct TopLevel<'m> {
    endpoint: Endpoint,
    measure: &'m mut PromptMeasure,
}

/// Top-level keys whose values are kept raw.
const READ_RAW: [&str; 11] = [
    "model",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "best_of",
    "tools",
    "functions",
    "response_format",
    "stream",
    "stream_options",
    "suffix",
];

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Members<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Members<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Members<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let mut members = Vec::new();
        let prompt_key = self.endpoint.prompt_key();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = if READ_RAW.contains(&key.0.as_ref()) {
                Some(map.next_value::<&'de RawValue>()?)
            } else if key.0 == prompt_key {
                match self.endpoint {
                    Endpoint::ChatCompletions => {
                        map.next_value_seed(Messages(&mut *self.measure))?
                    }
                    Endpoint::Completions | Endpoint::Embeddings => {
                        map.next_value_seed(PromptInput {
                            measure: &mut *self.measure,
                            key: prompt_key,
                        })?
                    }
                }
                None
            } else {
                map.next_value::<IgnoredAny>()?;
                None
            };
            members.push((key, value));
        }
        Ok(Members(members))
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
