//! What an upstream says a request used: the `usage` object of a response or of a
//! stream's usage chunk. Spend and token metrics settle from it, not from estimates.

use serde::Deserialize;

/// Token usage as an upstream reports it. Missing counts read as 0 (embeddings report no
/// `completion_tokens`); other fields (`total_tokens`, details) are ignored because they
/// follow from these two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
}

impl Usage {
    /// Prompt plus completion tokens.
    pub const fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// The `usage` of a non-streaming response body, or `None` when it has none (or is
    /// not a JSON object: an upstream's garbage is its own error, not a usage).
    ///
    /// ```
    /// use nexus_gateway::wire::Usage;
    /// let body = br#"{"id": "x", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}"#;
    /// let usage = Usage::from_response(body).unwrap();
    /// assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 12));
    /// assert_eq!(Usage::from_response(b"<html>"), None);
    /// ```
    pub fn from_response(body: &[u8]) -> Option<Usage> {
        #[derive(Deserialize)]
        struct WithUsage {
            usage: Option<Usage>,
        }
        if let Some(usage) = Self::from_last_member(body) {
            return usage;
        }
        serde_json::from_slice::<WithUsage>(body).ok()?.usage
    }

    /// The fast path of [`from_response`](Self::from_response): when `usage` is the last
    /// member of the answer's object, as OpenAI and the servers that copy it write it,
    /// only that member is parsed (walking the whole answer cost 6 000 instructions of a
    /// short chat answer). `None` when the answer does not end that way (another member
    /// follows, or the last `"usage"` key belongs to a nested object): then the whole body
    /// is parsed. A body that ends this way but is broken earlier still yields its usage,
    /// which is what the upstream reported.
    fn from_last_member(body: &[u8]) -> Option<Option<Usage>> {
        const KEY: &[u8] = b"\"usage\"";
        // A `"usage"` inside a string value would have its quotes escaped (`\"usage\"`),
        // so a match is a key.
        let at = body.windows(KEY.len()).rposition(|w| w == KEY)?;
        let before = body[..at].iter().rev().find(|b| !b.is_ascii_whitespace())?;
        if !matches!(before, b',' | b'{') {
            return None;
        }
        let value = body[at + KEY.len()..]
            .trim_ascii_start()
            .strip_prefix(b":")?;
        let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Option<Usage>>();
        let usage = values.next()?.ok()?;
        // Only the closing brace of the answer may follow: the key was the top level's.
        (value[values.byte_offset()..].trim_ascii() == b"}").then_some(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_usage_has_no_completion() {
        let usage = Usage::from_response(br#"{"usage": {"prompt_tokens": 5, "total_tokens": 5}}"#);
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 0
            })
        );
        assert_eq!(Usage::from_response(br#"{"usage": null}"#), None);
        assert_eq!(Usage::from_response(br#"{"choices": []}"#), None);
        assert_eq!(Usage::from_response(b"[1]"), None);
    }

    #[test]
    fn usage_as_the_last_member_is_read_without_the_rest() {
        let usage = |p, c| {
            Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
            })
        };
        // The fast path: the top level's last member.
        assert_eq!(
            Usage::from_response(br#"{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}"#),
            usage(3, 4)
        );
        assert_eq!(
            Usage::from_last_member(b"{\"a\":1,\n \"usage\" :\t{\"prompt_tokens\": 3}\n}\n"),
            Some(usage(3, 0))
        );
        assert_eq!(Usage::from_last_member(br#"{"usage": null}"#), Some(None));
        // A nested `usage` last, or one followed by another member: the whole body is
        // parsed, and the top level's usage (or none) is what counts.
        let nested = br#"{"usage": {"prompt_tokens": 1}, "x": {"usage": {"prompt_tokens": 9}}}"#;
        assert_eq!(Usage::from_last_member(nested), None);
        assert_eq!(Usage::from_response(nested), usage(1, 0));
        let in_array = br#"{"choices": [{"usage": {"prompt_tokens": 9}}]}"#;
        assert_eq!(Usage::from_last_member(in_array), None);
        assert_eq!(Usage::from_response(in_array), None);
        let followed = br#"{"usage": {"prompt_tokens": 2, "completion_tokens": 5}, "id": "x"}"#;
        assert_eq!(Usage::from_last_member(followed), None);
        assert_eq!(Usage::from_response(followed), usage(2, 5));
        // The word inside a string is escaped, so it is no key.
        let quoted = br#"{"content": "say \"usage\": {}", "usage": {"prompt_tokens": 7}}"#;
        assert_eq!(Usage::from_response(quoted), usage(7, 0));
        let only_quoted = br#"{"content": "say \"usage\": {\"prompt_tokens\": 9}}"}"#;
        assert_eq!(Usage::from_response(only_quoted), None);
        // A usage of the wrong shape is no usage, as in the whole-body parse.
        assert_eq!(
            Usage::from_response(br#"{"usage": {"prompt_tokens": "many"}}"#),
            None
        );
    }
}
