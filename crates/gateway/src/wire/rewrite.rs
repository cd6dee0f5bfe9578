//! Rewriting a body for the upstream by splicing bytes, not by re-serialising.
//!
//! Parsing recorded where `model`'s value lies and, for streams, the one edit that makes
//! `stream_options.include_usage` true. The rewrite copies the body around those ranges,
//! so everything else (key order, number formats, escapes, whitespace, unknown
//! parameters the gateway has never heard of) reaches the upstream exactly as sent.

use std::ops::Range;

use serde_json::value::RawValue;

use super::read::{span_of, typed, wrong_type, Members, RequestBody};
use super::WireError;

/// One edit of the body: replace `at` (empty for an insertion) with `with`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Splice {
    at: Range<usize>,
    with: &'static [u8],
}

impl Splice {
    /// Whether the client asked for the usage chunk, and the edit (if any) that makes the
    /// upstream send it, given `stream_options` as sent (`None` when absent).
    pub(super) fn include_usage(
        body: &[u8],
        options: Option<&RawValue>,
    ) -> Result<(bool, Option<Splice>), WireError> {
        const OBJECT: &[u8] = br#"{"include_usage":true}"#;
        let Some(options) = options else {
            // Append a member before the body's closing brace (the body is an object with
            // at least `model`, so a comma is right).
            let close = body.iter().rposition(|&b| b == b'}').unwrap_or(body.len());
            return Ok((
                false,
                Some(Splice {
                    at: close..close,
                    with: br#","stream_options":{"include_usage":true}"#,
                }),
            ));
        };
        let at = span_of(body, options);
        if options.get() == "null" {
            return Ok((false, Some(Splice { at, with: OBJECT })));
        }
        let members = Members::parse(options)
            .map_err(|_| wrong_type("stream_options", "an object or null", options))?;
        members.check_duplicates("stream_options.")?;
        let Some(flag) = members.get("include_usage") else {
            if members.0.is_empty() {
                return Ok((false, Some(Splice { at, with: OBJECT })));
            }
            // Before the object's closing brace, the last byte of its raw value.
            let close = at.end - 1;
            return Ok((
                false,
                Some(Splice {
                    at: close..close,
                    with: br#","include_usage":true"#,
                }),
            ));
        };
        let asked = typed::<Option<bool>>(
            Some(flag),
            "stream_options.include_usage",
            "a boolean or null",
        )?
        .unwrap_or(false);
        let edit = (flag.get() != "true").then(|| Splice {
            at: span_of(body, flag),
            with: b"true",
        });
        Ok((asked, edit))
    }
}

impl RequestBody<'_> {
    /// The body to send upstream: as received, except `model` set to `serving_model` and,
    /// for streams, `stream_options.include_usage` set to `true` (added when missing, other
    /// stream options kept).
    ///
    /// ```
    /// use nexus_gateway::wire::{Endpoint, RequestBody};
    /// let body = br#"{ "input": ["a", "b"],  "model" : "ada",   "user": "x" }"#;
    /// let read = RequestBody::parse(Endpoint::Embeddings, body)?;
    /// assert_eq!(
    ///     read.rewrite("nomic-embed-text"),
    ///     br#"{ "input": ["a", "b"],  "model" : "nomic-embed-text",   "user": "x" }"#
    /// );
    /// # Ok::<(), nexus_gateway::wire::WireError>(())
    /// ```
    pub fn rewrite(&self, serving_model: &str) -> Vec<u8> {
        enum With<'s> {
            Model(&'s str),
            Bytes(&'static [u8]),
            /// A number: a `null` value replaced, or a member added after the opening
            /// brace (the body is an object with at least `model`, so a comma follows).
            Number(u32, bool),
        }
        let cap = self
            .default_max_tokens
            .map(|tokens| match &self.null_max_tokens_at {
                Some(at) => (at.clone(), With::Number(tokens, false)),
                None => {
                    let open = self
                        .body
                        .iter()
                        .position(|&b| b == b'{')
                        .map_or(0, |i| i + 1);
                    (open..open, With::Number(tokens, true))
                }
            });
        let mut edits = [
            Some((self.model_at.clone(), With::Model(serving_model))),
            self.usage_splice
                .as_ref()
                .map(|s| (s.at.clone(), With::Bytes(s.with))),
            cap,
        ];
        edits.sort_by_key(|e| e.as_ref().map_or(usize::MAX, |(at, _)| at.start));
        let mut out = Vec::with_capacity(self.body.len() + serving_model.len() + 48);
        let mut from = 0;
        for (at, with) in edits.into_iter().flatten() {
            out.extend_from_slice(&self.body[from..at.start]);
            match with {
                With::Model(model) => push_json_string(&mut out, model),
                With::Bytes(bytes) => out.extend_from_slice(bytes),
                With::Number(n, false) => out.extend_from_slice(n.to_string().as_bytes()),
                With::Number(n, true) => {
                    out.extend_from_slice(format!("\"max_tokens\":{n},").as_bytes());
                }
            }
            from = at.end;
        }
        out.extend_from_slice(&self.body[from..]);
        out
    }
}

/// Writes `s` as a JSON string: quotes, backslashes and control characters escaped.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for (i, c) in s.char_indices() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = c as usize;
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[b >> 4], HEX[b & 15]]);
            }
            _ => out.extend_from_slice(&s.as_bytes()[i..i + c.len_utf8()]),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_cap_is_added_or_replaces_a_null_and_never_overrides_the_clients() {
        use crate::wire::Endpoint;
        let body = br#"{"model":"m","messages":[],"max_tokens":null,"stream":true}"#;
        let mut read = RequestBody::parse(Endpoint::ChatCompletions, body).unwrap();
        assert!(read.default_max_tokens(32));
        let out: serde_json::Value = serde_json::from_slice(&read.rewrite("x")).unwrap();
        assert_eq!(out["max_tokens"], 32);
        assert_eq!(out["model"], "x");
        assert_eq!(out["stream_options"]["include_usage"], true);

        let body = br#"  {"model":"m","prompt":"hi","best_of":3}"#;
        let mut read = RequestBody::parse(Endpoint::Completions, body).unwrap();
        assert!(read.default_max_tokens(10));
        assert_eq!(read.summary().max_output_tokens, Some(30));
        let out: serde_json::Value = serde_json::from_slice(&read.rewrite("m")).unwrap();
        assert_eq!(out["max_tokens"], 10);

        let body = br#"{"model":"m","messages":[],"max_completion_tokens":5}"#;
        let mut read = RequestBody::parse(Endpoint::ChatCompletions, body).unwrap();
        assert!(!read.default_max_tokens(32), "the client's cap stands");
        assert_eq!(read.rewrite("m"), body);

        let body = br#"{"model":"m","input":"a"}"#;
        let mut read = RequestBody::parse(Endpoint::Embeddings, body).unwrap();
        assert!(!read.default_max_tokens(32), "embeddings produce no output");
    }

    #[test]
    fn json_strings_round_trip() {
        for s in [
            "",
            "llama3:70b",
            "a\"b\\c",
            "tab\there\nnew",
            "\u{1}\u{1f}",
            "café 🦀",
        ] {
            let mut out = Vec::new();
            push_json_string(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }
}
