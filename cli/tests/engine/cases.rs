//! The engine suite's core cases, run on the SQLite log (`dev.rs`) and on a Kafka cluster
//! (`dev_kafka.rs`) by the same code: `extra` are the engine's extra arguments (`--kafka …`).

#![allow(dead_code)] // each suite uses the part it needs

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use zerofn_tests::{client, fresh_id, store_pool};

use super::{Engine, ZEROFN, manifest, sibling};

pub(crate) fn probe_fn() -> String {
    format!("{}={}", manifest("tests/function.toml"), sibling("probe"))
}

pub(crate) fn task_event(id: &str, title: &str, key: &str) -> Value {
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
pub(crate) async fn effects(store: &str) -> Vec<String> {
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
    let rows = sqlx::query_scalar("SELECT event_id FROM probe_effects ORDER BY rowid")
        .fetch_all(&pool)
        .await;
    pool.close().await;
    match rows {
        Ok(rows) => rows,
        // The first replica created the file and is still running its migrations.
        Err(e) if e.to_string().contains("no such table: probe_effects") => Vec::new(),
        Err(e) => panic!("reading probe_effects: {e}"),
    }
}

/// An event wakes a function from zero, a duplicate is not applied, and it returns to zero.
pub(crate) async fn wake_and_back(extra: &[&str]) {
    let engine = Engine::start(&[probe_fn()], None, &[], extra).await;
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

/// 2 000 events on 16 keys scale the probe to the partition cap (4), each applied once, each key's order kept.
pub(crate) async fn burst(extra: &[&str]) {
    let engine = Engine::start(&[probe_fn()], None, &[], extra).await;
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

/// A replica SIGKILLed mid-event: one redelivery, no retry spent, one effect.
pub(crate) async fn killed_mid_event(extra: &[&str]) {
    // The default lease: the killed delivery's claim lapses within it (no heartbeat renews it).
    let env = [("ZEROFN_HANDLER_TIMEOUT", "2s")];
    let engine = Engine::start(&[probe_fn()], None, &env, extra).await;
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

/// Records left in the log when the engine stops are processed after it restarts: nothing lost, nothing doubled.
pub(crate) async fn restart_with_backlog(extra: &[&str]) {
    let engine = Engine::start(&[probe_fn()], None, &[], extra).await;
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

    let engine = Engine::start(&[probe_fn()], Some(state), &[], extra).await;
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

/// The idempotency key the runtime derives for a CloudEvent (default strategy).
pub(crate) fn key_of(source: &str, id: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(format!("ce:{source}\u{1f}{id}")))
    )
}

/// How many times the probe's handler ran for event `id`, by the replicas' logs (which the
/// engine passes through).
pub(crate) fn handler_runs(engine: &Engine, id: &str) -> usize {
    engine
        .process
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "probe handler invoked" && l["event_id"] == id)
        .count()
}

/// `store`: every replica's store (`--store`), else each function's SQLite file in the state
/// dir (where `zerofn dlq` then finds every function's dead letters without flags).
pub(crate) async fn raw_dead_letters(shared: Option<String>, extra: &[&str]) {
    let mut args = extra.to_vec();
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

/// `store`: every replica's store (`--store`), else each function's SQLite file.
pub(crate) async fn chaos_kill_replica(store: Option<String>, extra: &[&str]) {
    // Kills a replica every second while 2 000 events are handled, with the default lease and
    // retry policy. A delivery cut off by a kill is redelivered; the dead holder's lease (6 s,
    // no longer renewed) is waited for instead of answered "in flight", so no retry budget is
    // spent on it. The contract: every event applied exactly once, none dead-lettered.
    let mut args = vec!["--chaos", "kill-replica", "--chaos-interval", "1s"];
    args.extend(extra);
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
    // Each dead letter shown whole (its event, error and attempts), so a failure says why.
    let dead: Vec<Value> = dead
        .iter()
        .map(|v| {
            let record: Value = serde_json::from_slice(v).unwrap();
            json!({"id": record["id"], "event": record["data"]["event_id"], "error": record["data"]["error"],
                   "attempts": record["data"]["attempts"], "first": record["data"]["first_failure"],
                   "last": record["data"]["last_failure"]})
        })
        .collect();
    if !dead.is_empty() {
        // The engine's (and its replicas') log lines about those events and the kills.
        let ids: Vec<&str> = dead.iter().filter_map(|d| d["event"].as_str()).collect();
        for line in engine.process.stderr_lines() {
            if line.contains("SIGKILL") || ids.iter().any(|id| line.contains(id)) {
                eprintln!("{line}");
            }
        }
    }
    assert_eq!(dead, Vec::<Value>::new(), "nothing dead-lettered: {s}");
    let missing: Vec<String> = (0..2000)
        .map(|i| format!("{prefix}-{i:03}"))
        .filter(|id| !applied.contains_key(id))
        .collect();
    assert_eq!(missing, Vec::<String>::new(), "nothing lost: {s}");
    let kills = engine.chaos_kills();
    assert!(kills >= 1, "the chaos actually struck");
    engine.stop().await;
}

/// `--chaos drop-publish`: the outbox relay publishes what the sidecar dropped, once.
pub(crate) async fn chaos_drop_publish(extra: &[&str]) {
    // Every second publish through the sidecar fails; the function's outbox keeps the emitted
    // event and its relay (every second here) publishes it.
    let env = [("ZEROFN_RELAY_INTERVAL", "1s")];
    let engine = Engine::start(
        &[probe_fn()],
        None,
        &env,
        &[&["--chaos", "drop-publish"], extra].concat(),
    )
    .await;
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
