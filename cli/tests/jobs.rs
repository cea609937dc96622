//! The engine's Jobs API (Dapr's `/v1.0-alpha1/jobs/{name}` on the function's sidecar, the
//! callback `POST /job/{name}` with the job's data as the body), through the real `zerofn dev`
//! and the probe: a due job wakes its function from zero and fires once; jobs survive an
//! engine restart (one due meanwhile fires at start); repeats, deletes and failed callbacks
//! behave as daprd's. Every wait is bounded; counts are asserted, not timings.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use engine::{Engine, manifest, sibling};
use serde_json::{Value, json};
use zerofn_tests::{client, fresh_id, get_json, store_pool};

fn probe_fn() -> String {
    format!("{}={}", manifest("tests/function.toml"), sibling("probe"))
}

/// The probe's sidecar (the engine's Jobs API for it).
fn sidecar(engine: &Engine) -> String {
    sidecar_of(engine, "probe")
}

/// `function`'s sidecar.
fn sidecar_of(engine: &Engine, function: &str) -> String {
    format!("http://127.0.0.1:{}", engine.sidecar_port(function))
}

async fn schedule(engine: &Engine, name: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1.0-alpha1/jobs/{name}", sidecar(engine)))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The `probe_effects` rows of `function` (the probe's table, which the ticker shares) whose
/// event id is LIKE `pattern`, in order.
async fn effects(state: &Path, function: &str, pattern: &str) -> Vec<String> {
    let db = state.join(format!("functions/{function}/zerofn.db"));
    if !db.exists() {
        return Vec::new();
    }
    let pool = store_pool(&format!("sqlite:{}", db.display())).await;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM probe_effects WHERE event_id LIKE $1 ORDER BY event_id",
    )
    .bind(pattern)
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    rows
}

/// Until `function` recorded `n` such rows (at most `secs`), then its rows.
async fn wait_effects(
    state: &Path,
    function: &str,
    pattern: &str,
    n: usize,
    secs: u64,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let rows = effects(state, function, pattern).await;
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `job:{name}:…` rows the probe recorded, one per callback that succeeded.
async fn fired(state: &Path, name: &str) -> Vec<String> {
    effects(state, "probe", &format!("job:{name}:%")).await
}

/// Until `name` fired `n` times (at most `secs`), then its rows.
async fn wait_fired(state: &Path, name: &str, n: usize, secs: u64) -> Vec<String> {
    wait_effects(state, "probe", &format!("job:{name}:%"), n, secs).await
}

#[tokio::test]
async fn a_due_job_wakes_its_function_from_zero_and_fires_once() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    assert_eq!(engine.status("probe").await["replicas"], 0);
    let name = fresh_id("remind");
    let (s, _) = schedule(
        &engine,
        &name,
        r#"{"dueTime": "1s", "data": {"task": "t-1"}}"#,
    )
    .await;
    assert_eq!(s, 204, "scheduled, no body");
    let job = get_json(&format!("{}/v1.0-alpha1/jobs/{name}", sidecar(&engine))).await;
    assert_eq!(job["dueTime"], "1s");
    assert_eq!(job["data"], json!({"task": "t-1"}));
    let rows = wait_fired(&engine.state, &name, 1, 30).await;
    assert_eq!(
        rows,
        vec![format!(r#"job:{name}:{{"task":"t-1"}}"#)],
        "the data as the body"
    );
    let s = engine.status("probe").await;
    assert!(s["cold_starts"].as_u64() >= Some(1), "woken from zero: {s}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fired(&engine.state, &name).await.len(), 1, "once");
    let gone = client()
        .get(format!("{}/v1.0-alpha1/jobs/{name}", sidecar(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "a one-shot job is done once fired");
    engine.stop().await;
}

#[tokio::test]
async fn a_job_due_while_the_engine_was_down_fires_once_at_start() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let name = fresh_id("durable");
    assert_eq!(
        schedule(&engine, &name, r#"{"dueTime": "2s"}"#).await.0,
        204
    );
    let state = engine.stop().await;
    assert!(
        fired(&state, &name).await.is_empty(),
        "not due before the stop"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let engine = Engine::start(&[probe_fn()], Some(state.clone()), &[], &[]).await;
    let rows = wait_fired(&state, &name, 1, 30).await;
    assert_eq!(rows.len(), 1, "fired at start: {rows:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fired(&state, &name).await.len(), 1, "once");
    engine.stop().await;
}

#[tokio::test]
async fn repeats_deletes_and_failed_callbacks_behave_as_daprs() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    // Repeats: exactly three triggers of an @every schedule.
    let every = fresh_id("every");
    assert_eq!(
        schedule(
            &engine,
            &every,
            r#"{"schedule": "@every 1s", "repeats": 3, "data": 7}"#
        )
        .await
        .0,
        204
    );
    // Deleted before it is due: never fires.
    let deleted = fresh_id("deleted");
    assert_eq!(
        schedule(&engine, &deleted, r#"{"dueTime": "2s"}"#).await.0,
        204
    );
    let r = client()
        .delete(format!("{}/v1.0-alpha1/jobs/{deleted}", sidecar(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A callback answered 500 is retried with the function's back-off: one success in the end.
    let flaky = format!("flaky-{}", fresh_id("j"));
    assert_eq!(
        schedule(&engine, &flaky, r#"{"dueTime": "0s"}"#).await.0,
        204
    );
    assert_eq!(wait_fired(&engine.state, &every, 3, 30).await.len(), 3);
    assert_eq!(wait_fired(&engine.state, &flaky, 1, 30).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fired(&engine.state, &every).await.len(), 3, "no fourth");
    assert!(
        fired(&engine.state, &deleted).await.is_empty(),
        "a deleted job never fires"
    );
    assert_eq!(fired(&engine.state, &flaky).await.len(), 1);
    let callbacks = engine
        .process
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "probe job callback" && l["job"] == flaky.as_str())
        .count();
    assert!(
        callbacks >= 2,
        "the 500 was retried: {callbacks} callbacks for one success"
    );
    engine.stop().await;
}

#[tokio::test]
async fn schedule_requests_are_refused_as_daprd_refuses_them() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    for body in [
        "",
        "{}",
        "[{}]",
        r#"{"name": "x", "dueTime": "1s"}"#,
        r#"{"schedule": "@daily", "repeats": -1}"#,
        r#"{"schedule": "every morning"}"#,
    ] {
        let (s, e) = schedule(&engine, "bad", body).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(
            e["errorCode"]
                .as_str()
                .unwrap()
                .starts_with("DAPR_SCHEDULER_"),
            "{e}"
        );
    }
    let name = fresh_id("twice");
    assert_eq!(
        schedule(&engine, &name, r#"{"dueTime": "1h"}"#).await.0,
        204
    );
    assert_eq!(
        schedule(&engine, &name, r#"{"dueTime": "2h"}"#).await.0,
        409,
        "exists"
    );
    assert_eq!(
        schedule(&engine, &name, r#"{"dueTime": "2h", "overwrite": true}"#)
            .await
            .0,
        204
    );
    // The stable path serves the same API.
    let r = client()
        .post(format!(
            "{}/v1.0/jobs/{}",
            sidecar(&engine),
            fresh_id("stable")
        ))
        .body(r#"{"schedule": "0 0 9 * * 1-5"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    engine.stop().await;
}

fn ticker_fn() -> String {
    format!(
        "{}={}",
        manifest("tests/ticker/function.toml"),
        sibling("ticker")
    )
}

/// The triggers the ticker recorded: their event ids, `schedule-tick@<instant>`.
async fn ticks(state: &Path) -> Vec<String> {
    effects(state, "ticker", "%").await
}

/// Until the ticker recorded `n` triggers (at most `secs`), then all of them.
async fn wait_ticks(state: &Path, n: usize, secs: u64) -> Vec<String> {
    wait_effects(state, "ticker", "%", n, secs).await
}

/// The cron instants of `ids`, checked: each `schedule-tick@…Z` at an even second, none twice.
fn instants(ids: &[String]) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut at: Vec<chrono::DateTime<chrono::Utc>> = ids
        .iter()
        .map(|id| {
            let t = id
                .strip_prefix("schedule-tick@")
                .unwrap_or_else(|| panic!("trigger id {id}"));
            chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc()
        })
        .collect();
    assert!(
        at.iter().all(|t| t.timestamp() % 2 == 0),
        "*/2: even seconds only: {ids:?}"
    );
    at.sort();
    at.dedup();
    assert_eq!(at.len(), ids.len(), "a trigger applied twice: {ids:?}");
    at
}

#[tokio::test]
async fn a_schedule_declared_in_function_toml_fires_on_its_cron_from_zero_and_survives_a_restart() {
    let engine = Engine::start(&[ticker_fn()], None, &[], &[]).await;
    // The engine registered the schedule before any replica ran: a function at zero has no
    // other way to get its first trigger.
    let job = get_json(&format!(
        "{}/v1.0-alpha1/jobs/schedule-tick",
        sidecar_of(&engine, "ticker")
    ))
    .await;
    assert_eq!(job["schedule"], "*/2 * * * * *", "{job}");
    assert_eq!(job["data"], json!({"schedule": "tick"}));
    let first = wait_ticks(&engine.state, 3, 30).await;
    assert!(first.len() >= 3, "three triggers in 30 s: {first:?}");
    let at = instants(&first);
    let status = engine.status("ticker").await;
    assert_eq!(status["kind"], "scheduled", "{status}");
    assert!(status["cold_starts"].as_u64().unwrap() >= 1, "{status}");
    // Consecutive triggers are consecutive instants of the cron (two seconds apart), bar one
    // the scheduler skipped while a replica was starting (never the same one twice).
    assert!(
        at.windows(2).all(|w| (w[1] - w[0]).num_seconds() % 2 == 0),
        "{at:?}"
    );
    let state = engine.stop().await;
    let before = ticks(&state).await.len();
    // After a restart on the same state: the schedule is still registered once, the triggers
    // go on, and none of those already applied is applied again.
    let engine = Engine::start(&[ticker_fn()], Some(state.clone()), &[], &[]).await;
    let after = wait_ticks(&state, before + 2, 30).await;
    assert!(after.len() >= before + 2, "{before} then {after:?}");
    instants(&after);
    engine.stop().await;
}
