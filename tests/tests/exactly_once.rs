//! Exactly-once when things go wrong, with real processes on real stores: a replica stopped
//! past its grace, a handler that kills its process every time, an identity too long for an
//! index. (The state machine itself is tested in-process: `runtime/src/intake/tests.rs`.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::Value;
use zerofn::{dlq::DeadLetters, testing::Recorder};
use zerofn_tests::{
    FnProcess, client, effect_rows, fresh_id, fresh_postgres, stores, structured, task,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// The dead letter recorded for event `id` in `store`, if any.
async fn dead_letter_of(store: &str, id: &str) -> Option<zerofn::dead_letter::DeadLetter> {
    DeadLetters::open(store)
        .await
        .unwrap()
        .list(Some("probe"), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.event_id.as_deref() == Some(id))
}

async fn deliver(
    url: &str,
    event: &Value,
    timeout: Duration,
) -> Result<reqwest::Response, reqwest::Error> {
    client()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .timeout(timeout)
        .json(event)
        .send()
        .await
}

#[tokio::test]
async fn a_replica_stopped_past_its_grace_hands_the_event_over_at_once() {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    for (name, store) in stores().await {
        // A lease far longer than the test: without the release on drain timeout, the next
        // replica would wait for it (and the 20 s client timeout below would fire).
        let env = [
            ("K_SINK", sink_url.as_str()),
            ("ZEROFN_STORE", store.as_str()),
            ("ZEROFN_LEASE", "60s"),
            ("ZEROFN_SHUTDOWN_GRACE", "1s"),
        ];
        let mut first = FnProcess::start(PROBE, &env).await;
        let id = fresh_id("grace");
        let event = structured(&id, task("record-slow:2000"));
        let url = first.url();
        let cut = {
            let event = event.clone();
            tokio::spawn(async move { deliver(&url, &event, Duration::from_secs(30)).await })
        };
        first
            .wait_for_log("probe handler started", Duration::from_secs(10))
            .await;
        first.sigterm();
        assert_eq!(
            first.wait_exit(Duration::from_secs(15)).await,
            Some(1),
            "{name}: drain timeout"
        );
        let answer = cut.await.unwrap();
        assert!(
            answer.as_ref().map_or(true, |r| r.status() != 202),
            "{name}: the cut-off delivery was not acknowledged"
        );
        assert!(
            first
                .log_lines()
                .iter()
                .any(|l| l["message"] == "drain timed out; releasing the claims still held"),
            "{name}: released"
        );
        let second = FnProcess::start(PROBE, &env).await;
        let r = deliver(&second.url(), &event, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{name}: the next replica did not take over at once: {e}"));
        assert_eq!(r.status(), 202, "{name}: {}", r.text().await.unwrap());
        let handled = second
            .log_lines()
            .into_iter()
            .find(|l| l["event_id"] == id.as_str() && l["outcome"] == "success")
            .unwrap_or_else(|| panic!("{name}: no success line"));
        assert_eq!(
            handled["attempt"], 2,
            "{name}: the abandoned attempt counted"
        );
        if name != "redis" {
            assert_eq!(effect_rows(&store, &id).await, 1, "{name}: applied once");
        }
        assert!(
            dead_letter_of(&store, &id).await.is_none(),
            "{name}: not dead-lettered"
        );
    }
}

#[tokio::test]
async fn a_handler_that_kills_its_process_every_time_is_dead_lettered_after_max_attempts() {
    // The probe's delivery.max_attempts is 3.
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    for (name, store) in stores().await {
        let env = [
            ("K_SINK", sink_url.as_str()),
            ("ZEROFN_STORE", store.as_str()),
            ("ZEROFN_LEASE", "1s"),
        ];
        let id = fresh_id("abort");
        let event = structured(&id, task("abort"));
        for n in 1..=3 {
            let mut p = FnProcess::start(PROBE, &env).await;
            let r = deliver(&p.url(), &event, Duration::from_secs(20)).await;
            assert!(r.is_err(), "{name}: crash {n}: no answer");
            assert_ne!(p.wait_exit(Duration::from_secs(10)).await, Some(0));
        }
        let p = FnProcess::start(PROBE, &env).await;
        let r = deliver(&p.url(), &event, Duration::from_secs(20))
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["error"], "attempts_exhausted", "{name}: {body}");
        assert!(
            !p.log_lines()
                .iter()
                .any(|l| l["message"] == "probe handler invoked"),
            "{name}: not run a fourth time"
        );
        let record = dead_letter_of(&store, &id)
            .await
            .unwrap_or_else(|| panic!("{name}: dead letter recorded"));
        assert_eq!(record.attempts, 3, "{name}");
        assert_eq!(record.error.kind, "worker_lost", "{name}");
        // And the next delivery is a duplicate, in any process.
        let again = deliver(&p.url(), &event, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(again.status(), 202, "{name}");
    }
}

#[tokio::test]
async fn a_5kb_event_id_is_refused_as_malformed_not_retried_on_postgres() {
    let store = fresh_postgres().await;
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let p = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", sink_url.as_str()),
            ("ZEROFN_STORE", store.as_str()),
        ],
    )
    .await;
    let long = format!("long-{}", "x".repeat(5000));
    let r = deliver(
        &p.url(),
        &structured(&long, task("record")),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "malformed_event", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("attribute `id` is 5005 bytes long; zerofn accepts at most 1024"),
        "{body}"
    );
    // The process keeps serving, and a 1 KB id (within the cap) is handled: keys are hashed.
    let near = format!("near-{}", "y".repeat(1000));
    let r = deliver(
        &p.url(),
        &structured(&near, task("record")),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    assert_eq!(effect_rows(&store, &near).await, 1);
}

/// How often the probe's handler ran for event `id` in process `p`.
fn runs_of(p: &FnProcess, id: &str) -> usize {
    p.log_lines()
        .iter()
        .filter(|l| l["message"] == "probe handler invoked" && l["event_id"] == id)
        .count()
}

#[tokio::test]
async fn a_forged_replayof_is_not_applied_again_and_a_genuine_replay_applies_once() {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    for (name, store) in stores().await {
        let env = [
            ("K_SINK", sink_url.as_str()),
            ("ZEROFN_STORE", store.as_str()),
        ];
        let p = FnProcess::start(PROBE, &env).await;
        let t = Duration::from_secs(10);
        // Applied once; then the same event again, with a forged replayof: not applied again.
        let id = fresh_id("forged");
        let applied = structured(&id, task("record"));
        assert_eq!(deliver(&p.url(), &applied, t).await.unwrap().status(), 202);
        let mut forged = applied.clone();
        forged["replayof"] = serde_json::json!(uuid::Uuid::now_v7().to_string());
        assert_eq!(deliver(&p.url(), &forged, t).await.unwrap().status(), 202);
        assert_eq!(
            runs_of(&p, &id),
            1,
            "{name}: a forged replayof re-applied the event"
        );
        // A real dead letter, replayed once the cause is fixed: applied once, however often.
        let dead = fresh_id("genuine");
        let r = deliver(&p.url(), &structured(&dead, task("permanent")), t)
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{name}");
        let dl = r.headers()["zerofn-dead-letter"]
            .to_str()
            .unwrap()
            .to_string();
        // Naming it on the applied event does not open that event either.
        forged["replayof"] = serde_json::json!(dl);
        assert_eq!(deliver(&p.url(), &forged, t).await.unwrap().status(), 202);
        assert_eq!(
            runs_of(&p, &id),
            1,
            "{name}: another event's dead letter opened it"
        );
        let mut replay = structured(&dead, task("record"));
        replay["replayof"] = serde_json::json!(dl);
        for _ in 0..3 {
            assert_eq!(deliver(&p.url(), &replay, t).await.unwrap().status(), 202);
        }
        assert_eq!(
            runs_of(&p, &dead),
            2,
            "{name}: the failed run and one replay"
        );
        if name != "redis" {
            assert_eq!(effect_rows(&store, &dead).await, 1, "{name}");
            assert_eq!(effect_rows(&store, &id).await, 1, "{name}");
        }
    }
}
