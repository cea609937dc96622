//! SIGTERM against a real process: the in-flight delivery completes and is acknowledged, new
//! ones are refused, readiness drops, and the process exits 0; a delivery that outlives the
//! grace period is left unacknowledged and the exit status says so.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use zerofn::testing::Recorder;
use zerofn_tests::{FnProcess, client, dapr_envelope, task};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const ROUTE: &str = "/events/todo.task.created";

async fn deliver(url: String, id: &str, title: &str) -> Result<(u16, Value), reqwest::Error> {
    let response = client()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .json(&dapr_envelope(id, "todo.task.created", task(title)))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_delivery_finish_and_refuses_new_ones() {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let mut process = FnProcess::start(
        PROBE,
        &[("DAPR_HTTP_PORT", &port), ("ZEROFN_SHUTDOWN_GRACE", "20s")],
    )
    .await;
    let url = format!("{}{ROUTE}", process.url());

    let in_flight = tokio::spawn(deliver(url.clone(), "slow-1", "slow:1500"));
    process
        .wait_for_log("probe handler started", Duration::from_secs(10))
        .await;
    process.sigterm();
    process
        .wait_for_log("draining", Duration::from_secs(10))
        .await;

    // While draining: readiness is off and a new delivery is refused with a status Dapr retries.
    let ready = client()
        .get(format!("{}/readyz", process.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["reason"],
        "draining: shutdown in progress"
    );
    let (status, body) = deliver(url.clone(), "late-1", "x").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "draining");

    // The in-flight delivery completes and is acknowledged.
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status, body), (200, json!({"status": "SUCCESS"})));
    assert_eq!(process.wait_exit(Duration::from_secs(15)).await, Some(0));

    let logs = process.log_lines();
    let handled: Vec<&Value> = logs
        .iter()
        .filter(|l| l["message"] == "event handled")
        .collect();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0]["event_id"], "slow-1");
    assert!(
        !logs
            .iter()
            .any(|l| l["event_id"] == "late-1" && l["message"] == "probe handler invoked")
    );
    assert!(logs.iter().any(|l| l["message"] == "drained; exiting"));
    // After exit nothing listens any more.
    assert!(deliver(url, "after-exit", "x").await.is_err());
}

#[tokio::test]
async fn a_delivery_outliving_the_grace_period_is_not_acknowledged() {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let mut process = FnProcess::start(
        PROBE,
        &[("K_SINK", &sink_url), ("ZEROFN_SHUTDOWN_GRACE", "300ms")],
    )
    .await;
    let url = process.url();
    let stuck = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/cloudevents+json")
            .json(&zerofn_tests::structured("stuck-1", task("slow:60000")))
            .send()
            .await
    });
    process
        .wait_for_log("probe handler started", Duration::from_secs(10))
        .await;
    process.sigterm();
    let code = process.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(1), "a drain timeout is an error exit");
    let stderr = process.stderr_lines().join("\n");
    assert!(stderr.contains("1 deliveries still in flight"), "{stderr}");
    // The sender never got a 2xx, so the broker redelivers.
    if let Ok(r) = stuck.await.unwrap() {
        assert!(!r.status().is_success(), "got {}", r.status());
    }
}
