//! The same binary on AWS Lambda (feature `lambda`): run against a Lambda Runtime API on
//! 127.0.0.1 (the real protocol: `GET /2018-06-01/runtime/invocation/next`, `POST
//! .../{request id}/response`), it answers an API Gateway HTTP API request through its axum
//! routes. Run with `cargo test -p categorize --features lambda`.

#![cfg(feature = "lambda")]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
    response::IntoResponse,
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

#[derive(Clone)]
struct RuntimeApi {
    events: Arc<Mutex<Vec<Value>>>,
    responses: mpsc::Sender<(String, Value)>,
}

async fn next(State(api): State<RuntimeApi>) -> impl IntoResponse {
    let Some(event) = api.events.lock().await.pop() else {
        // No more invocations: keep the runtime waiting, as Lambda does.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", "req-1".parse().unwrap());
    headers.insert(
        "lambda-runtime-deadline-ms",
        "4102444800000".parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:eu-west-1:123456789012:function:categorize"
            .parse()
            .unwrap(),
    );
    (headers, event.to_string())
}

async fn response(
    State(api): State<RuntimeApi>,
    Path(id): Path<String>,
    body: Bytes,
) -> &'static str {
    let _ = api
        .responses
        .send((id, serde_json::from_slice(&body).unwrap()))
        .await;
    "{}"
}

#[tokio::test]
async fn answers_an_api_gateway_request_through_the_runtime_api() {
    let event = json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/categorize", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "id.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "id", "requestId": "req-1", "routeKey": "$default", "stage": "$default",
            "time": "23/Nov/2026:10:00:00 +0000", "timeEpoch": 1_795_000_000_000_i64,
            "http": {"method": "POST", "path": "/categorize", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"}
        },
        "body": "{\"description\":\"ACME SUPERMARKET 0042\",\"amount_minor\":-1250}",
        "isBase64Encoded": false
    });
    let (tx, mut rx) = mpsc::channel(4);
    let api = RuntimeApi {
        events: Arc::new(Mutex::new(vec![event])),
        responses: tx,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_categorize"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "categorize")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "test")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (id, answer) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the function answered within 30 s")
        .unwrap();
    assert_eq!(id, "req-1");
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"category": "groceries", "matched": "supermarket"})
    );
    let _ = child.start_kill();
}
