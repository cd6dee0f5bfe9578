//! Measuring a prompt while it is parsed: text bytes, token ids, images.
//!
//! The prompt is most of a request's bytes, so it is measured by serde visitors that see
//! each string once and keep only its length (serde_json hands over unescaped text, so
//! `\u00e9` counts as the two bytes of `é`), never building the messages. Errors name the
//! path (`messages[2].content[0]`) so that a client can find what it sent wrong; serde_json
//! adds the line and column.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What a prompt holds, added up over all its parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PromptMeasure {
    /// UTF-8 bytes of text (message contents, text parts, prompt and input strings).
    pub(crate) text_bytes: u64,
    /// Tokens given as ids (a `prompt` or `input` of integers): counted exactly.
    pub(crate) token_ids: u64,
    /// `image_url` content parts.
    pub(crate) images: u64,
    /// Bytes of the `image_url` values in the body (data URLs can be megabytes).
    pub(crate) image_bytes: u64,
}

/// An object key, borrowed from the body unless it had escapes. (serde's own
/// `Cow<str>` always allocates; this is read for every key of every message.)
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The byte length of a JSON string, without keeping the string.
struct TextLen(u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenVisitor;
        impl Visitor<'_> for LenVisitor {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.len() as u64))
            }
        }
        deserializer.deserialize_str(LenVisitor)
    }
}

/// A path in the body for error messages: `messages[2].content[0]`.
#[derive(Clone, Copy)]
struct At {
    key: &'static str,
    index: Option<usize>,
    field: Option<&'static str>,
    part: Option<usize>,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if let Some(field) = self.field {
            write!(f, ".{field}")?;
        }
        if let Some(i) = self.part {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

fn at(key: &'static str) -> At {
    At {
        key,
        index: None,
        field: None,
        part: None,
    }
}

/// Chat `messages`: an array of message objects whose `content` is a string, an array of
/// content parts, or null.
pub(crate) struct Messages<'m>(pub(crate) &'m mut PromptMeasure);

impl<'de> DeserializeSeed<'de> for Messages<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Messages<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"messages\" as an array of message objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(Message {
                measure: &mut *self.0,
                index,
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }
}

struct Message<'m> {
    measure: &'m mut PromptMeasure,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "messages[{}] as an object", self.index)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen_content = false;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == "content" {
                if seen_content {
                    return Err(de::Error::custom(format_args!(
                        "messages[{}] has \"content\" twice",
                        self.index
                    )));
                }
                seen_content = true;
                let path = At {
                    index: Some(self.index),
                    field: Some("content"),
                    ..at("messages")
                };
                map.next_value_seed(Content {
                    measure: &mut *self.measure,
                    path,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A message's `content`: a string, an array of parts, or null.
struct Content<'m> {
    measure: &'m mut PromptMeasure,
    path: At,
}

impl<'de> DeserializeSeed<'de> for Content<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Content<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a string, an array of parts or null", self.path)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.measure.text_bytes += v.len() as u64;
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut part = 0;
        loop {
            let path = At {
                part: Some(part),
                ..self.path
            };
            let seed = Part {
                measure: &mut *self.measure,
                path,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            part += 1;
        }
    }
}

/// One content part: `{"type": "text", "text": ...}`, `{"type": "image_url",
/// "image_url": {...}}`, or another kind that does not count as text.
struct Part<'m> {
    measure: &'m mut PromptMeasure,
    path: At,
}

impl<'de> DeserializeSeed<'de> for Part<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Part<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a content part object", self.path)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut kind: Option<Key<'de>> = None;
        let mut text: Option<u64> = None;
        let mut image: Option<u64> = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let twice = match key.as_ref() {
                "type" => kind.replace(map.next_value::<Key<'de>>()?).is_some(),
                "text" => text.replace(map.next_value::<TextLen>()?.0).is_some(),
                "image_url" => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    image.replace(raw.get().len() as u64).is_some()
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if twice {
                return Err(de::Error::custom(format_args!(
                    "{} has \"{key}\" twice",
                    self.path
                )));
            }
        }
        match kind.as_ref().map(|k| k.0.as_ref()) {
            Some("image_url") | None if image.is_some() => {
                self.measure.images += 1;
                self.measure.image_bytes += image.unwrap_or(0);
            }
            Some("text") | None => self.measure.text_bytes += text.unwrap_or(0),
            // Audio, files, refusals: no text to estimate from; the upper bound still
            // counts their bytes.
            Some(_) => {}
        }
        Ok(())
    }
}

/// A completions `prompt` or an embeddings `input`: a string, an array of strings, an
/// array of token ids, or an array of arrays of token ids.
pub(crate) struct PromptInput<'m> {
    pub(crate) measure: &'m mut PromptMeasure,
    pub(crate) key: &'static str,
}

impl<'de> DeserializeSeed<'de> for PromptInput<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PromptInput<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}\" as a string, an array of strings, or token ids",
            self.key
        )
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.measure.text_bytes += v.len() as u64;
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let path = At {
                index: Some(index),
                ..at(self.key)
            };
            let seed = PromptItem {
                measure: &mut *self.measure,
                path,
                nested: false,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// One item of a prompt array: a string, a token id, or (at the top level only) an array
/// of token ids, whose items are token ids (`nested`).
struct PromptItem<'m> {
    measure: &'m mut PromptMeasure,
    path: At,
    nested: bool,
}

impl<'de> DeserializeSeed<'de> for PromptItem<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PromptItem<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nested {
            write!(f, "{} as a token id", self.path)
        } else {
            write!(
                f,
                "{} as a string, a token id or an array of token ids",
                self.path
            )
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.nested {
            return Err(de::Error::invalid_type(de::Unexpected::Str(v), &self));
        }
        self.measure.text_bytes += v.len() as u64;
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.measure.token_ids += 1;
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.nested {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut part = 0;
        loop {
            let seed = PromptItem {
                measure: &mut *self.measure,
                path: At {
                    part: Some(part),
                    ..self.path
                },
                nested: true,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            part += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(json: &str) -> Result<PromptMeasure, String> {
        let mut m = PromptMeasure::default();
        let mut de = serde_json::Deserializer::from_str(json);
        Messages(&mut m)
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        Ok(m)
    }

    fn prompt(json: &str) -> Result<PromptMeasure, String> {
        let mut m = PromptMeasure::default();
        let mut de = serde_json::Deserializer::from_str(json);
        PromptInput {
            measure: &mut m,
            key: "prompt",
        }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
        Ok(m)
    }

    #[test]
    fn message_text_counts_string_and_text_parts_unescaped() {
        let m = messages(
            r#"[{"role": "system", "content": "caf\u00e9"},
                {"role": "user", "content": [
                    {"type": "text", "text": "abc"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": []}]"#,
        )
        .unwrap();
        assert_eq!(m.text_bytes, 5 + 3);
        assert_eq!(m.images, 1);
        assert_eq!(m.image_bytes, r#"{"url": "https://x/y.png"}"#.len() as u64);
        assert_eq!(m.token_ids, 0);
    }

    #[test]
    fn message_errors_name_the_path() {
        let err = messages(r#"[{"content": "a"}, 3]"#).unwrap_err();
        assert!(err.contains("messages[1] as an object"), "{err}");
        let err = messages(r#"[{"content": [{"type": "text", "text": 5}]}]"#).unwrap_err();
        assert!(err.contains("a string"), "{err}");
        let err = messages(r#"[{"content": [7]}]"#).unwrap_err();
        assert!(err.contains("messages[0].content[0]"), "{err}");
        let err = messages(r#"[{"content": 7}]"#).unwrap_err();
        assert!(err.contains("messages[0].content as a string"), "{err}");
        let err = messages(r#"[{"content": "a", "content": "b"}]"#).unwrap_err();
        assert!(err.contains("\"content\" twice"), "{err}");
        let err = messages(r#"[{"content": [{"text": "a", "text": "b"}]}]"#).unwrap_err();
        assert!(
            err.contains("messages[0].content[0] has \"text\" twice"),
            "{err}"
        );
        let err = messages(r#"{"content": "a"}"#).unwrap_err();
        assert!(err.contains("array of message objects"), "{err}");
    }

    #[test]
    fn prompts_count_text_and_token_ids() {
        assert_eq!(prompt(r#""hello""#).unwrap().text_bytes, 5);
        assert_eq!(prompt(r#"["ab", "cd"]"#).unwrap().text_bytes, 4);
        let ids = prompt("[1, 2, 3]").unwrap();
        assert_eq!((ids.text_bytes, ids.token_ids), (0, 3));
        assert_eq!(prompt("[[1, 2], [3]]").unwrap().token_ids, 3);
        assert_eq!(prompt("null").unwrap(), PromptMeasure::default());
        let err = prompt("[[1, \"x\"]]").unwrap_err();
        assert!(err.contains("prompt[0][1] as a token id"), "{err}");
        let err = prompt("[[[1]]]").unwrap_err();
        assert!(err.contains("prompt[0]"), "{err}");
        let err = prompt("{}").unwrap_err();
        assert!(err.contains("\"prompt\" as a string"), "{err}");
        let err = prompt("[-1]").unwrap_err();
        assert!(err.contains("prompt[0]"), "{err}");
    }

    #[test]
    fn keys_borrow_unless_escaped() {
        let key: Key<'_> = serde_json::from_str(r#""model""#).unwrap();
        assert!(matches!(key.0, Cow::Borrowed("model")));
        let key: Key<'_> = serde_json::from_str(r#""mod\u0065l""#).unwrap();
        assert!(matches!(key.0, Cow::Owned(ref s) if s == "model"));
    }
}
