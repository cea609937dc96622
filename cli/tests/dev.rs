//! The local engine end to end: the real `zerofn dev` binary runs the real probe (and notify,
//! audit) binaries as replica processes; everything goes over 127.0.0.1.
//!
//! The function binaries sit next to the `zerofn` binary (`make test` builds them first with
//! `cargo build --workspace --bins`). Every wait is bounded; counts, never timings, are asserted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use engine::{Engine, ZEROFN, manifest, sibling};
use serde_json::{Value, json};
use zerofn_tests::{
    FnProcess, OtlpReceiver, ReceivedSpan, client, fresh_id, get_json, one_span as one, store_pool,
};

fn probe_fn() -> String {
    format!("{}={}", manifest("tests/function.toml"), sibling("probe"))
}

fn task_event(id: &str, title: &str, key: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tests/dev",
        "type": "todo.task.created",
        "partitionkey": key,
        "data": zerofn_tests::task(title)
    })
}

/// Rows of `probe_effects`, in insertion order.
async fn effects(store: &str) -> Vec<String> {
    if store.starts_with("postgres") {
        let pool = store_pool(store).await;
        let rows: Vec<String> = sqlx::query_scalar("SELECT event_id FROM probe_effects")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        return rows;
    }
    if !std::path::Path::new(store.trim_start_matches("sqlite:")).exists() {
        return Vec::new(); // no replica has started yet
    }
    let pool = store_pool(store).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT event_id FROM probe_effects ORDER BY rowid")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn an_event_wakes_a_function_from_zero_and_it_returns_to_zero() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let before = engine.status("probe").await;
    assert_eq!(
        (before["replicas"].as_u64(), before["cold_starts"].as_u64()),
        (Some(0), Some(0))
    );

    let id = fresh_id("wake");
    let accepted = engine
        .post_events(&[task_event(&id, "record", "user-1")])
        .await;
    assert_eq!(accepted["accepted"][0]["topic"], "todo.task.created");
    let s = engine
        .wait_for("probe", 30, "handled", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(s["cold_starts"], 1, "{s}");
    assert!(s["last_cold_start_ms"].is_u64(), "{s}");
    assert_eq!(
        effects(&engine.store("probe")).await,
        vec![id.clone()],
        "handled exactly once"
    );
    // The same event again: delivered, acknowledged as a duplicate, not applied twice.
    engine
        .post_events(&[task_event(&id, "record", "user-1")])
        .await;
    engine
        .wait_for("probe", 30, "the duplicate delivered", |s| {
            s["processed"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(
        effects(&engine.store("probe")).await,
        vec![id.clone()],
        "a duplicate is not applied"
    );
    // Cooldown 2 s without lag: back to zero.
    engine
        .wait_for("probe", 30, "scale to zero", |s| {
            s["replicas"] == 0 && s["starting"] == 0 && s["desired"] == 0
        })
        .await;
    let stopped = engine
        .process
        .wait_for_log("replica stopped", Duration::from_secs(30))
        .await;
    assert_eq!(
        stopped["function"], "probe",
        "stopped by the scaler, drained: {stopped}"
    );
    let logs = engine.process.log_lines();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "cold start: replica ready"),
        "cold start logged"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_burst_scales_to_the_partition_cap_exactly_once_in_order() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let prefix = fresh_id("burst");
    let keys = 16;
    let events: Vec<Value> = (0..2000)
        .map(|i| {
            task_event(
                &format!("{prefix}-{:02}-{i:05}", i % keys),
                "record",
                &format!("key-{}", i % keys),
            )
        })
        .collect();
    for chunk in events.chunks(500) {
        engine.post_events(chunk).await;
    }
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = engine.status("probe").await;
        most = most.max(s["replicas"].as_u64().unwrap());
        if s["processed"].as_u64() == Some(2000) && s["total_lag"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "2000 events not handled in time: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lag 2000 / threshold 100 = 20, capped by 4 partitions and max = 4.
    assert_eq!(most, 4, "scaled to the partition cap");
    let rows = effects(&engine.store("probe")).await;
    assert_eq!(rows.len(), 2000, "every event applied exactly once");
    let mut per_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &rows {
        let (key, seq) = r.rsplit_once('-').unwrap();
        per_key.entry(key).or_default().push(seq);
    }
    assert_eq!(per_key.len(), keys);
    for (key, seqs) in &per_key {
        assert_eq!(seqs.len(), 2000 / keys);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key}: order kept within its partition"
        );
    }
    // The idempotency store agrees: one completed record per event.
    let pool = store_pool(&engine.store("probe")).await;
    let done: i64 = sqlx::query_scalar(
        // Keys are hashed; this engine's store holds this test's events only.
        "SELECT COUNT(*) FROM zerofn_inbox WHERE state = 'done'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(done, 2000);
    engine
        .wait_for("probe", 60, "back to zero", |s| {
            s["replicas"] == 0 && s["starting"] == 0
        })
        .await;
    engine.stop().await;
}

#[tokio::test]
async fn a_replica_killed_mid_event_means_one_redelivery_and_one_effect() {
    // The default lease: the killed delivery's claim lapses within it (no heartbeat renews it).
    let env = [("ZEROFN_HANDLER_TIMEOUT", "2s")];
    let engine = Engine::start(&[probe_fn()], None, &env, &[]).await;
    let id = fresh_id("killed");
    engine
        .post_events(&[task_event(&id, "record-slow:1000", "user-1")])
        .await;
    engine
        .process
        .wait_for_log("probe handler started", Duration::from_secs(30))
        .await;
    let s = engine.status("probe").await;
    let pid = s["pids"][0].as_u64().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let s = engine
        .wait_for("probe", 60, "redelivered and handled", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(
        s["retries"], 0,
        "a killed replica is a rebalance, as in Kafka: no retry of the budget spent: {s}"
    );
    assert_eq!(
        effects(&engine.store("probe")).await,
        vec![id],
        "applied once"
    );
    assert!(
        engine.process.log_lines().iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("replica exited unexpectedly"))),
        "the engine noticed"
    );
    engine.stop().await;
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
    // The state dir is free again: a new engine starts on it (and sweeps nothing alive).
    let restarted = Engine::start(&[probe_fn()], Some(engine.state.clone()), &[], &[]).await;
    restarted.stop().await;
}

/// The idempotency key the runtime derives for a CloudEvent (default strategy).
fn key_of(source: &str, id: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(format!("ce:{source}\u{1f}{id}")))
    )
}

#[tokio::test]
async fn raw_dead_letters_of_the_transport_are_listed_and_replayed_once() {
    raw_dead_letters(None).await;
}

#[tokio::test]
async fn raw_dead_letters_of_the_transport_are_listed_and_replayed_once_on_postgres() {
    raw_dead_letters(Some(zerofn_tests::fresh_postgres().await)).await;
}

#[tokio::test]
async fn raw_dead_letters_of_the_transport_are_listed_and_replayed_once_on_redis() {
    raw_dead_letters(Some(zerofn_tests::fresh_redis().await)).await;
}

/// How many times the probe's handler ran for event `id`, by the replicas' logs (which the
/// engine passes through).
fn handler_runs(engine: &Engine, id: &str) -> usize {
    engine
        .process
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "probe handler invoked" && l["event_id"] == id)
        .count()
}

/// `store`: every replica's store (`--store`), else each function's SQLite file in the state
/// dir (where `zerofn dlq` then finds every function's dead letters without flags).
async fn raw_dead_letters(shared: Option<String>) {
    let mut args = Vec::new();
    if let Some(url) = &shared {
        args.extend(["--store", url.as_str()]);
    }
    let engine = Engine::start(&[probe_fn()], None, &[], &args).await;
    let store = shared.clone().unwrap_or_else(|| engine.store("probe"));
    let sql = !store.starts_with("redis");
    // Warm up: the replica creates the store.
    engine
        .post_events(&[task_event(&fresh_id("warm"), "record", "u-1")])
        .await;
    engine
        .wait_for("probe", 60, "warmed up", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    // An event whose claim is stuck with a holder that renews forever (its lease far longer
    // than leases are): every delivery is answered RETRY until the engine's budget (10
    // retries, as Dapr's) runs out and it dead-letters the record raw.
    let id = fresh_id("stuck");
    zerofn_tests::stick_claim(&store, "probe", &key_of("/tests/dev", &id)).await;
    engine
        .post_events(&[task_event(&id, "record", "u-2")])
        .await;
    let zerofn = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(ZEROFN)
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut record = Value::Null;
    for _ in 0..300 {
        let listed: Value = serde_json::from_str(
            &zerofn(vec![
                "dlq".into(),
                "ls".into(),
                "--store".into(),
                store.clone(),
                "--json".into(),
            ])
            .await,
        )
        .unwrap();
        if let Some(r) = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["event_id"] == id.as_str())
        {
            record = r.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        record["error"]["kind"], "delivery_retries_exhausted",
        "{record}"
    );
    assert_eq!(record["topic"], "todo.task.created", "{record}");
    assert_eq!(record["key"], key_of("/tests/dev", &id).as_str());
    assert!(
        record["original"]["body"].as_str().unwrap().contains(&id),
        "the original bytes: {record}"
    );
    assert_eq!(handler_runs(&engine, &id), 0, "not applied");
    if shared.is_none() {
        state_dir_listing(&engine, &record).await;
    }
    // Replay through the function's sidecar, as `--dapr` does in a cluster: applied once.
    let sidecar = engine.sidecar_port("probe");
    let dl = record["id"].as_str().unwrap().to_string();
    let replay = || {
        zerofn(vec![
            "dlq".into(),
            "replay".into(),
            dl.clone(),
            "--store".into(),
            store.clone(),
            "--dapr".into(),
            format!("http://127.0.0.1:{sidecar}"),
        ])
    };
    replay().await;
    for _ in 0..300 {
        if handler_runs(&engine, &id) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replay().await;
    engine
        .wait_for("probe", 60, "both replays handled", |s| s["total_lag"] == 0)
        .await;
    assert_eq!(handler_runs(&engine, &id), 1, "replayed twice, run once");
    if sql {
        let applied = effects(&store)
            .await
            .into_iter()
            .filter(|e| *e == id)
            .count();
        assert_eq!(applied, 1, "replayed twice, applied once");
    }
    engine.stop().await;
}

/// Without `--store`, `zerofn dlq` in the engine's state dir lists every function's dead
/// letters and the gateway's, each with its function; `--fn` filters. `record`: a dead
/// letter of `probe` already listed.
async fn state_dir_listing(engine: &Engine, record: &Value) {
    let refused = client()
        .post(engine.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let gateway_dl = refused.headers()["zerofn-dead-letter"]
        .to_str()
        .unwrap()
        .to_string();
    let ls = |filter: Option<&'static str>| {
        let state = engine.state.clone();
        async move {
            let mut cmd = tokio::process::Command::new(ZEROFN);
            cmd.args(["dlq", "ls", "--json"])
                .env_remove("ZEROFN_STORE")
                .env("ZEROFN_DATA_DIR", &state);
            if let Some(f) = filter {
                cmd.args(["--fn", f]);
            }
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            listed
                .iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap().to_string(),
                        r["function"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let all = ls(None).await;
    let dl_id = record["id"].as_str().unwrap().to_string();
    assert!(all.contains(&(dl_id.clone(), "probe".into())), "{all:?}");
    assert!(all.contains(&(gateway_dl, "gateway".into())), "{all:?}");
    let probe_only = ls(Some("probe")).await;
    assert!(
        probe_only.iter().all(|(_, f)| f == "probe"),
        "{probe_only:?}"
    );
    assert!(
        probe_only.iter().any(|(i, _)| *i == dl_id),
        "{probe_only:?}"
    );
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
async fn records_left_in_the_log_are_processed_after_an_engine_restart() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let prefix = fresh_id("restart");
    let events: Vec<Value> = (0..40)
        .map(|i| {
            task_event(
                &format!("{prefix}-{i:03}"),
                "record-slow:150",
                &format!("k{}", i % 4),
            )
        })
        .collect();
    engine.post_events(&events).await;
    engine
        .wait_for("probe", 60, "some handled", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    let store = engine.store("probe");
    let state = engine.stop().await;
    let first = effects(&store).await.len();
    assert!(
        first < 40,
        "the engine stopped with records left ({first} handled)"
    );

    let engine = Engine::start(&[probe_fn()], Some(state), &[], &[]).await;
    engine
        .wait_for("probe", 120, "the rest handled", |s| {
            s["total_lag"] == 0 && s["processed"].as_u64() == Some((40 - first) as u64)
        })
        .await;
    let rows = effects(&store).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), 40, "nothing lost");
    assert!(
        counts.values().all(|n| *n == 1),
        "nothing doubled: {counts:?}"
    );
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
    chaos_kill_replica(None).await;
}

#[tokio::test]
async fn chaos_kill_replica_loses_nothing_and_doubles_nothing_on_postgres() {
    chaos_kill_replica(Some(zerofn_tests::fresh_postgres().await)).await;
}

/// `store`: every replica's store (`--store`), else each function's SQLite file.
#[tokio::test]
async fn chaos_kill_replica_loses_nothing_and_doubles_nothing_on_redis() {
    chaos_kill_replica(Some(zerofn_tests::fresh_redis().await)).await;
}

async fn chaos_kill_replica(store: Option<String>) {
    // Kills a replica every second while 2 000 events are handled, with the default lease and
    // retry policy. A delivery cut off by a kill is redelivered; the dead holder's lease (6 s,
    // no longer renewed) is waited for instead of answered "in flight", so no retry budget is
    // spent on it. The contract: every event applied exactly once, none dead-lettered.
    let mut args = vec!["--chaos", "kill-replica", "--chaos-interval", "1s"];
    if let Some(url) = &store {
        args.extend(["--store", url.as_str()]);
    }
    let engine = Engine::start(&[probe_fn()], None, &[], &args).await;
    let store = store.unwrap_or_else(|| engine.store("probe"));
    // On a SQL store each event writes an effect row in its delivery's transaction. Redis
    // holds no handler transaction, so there each event emits a notification instead: its
    // output is stored with the completion, so one application means one stored output,
    // published (perhaps more than once, as the same bytes) and never a second, different one.
    let sql = !store.starts_with("redis");
    let title = if sql { "record-slow:5" } else { "emit" };
    let prefix = fresh_id("chaos");
    let events: Vec<Value> = (0..2000)
        .map(|i| task_event(&format!("{prefix}-{i:03}"), title, &format!("k{}", i % 8)))
        .collect();
    engine.post_events(&events).await;
    let s = engine
        .wait_for("probe", 300, "every event has a final outcome", |s| {
            s["total_lag"] == 0
                && s["processed"].as_u64().unwrap_or(0) + s["dead_letters"].as_u64().unwrap_or(0)
                    >= 2000
        })
        .await;
    let log = store_pool(&format!("sqlite:{}", engine.state.join("log.db").display())).await;
    let mut applied: HashMap<String, usize> = HashMap::new();
    if sql {
        for r in effects(&store).await {
            if r.starts_with(&prefix) {
                *applied.entry(r).or_default() += 1;
            }
        }
    } else {
        // Every event is acknowledged, so done; an output whose publish a kill cut off is
        // published by the next delivery, the relay or the replica's flush on its way out.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let published: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT value FROM records WHERE topic = 'todo.notification.sent'",
            )
            .fetch_all(&log)
            .await
            .unwrap();
            let mut outputs: HashMap<String, std::collections::HashSet<Vec<u8>>> = HashMap::new();
            for bytes in published {
                let event: Value = serde_json::from_slice(&bytes).unwrap();
                let cause = event["causationid"].as_str().unwrap().to_string();
                if cause.starts_with(&prefix) {
                    outputs.entry(cause).or_default().insert(bytes);
                }
            }
            applied = outputs.into_iter().map(|(k, v)| (k, v.len())).collect();
            if applied.len() == 2000 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        applied.values().all(|n| *n == 1),
        "nothing doubled: {:?}",
        applied.iter().filter(|(_, n)| **n != 1).collect::<Vec<_>>()
    );
    let dead: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM records WHERE topic = 'deadletter.probe'")
            .fetch_all(&log)
            .await
            .unwrap();
    log.close().await;
    let dead: Vec<String> = dead
        .iter()
        .map(|v| {
            serde_json::from_slice::<Value>(v).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(dead, Vec::<String>::new(), "nothing dead-lettered: {s}");
    let missing: Vec<String> = (0..2000)
        .map(|i| format!("{prefix}-{i:03}"))
        .filter(|id| !applied.contains_key(id))
        .collect();
    assert_eq!(missing, Vec::<String>::new(), "nothing lost: {s}");
    let kills = engine.chaos_kills();
    assert!(kills >= 1, "the chaos actually struck");
    engine.stop().await;
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
    // Every second publish through the sidecar fails; the function's outbox keeps the emitted
    // event and its relay (every second here) publishes it.
    let env = [("ZEROFN_RELAY_INTERVAL", "1s")];
    let engine = Engine::start(&[probe_fn()], None, &env, &["--chaos", "drop-publish"]).await;
    let id = fresh_id("dropped");
    engine
        .post_events(&[task_event(&id, "effect", "u-7")])
        .await;
    let s = engine
        .wait_for(
            "probe",
            60,
            "the emitted notification published and handled",
            |s| {
                s["published"].as_u64() >= Some(1)
                    && s["lag"]["todo.notification.sent"] == 0
                    && s["processed"].as_u64() >= Some(2)
            },
        )
        .await;
    assert_eq!(
        s["published"], 1,
        "published once, after the dropped attempt: {s}"
    );
    assert_eq!(
        effects(&engine.store("probe")).await,
        vec![id],
        "applied once"
    );
    engine.stop().await;
}
