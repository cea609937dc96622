//! Bad input against a real function process: every case gets its precise status, error code
//! and message, is logged as a drop, and the process keeps serving.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use zerofn::testing::Recorder;
use zerofn_tests::{
    FnProcess, assert_message, client, dapr_envelope, fresh_id, raw_request, structured, task,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const LIMIT: usize = 4096;

/// How a case is sent.
enum Send {
    /// A normal request: method, path, headers, body.
    Http(
        &'static str,
        &'static str,
        Vec<(&'static str, String)>,
        Vec<u8>,
    ),
    /// Raw bytes on the socket (requests a real client refuses to make); true to half-close
    /// after sending (a truncated body).
    Raw(Vec<u8>, bool),
}

struct Case {
    name: &'static str,
    send: Send,
    status: u16,
    /// Expected `error` code (HTTP transport) or `status` (Dapr body).
    error: &'static str,
    /// Substring of the message.
    message: &'static str,
}

/// Each case is a different event: the idempotency layer would otherwise (rightly) treat a
/// reused `source` + `id` as a duplicate of an event it already dead-lettered.
fn uniquify(mut body: Value) -> Value {
    if let Some(obj) = body.as_object_mut()
        && obj
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id == "bad-1" || id == "d-1")
    {
        obj.insert("id".into(), json!(fresh_id("case")));
    }
    body
}

fn ce(body: Value) -> Send {
    let body = uniquify(body);
    Send::Http(
        "POST",
        "/",
        vec![("content-type", "application/cloudevents+json".into())],
        body.to_string().into_bytes(),
    )
}

fn ce_raw(body: &str) -> Send {
    Send::Http(
        "POST",
        "/",
        vec![("content-type", "application/cloudevents+json".into())],
        body.as_bytes().to_vec(),
    )
}

fn binary(headers: &[(&'static str, &str)], body: &str) -> Send {
    Send::Http(
        "POST",
        "/",
        headers
            .iter()
            .map(|(k, v)| match (*k, *v) {
                ("ce-id", "b-1") => (*k, fresh_id("bin")),
                _ => (*k, v.to_string()),
            })
            .collect(),
        body.as_bytes().to_vec(),
    )
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

fn truncated(path: &str, content_type: &str) -> Send {
    let body = structured("t", task("x")).to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len() + 100
    );
    Send::Raw([head.as_bytes(), body.as_bytes()].concat(), true)
}
fn chunked_oversized(path: &str, content_type: &str) -> Send {
    chunked_oversized_closing(path, content_type, false)
}

/// `half_close`: the sender shuts its write side right after sending (the response must still
/// arrive).
fn chunked_oversized_closing(path: &str, content_type: &str, half_close: bool) -> Send {
    let chunk = "x".repeat(LIMIT + 500);
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    Send::Raw(req.into_bytes(), half_close)
}

/// Send a case: the status, the JSON body, and the `zerofn-dead-letter` header (HTTP only).
async fn send(process: &FnProcess, send: &Send) -> (u16, Value, Option<String>) {
    match send {
        Send::Http(method, path, headers, body) => {
            let mut request =
                client().request(method.parse().unwrap(), format!("{}{path}", process.url()));
            for (k, v) in headers {
                request = request.header(*k, v);
            }
            let response = request.body(body.clone()).send().await.unwrap();
            let status = response.status().as_u16();
            let dead_letter = response
                .headers()
                .get("zerofn-dead-letter")
                .map(|v| v.to_str().unwrap().to_string());
            (
                status,
                response.json().await.unwrap_or(Value::Null),
                dead_letter,
            )
        }
        Send::Raw(bytes, half_close) => {
            let (status, body) = raw_request(process.addr(), bytes, *half_close).await;
            (
                status,
                serde_json::from_str(body.trim()).unwrap_or(Value::Null),
                None,
            )
        }
    }
}

fn http_cases() -> Vec<Case> {
    let good = structured("bad-1", task("x"));
    let big = "y".repeat(LIMIT + 1);
    let ct_json = ("content-type", "application/json");
    let b = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "b-1"),
            ("ce-source", "/t"),
            ("ce-type", "todo.task.created"),
        ];
        h.retain(|(k, _)| !extra.iter().any(|(e, v)| e == k && v.is_empty()));
        h.extend(extra.iter().filter(|(_, v)| !v.is_empty()).copied());
        h
    };
    vec![
        Case {
            name: "body is not JSON",
            send: ce_raw("{not json"),
            status: 400,
            error: "malformed_event",
            message: "body is not valid JSON: key must be a string",
        },
        Case {
            name: "truncated JSON",
            send: ce_raw(r#"{"specversion":"1.0","id":"#),
            status: 400,
            error: "malformed_event",
            message: "body is not valid JSON: EOF while parsing",
        },
        Case {
            name: "empty body",
            send: ce_raw(""),
            status: 400,
            error: "malformed_event",
            message: "body is not valid JSON: EOF while parsing a value",
        },
        Case {
            name: "array in structured mode",
            send: ce(json!([good])),
            status: 400,
            error: "malformed_event",
            message: "must be a JSON object, not an array",
        },
        Case {
            name: "missing specversion",
            send: ce(without(good.clone(), "specversion")),
            status: 400,
            error: "malformed_event",
            message: "missing required attribute `specversion`",
        },
        Case {
            name: "missing id",
            send: ce(without(good.clone(), "id")),
            status: 400,
            error: "malformed_event",
            message: "missing required attribute `id`",
        },
        Case {
            name: "missing source",
            send: ce(without(good.clone(), "source")),
            status: 400,
            error: "malformed_event",
            message: "missing required attribute `source`",
        },
        Case {
            name: "missing type",
            send: ce(without(good.clone(), "type")),
            status: 400,
            error: "malformed_event",
            message: "missing required attribute `type`",
        },
        Case {
            name: "empty id",
            send: ce(with(good.clone(), "id", json!(""))),
            status: 400,
            error: "malformed_event",
            message: "attribute `id` must not be empty",
        },
        Case {
            name: "numeric id",
            send: ce(with(good.clone(), "id", json!(7))),
            status: 400,
            error: "malformed_event",
            message: "attribute `id` must be a string, got a number",
        },
        Case {
            name: "specversion 0.3",
            send: ce(with(good.clone(), "specversion", json!("0.3"))),
            status: 400,
            error: "malformed_event",
            message: "unsupported specversion \"0.3\"",
        },
        Case {
            name: "numeric specversion",
            send: ce(with(good.clone(), "specversion", json!(1.0))),
            status: 400,
            error: "malformed_event",
            message: "attribute `specversion` must be a string, got a fractional number",
        },
        Case {
            name: "time not RFC 3339",
            send: ce(with(good.clone(), "time", json!("yesterday"))),
            status: 400,
            error: "malformed_event",
            message: "attribute `time` is not an RFC 3339 timestamp",
        },
        Case {
            name: "data and data_base64",
            send: ce(with(good.clone(), "data_base64", json!("e30="))),
            status: 400,
            error: "malformed_event",
            message: "`data` and `data_base64` are mutually exclusive",
        },
        Case {
            name: "data_base64 not base64",
            send: ce(with(
                without(good.clone(), "data"),
                "data_base64",
                json!("%%%"),
            )),
            status: 400,
            error: "malformed_event",
            message: "attribute `data_base64` is not base64",
        },
        Case {
            name: "object extension",
            send: ce(with(good.clone(), "meta", json!({"a": 1}))),
            status: 400,
            error: "malformed_event",
            message: "extension attribute `meta` must be a string, boolean or integer, got an object",
        },
        Case {
            name: "unknown event type",
            send: ce(with(
                good.clone(),
                "type",
                json!("finance.transaction.created"),
            )),
            status: 422,
            error: "unknown_event_type",
            message: "event type \"finance.transaction.created\" is not consumed here: function probe accepts todo.task.created, todo.task.deleted, todo.notification.sent",
        },
        Case {
            name: "type without any contract",
            send: ce(with(good.clone(), "type", json!("com.example.unknown"))),
            status: 422,
            error: "unknown_event_type",
            message: "\"com.example.unknown\" is not consumed here",
        },
        Case {
            name: "schema: missing title",
            send: ce(with(good.clone(), "data", without(task("x"), "title"))),
            status: 422,
            error: "schema_violation",
            message: "data violates the contract of todo.task.created: data: \"title\" is a required property",
        },
        Case {
            name: "schema: extra property",
            send: ce(with(
                good.clone(),
                "data",
                with(task("x"), "colour", json!("red")),
            )),
            status: 422,
            error: "schema_violation",
            message: "Additional properties are not allowed ('colour' was unexpected)",
        },
        Case {
            name: "schema: wrong enum",
            send: ce(with(
                good.clone(),
                "data",
                with(task("x"), "priority", json!("asap")),
            )),
            status: 422,
            error: "schema_violation",
            message: "data/priority: \"asap\" is not one of",
        },
        Case {
            name: "schema: data missing",
            send: ce(without(good.clone(), "data")),
            status: 422,
            error: "schema_violation",
            message: "data: null is not of type \"object\"",
        },
        Case {
            name: "object data with text/plain",
            send: ce(with(good.clone(), "datacontenttype", json!("text/plain"))),
            status: 415,
            error: "unsupported_media_type",
            message: "datacontenttype text/plain is not JSON",
        },
        Case {
            name: "binary: missing ce-id",
            send: binary(
                &[b(&[("ce-id", "")]), vec![ct_json]].concat(),
                &task("x").to_string(),
            ),
            status: 400,
            error: "malformed_event",
            message: "missing required header `ce-id`",
        },
        Case {
            name: "binary: body not JSON",
            send: binary(&[b(&[]), vec![ct_json]].concat(), "not json"),
            status: 422,
            error: "undecodable_data",
            message: "data is not valid JSON although datacontenttype is application/json",
        },
        Case {
            name: "binary: XML data",
            send: binary(
                &[b(&[]), vec![("content-type", "text/xml")]].concat(),
                "<task/>",
            ),
            status: 415,
            error: "unsupported_media_type",
            message: "datacontenttype text/xml is not JSON",
        },
        Case {
            name: "binary: form-encoded (curl -d default)",
            send: binary(
                &[
                    b(&[]),
                    vec![("content-type", "application/x-www-form-urlencoded")],
                ]
                .concat(),
                "{}",
            ),
            status: 415,
            error: "unsupported_media_type",
            message: "application/x-www-form-urlencoded is not JSON",
        },
        Case {
            name: "binary: invalid percent-encoded UTF-8",
            send: binary(
                &[
                    b(&[("ce-source", ""), ("ce-source", "%FF%FE")]),
                    vec![ct_json],
                ]
                .concat(),
                "{}",
            ),
            status: 400,
            error: "malformed_event",
            message: "header ce-source is not valid UTF-8 after percent-decoding",
        },
        Case {
            name: "not a CloudEvent at all",
            send: binary(&[("content-type", "text/plain")], "hello"),
            status: 415,
            error: "unsupported_media_type",
            message: "not a CloudEvent: Content-Type text/plain",
        },
        Case {
            name: "no content type, no ce headers",
            send: binary(&[], "{}"),
            status: 415,
            error: "unsupported_media_type",
            message: "Content-Type (none)",
        },
        Case {
            name: "oversized with Content-Length",
            send: binary(&[b(&[]), vec![ct_json]].concat(), &big),
            status: 413,
            error: "body_too_large",
            message: "exceeds the limit of 4096 bytes (ZEROFN_MAX_BODY_BYTES)",
        },
        Case {
            name: "oversized chunked",
            send: chunked_oversized("/", "application/cloudevents+json"),
            status: 413,
            error: "body_too_large",
            message: "exceeds the limit of 4096 bytes",
        },
        Case {
            name: "oversized chunked, sender half-closes",
            send: chunked_oversized_closing("/", "application/cloudevents+json", true),
            status: 413,
            error: "body_too_large",
            message: "exceeds the limit of 4096 bytes",
        },
        Case {
            name: "truncated body",
            send: truncated("/", "application/cloudevents+json"),
            // The same bytes may arrive whole next time: retryable, not malformed.
            status: 408,
            error: "body_incomplete",
            message: "request body could not be read completely",
        },
        Case {
            name: "batch that is not an array",
            send: Send::Http(
                "POST",
                "/",
                vec![("content-type", "application/cloudevents-batch+json".into())],
                good.to_string().into_bytes(),
            ),
            status: 400,
            error: "malformed_event",
            message: "a CloudEvents batch must be a JSON array, not an object",
        },
        Case {
            name: "handler says permanent",
            send: ce(with(good.clone(), "data", task("permanent"))),
            status: 422,
            error: "handler_permanent",
            message: "task belongs to a deleted user",
        },
        Case {
            name: "handler panics",
            send: ce(with(good.clone(), "data", task("panic"))),
            status: 500,
            error: "handler_panic",
            message: "handler panicked: probe was told to panic",
        },
        Case {
            name: "GET on the event route",
            send: Send::Http("GET", "/", vec![], vec![]),
            status: 405,
            error: "method_not_allowed",
            message: "GET is not allowed on /",
        },
        Case {
            name: "unknown path",
            send: Send::Http("POST", "/nope", vec![], vec![]),
            status: 404,
            error: "not_found",
            message: "no route for /nope",
        },
    ]
}

#[tokio::test]
async fn http_transport_rejects_bad_input_precisely_and_keeps_serving() {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let limit = LIMIT.to_string();
    let process = FnProcess::start(
        PROBE,
        &[("K_SINK", &sink_url), ("ZEROFN_MAX_BODY_BYTES", &limit)],
    )
    .await;
    let cases = http_cases();
    assert!(cases.len() >= 25, "the table must stay at 25 cases or more");
    let mut dead_lettered = 0;
    for (i, case) in cases.iter().enumerate() {
        let (status, body, dead_letter) = send(&process, &case.send).await;
        assert_eq!(status, case.status, "{}: body {body}", case.name);
        assert_eq!(body["error"], case.error, "{}: body {body}", case.name);
        assert_message(&body, case.message, case.name);
        // Every event-level rejection is also a dead-letter record (loses nothing).
        let event_level = matches!(status, 400 | 413 | 415 | 422);
        if event_level && matches!(case.send, Send::Http(..)) {
            assert!(
                dead_letter.is_some(),
                "{}: no zerofn-dead-letter header",
                case.name
            );
        }
        dead_lettered += usize::from(event_level);
        // Still serving, correctly, after every case.
        let ok = client()
            .post(process.url())
            .header("content-type", "application/cloudevents+json")
            .json(&structured(&fresh_id(&format!("ok-{i}")), task("fine")))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 202, "after {}", case.name);
    }
    // Each event-level rejection was dead-lettered and logged as one JSON line with its code
    // and reason.
    let drops: Vec<Value> = process
        .log_lines()
        .into_iter()
        .filter(|l| l["outcome"] == "dead_letter")
        .collect();
    assert_eq!(drops.len(), dead_lettered, "{drops:?}");
    assert!(drops.iter().all(|l| {
        l["dead_letter_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    }));
    let logged = |code: &str| drops.iter().filter(|l| l["error"] == code).count();
    assert!(logged("malformed_event") >= 15, "{drops:?}");
    assert_eq!(logged("schema_violation"), 4);
    assert_eq!(logged("unknown_event_type"), 2);
    assert_eq!(logged("handler_permanent"), 1);
    let permanent = drops
        .iter()
        .find(|l| l["error"] == "handler_permanent")
        .unwrap();
    assert_eq!(permanent["reason"], "task belongs to a deleted user");
    assert_eq!(permanent["event_type"], "todo.task.created");
    assert_eq!(permanent["level"], "ERROR");
    assert_eq!(permanent["trace_id"].as_str().map(str::len), Some(32));
    assert!(permanent["duration_ms"].is_number());
    let successes = process
        .log_lines()
        .into_iter()
        .filter(|l| l["outcome"] == "success")
        .count();
    assert_eq!(successes, cases.len());
}

#[tokio::test]
async fn dapr_routes_dead_letter_and_acknowledge_never_a_retried_4xx() {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let limit = LIMIT.to_string();
    let process = FnProcess::start(
        PROBE,
        &[
            ("DAPR_HTTP_PORT", &port),
            ("APP_API_TOKEN", "tok"),
            ("ZEROFN_MAX_BODY_BYTES", &limit),
        ],
    )
    .await;
    let route = "/events/todo.task.created";
    let env = dapr_envelope("d-1", "todo.task.created", task("x"));
    let dapr = |body: Vec<u8>, ct: &str| {
        let body = match serde_json::from_slice::<Value>(&body) {
            Ok(v) => uniquify(v).to_string().into_bytes(),
            Err(_) => body,
        };
        Send::Http(
            "POST",
            route,
            vec![
                ("content-type", ct.to_string()),
                ("dapr-api-token", "tok".into()),
            ],
            body,
        )
    };
    let ce_ct = "application/cloudevents+json";
    let auth_raw = |mut s: Send| {
        if let Send::Raw(bytes, _) = &mut s {
            let text = String::from_utf8_lossy(bytes).replacen(
                "host: x\r\n",
                "host: x\r\ndapr-api-token: tok\r\n",
                1,
            );
            *bytes = text.into_bytes();
        }
        s
    };
    let cases = vec![
        Case {
            name: "not JSON",
            send: dapr(b"{oops".to_vec(), ce_ct),
            status: 200,
            error: "SUCCESS",
            message: "body is not valid JSON",
        },
        Case {
            name: "missing id",
            send: dapr(without(env.clone(), "id").to_string().into_bytes(), ce_ct),
            status: 200,
            error: "SUCCESS",
            message: "missing required attribute `id`",
        },
        Case {
            name: "schema violation",
            send: dapr(
                with(env.clone(), "data", json!({"title": 1}))
                    .to_string()
                    .into_bytes(),
                ce_ct,
            ),
            status: 200,
            error: "SUCCESS",
            message: "violates the contract of todo.task.created",
        },
        Case {
            name: "type of another topic",
            send: dapr(
                with(env.clone(), "type", json!("todo.task.deleted"))
                    .to_string()
                    .into_bytes(),
                ce_ct,
            ),
            status: 200,
            error: "SUCCESS",
            message: "function probe accepts todo.task.created",
        },
        Case {
            // Refused unread: the runtime has no bytes to keep, Dapr does. DROP makes Dapr copy
            // it raw to the dead-letter topic, whose route records it with its bytes.
            name: "oversized",
            send: dapr(vec![b'x'; LIMIT + 1], ce_ct),
            status: 200,
            error: "DROP",
            message: "exceeds the limit of 4096 bytes",
        },
        Case {
            name: "wrong content type",
            send: dapr(env.to_string().into_bytes(), "text/plain"),
            status: 200,
            error: "SUCCESS",
            message: "Content-Type text/plain is not application/cloudevents+json",
        },
        Case {
            name: "truncated body",
            send: auth_raw(truncated(route, ce_ct)),
            status: 200,
            error: "RETRY",
            message: "could not be read completely",
        },
        Case {
            name: "handler permanent",
            send: dapr(
                with(env.clone(), "data", task("permanent"))
                    .to_string()
                    .into_bytes(),
                ce_ct,
            ),
            status: 200,
            error: "SUCCESS",
            message: "task belongs to a deleted user",
        },
        Case {
            name: "handler retryable",
            send: dapr(
                with(env.clone(), "data", task("retry"))
                    .to_string()
                    .into_bytes(),
                ce_ct,
            ),
            status: 200,
            error: "RETRY",
            message: "database unavailable",
        },
        Case {
            name: "bad token",
            send: Send::Http(
                "POST",
                route,
                vec![
                    ("content-type", ce_ct.into()),
                    ("dapr-api-token", "nope".into()),
                ],
                env.to_string().into_bytes(),
            ),
            status: 401,
            error: "",
            message: "missing or invalid dapr-api-token",
        },
        Case {
            name: "bulk envelope not JSON",
            send: Send::Http(
                "POST",
                "/bulk/deleted",
                vec![
                    ("content-type", "application/json".into()),
                    ("dapr-api-token", "tok".into()),
                ],
                b"[1,2".to_vec(),
            ),
            status: 200,
            error: "",
            message: "",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (status, body, _) = send(&process, &case.send).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert!(
            status == 200 || status == 401 || status == 404,
            "{}: Dapr would retry {status} forever",
            case.name
        );
        if !case.error.is_empty() {
            assert_eq!(body["status"], case.error, "{}: {body}", case.name);
        }
        if status == 200 && !["RETRY", "DROP"].contains(&case.error) {
            // Dead-lettered by the runtime and acknowledged, never a DROP (which would make
            // Dapr copy the raw message to the dead-letter topic a second time).
            assert!(
                body["deadLetterId"]
                    .as_str()
                    .is_some_and(|id| id.len() == 36),
                "{}: {body}",
                case.name
            );
        }
        assert_message(&body, case.message, case.name);
        let ok = send(
            &process,
            &dapr(
                dapr_envelope(
                    &fresh_id(&format!("ok-{i}")),
                    "todo.task.created",
                    task("x"),
                )
                .to_string()
                .into_bytes(),
                ce_ct,
            ),
        )
        .await;
        assert_eq!(
            (ok.0, ok.1),
            (200, json!({"status": "SUCCESS"})),
            "after {}",
            case.name
        );
    }
    // Every dead letter was forwarded to the function's dead-letter topic through the sidecar,
    // with the original bytes and the reason.
    let forwarded = sidecar.requests();
    assert_eq!(
        forwarded.len(),
        7,
        "every case but the bad token, the retries and the oversized DROP"
    );
    for record in &forwarded {
        assert_eq!(
            record.path_and_query,
            "/v1.0/publish/kafka-pubsub/deadletter.probe"
        );
        let event = record.json();
        assert_eq!(event["type"], "zerofn.deadletter.recorded");
        assert_eq!(event["data"]["function"], "probe");
        assert!(
            ["todo.task.created", "todo.task.deleted"]
                .contains(&event["data"]["topic"].as_str().unwrap()),
            "the topic of the route the event came in on"
        );
        assert!(event["data"]["error"]["kind"].is_string());
        assert!(
            event["data"]["original"]["headers"]
                .get("dapr-api-token")
                .is_none(),
            "tokens are not kept"
        );
    }
    let not_json = forwarded
        .iter()
        .find(|r| r.json()["data"]["original"]["body"] == "{oops")
        .unwrap();
    assert_eq!(not_json.json()["data"]["error"]["kind"], "malformed_event");
    // The reasons are in the log, one JSON line per event.
    let drops: Vec<Value> = process
        .log_lines()
        .into_iter()
        .filter(|l| l["outcome"] == "dead_letter")
        .collect();
    assert_eq!(drops.len(), 7, "{drops:?}");
    let permanent = drops
        .iter()
        .find(|l| l["error"] == "handler_permanent")
        .unwrap();
    assert_eq!(permanent["reason"], "task belongs to a deleted user");
    assert_eq!(permanent["kafka_topic"], serde_json::Value::Null);
    let retried = process
        .log_lines()
        .into_iter()
        .filter(|l| l["outcome"] == "retry")
        .count();
    assert_eq!(
        retried, 2,
        "the handler's retryable error and the truncated body"
    );
}
