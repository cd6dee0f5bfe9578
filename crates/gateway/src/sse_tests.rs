//! Tests of the SSE inspector: every split of a stream gives the same result.

use super::*;
use proptest::prelude::*;

const ROLE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#;
const HELLO: &str =
    r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Grüße, 世界 🦀"}}],"usage":null}"#;
const STOP: &str =
    r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;
const USAGE: &str = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

fn event(data: &str, crlf: bool) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    format!("data: {data}{nl}{nl}")
}

/// A whole OpenAI chat stream, and what a client that did not ask for usage receives.
fn chat_stream(crlf: bool) -> (String, String) {
    let events = [ROLE, HELLO, STOP, USAGE, "[DONE]"].map(|d| event(d, crlf));
    let all = events.concat();
    let without_usage = all.replace(&events[3], "");
    (all, without_usage)
}

/// Pushes `stream` cut at `cuts`, returns (forwarded bytes, chunk index of first
/// content, problems, inspector).
fn run(
    stream: &[u8],
    cuts: &[usize],
    forward_usage: bool,
) -> (Vec<u8>, Vec<usize>, Vec<SseProblem>, SseInspector) {
    let mut sse = SseInspector::new(forward_usage);
    let mut forwarded = Vec::new();
    let mut firsts = Vec::new();
    let mut problems = Vec::new();
    let mut from = 0;
    let mut bounds: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c <= stream.len())
        .collect();
    bounds.sort_unstable();
    bounds.push(stream.len());
    for (i, to) in bounds.into_iter().enumerate() {
        let step = sse.push(Bytes::copy_from_slice(&stream[from..to]));
        forwarded.extend_from_slice(&step.forward);
        if step.first_content {
            firsts.push(i);
        }
        problems.extend(step.problems);
        from = to;
    }
    let last = sse.finish();
    forwarded.extend_from_slice(&last.forward);
    problems.extend(last.problems);
    (forwarded, firsts, problems, sse)
}

#[test]
fn every_two_way_split_of_a_chat_stream_gives_the_same_result() {
    for crlf in [false, true] {
        let (all, without_usage) = chat_stream(crlf);
        let hello = event(HELLO, crlf);
        let hello_end = all.find(&hello).unwrap() + hello.len();
        for forward_usage in [false, true] {
            for cut in 0..=all.len() {
                let (out, firsts, problems, sse) = run(all.as_bytes(), &[cut], forward_usage);
                let want = if forward_usage { &all } else { &without_usage };
                assert_eq!(String::from_utf8(out).unwrap(), *want, "cut at {cut}");
                assert!(problems.is_empty(), "cut at {cut}: {problems:?}");
                // The first content is seen in the chunk that completes the HELLO event.
                let chunk = usize::from(cut < hello_end);
                assert_eq!(firsts, vec![chunk], "cut at {cut}");
                assert_eq!(
                    sse.usage(),
                    Some(Usage {
                        prompt_tokens: 12,
                        completion_tokens: 7
                    })
                );
                assert!(sse.is_done() && sse.content_seen());
                assert_eq!(sse.events(), 5);
            }
        }
    }
}

#[test]
fn whole_events_are_forwarded_without_a_copy() {
    let (all, _) = chat_stream(false);
    let chunk = Bytes::from(all.clone());
    let mut sse = SseInspector::new(true);
    let step = sse.push(chunk.clone());
    assert_eq!(step.forward.as_ptr(), chunk.as_ptr());
    assert_eq!(step.forward.len(), chunk.len());
}

#[test]
fn comments_keepalives_and_named_events_pass_through() {
    let stream = ": keep-alive\n\nevent: ping\ndata: {\"choices\":[]}\n\nid: 7\nretry: 100\n\n";
    let (out, firsts, problems, sse) = run(stream.as_bytes(), &[5, 20], false);
    assert_eq!(out, stream.as_bytes());
    assert!(firsts.is_empty() && problems.is_empty());
    assert!(!sse.is_done() && sse.usage().is_none());
}

#[test]
fn multi_line_data_is_joined() {
    let stream = "data: {\"choices\":\ndata: [{\"text\":\"a\"}]}\n\n";
    let (out, firsts, problems, _) = run(stream.as_bytes(), &[], false);
    assert_eq!(out, stream.as_bytes());
    assert_eq!(firsts, vec![0]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn completions_tool_calls_and_reasoning_count_as_content() {
    for data in [
        r#"{"choices":[{"text":"x","index":0}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]}}]}"#,
        r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
        r#"{"choices":[{"delta":{"reasoning":"hmm"}}]}"#,
        r#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
    ] {
        let (_, firsts, _, _) = run(event(data, false).as_bytes(), &[], false);
        assert_eq!(firsts, vec![0], "{data}");
    }
    for data in [
        r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#,
        r#"{"choices":[{"text":""}]}"#,
    ] {
        let (_, firsts, _, _) = run(event(data, false).as_bytes(), &[], false);
        assert!(firsts.is_empty(), "{data}");
    }
}

#[test]
fn malformed_events_are_reported_and_dropped() {
    let errors =
        "data: {\"error\": {\"message\": \"overloaded\"}}\n\ndata: {\"error\": \"plain\"}\n\n";
    let stream = format!("data: {{not json\n\ndata: [1, 2]\n\n{errors}");
    let (out, _, problems, sse) = run(stream.as_bytes(), &[3, 17], false);
    assert_eq!(
        out,
        errors.as_bytes(),
        "the malformed events are not forwarded"
    );
    assert!(
        matches!(&problems[0], SseProblem::Malformed { event: 0, detail } if detail.contains("line 1"))
    );
    assert!(matches!(
        &problems[1],
        SseProblem::Malformed { event: 1, .. }
    ));
    assert_eq!(
        problems[2],
        SseProblem::UpstreamError {
            event: 2,
            message: Some("overloaded".into())
        }
    );
    assert_eq!(
        problems[3],
        SseProblem::UpstreamError {
            event: 3,
            message: Some("plain".into())
        }
    );
    assert!(!sse.is_done());
}

#[test]
fn an_unterminated_last_event_is_inspected_forwarded_and_reported() {
    let stream = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n";
    let (out, _, problems, sse) = run(stream.as_bytes(), &[10], true);
    assert_eq!(out, stream.as_bytes());
    assert_eq!(problems, vec![SseProblem::Unterminated { bytes: 13 }]);
    assert!(sse.is_done());
    assert_eq!(sse.usage().map(|u| u.total_tokens()), Some(3));
}

#[test]
fn an_oversized_event_is_passed_through_uninspected() {
    let big = format!(
        "data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n\n",
        "x".repeat(100)
    );
    let stream = format!("{big}data: [DONE]\n\n");
    let mut sse = SseInspector::new(false).with_max_event_bytes(64);
    let a = sse.push(Bytes::copy_from_slice(&stream.as_bytes()[..80]));
    assert_eq!(&a.forward[..], &stream.as_bytes()[..80]);
    assert_eq!(a.problems, vec![SseProblem::EventTooLarge { limit: 64 }]);
    let err = sse.error_event(&GatewayError::upstream_error("cut"));
    assert!(
        err.starts_with(b"\n\ndata: {\"error\""),
        "a new event after a partial one"
    );
    let b = sse.push(Bytes::copy_from_slice(&stream.as_bytes()[80..]));
    assert_eq!(&b.forward[..], &stream.as_bytes()[80..]);
    assert!(
        sse.is_done(),
        "inspection resumes after the oversized event"
    );
    assert!(!sse.content_seen());
    let err = sse.error_event(&GatewayError::upstream_error("cut"));
    assert!(err.starts_with(b"data: {\"error\""));
}

#[test]
fn the_error_event_is_an_openai_error_object() {
    let event = error_event(&GatewayError::upstream_error("gpu-box reset the stream"));
    let text = std::str::from_utf8(&event).unwrap();
    let data = text
        .strip_prefix("data: ")
        .unwrap()
        .strip_suffix("\n\n")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["message"], "gpu-box reset the stream");
}

/// Events of every kind the inspector distinguishes.
fn any_event() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(ROLE.to_owned()),
        Just(HELLO.to_owned()),
        Just(STOP.to_owned()),
        Just(USAGE.to_owned()),
        Just("[DONE]".to_owned()),
        Just("{broken".to_owned()),
        "\\PC{0,20}"
            .prop_map(|t| serde_json::json!({"choices": [{"delta": {"content": t}}]}).to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// However a stream is cut, the client receives every event but the usage-only ones
    /// it did not ask for and the malformed ones, byte for byte, and the inspector sees
    /// the same things.
    #[test]
    fn any_split_of_any_stream(
        events in prop::collection::vec(any_event(), 0..8),
        crlf in any::<bool>(),
        forward_usage in any::<bool>(),
        comment in any::<bool>(),
        cuts in prop::collection::vec(0..2000usize, 0..12),
    ) {
        let mut stream = String::new();
        let mut want = String::new();
        if comment {
            stream.push_str(": hi\n\n");
            want.push_str(": hi\n\n");
        }
        for data in &events {
            let e = event(data, crlf);
            stream.push_str(&e);
            if (forward_usage || data != USAGE) && data != "{broken" {
                want.push_str(&e);
            }
        }
        let whole = run(stream.as_bytes(), &[], forward_usage);
        let split = run(stream.as_bytes(), &cuts, forward_usage);
        prop_assert_eq!(&split.0, want.as_bytes());
        prop_assert_eq!(&whole.0, want.as_bytes());
        prop_assert_eq!(split.1.len(), whole.1.len());
        prop_assert!(split.1.len() <= 1);
        prop_assert_eq!(&split.2, &whole.2);
        prop_assert_eq!(split.3.usage(), whole.3.usage());
        prop_assert_eq!(split.3.is_done(), events.iter().any(|e| e == "[DONE]"));
        prop_assert_eq!(split.3.events(), events.len() as u64 + u64::from(comment));
    }

    /// Garbage never panics, and with no blank line nothing is forwarded before the end.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), cuts in prop::collection::vec(0..200usize, 0..6)) {
        let (out, _, _, _) = run(&bytes, &cuts, false);
        if !bytes.windows(2).any(|w| w == b"\n\n") && !bytes.windows(3).any(|w| w == b"\n\r\n") {
            prop_assert!(out.is_empty() || out == bytes);
        }
    }
}
