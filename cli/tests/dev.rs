//! The local engine end to end: the real `zerofn dev` binary runs the real probe (and notify,
//! audit) binaries as replica processes; everything goes over 127.0.0.1.
//!
//! The function binaries sit next to the `zerofn` binary (`make test` builds them first with
//! `cargo build --workspace --bins`). Every wait is bounded; counts, never timings, are asserted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::time::{Duration, Instant};

use engine::{
    Engine, ZEROFN,
    cases::{self, effects, probe_fn, task_event},
    manifest, sibling,
};
use serde_json::{Value, json};
use zerofn_tests::{
    FnProcess, OtlpReceiver, ReceivedSpan, client, fresh_id, get_json, one_span as one, store_pool,
};

#[tokio::test]
async fn an_event_wakes_a_function_from_zero_and_it_returns_to_zero() {
    cases::wake_and_back(&[]).await;
}

#[tokio::test]
async fn a_burst_scales_to_the_partition_cap_exactly_once_in_order() {
    cases::burst(&[]).await;
}

#[tokio::test]
async fn a_replica_killed_mid_event_means_one_redelivery_and_one_effect() {
    cases::killed_mid_event(&[]).await;
}

#[tokio::test]
async fn records_left_in_the_log_are_processed_after_an_engine_restart() {
    cases::restart_with_backlog(&[]).await;
}

/// Whether process `pid` still runs (a zombie, exited but not reaped, does not count).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn a_sigkilled_engine_leaves_no_replica_and_one_engine_owns_a_state_dir() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    engine
        .post_events(&[task_event(&fresh_id("orphan"), "record-slow:60000", "u-1")])
        .await;
    engine
        .process
        .wait_for_log("probe handler started", Duration::from_secs(30))
        .await;
    let pid = engine.status("probe").await["pids"][0].as_u64().unwrap();
    assert!(alive(pid));
    // A second engine on the same state dir refuses, naming the first.
    let state = engine.state.display().to_string();
    let probe = probe_fn();
    let args = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        &state,
        "--fn",
        &probe,
    ];
    let mut second = FnProcess::spawn_with_args(ZEROFN, &args, &[]).await;
    assert_eq!(second.wait_exit(Duration::from_secs(30)).await, Some(1));
    let said = second.stderr_lines().join("\n");
    assert!(
        said.contains("another zerofn dev (pid ") && said.contains(&state),
        "{said}"
    );
    // SIGKILL: no drain, no cleanup by the engine. The replica notices and exits.
    engine.process.sigkill();
    let mut left = true;
    for _ in 0..100 {
        left = alive(pid);
        if !left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!left, "replica {pid} outlived its SIGKILLed engine");
    // The state dir is free again: a new engine starts on it (and sweeps nothing alive). It
    // redelivers the 60 s event, so its stop is bounded by a short grace, not by that handler.
    let restarted = Engine::start(
        &[probe_fn()],
        Some(engine.state.clone()),
        &[],
        &["--stop-grace", "5s"],
    )
    .await;
    restarted.stop().await;
}

#[tokio::test]
async fn raw_dead_letters_of_the_transport_are_listed_and_replayed_once() {
    cases::raw_dead_letters(None, &[]).await;
}

#[tokio::test]
async fn raw_dead_letters_of_the_transport_are_listed_and_replayed_once_on_postgres() {
    cases::raw_dead_letters(Some(zerofn_tests::fresh_postgres().await), &[]).await;
}

#[tokio::test]
async fn raw_dead_letters_of_the_transport_are_listed_and_replayed_once_on_redis() {
    cases::raw_dead_letters(Some(zerofn_tests::fresh_redis().await), &[]).await;
}

#[tokio::test]
async fn retention_never_deletes_unread_records_silently() {
    // An event nobody consumes here (no function subscribes to its topic).
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest(
            "contracts/events/finance.budget.warning/valid/dining-82.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    engine
        .post_events(&[json!({
            "specversion": "1.0", "id": fresh_id("unread"), "source": "/tests/dev",
            "type": "finance.budget.warning", "data": data
        })])
        .await;
    let state = engine.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let engine = Engine::start(&[probe_fn()], Some(state), &[], &["--retention", "1s"]).await;
    let all = get_json(&engine.url("/_zerofn/status")).await;
    assert!(
        all["retention_dropped_unread"].as_u64() >= Some(1),
        "counted: {all}"
    );
    assert!(
        engine.process.log_lines().iter().any(|l| l["message"]
            == "retention deleted records before every consumer group had read them"
            && l["topic"] == "finance.budget.warning"),
        "logged with its topic"
    );
    let out = tokio::process::Command::new(ZEROFN)
        .args(["status", "--gateway", &engine.url("")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retention deleted"), "{text}");
    engine.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_requests_at_zero_all_succeed() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let url = engine.url("/fn/probe/hello");
    let requests = (0..200).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            (
                status,
                body["replica"].as_str().unwrap_or_default().to_string(),
            )
        })
    });
    let mut replicas = std::collections::BTreeSet::new();
    for r in requests {
        let (status, replica) = r.await.unwrap();
        assert_eq!(status, 200);
        replicas.insert(replica);
    }
    assert!(!replicas.is_empty());
    let s = engine.status("probe").await;
    assert_eq!(s["requests"], 200);
    assert_eq!(s["cold_starts"], 1, "{s}");

    // The gateway's metrics: parsed, not searched.
    let text = client()
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value(
            "zerofn_gateway_requests_total",
            &[("function", "probe"), ("route", "fn"), ("status", "200")]
        ),
        200.0
    );
    assert_eq!(
        value("zerofn_gateway_queued_requests", &[("function", "probe")]),
        0.0,
        "nothing left waiting"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "zerofn_gateway_request_duration_seconds_count")
    );
    engine.stop().await;
}

#[tokio::test]
async fn async_invocation_answers_202_and_the_request_runs_once() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let id = fresh_id("async");
    let r = client()
        .post(engine.url(&format!("/async/probe/effect/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert!(body["id"].is_string(), "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while effects(&engine.store("probe")).await.is_empty() {
        assert!(Instant::now() < deadline, "the async request never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine
        .wait_for("probe", 30, "offset committed", |s| s["total_lag"] == 0)
        .await;
    assert_eq!(effects(&engine.store("probe")).await, vec![id]);
    // Not an HTTP function, or no such function: 404, clearly.
    let r = client()
        .post(engine.url("/async/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    engine.stop().await;
}

#[tokio::test]
async fn a_function_that_cannot_start_gets_503_with_the_reason_and_the_engine_keeps_running() {
    let dir = std::env::temp_dir().join(format!("zerofn-broken-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("function.toml"),
        "[function]\nname = \"broken\"\n[http]\ntimeout = \"20s\"\n",
    )
    .unwrap();
    let script = dir.join("broken.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'zerofn: invalid configuration: ZEROFN_STORE = nope: unsupported scheme' >&2\nexit 64\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", &script.display().to_string()])
        .status()
        .unwrap();
    let broken = format!(
        "{}={}",
        dir.join("function.toml").display(),
        script.display()
    );
    let engine = Engine::start(&[probe_fn(), broken], None, &[], &[]).await;

    let r = client()
        .get(engine.url("/fn/broken/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "function_unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("exited during start-up"), "{message}");
    assert!(
        message.contains("ZEROFN_STORE = nope"),
        "the function's own reason: {message}"
    );
    let s = engine.status("broken").await;
    assert!(
        s["last_start_error"]
            .as_str()
            .unwrap()
            .contains("exit status: 64"),
        "{s}"
    );
    // The engine and the other functions keep serving.
    let r = client()
        .get(engine.url("/fn/probe/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(engine.url("/fn/nope/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    engine.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_events_at_the_gateway_get_precise_errors_and_a_dead_letter_record() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("text/plain", "hello", 415, "unsupported_media_type"),
        ("application/cloudevents+json", "{", 400, "malformed_event"),
        (
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"x","source":"/s","type":"todo.task.created","data":{"title":1}}"#,
            422,
            "schema_violation",
        ),
        (
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"x","source":"/s","type":"no.such.type"}"#,
            422,
            "unknown_event_type",
        ),
    ];
    for (ct, body, status, code) in cases {
        let r = client()
            .post(engine.url("/events"))
            .header("content-type", *ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), *status, "{body}");
        assert!(
            r.headers().contains_key("zerofn-dead-letter"),
            "{body}: dead-lettered"
        );
        let reply: Value = r.json().await.unwrap();
        assert_eq!(reply["error"], *code, "{reply}");
    }
    let big = "x".repeat(2 << 20);
    let r = client()
        .post(engine.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let status = get_json(&engine.url("/_zerofn/status")).await;
    assert_eq!(
        status["topics"]["deadletter.gateway"], 4,
        "the gateway's dead-letter topic exists"
    );
    // Still serving.
    let id = fresh_id("after-bad");
    engine.post_events(&[task_event(&id, "record", "u")]).await;
    engine
        .wait_for("probe", 30, "handled", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    engine.stop().await;
}

#[tokio::test]
async fn one_trace_from_the_gateway_through_two_functions() {
    const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let notify = format!(
        "{}={}",
        manifest("functions/notify/function.toml"),
        sibling("notify")
    );
    let audit = format!(
        "{}={}",
        manifest("functions/audit/function.toml"),
        sibling("audit")
    );
    let engine = Engine::start(
        &[notify, audit],
        None,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
        &[],
    )
    .await;
    let reminder: Value = serde_json::from_str(include_str!(
        "../../contracts/events/todo.reminder.due/valid/rent.json"
    ))
    .unwrap();
    let id = fresh_id("traced");
    let r = client()
        .post(engine.url("/events"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("ce-specversion", "1.0")
        .header("ce-id", &id)
        .header("ce-source", "/tests/dev")
        .header("ce-type", "todo.reminder.due")
        .header("content-type", "application/json")
        .json(&reminder)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // notify handles it and emits todo.notification.sent; audit records both.
    engine
        .wait_for("audit", 60, "both audited", |s| {
            s["processed"].as_u64() >= Some(2)
        })
        .await;
    engine
        .wait_for("notify", 60, "notified", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    engine.stop().await; // the replicas drain and flush their exporters
    let deadline = Instant::now() + Duration::from_secs(15);
    while otlp
        .spans()
        .iter()
        .filter(|s| s.trace_id == TRACE && s.name.ends_with(" process"))
        .count()
        < 3
        || !otlp.spans().iter().any(|s| s.service == "zerofn-gateway") && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans: Vec<ReceivedSpan> = otlp
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE)
        .collect();
    let gateway = one(&spans, "zerofn-gateway", "POST /events");
    assert_eq!(
        gateway.parent_span_id, "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(gateway.kind, 2, "server");
    let notify_process = one(&spans, "notify", "todo.reminder.due process");
    assert_eq!(
        notify_process.parent_span_id, gateway.span_id,
        "notify under the gateway"
    );
    assert_eq!(notify_process.kind, 5, "consumer");
    let notify_handler = one(&spans, "notify", "handle todo.reminder.due");
    let audit_reminder = one(&spans, "audit", "todo.reminder.due process");
    assert_eq!(
        audit_reminder.parent_span_id, gateway.span_id,
        "audit's copy of the reminder, under the gateway"
    );
    let audit_notification = one(&spans, "audit", "todo.notification.sent process");
    assert_eq!(
        audit_notification.parent_span_id, notify_handler.span_id,
        "the notification's hop, under notify's handler"
    );
}

#[tokio::test]
async fn chaos_kill_replica_loses_nothing_and_doubles_nothing() {
    cases::chaos_kill_replica(None, &[]).await;
}

#[tokio::test]
async fn chaos_kill_replica_loses_nothing_and_doubles_nothing_on_postgres() {
    cases::chaos_kill_replica(Some(zerofn_tests::fresh_postgres().await), &[]).await;
}

#[tokio::test]
async fn chaos_kill_replica_loses_nothing_and_doubles_nothing_on_redis() {
    cases::chaos_kill_replica(Some(zerofn_tests::fresh_redis().await), &[]).await;
}

#[tokio::test]
async fn outputs_a_dead_replica_left_unsent_are_published_though_no_event_comes() {
    // Every replica aborts right after it commits (so its output is stored, unsent, under its
    // lease); the redelivery finds the record done and the publish right still the dead
    // worker's, so it acknowledges without publishing. Then that replica is SIGKILLed too, so
    // no replica is left to flush its outbox on the way out, and no event will come. The
    // engine sees the function at zero with a backlog and wakes it to publish.
    let env = [
        ("ZEROFN_CRASH_AT", "after_commit"),
        ("ZEROFN_RELAY_INTERVAL", "1h"),
    ];
    let engine = Engine::start(&[probe_fn()], None, &env, &[]).await;
    let id = fresh_id("orphan");
    engine.post_events(&[task_event(&id, "emit", "u-9")]).await;
    let s = engine
        .wait_for("probe", 60, "acknowledged as a duplicate", |s| {
            s["lag"]["todo.task.created"] == 0 && s["processed"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(s["published"], 0, "nothing published yet: {s}");
    for pid in s["pids"].as_array().unwrap() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let log = store_pool(&format!("sqlite:{}", engine.state.join("log.db").display())).await;
    let published = || async {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM records WHERE topic = 'todo.notification.sent'")
                .fetch_all(&log)
                .await
                .unwrap();
        rows.iter()
            .filter(|v| serde_json::from_slice::<Value>(v).unwrap()["causationid"] == id.as_str())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while published().await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        published().await,
        1,
        "published once, with no event to wake the function"
    );
    assert!(
        engine.process.log_lines().iter().any(
            |l| l["message"] == "outputs left unsent at zero: waking a replica to publish them"
        ),
        "the backlog woke it"
    );
    log.close().await;
    engine.stop().await;
}

#[tokio::test]
async fn chaos_drop_publish_is_recovered_by_the_outbox_relay() {
    cases::chaos_drop_publish(&[]).await;
}
