//! `make bench`, the push scaler's part: how long after a record lands for a consumer group at
//! zero `zerofn scaler`'s `StreamIsActive` says `true` (KEDA then scales the Deployment from 0),
//! next to what KEDA's polling kafka trigger makes a function at zero wait. Needs the broker
//! `make bench` starts (`ZEROFN_TEST_KAFKA`). Bounded in count; prints numbers, asserts nothing
//! about speed.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a report printer

#[path = "../tests/scaler_support/mod.rs"]
mod scaler_support;

use std::time::{Duration, Instant};

use scaler_support::{commit, produce, scaler, topic, trigger};
use zerofn_tests::{
    fresh_id,
    report::{Better, Row},
};

/// Wake-ups measured.
const WAKES: usize = 40;
/// KEDA's default `pollingInterval`, and the one our function chart renders.
const KEDA_POLLING: [(&str, f64); 2] = [("KEDA default", 30.0), ("zerofn chart", 15.0)];

/// The stream's next answer.
async fn next(stream: &mut tonic::Streaming<scaler_support::proto::IsActiveResponse>) -> bool {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an answer within 30 s")
        .unwrap()
        .unwrap()
        .result
}

#[tokio::main]
async fn main() {
    let (_process, mut client, _) = scaler().await;
    let topic = topic(1).await;
    let group = fresh_id("bench");
    let mut stream = client
        .stream_is_active(trigger(&group, &topic, 10))
        .await
        .unwrap()
        .into_inner();
    assert!(!next(&mut stream).await, "inactive before any record");
    let mut took = Vec::with_capacity(WAKES);
    for n in 1..=WAKES {
        let produced = Instant::now();
        produce(&topic, 0, 1).await;
        assert!(next(&mut stream).await, "active after a record");
        took.push(produced.elapsed().as_secs_f64() * 1e3);
        // The group reads it: back to inactive before the next wake-up.
        commit(&group, &topic, 0, n as i64);
        assert!(!next(&mut stream).await, "inactive once committed");
    }
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "\nWake-up: a record for a consumer group at zero -> StreamIsActive true ({WAKES} wake-ups, zerofn scaler watching every 100 ms, tansu on 127.0.0.1)"
    );
    println!(
        "  zerofn scaler (external-push): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    let (_, chart_interval) = KEDA_POLLING[1];
    for (p, name) in [(0.5, "p50"), (0.95, "p95")] {
        Row::new(
            "scaler",
            &format!("wake-up of a consumer group at zero, zerofn push scaler ({name})"),
            pct(p),
            "ms",
            Better::Lower,
        )
        .against(
            "KEDA's polling kafka trigger at the chart's 15 s interval (uniform over it)",
            chart_interval * 1000.0 * p,
        )
        .record();
    }
    for (what, interval) in KEDA_POLLING {
        // A record lands at a uniformly random moment of the polling cycle.
        println!(
            "  KEDA kafka trigger, pollingInterval {interval:.0} s ({what}): p50 {:.0} ms, p95 {:.0} ms (uniform over the interval)",
            interval * 500.0,
            interval * 950.0
        );
    }
}
