//! Plain CloudEvents over HTTP (Knative): binary, structured and batch mode on `POST /`, and
//! publishing to `K_SINK`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use zerofn::testing::{Recorder, TestServer};
use zerofn_tests::{Calls, MANIFEST, client, probe, structured, task};

async fn start() -> (TestServer, Recorder, Calls) {
    let sink = Recorder::start().await.unwrap();
    let calls = Calls::default();
    let url = sink.url();
    let server = TestServer::start(MANIFEST, probe(calls.clone()), &[("K_SINK", url.as_str())])
        .await
        .unwrap();
    (server, sink, calls)
}

#[tokio::test]
async fn binary_mode_event_is_accepted() {
    let (server, _sink, calls) = start().await;
    let response = client()
        .post(server.url())
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/tasks%20api")
        .header("ce-type", "todo.task.created")
        .header("ce-time", "2026-11-23T10:00:00Z")
        .header("ce-tenant", "acme")
        .header("content-type", "application/json")
        .body(task("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.text().await.unwrap(),
        "",
        "Knative reads a non-empty non-CE body as a failure"
    );
    let ctx = &calls.all()[0];
    assert_eq!(
        (ctx.id.as_str(), ctx.source.as_str()),
        ("bin-1", "/tasks api")
    );
    assert_eq!(ctx.extension("tenant"), Some("acme"));
    assert!(ctx.time.is_some());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn structured_mode_event_is_accepted() {
    let (server, _sink, calls) = start().await;
    let response = client()
        .post(server.url())
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .json(&structured("st-1", task("x")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(calls.all()[0].subject.as_deref(), Some("task/1"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_mode_runs_every_event_and_reports_mixed_results() {
    let (server, _sink, calls) = start().await;
    let post = |body: Value| {
        client()
            .post(server.url())
            .header("content-type", "application/cloudevents-batch+json")
            .json(&body)
            .send()
    };
    let all_ok = post(json!([
        structured("b-1", task("a")),
        structured("b-2", task("b")),
        structured("b-3", task("c"))
    ]))
    .await
    .unwrap();
    assert_eq!(all_ok.status(), 202);
    assert_eq!(calls.count(), 3);

    let mixed = post(json!([
        structured("m-1", task("a")),
        structured("m-2", task("permanent"))
    ]))
    .await
    .unwrap();
    assert_eq!(mixed.status(), 207);
    let body: Value = mixed.json().await.unwrap();
    assert_eq!(
        body["results"][0],
        json!({"id": "m-1", "outcome": "success"})
    );
    assert_eq!(body["results"][1]["outcome"], "dead_letter");
    assert!(body["results"][1]["deadLetterId"].is_string());
    assert_eq!(body["results"][1]["error"], "handler_permanent");

    let retry = post(json!([
        structured("r-1", task("a")),
        structured("r-2", task("retry"))
    ]))
    .await
    .unwrap();
    assert_eq!(
        retry.status(),
        500,
        "one retryable event makes the batch retryable"
    );

    let empty = post(json!([])).await.unwrap();
    assert_eq!(empty.status(), 202);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn emitted_events_go_to_k_sink_with_the_trace() {
    let (server, sink, _calls) = start().await;
    let mut event = structured("e-1", task("emit"));
    event["traceparent"] = json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let response = client()
        .post(server.url())
        .header("content-type", "application/cloudevents+json")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let sent = sink.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path_and_query, "/");
    assert_eq!(
        sent[0].header("content-type"),
        "application/cloudevents+json"
    );
    let tp = sent[0].header("traceparent");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && !tp.contains("b7ad6b7169203331"),
        "{tp}"
    );
    let published = sent[0].json();
    assert_eq!(published["type"], "todo.notification.sent");
    assert_eq!(published["causationid"], "e-1");

    // No trace context in → a new trace out.
    let response = client()
        .post(server.url())
        .header("content-type", "application/cloudevents+json")
        .json(&structured("e-2", task("emit")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let second = &sink.requests()[1];
    let tp2 = second.header("traceparent");
    assert_eq!(tp2.len(), 55, "{tp2}");
    assert!(!tp2.contains("0af7651916cd43dd8448eb211c80319c"));
    assert_eq!(second.json()["traceparent"], tp2);

    // The sink failing is a retry for the sender.
    sink.respond_with(503);
    let response = client()
        .post(server.url())
        .header("content-type", "application/cloudevents+json")
        .json(&structured("e-3", task("emit")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "publish_failed"
    );
    server.shutdown().await.unwrap();
}
