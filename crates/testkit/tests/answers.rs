//! The mock speaks the OpenAI wire format (and Ollama's listings), declares the usage it
//! was given, and records what reached it.

mod common;

use common::{client, events};
use nexus_testkit::{DeclaredUsage, MockConfig, MockUpstream, MockUsage};
use serde_json::{json, Value};

async fn mock() -> MockUpstream {
    let config = MockConfig {
        usage: MockUsage {
            prompt_tokens: 7,
            completion_tokens: 3,
        },
        reply: "four five six".into(),
        chunks: 3,
        ..MockConfig::serving(["llama3:8b", "nomic-embed-text"])
    };
    MockUpstream::start(config).await.expect("a mock")
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.url()))
        .bearer_auth("sk-test-key")
        .header("x-extra", "kept")
        .json(body)
        .send()
        .await
        .expect("an answer")
}

#[tokio::test]
async fn chat_answers_json_with_the_declared_usage_and_records_the_request() {
    let mock = mock().await;
    let request = json!({"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]});
    let response = post(&mock, "/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    // Whole, with its length, as the servers it stands for send it (vLLM's uvicorn,
    // Ollama's net/http, llama.cpp); a body fault cuts it into pieces instead.
    let length = response.content_length().expect("a content-length");
    assert!(response.headers().get("transfer-encoding").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(serde_json::to_vec(&body).unwrap().len() as u64, length);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "llama3:8b");
    assert_eq!(body["choices"][0]["message"]["content"], "four five six");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].model().as_deref(), Some("llama3:8b"));
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(seen[0].header("x-extra"), Some("kept"));
    assert_eq!(seen[0].json(), Some(request));
    assert_eq!(
        mock.declared_usage(),
        DeclaredUsage {
            answers: 1,
            prompt_tokens: 7,
            completion_tokens: 3
        }
    );
}

#[tokio::test]
async fn chat_streams_events_with_a_usage_chunk_only_when_asked() {
    let mock = mock().await;
    let asked =
        json!({"model": "llama3:8b", "stream": true, "stream_options": {"include_usage": true}});
    let response = post(&mock, "/v1/chat/completions", &asked).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let data = events(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "four five six");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    assert_eq!(mock.declared_usage().answers, 1);

    let not_asked = json!({"model": "llama3:8b", "stream": true});
    let response = post(&mock, "/v1/chat/completions", &not_asked).await;
    let data = events(&response.text().await.unwrap());
    assert!(data.iter().all(|d| !d.contains("\"usage\"")));
    assert_eq!(
        mock.declared_usage().answers,
        1,
        "no usage sent, none declared"
    );
}

#[tokio::test]
async fn completions_answer_json_and_streams() {
    let mock = mock().await;
    let response = post(
        &mock,
        "/v1/completions",
        &json!({"model": "llama3:8b", "prompt": "x"}),
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "four five six");

    let stream = json!({"model": "llama3:8b", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}});
    let response = post(&mock, "/v1/completions", &stream).await;
    let data = events(&response.text().await.unwrap());
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "four five six");
    assert!(data[data.len() - 2].contains("\"usage\""));
    assert_eq!(mock.declared_usage().answers, 2);
}

#[tokio::test]
async fn embeddings_answer_one_vector_per_input() {
    let mock = mock().await;
    let request = json!({"model": "nomic-embed-text", "input": ["a", "b", "c"]});
    let body: Value = post(&mock, "/v1/embeddings", &request)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_eq!(body["data"][2]["index"], 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "total_tokens": 7})
    );
    let ids = json!({"model": "nomic-embed-text", "input": [1, 2, 3]});
    let body: Value = post(&mock, "/v1/embeddings", &ids)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(mock.declared_usage().completion_tokens, 0);
}

#[tokio::test]
async fn listings_in_openai_and_ollama_shapes() {
    let mock = mock().await;
    mock.configure(|c| c.loaded = Some(vec!["llama3:8b".into()]));
    let get = |path: &'static str| {
        let url = format!("{}{path}", mock.url());
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let models = get("/v1/models").await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "llama3:8b");
    assert_eq!(models["data"][1]["object"], "model");
    let tags = get("/api/tags").await;
    assert_eq!(tags["models"].as_array().unwrap().len(), 2);
    assert_eq!(tags["models"][1]["name"], "nomic-embed-text");
    let ps = get("/api/ps").await;
    assert_eq!(ps["models"].as_array().unwrap().len(), 1);
    assert_eq!(ps["models"][0]["model"], "llama3:8b");
    assert_eq!(mock.request_count(), 3);
    assert_eq!(mock.requests_to("/api/ps").len(), 1);
}

#[tokio::test]
async fn refusals_in_the_openai_error_shape() {
    let mock = mock().await;
    let response = post(&mock, "/v1/chat/completions", &json!({"model": "gpt-4"})).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");

    let response = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response = post(&mock, "/v1/chat/completions", &json!({"messages": []})).await;
    assert_eq!(response.status(), 400);
    let response = client()
        .get(format!("{}/v2/nothing", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(mock.request_count(), 4);
    assert_eq!(mock.declared_usage(), DeclaredUsage::default());
}

#[tokio::test]
async fn an_empty_model_list_serves_any_model_and_clear_forgets() {
    let mock = MockUpstream::start(MockConfig::serving(Vec::<String>::new()))
        .await
        .unwrap();
    let response = post(&mock, "/v1/chat/completions", &json!({"model": "anything"})).await;
    assert_eq!(response.status(), 200);
    mock.clear();
    assert_eq!(mock.request_count(), 0);
    assert!(mock.requests().is_empty());
    assert_eq!(mock.declared_usage(), DeclaredUsage::default());
}

#[tokio::test]
async fn recording_off_still_counts() {
    let mock = MockUpstream::start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    post(
        &mock,
        "/v1/chat/completions",
        &json!({"model": "mock-model"}),
    )
    .await;
    assert_eq!(mock.request_count(), 1);
    assert!(mock.requests().is_empty());
}
