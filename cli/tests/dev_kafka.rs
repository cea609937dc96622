//! `zerofn dev --kafka`: the engine on a real Kafka-protocol broker (tansu, started by
//! `make test` on 127.0.0.1; its address in `ZEROFN_TEST_KAFKA`). The engine suite's core cases
//! run unchanged on it (the same code as on the SQLite log), each test under its own topic and
//! group prefix; and the lag the engine shows is the lag a Kafka client reads for the group.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::{collections::BTreeMap, time::Duration};

use engine::{
    Engine,
    cases::{self, task_event},
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::Value;
use zerofn_tests::{fresh_id, service};

fn brokers() -> String {
    service("ZEROFN_TEST_KAFKA")
}

/// The engine's arguments for a Kafka log under a fresh prefix.
fn on_kafka() -> (String, Vec<String>) {
    let prefix = format!("{}.", fresh_id("dev"));
    let args = vec![
        "--kafka".to_string(),
        brokers(),
        "--kafka-prefix".to_string(),
        prefix.clone(),
    ];
    (prefix, args)
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn on_kafka_an_event_wakes_a_function_from_zero_and_it_returns_to_zero() {
    let (_, args) = on_kafka();
    cases::wake_and_back(&strs(&args)).await;
}

#[tokio::test]
async fn on_kafka_a_burst_scales_to_the_partition_cap_exactly_once_in_order() {
    let (_, args) = on_kafka();
    cases::burst(&strs(&args)).await;
}

#[tokio::test]
async fn on_kafka_a_replica_killed_mid_event_means_one_redelivery_and_one_effect() {
    let (_, args) = on_kafka();
    cases::killed_mid_event(&strs(&args)).await;
}

#[tokio::test]
async fn on_kafka_records_left_are_processed_after_an_engine_restart() {
    let (_, args) = on_kafka();
    cases::restart_with_backlog(&strs(&args)).await;
}

#[tokio::test]
async fn on_kafka_dead_letters_of_the_transport_and_the_gateway_are_listed_and_replayed_once() {
    let (_, args) = on_kafka();
    cases::raw_dead_letters(None, &strs(&args)).await;
}

#[tokio::test]
async fn on_kafka_chaos_kill_replica_loses_nothing_and_doubles_nothing() {
    let (_, args) = on_kafka();
    cases::chaos_kill_replica(None, &strs(&args)).await;
}

#[tokio::test]
async fn on_kafka_chaos_drop_publish_is_recovered_by_the_outbox_relay() {
    let (_, args) = on_kafka();
    cases::chaos_drop_publish(&strs(&args)).await;
}

/// Per partition: the log end and the group's lag as a Kafka client reads them (ListOffsets,
/// OffsetFetch; a partition the group never committed counts from the start, as the engine's
/// groups start at the oldest record).
fn admin_view(group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let md = client.fetch_metadata(Some(topic), timeout).unwrap();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = client.committed_offsets(list, timeout).unwrap();
    partitions
        .into_iter()
        .map(|p| {
            let (_, end) = client.fetch_watermarks(topic, p, timeout).unwrap();
            let at = match committed.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(n) => n,
                _ => 0,
            };
            (p, (end, end - at))
        })
        .collect()
}

fn total(view: &BTreeMap<i32, (i64, i64)>) -> i64 {
    view.values().map(|(_, lag)| lag).sum()
}

#[tokio::test]
async fn the_lag_the_engine_shows_is_the_lag_kafka_reports_for_the_group() {
    let (prefix, args) = on_kafka();
    let topic = format!("{prefix}todo.task.created");
    let group = format!("{prefix}probe");
    // A function that never becomes ready holds its backlog: the lag stands still.
    let manifest = engine::manifest("tests/function.toml");
    let stuck = format!("{manifest}=/bin/false");
    let password = "never-on-disk-7f3a";
    let env = [("ZEROFN_KAFKA_SASL_PASSWORD", password)];
    let engine = Engine::start(&[stuck], None, &env, &strs(&args)).await;
    // The state dir says where the log is (for zerofn dlq), without the password.
    let recorded = std::fs::read_to_string(engine.state.join("kafka.json")).unwrap();
    let location: Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(
        (location["brokers"].as_str(), location["prefix"].as_str()),
        (Some(brokers().as_str()), Some(prefix.as_str()))
    );
    assert!(!recorded.contains(password), "{recorded}");
    let events: Vec<Value> = (0..12)
        .map(|i| task_event(&fresh_id("lag"), "record", &format!("key-{}", i % 5)))
        .collect();
    engine.post_events(&events).await;
    let s = engine
        .wait_for("probe", 30, "the backlog shown", |s| s["total_lag"] == 12)
        .await;
    let kafka = admin_view(&group, &topic);
    assert_eq!(total(&kafka), 12, "{kafka:?}");
    assert_eq!(
        s["lag"]["todo.task.created"].as_i64(),
        Some(total(&kafka)),
        "{s}"
    );
    let stopped = engine.stop().await;

    // With commits: the probe handles everything; Kafka has the group's commits at each
    // partition's end, and the engine (started again on the same state dir) reads them back.
    let engine = Engine::start(&[cases::probe_fn()], Some(stopped), &[], &strs(&args)).await;
    engine
        .wait_for("probe", 60, "the backlog handled", |s| {
            s["processed"] == 12 && s["total_lag"] == 0
        })
        .await;
    let kafka = admin_view(&group, &topic);
    assert_eq!(total(&kafka), 0, "committed at the end: {kafka:?}");
    assert_eq!(kafka.values().map(|(end, _)| end).sum::<i64>(), 12);
    let stopped = engine.stop().await;
    let engine = Engine::start(&[cases::probe_fn()], Some(stopped), &[], &strs(&args)).await;
    let s = engine.status("probe").await;
    assert_eq!(
        (s["total_lag"].as_i64(), s["processed"].as_i64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // A record another client produces (as Dapr would) wakes the function too.
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let id = fresh_id("external");
    let event = task_event(&id, "record", "key-x").to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(&topic).payload(&event),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    engine
        .wait_for("probe", 30, "the outside record handled", |s| {
            s["processed"] == 1
        })
        .await;
    assert!(cases::effects(&engine.store("probe")).await.contains(&id));
    engine.stop().await;
}
