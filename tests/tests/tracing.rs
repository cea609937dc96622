//! One trace across two functions: a request with a W3C `traceparent` reaches function A, whose
//! emitted event reaches function B; both export their spans over OTLP/gRPC to a real receiver.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use serde_json::Value;
use zerofn::testing::Recorder;
use zerofn_tests::{
    FnProcess, OtlpReceiver, ReceivedSpan, client, fresh_id, one_span as one, structured, task,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_of_both_functions_share_one_trace_with_correct_parents() {
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let mut b = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", &sink_url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "probe-b"),
        ],
    )
    .await;
    let b_url = b.url();
    let mut a = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", &b_url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "probe-a"),
        ],
    )
    .await;

    let traced = fresh_id("traced");
    let response = client()
        .post(a.url())
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&structured(&traced, task("emit")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // Without trace context: a new trace.
    let untraced = fresh_id("untraced");
    let response = client()
        .post(a.url())
        .header("content-type", "application/cloudevents+json")
        .json(&structured(&untraced, task("fine")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // Shutting down flushes the exporters.
    a.sigterm();
    b.sigterm();
    assert_eq!(a.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert_eq!(b.wait_exit(Duration::from_secs(20)).await, Some(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while otlp.spans().iter().filter(|s| s.trace_id == TRACE).count() < 7
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = otlp.spans();
    let traced_spans: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == TRACE)
        .cloned()
        .collect();

    // Function A: a consumer span under the caller, with claim, handler and publish below it.
    let a_process = one(&traced_spans, "probe-a", "probe process");
    assert_eq!(a_process.parent_span_id, CALLER_SPAN);
    assert_eq!(a_process.kind, 5, "consumer");
    assert_eq!(a_process.attributes["cloudevents.event_id"], traced);
    assert_eq!(
        a_process.attributes["cloudevents.event_type"],
        "todo.task.created"
    );
    assert_eq!(a_process.attributes["zerofn.idempotency"], "first");
    assert_eq!(a_process.attributes["zerofn.outcome"], "success");
    assert!(
        a_process.events.iter().any(|e| e.starts_with("cold start")),
        "{:?}",
        a_process.events
    );
    for child in [
        "idempotency claim",
        "handle todo.task.created",
        "idempotency complete",
        "todo.notification.sent publish",
    ] {
        assert_eq!(
            one(&traced_spans, "probe-a", child).parent_span_id,
            a_process.span_id,
            "{child}"
        );
    }
    assert_eq!(
        one(&traced_spans, "probe-a", "todo.notification.sent publish").kind,
        4,
        "producer"
    );
    let a_handler = one(&traced_spans, "probe-a", "handle todo.task.created");

    // Function B: its consumer span is a child of A's handler span (the published event's context).
    let b_process = one(&traced_spans, "probe-b", "probe process");
    assert_eq!(b_process.parent_span_id, a_handler.span_id);
    assert_eq!(
        b_process.attributes["cloudevents.event_type"],
        "todo.notification.sent"
    );
    assert_eq!(
        one(&traced_spans, "probe-b", "handle todo.notification.sent").parent_span_id,
        b_process.span_id
    );

    // The untraced request started its own trace.
    let fresh = spans
        .iter()
        .find(|s| {
            s.name == "probe process" && s.attributes.get("cloudevents.event_id") == Some(&untraced)
        })
        .unwrap();
    assert_ne!(fresh.trace_id, TRACE);
    assert_eq!(fresh.parent_span_id, "", "a root span");

    // Logs join traces: A's line for the event names the consumer span.
    let line: Value = a
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "event handled" && l["event_id"] == traced.as_str())
        .unwrap();
    assert_eq!(line["trace_id"], TRACE);
    assert_eq!(line["span_id"], a_process.span_id.as_str());
}
