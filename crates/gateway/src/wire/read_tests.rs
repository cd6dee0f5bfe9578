//! Tests of reading and rewriting request bodies (kept beside `read.rs`, apart, so that
//! each file holds one idea).

use super::*;
use proptest::prelude::*;

fn chat(body: &str) -> Result<RequestSummary<'_>, WireError> {
    RequestBody::parse(Endpoint::ChatCompletions, body.as_bytes()).map(|r| r.summary().clone())
}

fn rewritten(endpoint: Endpoint, body: &str, model: &str) -> String {
    let read = RequestBody::parse(endpoint, body.as_bytes()).unwrap();
    String::from_utf8(read.rewrite(model)).unwrap()
}

#[test]
fn a_plain_chat_request() {
    let s =
        chat(r#"{"model": "gpt-4", "messages": [{"role": "user", "content": "Hello, world!"}]}"#)
            .unwrap();
    assert_eq!(s.model, "gpt-4");
    assert_eq!(
        s.input_tokens,
        nexus_core::pipeline::estimate_tokens("Hello, world!")
    );
    assert_eq!(s.max_output_tokens, None);
    assert_eq!(s.features, Features::NONE);
    assert!(!s.stream && !s.include_usage);
    let r = s.to_request(TierMode::Flexible);
    assert_eq!(
        (r.model, r.input_tokens, r.tier_mode),
        ("gpt-4", Some(4), TierMode::Flexible)
    );
}

#[test]
fn output_cap_prefers_max_completion_tokens_and_counts_choices() {
    let s = chat(r#"{"model": "m", "max_tokens": 10, "max_completion_tokens": 20}"#).unwrap();
    assert_eq!(s.max_output_tokens, Some(20));
    let s = chat(r#"{"model": "m", "max_tokens": 10, "max_completion_tokens": null}"#).unwrap();
    assert_eq!(s.max_output_tokens, Some(10));
    let s = chat(r#"{"model": "m", "max_tokens": 10, "n": 3}"#).unwrap();
    assert_eq!(s.max_output_tokens, Some(30));
    let s = chat(r#"{"model": "m", "max_tokens": 4294967295, "n": 2}"#).unwrap();
    assert_eq!(s.max_output_tokens, Some(u32::MAX));
    let read = RequestBody::parse(
        Endpoint::Completions,
        br#"{"model": "m", "prompt": "x", "max_tokens": 5, "n": 2, "best_of": 4}"#,
    )
    .unwrap();
    assert_eq!(read.summary().max_output_tokens, Some(20));
    let read = RequestBody::parse(
        Endpoint::Embeddings,
        br#"{"model": "m", "input": "abcdefgh"}"#,
    )
    .unwrap();
    assert_eq!(read.summary().max_output_tokens, Some(0));
    assert_eq!(read.summary().input_tokens, 2);
}

#[test]
fn features_from_tools_functions_images_and_response_format() {
    let tools = chat(r#"{"model": "m", "tools": [{"type": "function"}]}"#).unwrap();
    assert_eq!(tools.features, Features::TOOLS);
    let functions = chat(r#"{"model": "m", "functions": [{"name": "f"}]}"#).unwrap();
    assert_eq!(functions.features, Features::TOOLS);
    let empty = chat(r#"{"model": "m", "tools": [], "functions": null}"#).unwrap();
    assert_eq!(empty.features, Features::NONE);
    for kind in ["json_object", "json_schema"] {
        let body = format!(r#"{{"model": "m", "response_format": {{"type": "{kind}"}}}}"#);
        assert_eq!(chat(&body).unwrap().features, Features::JSON_MODE);
    }
    let text = chat(r#"{"model": "m", "response_format": {"type": "text"}}"#).unwrap();
    assert_eq!(text.features, Features::NONE);
    let image = chat(
        r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}"#,
    )
    .unwrap();
    assert_eq!(image.features, Features::VISION);
}

#[test]
fn the_upper_bound_counts_body_bytes_and_images_at_their_cap() {
    let url = "A".repeat(10_000);
    let body = format!(
        r#"{{"model": "m", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "hi"}}, {{"type": "image_url", "image_url": {{"url": "{url}"}}}}]}}]}}"#
    );
    let s = chat(&body).unwrap();
    let image_value = format!(r#"{{"url": "{url}"}}"#);
    assert_eq!(
        s.input_tokens_max as usize,
        body.len() - image_value.len() + IMAGE_TOKENS_MAX as usize
    );
    assert_eq!(s.input_tokens, 1);
    let plain = r#"{"model": "m", "messages": [{"role": "user", "content": "hello there"}]}"#;
    assert_eq!(chat(plain).unwrap().input_tokens_max as usize, plain.len());
}

#[test]
fn stream_flags() {
    let s = chat(r#"{"model": "m", "stream": true}"#).unwrap();
    assert!(s.stream && !s.include_usage);
    let s = chat(r#"{"model": "m", "stream": true, "stream_options": {"include_usage": true}}"#)
        .unwrap();
    assert!(s.stream && s.include_usage);
    let s = chat(r#"{"model": "m", "stream": false, "stream_options": {"include_usage": true}}"#)
        .unwrap();
    assert!(!s.stream && !s.include_usage);
    let e = RequestBody::parse(Endpoint::Embeddings, br#"{"model": "m", "stream": true}"#).unwrap();
    assert!(!e.summary().stream);
}

#[test]
fn bad_bodies_get_clear_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "the request body is empty"),
        ("  \n", "the request body is empty"),
        ("{\"model\": ", "not valid JSON: EOF while parsing"),
        ("{\"model\": \"m\"} x", "not valid JSON: trailing characters at line 1 column 16"),
        ("nope", "not valid JSON: expected ident at line 1 column 2"),
        ("[1, 2]", "must be a JSON object, not an array"),
        ("\"model\"", "must be a JSON object, not a string"),
        ("{}", "has no \"model\""),
        (r#"{"messages": []}"#, "has no \"model\""),
        (r#"{"model": null}"#, "\"model\" must be a non-empty string, not null"),
        (r#"{"model": ""}"#, "\"model\" must be a non-empty string, not \"\""),
        (r#"{"model": ["a"]}"#, "\"model\" must be a non-empty string, not [\"a\"]"),
        (r#"{"model": "a", "model": "b"}"#, "the key \"model\" appears twice"),
        (r#"{"model": "a", "mod\u0065l": "b"}"#, "the key \"model\" appears twice"),
        (r#"{"model": "a", "max_tokens": -1}"#, "\"max_tokens\" must be a non-negative integer or null, not -1"),
        (r#"{"model": "a", "max_tokens": 1.5}"#, "not 1.5"),
        (r#"{"model": "a", "n": "2"}"#, "\"n\" must be a positive integer or null"),
        (r#"{"model": "a", "stream": "yes"}"#, "\"stream\" must be a boolean or null, not \"yes\""),
        (r#"{"model": "a", "tools": {}}"#, "\"tools\" must be an array or null, not {}"),
        (r#"{"model": "a", "response_format": "json"}"#, "\"response_format\" must be an object or null"),
        (
            r#"{"model": "a", "response_format": {"type": "text", "type": "json_object"}}"#,
            "the key \"response_format.type\" appears twice",
        ),
        (r#"{"model": "a", "stream": true, "stream_options": 1}"#, "\"stream_options\" must be an object or null, not 1"),
        (
            r#"{"model": "a", "stream": true, "stream_options": {"include_usage": "1"}}"#,
            "\"stream_options.include_usage\" must be a boolean or null",
        ),
        (
            r#"{"model": "a", "stream": true, "stream_options": {"include_usage": true, "include_usage": false}}"#,
            "the key \"stream_options.include_usage\" appears twice",
        ),
        (r#"{"model": "a", "messages": [1]}"#, "\"messages\" is invalid: invalid type: integer `1`, expected messages[0] as an object at line 1 column 29"),
        (r#"{"model": "a", "messages": "hi"}"#, "\"messages\" is invalid"),
    ];
    for (body, want) in cases {
        let err = chat(body).unwrap_err().to_string();
        assert!(err.contains(want), "{body:?}: got {err:?}, want {want:?}");
    }
    let long = format!(r#"{{"model": "{}"}}"#, "x".repeat(100));
    let ok = chat(&long).unwrap();
    assert_eq!(ok.model.len(), 100);
    let long_wrong = format!(r#"{{"model": ["{}"]}}"#, "x".repeat(100));
    assert!(chat(&long_wrong)
        .unwrap_err()
        .to_string()
        .ends_with("not an array"));
    let err =
        RequestBody::parse(Endpoint::Completions, br#"{"model": "a", "suffix": 3}"#).unwrap_err();
    assert_eq!(err.param(), Some("suffix"));
    let err =
        RequestBody::parse(Endpoint::Embeddings, br#"{"model": "a", "input": {}}"#).unwrap_err();
    assert_eq!(err.param(), Some("input"));
}

#[test]
fn escaped_model_names_are_read_unescaped() {
    let s = chat(r#"{"model": "llama3\u003a70b"}"#).unwrap();
    assert_eq!(s.model, "llama3:70b");
}

#[test]
fn rewrite_changes_only_the_model_of_a_non_stream() {
    let body =
        "{\n  \"temperature\": 0.70,\n  \"model\": \"gpt-4\",\n  \"x\": {\"model\": \"keep\"}\n}\n";
    assert_eq!(
        rewritten(Endpoint::ChatCompletions, body, "llama3:70b"),
        body.replace("\"gpt-4\"", "\"llama3:70b\"")
    );
    // A non-stream keeps whatever stream_options it carries.
    let body = r#"{"model":"a","stream":false,"stream_options":{"include_usage":false}}"#;
    assert_eq!(
        rewritten(Endpoint::ChatCompletions, body, "b"),
        body.replace("\"a\"", "\"b\"")
    );
}

#[test]
fn rewrite_asks_a_stream_for_usage_in_every_shape() {
    let cases = [
        (
            r#"{"model":"a","stream":true}"#,
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            "{\"stream\":true,\"model\":\"a\"}  \n",
            "{\"stream\":true,\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}  \n",
        ),
        (
            r#"{"model":"a","stream":true,"stream_options":null}"#,
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            r#"{"model":"a","stream":true,"stream_options": { } }"#,
            r#"{"model":"b","stream":true,"stream_options": {"include_usage":true} }"#,
        ),
        (
            r#"{"stream_options":{"include_obfuscation":false},"model":"a","stream":true}"#,
            r#"{"stream_options":{"include_obfuscation":false,"include_usage":true},"model":"b","stream":true}"#,
        ),
        (
            r#"{"model":"a","stream":true,"stream_options":{"include_usage": false, "x": 1}}"#,
            r#"{"model":"b","stream":true,"stream_options":{"include_usage": true, "x": 1}}"#,
        ),
        (
            r#"{"model":"a","stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
    ];
    for (body, want) in cases {
        let got = rewritten(Endpoint::ChatCompletions, body, "b");
        assert_eq!(got, want, "from {body}");
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}

#[test]
fn rewrite_escapes_the_serving_model() {
    let got = rewritten(
        Endpoint::Completions,
        r#"{"model":"a","prompt":"x"}"#,
        "we\"ird\\name",
    );
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["model"], "we\"ird\\name");
}

/// Arbitrary JSON values, nested a little, with awkward strings and numbers.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body as a client might write it: members in any order, optional whitespace, and
/// the raw text of every member value, to compare with the rewrite's.
fn body() -> impl Strategy<Value = (String, Vec<(String, String)>, bool)> {
    let keys = prop::collection::btree_set("[a-z_]{1,10}", 0..6);
    (
        keys,
        prop::collection::vec(json_value(), 6),
        any::<bool>(),
        any::<bool>(),
        "\\PC{1,10}",
        0..6usize,
        prop::sample::select(vec!["", " ", "\n  ", "\t"]),
    )
        .prop_map(|(keys, values, stream, pretty, model, at, ws)| {
            let mut members: Vec<(String, String)> = keys
                .into_iter()
                .filter(|k| !READ_RAW.contains(&k.as_str()) && k != "messages")
                .zip(values)
                .map(|(k, v)| {
                    let text = if pretty {
                        serde_json::to_string_pretty(&v)
                    } else {
                        serde_json::to_string(&v)
                    };
                    (k, text.unwrap())
                })
                .collect();
            members.push(("stream".into(), stream.to_string()));
            let at = at.min(members.len());
            members.insert(at, ("model".into(), serde_json::to_string(&model).unwrap()));
            let inner: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}"))
                .collect();
            (format!("{{{}{ws}}}", inner.join(",")), members, stream)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The rewrite is valid JSON whose model is the new one, whose stream asks for usage,
    /// and whose every other member keeps its raw bytes, in the same order.
    #[test]
    fn rewrite_keeps_every_other_member_byte_for_byte(
        (body, members, stream) in body(),
        serving in "\\PC{1,12}",
    ) {
        let read = RequestBody::parse(Endpoint::ChatCompletions, body.as_bytes()).unwrap();
        let out = read.rewrite(&serving);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(parsed["model"].as_str(), Some(serving.as_str()));

        let mut de = serde_json::Deserializer::from_slice(&out);
        let raw = AllRaw.deserialize(&mut de).unwrap();
        let mut expected: Vec<(&str, &str)> = members
            .iter()
            .filter(|(k, _)| k != "model")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if stream {
            expected.push(("stream_options", r#"{"include_usage":true}"#));
        }
        let got: Vec<(&str, &str)> = raw
            .0
            .iter()
            .filter(|(k, _)| k.0 != "model")
            .map(|(k, v)| (k.0.as_ref(), v.map_or("", |v| v.get())))
            .collect();
        prop_assert_eq!(got, expected);
    }

    /// Whatever the body, parsing never panics, and the estimate never passes the bound.
    #[test]
    fn parsing_never_panics_and_the_estimate_stays_under_the_bound(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        text in "\\PC{0,40}",
        images in 0..3usize,
    ) {
        for endpoint in Endpoint::ALL {
            let _ = RequestBody::parse(endpoint, &bytes);
        }
        let parts: Vec<String> = (0..images)
            .map(|_| r#"{"type":"image_url","image_url":{"url":"x"}}"#.to_owned())
            .chain([serde_json::json!({"type": "text", "text": text}).to_string()])
            .collect();
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":{}}},{{"role":"user","content":[{}]}}]}}"#,
            serde_json::to_string(&text).unwrap(),
            parts.join(",")
        );
        let read = RequestBody::parse(Endpoint::ChatCompletions, body.as_bytes()).unwrap();
        let s = read.summary();
        prop_assert!(s.input_tokens <= s.input_tokens_max);
        prop_assert_eq!(s.input_tokens as usize, (2 * text.len()).div_ceil(4));
        prop_assert_eq!(s.features.contains(Features::VISION), images > 0);
    }
}
