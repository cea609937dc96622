//! A KEDA external scaler client and a broker's helpers, for `zerofn scaler`'s test and its
//! benchmark (`cli/benches/scaler.rs` includes this file by path).

#![allow(dead_code, clippy::unwrap_used)] // each user takes the part it needs

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::{FutureProducer, FutureRecord},
};
use zerofn_tests::{FnProcess, fresh_id, service};

#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub(crate) mod proto {
    tonic::include_proto!("externalscaler");
}

use proto::{ScaledObjectRef, external_scaler_client::ExternalScalerClient};

pub(crate) type Client = ExternalScalerClient<tonic::transport::Channel>;

pub(crate) fn brokers() -> String {
    service("ZEROFN_TEST_KAFKA")
}

/// A fresh topic of `partitions` partitions.
pub(crate) async fn topic(partitions: i32) -> String {
    let name = fresh_id("scaler");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in created {
        r.unwrap();
    }
    name
}

/// `n` records on `partition` of `topic`.
pub(crate) async fn produce(topic: &str, partition: i32, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for i in 0..n {
        let payload = format!("record {i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// `group` commits `offset` on `partition` of `topic`, as a consumer that read up to there.
pub(crate) fn commit(group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

pub(crate) fn object(pairs: &[(&str, String)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "probe".into(),
        namespace: "zerofn".into(),
        scaler_metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<HashMap<_, _>>(),
    }
}

pub(crate) fn trigger(group: &str, topic: &str, threshold: u64) -> ScaledObjectRef {
    object(&[
        ("bootstrapServers", brokers()),
        ("consumerGroup", group.to_string()),
        ("topic", topic.to_string()),
        ("lagThreshold", threshold.to_string()),
        ("offsetResetPolicy", "earliest".into()),
    ])
}

/// The scaler, a client, and its `/metrics` URL.
pub(crate) async fn scaler() -> (FnProcess, Client, String) {
    let process = FnProcess::spawn_with_args(
        env!("CARGO_BIN_EXE_zerofn"),
        &[
            "scaler",
            "--listen",
            "127.0.0.1:{port}",
            "--internal-listen",
            "127.0.0.1:0",
        ],
        &[("ZEROFN_LOG_FORMAT", "json")],
    )
    .await;
    let internal = process
        .wait_for_log(
            "internal listener (/healthz, /metrics)",
            Duration::from_secs(30),
        )
        .await;
    let metrics = format!("http://{}/metrics", internal["addr"].as_str().unwrap());
    process
        .wait_for_log("scaler listening", Duration::from_secs(30))
        .await;
    let client = ExternalScalerClient::connect(format!("http://{}", process.addr()))
        .await
        .unwrap();
    (process, client, metrics)
}
