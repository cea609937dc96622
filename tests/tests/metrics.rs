//! `/metrics` parses as Prometheus text and its counters move by exactly the number of events
//! sent, per outcome.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use prometheus_parse::{Sample, Scrape, Value};
use zerofn::testing::{Recorder, TestServer};
use zerofn_tests::{Calls, MANIFEST, client, fresh_id, probe, structured, task};

async fn scrape(url: &str) -> Scrape {
    let response = client().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `name` whose labels include all of `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{name} {labels:?}: {} samples",
        matching.len()
    );
    match &matching[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"));
    match &sample.value {
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count as u64).max().unwrap_or(0),
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn counters_move_by_exactly_the_events_sent_per_outcome() {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let server = TestServer::start(MANIFEST, probe(Calls::default()), &[("K_SINK", &sink_url)])
        .await
        .unwrap();
    let send = |id: String, title: &'static str| {
        let url = server.url();
        async move {
            client()
                .post(url)
                .header("content-type", "application/cloudevents+json")
                .json(&{
                    let mut event = structured(&id, task(title));
                    event["time"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
                    event
                })
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let first = fresh_id("ok");
    assert_eq!(send(first.clone(), "fine").await, 202);
    for _ in 0..4 {
        assert_eq!(send(fresh_id("ok"), "fine").await, 202);
    }
    assert_eq!(send(first, "fine").await, 202, "a duplicate");
    for _ in 0..2 {
        assert_eq!(send(fresh_id("perm"), "permanent").await, 422);
    }
    for _ in 0..3 {
        assert_eq!(send(fresh_id("retry"), "retry").await, 500);
    }
    let junk = client()
        .post(server.url())
        .header("content-type", "application/cloudevents+json")
        .body("{junk")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);

    let m = scrape(&server.url()).await;
    let handled = |ty: &str, outcome: &str| {
        value(
            &m,
            "zerofn_events_handled_total",
            &[("function", "probe"), ("type", ty), ("outcome", outcome)],
        )
    };
    let ty = "todo.task.created";
    assert_eq!(handled(ty, "success"), 5.0);
    assert_eq!(handled(ty, "duplicate"), 1.0);
    assert_eq!(handled(ty, "dead_letter"), 2.0);
    assert_eq!(handled(ty, "retry"), 3.0);
    assert_eq!(
        handled("other", "dead_letter"),
        1.0,
        "undecodable input is labelled other, not by its content"
    );
    assert_eq!(
        value(&m, "zerofn_events_received_total", &[("type", ty)]),
        11.0
    );
    assert_eq!(
        value(&m, "zerofn_events_received_total", &[("type", "other")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "zerofn_dead_letters_total",
            &[("kind", "handler_permanent")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "zerofn_dead_letters_total",
            &[("kind", "malformed_event")]
        ),
        1.0
    );
    assert_eq!(value(&m, "zerofn_cold_starts_total", &[]), 1.0);
    assert_eq!(value(&m, "zerofn_deliveries_in_flight", &[]), 0.0);
    assert_eq!(
        histogram_count(&m, "zerofn_handler_duration_seconds", &[("type", ty)]),
        10,
        "the duplicate ran no handler"
    );
    assert_eq!(
        histogram_count(&m, "zerofn_event_latency_seconds", &[("type", ty)]),
        5,
        "end-to-end latency of each handled event (from its time attribute)"
    );
    assert!(
        histogram_count(
            &m,
            "zerofn_store_operation_duration_seconds",
            &[("operation", "claim")]
        ) >= 11
    );
    assert_eq!(
        histogram_count(&m, "zerofn_cold_start_duration_seconds", &[]),
        1
    );
    // Every metric present carries its help text (a metric with no samples yet is not shown).
    let mut present = 0;
    for (name, help, _) in zerofn::instruments::ALL {
        if !m.samples.iter().any(|s| s.metric == *name) {
            continue;
        }
        present += 1;
        assert_eq!(m.docs.get(*name).map(String::as_str), Some(*help), "{name}");
    }
    assert_eq!(present, 9, "all but publish failures");
    server.shutdown().await.unwrap();
}
