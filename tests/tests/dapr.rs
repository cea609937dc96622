//! The Dapr app contract, over a real socket: replayed sidecar deliveries, exact replies,
//! bulk, publish through a recording sidecar, tokens and readiness.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use base64::Engine as _;
use serde_json::{Value, json};
use zerofn::testing::{Recorder, TestServer};
use zerofn_tests::{
    Calls, HOP_TRACEPARENT, MANIFEST, assert_message, client, dapr_envelope, notification, probe,
    task,
};

async fn start(env: &[(&str, &str)]) -> (TestServer, Recorder, Calls) {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let mut all = vec![("DAPR_HTTP_PORT", port.as_str())];
    all.extend_from_slice(env);
    let calls = Calls::default();
    let server = TestServer::start(MANIFEST, probe(calls.clone()), &all)
        .await
        .unwrap();
    (server, sidecar, calls)
}

/// POST an envelope as the sidecar does: Kafka metadata as headers, hop traceparent.
async fn deliver(server: &TestServer, route: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{route}", server.url()))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", HOP_TRACEPARENT)
        .header("pubsubName", "kafka-pubsub")
        .header("__topic", "todo.task.created")
        .header("__partition", "2")
        .header("__offset", "41")
        .header("__key", "u-7")
        .header("__timestamp", "1763892000000")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_sidecar_delivery_calls_the_handler_once_and_gets_success() {
    let (server, _sidecar, calls) = start(&[]).await;
    let envelope = dapr_envelope("evt-1", "todo.task.created", task("water plants"));
    let (status, reply) = deliver(&server, "/events/todo.task.created", &envelope).await;
    assert_eq!((status, reply), (200, json!({"status": "SUCCESS"})));
    let seen = calls.all();
    assert_eq!(seen.len(), 1, "handler must run exactly once");
    let ctx = &seen[0];
    assert_eq!(
        (ctx.id.as_str(), ctx.source.as_str(), ctx.ty.as_str()),
        ("evt-1", "tasks", "todo.task.created")
    );
    assert_eq!(ctx.attempt, 1);
    let kafka = ctx
        .kafka
        .as_ref()
        .expect("Kafka coordinates from the __ headers");
    assert_eq!(
        (kafka.topic.as_str(), kafka.partition, kafka.offset),
        ("todo.task.created", 2, 41)
    );
    assert_eq!(kafka.key.as_deref(), Some("u-7"));
    assert_eq!(kafka.timestamp_ms, Some(1_763_892_000_000));
    assert_eq!(ctx.extension("pubsubname"), Some("kafka-pubsub"));
    // The handler's span continues the hop's trace with a new span id.
    assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(!ctx.traceparent.contains("b7ad6b7169203331"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn handler_verdicts_map_to_exact_dapr_statuses() {
    let (server, _sidecar, calls) = start(&[]).await;
    let route = "/events/todo.task.created";
    let cases = [
        (
            "retry",
            "RETRY",
            "handler_retryable",
            "database unavailable",
        ),
        (
            "permanent",
            "SUCCESS",
            "handler_permanent",
            "task belongs to a deleted user",
        ),
        (
            "panic",
            "RETRY",
            "handler_panic",
            "handler panicked: probe was told to panic",
        ),
    ];
    for (i, (title, status, error, message)) in cases.iter().enumerate() {
        let envelope = dapr_envelope(&format!("v-{i}"), "todo.task.created", task(title));
        let (code, reply) = deliver(&server, route, &envelope).await;
        assert_eq!(code, 200, "{title}: Dapr reads the verdict from a 200 body");
        assert_eq!(reply["status"], *status, "{title}: {reply}");
        assert_eq!(reply["error"], *error, "{title}: {reply}");
        assert_eq!(reply["message"], *message, "{title}: {reply}");
        if *status == "SUCCESS" {
            // Permanent: dead-lettered by the runtime and acknowledged.
            assert_eq!(reply["outcome"], "dead_letter", "{title}: {reply}");
            assert!(reply["deadLetterId"].is_string(), "{title}: {reply}");
        }
    }
    assert_eq!(calls.count(), 3);
    // The panic did not take the server down.
    let (code, reply) = deliver(
        &server,
        route,
        &dapr_envelope("after", "todo.task.created", task("ok")),
    )
    .await;
    assert_eq!((code, reply), (200, json!({"status": "SUCCESS"})));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn emitted_events_are_published_through_the_sidecar() {
    let (server, sidecar, _calls) = start(&[("DAPR_API_TOKEN", "to-sidecar")]).await;
    let envelope = dapr_envelope("evt-emit", "todo.task.created", task("emit"));
    let (_, reply) = deliver(&server, "/events/todo.task.created", &envelope).await;
    assert_eq!(reply, json!({"status": "SUCCESS"}));
    let published = sidecar.requests();
    assert_eq!(published.len(), 1);
    let p = &published[0];
    assert_eq!(p.method, "POST");
    assert_eq!(
        p.path_and_query,
        "/v1.0/publish/kafka-pubsub/todo.notification.sent?metadata.partitionKey=u-7"
    );
    assert_eq!(p.header("content-type"), "application/cloudevents+json");
    assert_eq!(p.header("dapr-api-token"), "to-sidecar");
    let tp = p.header("traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    let event = p.json();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "todo.notification.sent");
    assert_eq!(event["source"], "/zerofn/probe");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(
        event["traceparent"], tp,
        "extension and header carry the handler span"
    );
    assert_eq!(event["causationid"], "evt-emit");
    assert_eq!(event["correlationid"], "evt-emit");
    assert_eq!(event["partitionkey"], "u-7");
    assert_eq!(event["data"], notification("u-7"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_publish_is_a_retry_and_bad_emits_are_drops() {
    let (server, sidecar, _calls) = start(&[]).await;
    let route = "/events/todo.task.created";
    sidecar.respond_with(500);
    let (_, reply) = deliver(
        &server,
        route,
        &dapr_envelope("p-1", "todo.task.created", task("emit")),
    )
    .await;
    assert_eq!(reply["status"], "RETRY");
    assert_eq!(reply["error"], "publish_failed");
    assert_message(&reply, "answered 500", "publish");
    sidecar.respond_with(204);
    // The redelivery does not run the handler again; it publishes what is still unsent, at
    // once (the failed publisher released its publish right).
    let (_, reply) = deliver(
        &server,
        route,
        &dapr_envelope("p-1", "todo.task.created", task("emit")),
    )
    .await;
    assert_eq!(reply, json!({"status": "SUCCESS", "outcome": "duplicate"}));
    let (_, reply) = deliver(
        &server,
        route,
        &dapr_envelope("p-2", "todo.task.created", task("emit-invalid")),
    )
    .await;
    assert_eq!(reply["outcome"], "dead_letter");
    assert_message(&reply, "violates its contract", "publish");
    let (_, reply) = deliver(
        &server,
        route,
        &dapr_envelope("p-3", "todo.task.created", task("emit-undeclared")),
    )
    .await;
    assert_eq!(reply["outcome"], "dead_letter");
    assert_message(&reply, "does not declare", "publish");
    let topics: Vec<String> = sidecar
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    let notification =
        "/v1.0/publish/kafka-pubsub/todo.notification.sent?metadata.partitionKey=u-7";
    let dead_letter = "/v1.0/publish/kafka-pubsub/deadletter.probe";
    assert_eq!(
        topics,
        vec![notification, notification, dead_letter, dead_letter],
        "the failed publish, its re-publish, then the two dead letters; no invalid event reached the sidecar"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bulk_delivery_answers_per_entry() {
    let (server, _sidecar, calls) = start(&[]).await;
    let deleted = json!({"task_id": "0193a7c2-8000-7000-8000-000000000001", "user_id": "u-7", "deleted_at": "2026-11-22T13:00:00Z"});
    let mut bad = deleted.clone();
    bad["user_id"] = json!(7);
    let entry = |id: &str, event: Value, offset: &str| {
        json!({"entryId": id, "event": event, "contentType": "application/cloudevents+json",
               "metadata": {"__topic": "todo.task.deleted", "__partition": "0", "__offset": offset}})
    };
    let raw = base64::engine::general_purpose::STANDARD
        .encode(dapr_envelope("d-3", "todo.task.deleted", deleted.clone()).to_string());
    let body = json!({
        "id": "bulk-1", "type": "com.dapr.event.sent.bulk", "topic": "todo.task.deleted",
        "pubsubname": "kafka-pubsub", "metadata": {},
        "entries": [
            entry("0", dapr_envelope("d-1", "todo.task.deleted", deleted.clone()), "10"),
            entry("1", dapr_envelope("d-2", "todo.task.deleted", bad), "11"),
            {"entryId": "2", "event": raw, "contentType": "application/octet-stream", "metadata": {"__offset": "12"}},
            entry("3", json!({"id": "x"}), "13"),
        ]
    });
    let response = client()
        .post(format!("{}/bulk/deleted", server.url()))
        .header("content-type", "application/json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    let statuses: Vec<(&str, &str)> = reply["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["entryId"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("0", "SUCCESS"),
            ("1", "SUCCESS"),
            ("2", "SUCCESS"),
            ("3", "SUCCESS")
        ]
    );
    assert_eq!(
        reply["statuses"][0].get("outcome"),
        None,
        "entry 0 was handled"
    );
    assert_eq!(reply["statuses"][1]["outcome"], "dead_letter");
    assert_eq!(reply["statuses"][3]["outcome"], "dead_letter");
    assert_eq!(reply["statuses"][1]["error"], "schema_violation");
    assert_eq!(
        reply["statuses"][3]["message"],
        "missing required attribute `specversion`"
    );
    let seen = calls.all();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].kafka.as_ref().map(|k| k.offset), Some(10));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_app_token_is_required_on_dapr_routes_only() {
    let (server, _sidecar, calls) = start(&[("APP_API_TOKEN", "from-sidecar")]).await;
    let url = format!("{}/events/todo.task.created", server.url());
    let body = dapr_envelope("t-1", "todo.task.created", task("x"));
    for token in [
        None,
        Some("wrong"),
        Some("from-sidecar-but-longer"),
        Some(""),
    ] {
        let mut request = client()
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .json(&body);
        if let Some(t) = token {
            request = request.header("dapr-api-token", t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "token {token:?}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"], "unauthorized");
    }
    let subscribe = client()
        .get(format!("{}/dapr/subscribe", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(subscribe.status(), 401);
    let health = client()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "probes need no token");
    let ok = client()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .header("dapr-api-token", "from-sidecar")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.json::<Value>().await.unwrap(),
        json!({"status": "SUCCESS"})
    );
    assert_eq!(calls.count(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ready_only_after_the_sidecar_read_the_subscriptions() {
    let (server, _sidecar, _calls) = start(&[]).await;
    let readyz = || async {
        client()
            .get(format!("{}/readyz", server.url()))
            .send()
            .await
            .unwrap()
    };
    let before = readyz().await;
    assert_eq!(before.status(), 503);
    assert_eq!(
        before.json::<Value>().await.unwrap()["reason"],
        "waiting for the Dapr sidecar to read /dapr/subscribe"
    );
    let subs = zerofn_tests::get_json(&format!("{}/dapr/subscribe", server.url())).await;
    assert_eq!(
        subs[1]["bulkSubscribe"],
        json!({"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 100})
    );
    assert_eq!(subs[1]["routes"]["default"], "/bulk/deleted");
    assert_eq!(readyz().await.status(), 200);
    server.shutdown().await.unwrap();
}
