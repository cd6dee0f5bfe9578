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
        serde_json::from_slice::<WithUsage>(body).ok()?.usage
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
}
