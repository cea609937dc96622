//! `make bench`, the runtime's part: what one event costs inside one function and what one
//! replica costs to start and keep. Bounded in count; prints numbers and records rows
//! ([`zerofn_tests::report`]); asserts nothing about speed.
//!
//! - per-event cost in-process (no sockets: the router called with `oneshot`), with the
//!   memory, SQLite and PostgreSQL stores, and a handler that does nothing;
//! - per-event round trip over loopback HTTP, one at a time: logs off, JSON logs (the
//!   default), tracing exported over OTLP;
//! - one instance under concurrency: events/s with 1, 8 and 64 in flight;
//! - cold start (process start → `/healthz` answers) beside the process-spawn floor (a no-op
//!   binary started and reaped), and a replica's idle RSS.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a report printer
use std::time::{Duration, Instant};

use zerofn_tests::{
    FnProcess, OtlpReceiver, Task, client, percentile,
    report::{Better, Row, rss_mib},
    structured, task,
};

const WARMUP: usize = 200;
const EVENTS: usize = 1000;
const ROUNDS: usize = 5;
/// Events per in-process measurement (fewer on the stores that write a file or a socket).
const IN_PROCESS: [(&str, usize); 3] =
    [("memory", 20_000), ("SQLite", 3_000), ("PostgreSQL", 2_000)];
/// Events per concurrency level, and the levels.
const CONCURRENT_EVENTS: usize = 4_000;
const IN_FLIGHT: [usize; 3] = [1, 8, 64];
/// Process starts measured (and as many no-op spawns).
const STARTS: usize = 40;
/// A probe replica on the memory store, publishing nowhere.
const MEMORY_PROBE: &[(&str, &str)] = &[
    ("K_SINK", "http://127.0.0.1:9/"),
    ("ZEROFN_STORE", "memory"),
];

/// One structured `todo.task.created` with `id` to `url`, answered 202.
async fn post_event(http: &reqwest::Client, url: &str, id: &str) {
    let r = http
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .json(&structured(id, task("fine")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::main]
async fn main() {
    let here = std::env::current_exe().expect("own path");
    let probe = here.with_file_name("probe").to_string_lossy().into_owned();
    let noop = here.with_file_name("noop").to_string_lossy().into_owned();
    disabled_span_cost();
    in_process().await;
    // `bench in-process`: that section alone (what `perf record` is pointed at).
    if std::env::args().nth(1).as_deref() == Some("in-process") {
        return;
    }
    one_at_a_time(&probe).await;
    concurrency(&probe).await;
    cold_start(&probe, &noop).await;
}

/// The pipeline without sockets: `testing::router` + `oneshot`, binary-mode CloudEvents, a
/// handler that returns at once; mean µs per event over the whole loop.
async fn in_process() {
    println!(
        "per-event runtime cost in-process (router + oneshot, no sockets, no log subscriber), handler does nothing\n"
    );
    println!(
        "{:<14} {:>10} {:>12} {:>12}",
        "store", "events", "mean µs", "events/s"
    );
    let mut memory_us = None;
    for (store, n) in IN_PROCESS {
        let url = match store {
            "memory" => "memory".to_string(),
            "SQLite" => zerofn_tests::sqlite_url(),
            _ => match std::env::var("ZEROFN_TEST_POSTGRES") {
                Ok(_) => zerofn_tests::fresh_postgres().await,
                Err(_) => {
                    println!(
                        "{store:<14} (skipped: ZEROFN_TEST_POSTGRES is unset; make bench starts it)"
                    );
                    continue;
                }
            },
        };
        let handler = zerofn::handler_fn(|_: zerofn::Event<Task>| async {
            Ok::<_, zerofn::HandlerError>(Vec::<zerofn::Emit>::new())
        });
        let app = zerofn::testing::router(
            zerofn_tests::MANIFEST,
            handler,
            &[
                ("ZEROFN_STORE", url.as_str()),
                ("K_SINK", "http://127.0.0.1:9/"),
            ],
        )
        .await
        .unwrap();
        let data = task("fine");
        let send = |i: usize| {
            let id = format!("in-process-{store}-{i}");
            let app = &app;
            let data = &data;
            async move {
                let headers = [
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    ("ce-source", "/bench"),
                    ("ce-type", "todo.task.created"),
                ];
                let (status, body) =
                    zerofn::testing::call(app, "POST", "/", Some(data), &headers).await;
                assert_eq!(status, 202, "{body}");
            }
        };
        for i in 0..WARMUP {
            send(i).await;
        }
        let started = Instant::now();
        for i in 0..n {
            send(WARMUP + i).await;
        }
        let took = started.elapsed();
        let us = took.as_secs_f64() * 1e6 / n as f64;
        println!(
            "{store:<14} {n:>10} {us:>12.1} {:>12.0}",
            n as f64 / took.as_secs_f64()
        );
        let row = Row::new(
            "runtime",
            &format!("per-event cost in-process, {store} store (µs, one at a time)"),
            us,
            "µs",
            Better::Lower,
        );
        match memory_us {
            None => {
                memory_us = Some(us);
                row.against("the issue's target", 50.0).record();
            }
            Some(m) => row.against("the same with the memory store", m).record(),
        }
    }
    println!();
}

/// Per-event round trips over loopback, one at a time, in three logging configurations.
async fn one_at_a_time(probe: &str) {
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let configs: [(&str, Vec<(&str, &str)>); 3] = [
        ("logs off, tracing disabled", vec![("ZEROFN_LOG", "off")]),
        ("JSON logs, tracing disabled (default)", vec![]),
        (
            "JSON logs, tracing exported over OTLP",
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        ),
    ];
    println!(
        "{EVENTS} events x {ROUNDS} rounds per configuration, memory store, HTTP transport, one at a time\n"
    );
    println!(
        "{:<40} {:>12} {:>12} {:>12}",
        "configuration", "median µs", "p95 µs", "events/s"
    );
    let mut logs_off = None;
    for (name, extra) in &configs {
        let mut env = MEMORY_PROBE.to_vec();
        env.extend(extra.iter().copied());
        let process = FnProcess::start(probe, &env).await;
        let http = client();
        let url = process.url();
        let send = |i: usize| {
            let (http, url) = (&http, &url);
            async move {
                let started = Instant::now();
                post_event(http, url, &format!("bench-{name}-{i}")).await;
                started.elapsed()
            }
        };
        for i in 0..WARMUP {
            send(i).await;
        }
        let mut samples: Vec<Duration> = Vec::with_capacity(EVENTS * ROUNDS);
        let started = Instant::now();
        for round in 0..ROUNDS {
            for i in 0..EVENTS {
                samples.push(send(WARMUP + round * EVENTS + i).await);
            }
        }
        let total = started.elapsed();
        let median = percentile(&mut samples, 50).as_secs_f64() * 1e6;
        let p95 = percentile(&mut samples, 95).as_secs_f64() * 1e6;
        println!(
            "{:<40} {:>12.1} {:>12.1} {:>12.0}",
            name,
            median,
            p95,
            samples.len() as f64 / total.as_secs_f64()
        );
        let row = Row::new(
            "runtime",
            &format!("per-event round trip over loopback HTTP, {name} (median)"),
            median,
            "µs",
            Better::Lower,
        );
        match logs_off {
            None => {
                logs_off = Some(median);
                row.record();
            }
            Some(off) => row.against("the same with logs off", off).record(),
        }
    }
    println!(
        "\nspans received by the OTLP receiver: {}\n",
        otlp.spans().len()
    );
}

/// One probe replica (memory store, default logging) fed with 1, 8 and 64 events in flight.
async fn concurrency(probe: &str) {
    println!(
        "one instance under concurrency: {CONCURRENT_EVENTS} events per level, memory store, JSON logs\n"
    );
    println!("{:<14} {:>12}", "in flight", "events/s");
    let process = FnProcess::start(probe, MEMORY_PROBE).await;
    let url = process.url();
    let mut one = None;
    for level in IN_FLIGHT {
        let http = client();
        let started = Instant::now();
        let workers: Vec<_> = (0..level)
            .map(|w| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    for i in (w..CONCURRENT_EVENTS).step_by(level) {
                        post_event(&http, &url, &format!("c{level}-{i}")).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let rate = CONCURRENT_EVENTS as f64 / started.elapsed().as_secs_f64();
        println!("{level:<14} {rate:>12.0}");
        let row = Row::new(
            "runtime",
            &format!("one replica, {level} in flight (events/s)"),
            rate,
            "events/s",
            Better::Higher,
        );
        match one {
            None => {
                one = Some(rate);
                row.record();
            }
            Some(o) => row.against("the same, 1 in flight", o).record(),
        }
    }
    println!();
}

/// Process start → `/healthz` 200, over `STARTS` starts, beside spawning and reaping a no-op
/// binary; then the idle RSS of a replica that has handled a few events.
async fn cold_start(probe: &str, noop: &str) {
    let mut floor = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let t = Instant::now();
        let status = tokio::process::Command::new(noop).status().await.unwrap();
        assert!(status.success());
        floor.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut starts = Vec::with_capacity(STARTS);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    for _ in 0..STARTS {
        let t = Instant::now();
        let process = FnProcess::spawn(probe, MEMORY_PROBE).await;
        let healthz = format!("{}/healthz", process.url());
        let deadline = t + Duration::from_secs(10);
        loop {
            if http
                .get(&healthz)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(Instant::now() < deadline, "the probe did not start in 10 s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        starts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (f50, f95) = (percentile(&mut floor, 50), percentile(&mut floor, 95));
    let (s50, s95) = (percentile(&mut starts, 50), percentile(&mut starts, 95));
    println!("cold start over {STARTS} starts: process start → /healthz 200, memory store\n");
    println!("{:<44} {:>10} {:>10}", "", "p50 ms", "p95 ms");
    println!("{:<44} {s50:>10.1} {s95:>10.1}", "probe replica");
    println!(
        "{:<44} {f50:>10.1} {f95:>10.1}",
        "floor: spawn and reap a no-op binary"
    );
    let floor_what = "spawn + reap of a no-op binary (the floor)";
    Row::new(
        "start",
        "cold start, process start → /healthz 200 (p50)",
        s50,
        "ms",
        Better::Lower,
    )
    .against(floor_what, f50)
    .record();
    Row::new(
        "start",
        "cold start, process start → /healthz 200 (p95)",
        s95,
        "ms",
        Better::Lower,
    )
    .against(floor_what, f95)
    .record();

    // Idle RSS: a replica that handled a few events, then sat for a second.
    let process = FnProcess::start(probe, MEMORY_PROBE).await;
    let http = client();
    for i in 0..100 {
        post_event(&http, &process.url(), &format!("rss-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_mib(process.pid());
    println!("\nidle RSS of one replica after 100 events: {rss:.1} MiB\n");
    Row::new(
        "footprint",
        "idle RSS of one replica (probe, memory store, after 100 events)",
        rss,
        "MiB",
        Better::Lower,
    )
    .record();
}

/// The six span callsites the pipeline opens per event, with no subscriber interested in spans
/// — the runtime's state without an OTLP endpoint (its log layer takes events only).
fn disabled_span_cost() {
    const N: u32 = 1_000_000;
    let started = Instant::now();
    for i in 0..N {
        let process = tracing::info_span!(
            "zerofn.process",
            otel.name = tracing::field::Empty,
            otel.kind = "consumer",
            cloudevents.event_id = tracing::field::Empty,
            zerofn.outcome = tracing::field::Empty,
        );
        let _entered = process.enter();
        process.record("cloudevents.event_id", i);
        for name in ["claim", "handler", "complete", "publish", "dead letter"] {
            let child = tracing::info_span!("zerofn.child", otel.name = name);
            std::hint::black_box(&child);
        }
    }
    let per_event = started.elapsed() / N;
    println!(
        "tracing disabled: the pipeline's spans cost {per_event:?} per event ({N} events, no span subscriber)\n"
    );
}
