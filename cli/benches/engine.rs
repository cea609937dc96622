//! `make bench`, the local engine's part: event throughput through the whole path (gateway append →
//! log → scaler → replicas → probe handler → commit) and HTTP requests through the gateway, on the real
//! `zerofn dev` binary with release builds. Bounded in count; prints numbers, asserts nothing about speed.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a report printer

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zerofn_tests::{
    FnProcess, client, get_json,
    report::{Better, Row},
    task,
};

const EVENTS: usize = 20_000;
/// The SQLite log's end-to-end rate before #16 (`make bench` at b3843dd, this machine class).
const BEFORE: f64 = 1083.0;
const REQUESTS: usize = 2000;
const CONCURRENCY: usize = 50;

async fn status(url: &str) -> Value {
    let all = get_json(&format!("{url}/_zerofn/status")).await;
    all["functions"][0].clone()
}

/// `EVENTS` events posted to the probe at zero on an engine with `log` (its `--kafka` args, or
/// none for the SQLite log), until all are committed; the engine, still running, and the
/// events/s end to end.
async fn events(zerofn: &str, function: &str, log: &[String], what: &str) -> (FnProcess, f64) {
    let state = std::env::temp_dir().join(format!("zerofn-bench-{}", uuid::Uuid::new_v4()));
    let state_arg = state.display().to_string();
    let mut args = vec![
        "dev",
        "--listen",
        "127.0.0.1:{port}",
        "--state-dir",
        &state_arg,
        "--fn",
        function,
    ];
    args.extend(log.iter().map(String::as_str));
    let engine = FnProcess::start_with_args(zerofn, &args, &[("ZEROFN_LOG", "warn")]).await;
    let url = engine.url();
    // A broker slower than the SQLite log takes longer than the usual 20 s to store 500.
    let slow_ok = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    // Events: posted in batches of 500 to a function at zero; time until all are committed.
    let started = Instant::now();
    for batch in 0..EVENTS / 500 {
        let events: Vec<Value> = (0..500)
            .map(|i| {
                let n = batch * 500 + i;
                json!({"specversion": "1.0", "id": format!("bench-{what}-{n}"), "source": "/bench", "type": "todo.task.created",
                       "partitionkey": format!("k{}", n % 64), "data": task("fine")})
            })
            .collect();
        let r = slow_ok
            .post(format!("{url}/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let appended = started.elapsed();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = status(&url).await;
        most = most.max(s["replicas"].as_u64().unwrap_or(0));
        if s["processed"].as_u64() == Some(EVENTS as u64) && s["total_lag"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not done in 10 min: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    let s = status(&url).await;
    println!("\n{EVENTS} events from zero replicas, {what}");
    println!(
        "  appended through POST /events in {:.0} ms ({:.0} events/s)",
        appended.as_secs_f64() * 1e3,
        EVENTS as f64 / appended.as_secs_f64()
    );
    println!(
        "  all handled and committed after {:.2} s: {:.0} events/s end to end",
        total.as_secs_f64(),
        EVENTS as f64 / total.as_secs_f64()
    );
    println!(
        "  replicas at most {most}; cold start to ready {} ms",
        s["last_cold_start_ms"]
    );
    (engine, EVENTS as f64 / total.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let zerofn = env!("CARGO_BIN_EXE_zerofn");
    let probe = std::path::Path::new(zerofn).with_file_name("probe");
    assert!(
        probe.is_file(),
        "build the probe first: cargo build --release -p zerofn-tests --bins"
    );
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/function.toml");
    let function = format!("{}={}", manifest.display(), probe.display());
    println!(
        "zerofn dev, probe function, 4 partitions, lag threshold 100, max 4 replicas (release build)"
    );
    let (mut engine, sqlite) = events(zerofn, &function, &[], "the SQLite log").await;
    let what = format!("{EVENTS} events to the probe from zero, end to end");
    Row::new(
        "engine",
        &format!("{what}, SQLite log"),
        sqlite,
        "events/s",
        Better::Higher,
    )
    .against("the same before #16 (make bench at b3843dd)", BEFORE)
    .record();
    // The same with every replica on the memory store: what the function's store costs.
    let (mut memory, rate) = events(
        zerofn,
        &function,
        &["--store".to_string(), "memory".to_string()],
        "the SQLite log, replicas on the memory store",
    )
    .await;
    Row::new(
        "engine",
        &format!("{what}, SQLite log, replicas on the memory store"),
        rate,
        "events/s",
        Better::Higher,
    )
    .against("the same with the default store (one SQLite file)", sqlite)
    .record();
    memory.sigterm();
    let _ = memory.wait_exit(Duration::from_secs(60)).await;
    let url = engine.url();
    // The same on a Kafka broker, in the same run, when one is up (`make bench` starts tansu).
    if let Ok(brokers) = std::env::var("ZEROFN_TEST_KAFKA") {
        let prefix = format!("bench-{}.", uuid::Uuid::new_v4());
        let log = [
            "--kafka".to_string(),
            brokers,
            "--kafka-prefix".to_string(),
            prefix,
        ];
        let (mut on_kafka, rate) = events(
            zerofn,
            &function,
            &log,
            "Kafka log (tansu, sqlite engine, on 127.0.0.1)",
        )
        .await;
        Row::new(
            "engine",
            &format!("{what}, Kafka log (tansu)"),
            rate,
            "events/s",
            Better::Higher,
        )
        .against("the same on the SQLite log", sqlite)
        .record();
        on_kafka.sigterm();
        let _ = on_kafka.wait_exit(Duration::from_secs(60)).await;
    } else {
        println!("\n(no Kafka broker: ZEROFN_TEST_KAFKA is unset; make bench starts one)");
    }

    // HTTP: REQUESTS requests, CONCURRENCY at a time, through /fn/probe/hello (replicas are warm by now).
    let latencies = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(REQUESTS)));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let url = format!("{url}/fn/probe/hello");
            let latencies = latencies.clone();
            tokio::spawn(async move {
                let http = client();
                for _ in 0..REQUESTS / CONCURRENCY {
                    let t = Instant::now();
                    let r = http.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    latencies.lock().await.push(t.elapsed());
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed();
    let mut l = latencies.lock().await.clone();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e3;
    println!("\n{REQUESTS} HTTP requests through the gateway, {CONCURRENCY} at a time");
    println!(
        "  {:.0} requests/s; latency median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        REQUESTS as f64 / took.as_secs_f64(),
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    // SIGTERM: the engine drains and stops its replicas (dropping it would SIGKILL the engine alone).
    engine.sigterm();
    let _ = engine.wait_exit(Duration::from_secs(60)).await;
}
