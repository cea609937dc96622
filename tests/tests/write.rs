//! HTTP writes with `zerofn::Write`: the rows and the events they emit commit together and the
//! events are published after the commit — a crash between the write and its event leaves both
//! or neither (the finance companion's ledger relies on it).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::Value;
use zerofn::testing::Recorder;
use zerofn_tests::{FnProcess, client, effect_rows, fresh_id, fresh_postgres, sqlite_url};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

async fn sql_stores() -> Vec<(&'static str, String)> {
    vec![
        ("sqlite", sqlite_url()),
        ("postgres", fresh_postgres().await),
    ]
}

async fn write(p: &FnProcess, id: &str, query: &str) -> Result<reqwest::Response, reqwest::Error> {
    client()
        .post(format!("{}/write/{id}{query}", p.url()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
}

/// The published events caused by write `write_id`.
fn published(sink: &Recorder, write_id: &str) -> usize {
    sink.requests()
        .iter()
        .filter(|r| r.json()["causationid"] == write_id)
        .count()
}

/// Published events of type todo.notification.sent, after `before` of them.
fn notifications(sink: &Recorder) -> usize {
    sink.requests()
        .iter()
        .filter(|r| r.json()["type"] == "todo.notification.sent")
        .count()
}

#[tokio::test]
async fn a_write_and_its_event_commit_together_and_publish_once() {
    for (name, store) in sql_stores().await {
        let sink = Recorder::start().await.unwrap();
        let sink_url = sink.url();
        let p = FnProcess::start(PROBE, &[("K_SINK", &sink_url), ("ZEROFN_STORE", &store)]).await;
        let id = fresh_id("write");
        let r = write(&p, &id, "").await.unwrap();
        assert_eq!(r.status(), 201, "{name}");
        let body: Value = r.json().await.unwrap();
        let write_id = body["write"].as_str().unwrap().to_string();
        assert_eq!(effect_rows(&store, &id).await, 1, "{name}");
        assert_eq!(published(&sink, &write_id), 1, "{name}");
        let event = sink.requests().last().unwrap().json();
        assert_eq!(event["source"], "/zerofn/probe", "{name}");
        assert_eq!(event["partitionkey"], "u-w", "{name}");
        // An event that breaks its contract rolls the row back too: a bug, a 500.
        let bad = fresh_id("bad");
        let r = write(&p, &bad, "?emit=invalid").await.unwrap();
        assert_eq!(r.status(), 500, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "handler_permanent", "{name}: {body}");
        assert_eq!(effect_rows(&store, &bad).await, 0, "{name}: rolled back");
        assert_eq!(notifications(&sink), 1, "{name}: nothing more published");
    }
}

#[tokio::test]
async fn a_crash_between_the_write_and_its_event_leaves_both_or_neither() {
    for (name, store) in sql_stores().await {
        for (point, both) in [("after_handler", false), ("after_commit", true)] {
            let sink = Recorder::start().await.unwrap();
            let sink_url = sink.url();
            let env = |crash: Option<&'static str>| {
                let mut env = vec![
                    ("K_SINK", sink_url.clone()),
                    ("ZEROFN_STORE", store.clone()),
                    ("ZEROFN_LEASE", "1s".into()),
                    ("ZEROFN_RELAY_INTERVAL", "1s".into()),
                ];
                if let Some(c) = crash {
                    env.push(("ZEROFN_CRASH_AT", c.into()));
                }
                env
            };
            let crashing_env = env(Some(point));
            let pairs: Vec<(&str, &str)> =
                crashing_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut crashing = FnProcess::start(PROBE, &pairs).await;
            let id = fresh_id(point);
            assert!(
                write(&crashing, &id, "").await.is_err(),
                "{name} {point}: no answer"
            );
            assert_ne!(crashing.wait_exit(Duration::from_secs(10)).await, Some(0));
            // A healthy replica on the same store: its relay publishes what the commit left.
            let healthy_env = env(None);
            let pairs: Vec<(&str, &str)> =
                healthy_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let healthy = FnProcess::start(PROBE, &pairs).await;
            let want = usize::from(both);
            for _ in 0..100 {
                if notifications(&sink) >= want && want > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(2500)).await; // relay rounds more
            assert_eq!(
                effect_rows(&store, &id).await,
                i64::from(both),
                "{name} {point}: the row"
            );
            assert_eq!(notifications(&sink), want, "{name} {point}: the event");
            drop(healthy);
        }
    }
}

#[tokio::test]
async fn a_write_needs_a_sql_store() {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let p = FnProcess::start(PROBE, &[("K_SINK", &sink_url), ("ZEROFN_STORE", "memory")]).await;
    let id = fresh_id("mem");
    // Twice with one key: the refused write does not leave its key claimed (no 409).
    for _ in 0..2 {
        let r = keyed(&p, &id, "k-mem", "").await;
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("needs a SQL store"),
            "{body}"
        );
    }
}

async fn keyed(p: &FnProcess, id: &str, key: &str, query: &str) -> reqwest::Response {
    client()
        .post(format!("{}/write/{id}{query}", p.url()))
        .header("idempotency-key", key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_write_answer_the_first_response_and_emit_nothing_new() {
    for (name, store) in sql_stores().await {
        let sink = Recorder::start().await.unwrap();
        let sink_url = sink.url();
        let p = FnProcess::start(PROBE, &[("K_SINK", &sink_url), ("ZEROFN_STORE", &store)]).await;
        let id = fresh_id("keyed");
        let key = fresh_id("key");
        let first = keyed(&p, &id, &key, "").await;
        assert_eq!(first.status(), 201, "{name}");
        assert!(first.headers().get("idempotent-replayed").is_none());
        let first: Value = first.json().await.unwrap();
        for _ in 0..3 {
            let again = keyed(&p, &id, &key, "").await;
            assert_eq!(again.status(), 201, "{name}");
            assert_eq!(again.headers()["idempotent-replayed"], "true", "{name}");
            let again: Value = again.json().await.unwrap();
            assert_eq!(again, first, "{name}: the first response");
        }
        assert_eq!(effect_rows(&store, &id).await, 1, "{name}: written once");
        assert_eq!(notifications(&sink), 1, "{name}: emitted once");
        // Another key is another write.
        let other = keyed(&p, &id, &fresh_id("key"), "").await;
        assert_eq!(other.status(), 201, "{name}");
        assert_eq!(effect_rows(&store, &id).await, 2, "{name}");
        // A write that failed (rolled back) did not happen: the same key runs again at once.
        let failing = fresh_id("failing");
        let key = fresh_id("key");
        assert_eq!(
            keyed(&p, &failing, &key, "?emit=invalid").await.status(),
            500,
            "{name}"
        );
        assert_eq!(keyed(&p, &failing, &key, "").await.status(), 201, "{name}");
        assert_eq!(effect_rows(&store, &failing).await, 1, "{name}");
        // A key that is not a key.
        let bad = keyed(&p, &id, &"k".repeat(256), "").await;
        assert_eq!(bad.status(), 400, "{name}");
    }
}

#[tokio::test]
async fn a_repeat_while_the_first_write_runs_gets_409_then_the_first_response() {
    // PostgreSQL: SQLite's write lock would fence the record by itself; here only the lease does.
    let store = fresh_postgres().await;
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    // A 1 s lease and a 3 s write: only the renewed lease keeps a repeat from taking it over.
    let p = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", &sink_url),
            ("ZEROFN_STORE", &store),
            ("ZEROFN_LEASE", "1s"),
        ],
    )
    .await;
    let (id, key) = (fresh_id("slow"), fresh_id("key"));
    let url = p.url();
    let first = {
        let (id, key) = (id.clone(), key.clone());
        tokio::spawn(async move {
            client()
                .post(format!("{url}/write/{id}?sleep=3000"))
                .header("idempotency-key", key)
                .send()
                .await
                .unwrap()
        })
    };
    // The first write holds its record (its lease renewed) until it commits: every repeat
    // meanwhile, past several leases, gets 409, never a second run.
    tokio::time::sleep(Duration::from_millis(300)).await; // the first has claimed its key
    let mut conflicts = 0;
    while !first.is_finished() {
        let r = keyed(&p, &id, &key, "").await;
        match r.status().as_u16() {
            409 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"], "in_flight", "{body}");
                conflicts += 1;
            }
            // The first committed just now (its response may still be on the way to its
            // client): a replay of it, never a second run.
            201 => {
                assert_eq!(
                    r.headers().get("idempotent-replayed").map(|v| v.as_bytes()),
                    Some(&b"true"[..]),
                    "a repeat during the first write ran the write again"
                );
                break;
            }
            other => panic!("a repeat during the first write got {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(conflicts >= 5, "repeats during the 3 s write: {conflicts}");
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = keyed(&p, &id, &key, "").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(effect_rows(&store, &id).await, 1);
}
