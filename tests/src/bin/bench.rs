//! `make bench`: per-event cost of the runtime with tracing disabled (no OTLP endpoint, the
//! default) against logs off and against tracing exported over OTLP. One real probe process
//! per configuration, events sent one at a time over loopback; bounded in count.
//!
//! Prints the median and p95 per-event round trip of each configuration over several rounds.

#![allow(clippy::print_stdout)] // a report printer
use std::time::{Duration, Instant};

use zerofn_tests::{FnProcess, OtlpReceiver, client, structured, task};

const WARMUP: usize = 200;
const EVENTS: usize = 1000;
const ROUNDS: usize = 5;

#[tokio::main]
async fn main() {
    let probe = std::env::current_exe()
        .expect("own path")
        .with_file_name("probe")
        .to_string_lossy()
        .into_owned();
    disabled_span_cost();
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
    for (name, extra) in &configs {
        let mut env = vec![
            ("K_SINK", "http://127.0.0.1:9/"),
            ("ZEROFN_STORE", "memory"),
        ];
        env.extend(extra.iter().copied());
        let process = FnProcess::start(&probe, &env).await;
        let http = client();
        let send = |i: usize| {
            let request = http
                .post(process.url())
                .header("content-type", "application/cloudevents+json")
                .json(&structured(&format!("bench-{name}-{i}"), task("fine")));
            async move {
                let started = Instant::now();
                let response = request.send().await.expect("delivered");
                assert_eq!(response.status(), 202);
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
        samples.sort();
        let median = samples[samples.len() / 2];
        let p95 = samples[samples.len() * 95 / 100];
        println!(
            "{:<40} {:>12.1} {:>12.1} {:>12.0}",
            name,
            median.as_secs_f64() * 1e6,
            p95.as_secs_f64() * 1e6,
            samples.len() as f64 / total.as_secs_f64()
        );
    }
    println!(
        "\nspans received by the OTLP receiver: {}",
        otlp.spans().len()
    );
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
