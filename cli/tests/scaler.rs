//! `zerofn scaler` against a real Kafka-protocol broker (tansu, started by `make test` on
//! 127.0.0.1; its address in `ZEROFN_TEST_KAFKA`), through KEDA's own `externalscaler.proto`:
//! inactive at zero lag, `StreamIsActive` pushing `true` within a second of a produce,
//! `GetMetrics` equal to the engine's arithmetic for the same lags (the cap's cases of
//! `lag.rs` reproduced on the broker), and bad metadata refused as `InvalidArgument` naming the
//! key.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod scaler_support;

use std::time::Duration;

use proto::{GetMetricsRequest, ScaledObjectRef};
use scaler_support::{Client, brokers, commit, object, produce, proto, scaler, topic, trigger};
use zerofn_tests::fresh_id;

/// The value of the sample `name{labels}` in `url`'s exposition.
async fn sample(url: &str, name: &str, labels: &str) -> Option<f64> {
    let text = zerofn_tests::client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let found = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && labels.split(',').all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok());
    if found.is_none() {
        eprintln!("no {name}{{{labels}}} in:\n{text}");
    }
    found
}

async fn metric(client: &mut Client, r: &ScaledObjectRef) -> f64 {
    let answer = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    answer.metric_values[0].metric_value_float
}

#[tokio::test]
async fn the_scaler_wakes_a_group_within_a_second_and_reports_keda_s_metric() {
    let (_process, mut client, metrics) = scaler().await;
    let topic = topic(3).await;
    let group = fresh_id("group");
    let r = trigger(&group, &topic, 10);

    // Nothing produced: inactive, metric 0, and the spec's target is the threshold.
    assert!(
        !client
            .is_active(r.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );
    assert_eq!(metric(&mut client, &r).await, 0.0);
    let spec = client
        .get_metric_spec(r.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs[0].target_size_float, 10.0);
    assert!(spec.metric_specs[0].metric_name.starts_with("kafka-"));

    // A stream at zero: false first; one produce, and true within a second.
    let mut stream = client
        .stream_is_active(r.clone())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.result, "inactive before any record");
    let produced = std::time::Instant::now();
    produce(&topic, 0, 1).await;
    let pushed = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("pushed")
        .unwrap()
        .unwrap();
    let took = produced.elapsed();
    assert!(pushed.result);
    assert!(
        took < Duration::from_secs(1),
        "pushed {took:?} after the produce"
    );

    // The cap's cases of lag.rs on the broker: 3 partitions, threshold 10. 35 records of lag
    // stay 35 (35 / 10 = 3, not > 3); 40 become 30.
    produce(&topic, 0, 11).await; // partition 0: 12
    produce(&topic, 1, 12).await;
    produce(&topic, 2, 11).await; // 35 in all
    assert_eq!(metric(&mut client, &r).await, 35.0);
    produce(&topic, 2, 5).await; // 40
    assert_eq!(metric(&mut client, &r).await, 30.0);

    // Commits count: the group read 12 of partition 0 and 2 of partition 1; 26 left, uncapped.
    commit(&group, &topic, 0, 12);
    commit(&group, &topic, 1, 2);
    assert_eq!(metric(&mut client, &r).await, 26.0);
    // latest: a partition never committed counts 1 (KEDA's rule), so 10 + 1.
    let latest = object(&[
        ("bootstrapServers", brokers()),
        ("consumerGroup", group.clone()),
        ("topic", topic.clone()),
        ("lagThreshold", "10".into()),
    ]);
    assert_eq!(metric(&mut client, &latest).await, 11.0);
    // Everything read: inactive again, and the stream says so.
    commit(&group, &topic, 1, 12);
    commit(&group, &topic, 2, 16);
    assert!(
        !client
            .is_active(r.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let back = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("pushed")
        .unwrap()
        .unwrap();
    assert!(!back.result, "inactive once the group caught up");
    // What an operator sees: the lag last read, the activity last pushed, the reads.
    let labels = format!("consumer_group=\"{group}\",topic=\"{topic}\"");
    assert_eq!(
        sample(&metrics, "zerofn_scaler_lag", &labels).await,
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "zerofn_scaler_active", &labels).await,
        Some(0.0)
    );
    let ok = sample(
        &metrics,
        "zerofn_scaler_reads_total",
        &format!("{labels},outcome=\"ok\""),
    )
    .await;
    assert!(ok >= Some(8.0), "{ok:?}");
}

#[tokio::test]
async fn bad_metadata_is_an_invalid_argument_naming_the_key() {
    let (_process, mut client, metrics) = scaler().await;
    // A valid trigger with one key changed (or, given "", removed).
    let with = |key: &str, value: &str| {
        let mut pairs = vec![
            ("bootstrapServers", brokers()),
            ("consumerGroup", "g".to_string()),
            ("topic", "t".to_string()),
        ];
        pairs.retain(|(k, _)| *k != key);
        if !value.is_empty() {
            pairs.push((key, value.to_string()));
        }
        let pairs: Vec<(&str, String)> = pairs.into_iter().collect();
        object(&pairs)
    };
    let cases = [
        (with("bootstrapServers", ""), "bootstrapServers"),
        (with("lagThreshold", "0"), "lagThreshold"),
        (with("offsetResetPolicy", "oldest"), "offsetResetPolicy"),
    ];
    for (r, key) in cases {
        let e = client.is_active(r.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{key}: {e:?}");
        assert!(
            e.message().contains(&format!("scalerMetadata.{key}")),
            "{}",
            e.message()
        );
        let e = client.stream_is_active(r.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = client.get_metric_spec(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    // A topic the broker does not have: Unavailable, named; the server keeps serving.
    let absent = fresh_id("no-such-topic");
    let missing = trigger("g", &absent, 10);
    let e = client.is_active(missing).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let failed = format!("consumer_group=\"g\",topic=\"{absent}\",outcome=\"error\"");
    assert_eq!(
        sample(&metrics, "zerofn_scaler_reads_total", &failed).await,
        Some(1.0)
    );
}
