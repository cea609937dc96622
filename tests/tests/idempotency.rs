//! Exactly-once effects against real stores: SQLite (a temp file), PostgreSQL and Redis
//! (started by `make test` on 127.0.0.1; their URLs come in `ZEROFN_TEST_POSTGRES` and
//! `ZEROFN_TEST_REDIS`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use serde_json::Value;
use zerofn::{
    dlq::DeadLetters,
    testing::{Recorder, TestServer},
};
use zerofn_tests::{
    Calls, FnProcess, MANIFEST, client, effect_rows, fresh_id, fresh_postgres, fresh_redis, probe,
    sqlite_url, stores, structured, task,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

async fn post(url: &str, id: &str, title: &str) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .json(&structured(id, task(title)))
        .send()
        .await
        .unwrap()
}

/// Deliver until the sender is told it is done (202), as a broker would; bounded.
/// Panics on a permanent answer, naming it.
async fn deliver_until_done(url: &str, id: &str, title: &str) -> u16 {
    for _ in 0..200 {
        match client()
            .post(url)
            .header("content-type", "application/cloudevents+json")
            .json(&structured(id, task(title)))
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => return 202,
            Ok(r) if r.status().is_client_error() && r.status() != 409 => {
                let status = r.status().as_u16();
                panic!("{id}: {status} {}", r.text().await.unwrap_or_default());
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{id} was never acknowledged");
}

fn published_for(sink: &Recorder, id: &str) -> usize {
    sink.requests()
        .iter()
        .filter(|r| r.json()["causationid"] == id)
        .count()
}

#[tokio::test]
async fn the_same_event_50_times_sequentially_and_concurrently_runs_once_on_every_store() {
    for (name, url) in stores().await {
        let sink = Recorder::start().await.unwrap();
        let calls = Calls::default();
        let sink_url = sink.url();
        let server = TestServer::start(
            MANIFEST,
            probe(calls.clone()),
            &[("K_SINK", &sink_url), ("ZEROFN_STORE", &url)],
        )
        .await
        .unwrap();

        let sequential = fresh_id("seq");
        for _ in 0..50 {
            assert_eq!(
                post(&server.url(), &sequential, "effect").await.status(),
                202,
                "{name}"
            );
        }

        let concurrent = fresh_id("conc");
        let statuses: Vec<u16> = futures_join(50, |_| {
            let url = server.url();
            let id = concurrent.clone();
            async move { post(&url, &id, "effect").await.status().as_u16() }
        })
        .await;
        assert!(
            statuses.iter().all(|s| *s == 202 || *s == 409),
            "{name}: {statuses:?}"
        );
        assert!(statuses.contains(&202), "{name}: one of them did the work");
        // The ones told "in flight" are redelivered, as a broker would.
        assert_eq!(
            deliver_until_done(&server.url(), &concurrent, "effect").await,
            202
        );

        for id in [&sequential, &concurrent] {
            assert_eq!(
                calls.count_of(id),
                1,
                "{name}: the handler ran once for {id}"
            );
            assert_eq!(published_for(&sink, id), 1, "{name}: one output for {id}");
            if name != "redis" {
                assert_eq!(
                    effect_rows(&url, id).await,
                    1,
                    "{name}: one effect row for {id}"
                );
            }
        }
        server.shutdown().await.unwrap();
    }
}

/// Run `n` copies of a future concurrently.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn retries_run_out_into_a_complete_dead_letter_and_permanent_goes_at_once() {
    let url = sqlite_url();
    let sink = Recorder::start().await.unwrap();
    let calls = Calls::default();
    let sink_url = sink.url();
    let server = TestServer::start(
        MANIFEST,
        probe(calls.clone()),
        &[("K_SINK", &sink_url), ("ZEROFN_STORE", &url)],
    )
    .await
    .unwrap();

    // max_attempts = 3 (tests/function.toml): two retries, then the dead letter.
    let id = fresh_id("retry");
    let first = post(&server.url(), &id, "retry").await;
    assert_eq!(first.status(), 500);
    assert_eq!(post(&server.url(), &id, "retry").await.status(), 500);
    let last = post(&server.url(), &id, "retry").await;
    assert_eq!(last.status(), 422);
    let dead_letter_id = last.headers()["zerofn-dead-letter"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = last.json().await.unwrap();
    assert_eq!(body["error"], "attempts_exhausted");
    // A redelivery after that is acknowledged without running the handler again.
    assert_eq!(post(&server.url(), &id, "retry").await.status(), 202);
    assert_eq!(calls.count_of(&id), 3);

    let record = DeadLetters::open(&url)
        .await
        .unwrap()
        .get(&dead_letter_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.function, "probe");
    assert_eq!(record.function_version, "0.1.0");
    assert_eq!(record.event_id.as_deref(), Some(id.as_str()));
    assert_eq!(record.event_type.as_deref(), Some("todo.task.created"));
    assert_eq!(record.event_source.as_deref(), Some("/tasks"));
    assert_eq!(record.error.kind, "handler_retryable");
    assert_eq!(record.error.class, "retryable");
    assert_eq!(record.error.messages, vec!["database unavailable"]);
    assert_eq!(record.attempts, 3);
    assert!(
        record.first_failure < record.last_failure,
        "{} < {}",
        record.first_failure,
        record.last_failure
    );
    assert_eq!(record.trace_id.as_deref().map(str::len), Some(32));
    let original: Value = serde_json::from_slice(&record.original.bytes()).unwrap();
    assert_eq!(
        original,
        structured(&id, task("retry")),
        "the original bytes"
    );
    assert_eq!(
        record.original.content_type.as_deref(),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        record.original.headers["content-type"],
        "application/cloudevents+json"
    );
    // …and it was forwarded to the dead-letter topic (the sink, on this transport).
    let forwarded: Vec<Value> = sink
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|e| e["type"] == "zerofn.deadletter.recorded")
        .collect();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0]["data"]["id"], dead_letter_id.as_str());

    // Permanent: dead letter at once, one attempt.
    let permanent = fresh_id("perm");
    let response = post(&server.url(), &permanent, "permanent").await;
    assert_eq!(response.status(), 422);
    let id2 = response.headers()["zerofn-dead-letter"]
        .to_str()
        .unwrap()
        .to_string();
    let record = DeadLetters::open(&url)
        .await
        .unwrap()
        .get(&id2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.attempts, record.error.class.as_str()),
        (1, "permanent")
    );

    // A panic is retried and the server keeps serving.
    let panicky = fresh_id("panic");
    assert_eq!(post(&server.url(), &panicky, "panic").await.status(), 500);
    assert_eq!(
        post(&server.url(), &fresh_id("ok"), "fine").await.status(),
        202
    );

    let listed = DeadLetters::open(&url)
        .await
        .unwrap()
        .list(Some("probe"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec![id2.as_str(), dead_letter_id.as_str()],
        "newest first"
    );
    server.shutdown().await.unwrap();
}

/// Crash the real probe process at `point` while it handles one event, restart it on the same
/// store and redeliver: exactly one effect row and exactly one published output.
async fn crash_and_recover(store: &str, point: &str) {
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let env = |crash: Option<&'static str>| {
        let mut env = vec![
            ("K_SINK".to_string(), sink_url.clone()),
            ("ZEROFN_STORE".to_string(), store.to_string()),
            ("ZEROFN_LEASE".to_string(), "1s".to_string()),
            ("ZEROFN_RELAY_INTERVAL".to_string(), "1s".to_string()),
        ];
        if let Some(c) = crash {
            env.push(("ZEROFN_CRASH_AT".to_string(), c.to_string()));
        }
        env
    };
    let id = fresh_id(point);
    let crashing_env = env(Some(match point {
        "after_claim" => "after_claim",
        "after_handler" => "after_handler",
        _ => "after_commit",
    }));
    let pairs: Vec<(&str, &str)> = crashing_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut crashing = FnProcess::start(PROBE, &pairs).await;
    let lost = client()
        .post(crashing.url())
        .header("content-type", "application/cloudevents+json")
        .json(&structured(&id, task("effect")))
        .send()
        .await;
    assert!(
        lost.is_err(),
        "{point}: the process died mid-delivery, so the sender got no answer"
    );
    assert_ne!(
        crashing.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "{point}: aborted"
    );

    let healthy_env = env(None);
    let pairs: Vec<(&str, &str)> = healthy_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let healthy = FnProcess::start(PROBE, &pairs).await;
    assert_eq!(
        deliver_until_done(&healthy.url(), &id, "effect").await,
        202,
        "{point}"
    );
    // Applied once: the healthy process runs the handler again only when the crash came
    // before the commit. On a SQL store the effect row says the same from the other side;
    // Redis holds no handler transaction, so there the handler runs are the evidence.
    let reruns = healthy
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "probe handler invoked" && l["event_id"] == id.as_str())
        .count();
    assert_eq!(
        reruns,
        usize::from(point != "after_commit"),
        "{point}: handler runs after the restart"
    );
    if !store.starts_with("redis") {
        assert_eq!(
            effect_rows(store, &id).await,
            1,
            "{point}: exactly one effect"
        );
    }
    // After a crash past the commit, the redelivery is a duplicate; the output is published
    // by whoever holds the publish right once the dead worker's lease lapsed (that duplicate,
    // or the relay).
    for _ in 0..100 {
        if published_for(&sink, &id) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // a relay round more
    assert_eq!(
        published_for(&sink, &id),
        1,
        "{point}: exactly one published output"
    );
    let dead = DeadLetters::open(store).await.unwrap();
    assert!(
        dead.list(Some("probe"), None, 1000)
            .await
            .unwrap()
            .iter()
            .all(|d| d.event_id.as_deref() != Some(id.as_str())),
        "{point}: not dead-lettered"
    );
}

#[tokio::test]
async fn a_crash_at_any_point_gives_one_effect_and_one_output() {
    for store in [sqlite_url(), fresh_postgres().await, fresh_redis().await] {
        for point in ["after_claim", "after_handler", "after_commit"] {
            crash_and_recover(&store, point).await;
        }
    }
}

#[tokio::test]
async fn a_dead_workers_lease_is_taken_over_after_it_expires_not_before() {
    let store = sqlite_url();
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let lease = Duration::from_secs(3);
    let mut crashing = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", &sink_url),
            ("ZEROFN_STORE", &store),
            ("ZEROFN_LEASE", "3s"),
            ("ZEROFN_CRASH_AT", "after_claim"),
        ],
    )
    .await;
    let id = fresh_id("lease");
    let claimed_at = Instant::now();
    let _ = post_raw(&crashing.url(), &id).await;
    crashing.wait_exit(Duration::from_secs(10)).await;

    let healthy = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", &sink_url),
            ("ZEROFN_STORE", &store),
            ("ZEROFN_LEASE", "3s"),
        ],
    )
    .await;
    // Before the lease ends the dead worker still "holds" the event: the delivery waits for
    // its lease to lapse (no "in flight" answer spending a retry), then takes it over.
    let early = post(&healthy.url(), &id, "effect").await;
    assert_eq!(early.status(), 202, "{}", early.text().await.unwrap());
    assert!(
        claimed_at.elapsed() >= lease,
        "taken over after {:?}, lease {lease:?}",
        claimed_at.elapsed()
    );
    // The takeover counted the dead worker's attempt.
    let handled = healthy
        .log_lines()
        .into_iter()
        .find(|l| l["event_id"] == id.as_str() && l["outcome"] == "success")
        .unwrap();
    assert_eq!(handled["attempt"], 2);
    assert_eq!(effect_rows(&store, &id).await, 1);
}

async fn post_raw(url: &str, id: &str) -> Result<reqwest::Response, reqwest::Error> {
    client()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .json(&structured(id, task("effect")))
        .send()
        .await
}

/// The probe with another idempotency key and a short TTL.
fn probe_keyed_by(key: &str) -> zerofn::ManifestSource {
    let text: &'static str = Box::leak(
        format!(
            "{}\n[idempotency]\nkey = \"{key}\"\n",
            include_str!("../function.toml")
        )
        .into_boxed_str(),
    );
    zerofn::ManifestSource::new(text, "probe", "0.1.0")
}

#[tokio::test]
async fn the_kafka_key_sees_through_daprs_changing_envelope_ids() {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let calls = Calls::default();
    let server = TestServer::start(
        probe_keyed_by("kafka"),
        probe(calls.clone()),
        &[("DAPR_HTTP_PORT", &port)],
    )
    .await
    .unwrap();
    let offset = "77"; // the memory store is per server, so a fixed offset is fine
    for envelope_id in ["dapr-id-1", "dapr-id-2", "dapr-id-3"] {
        let reply: Value = client()
            .post(format!("{}/events/todo.task.created", server.url()))
            .header("content-type", "application/cloudevents+json")
            .header("__topic", "todo.task.created")
            .header("__partition", "1")
            .header("__offset", offset)
            .json(&zerofn_tests::dapr_envelope(
                envelope_id,
                "todo.task.created",
                task("fine"),
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["status"], "SUCCESS");
    }
    assert_eq!(
        calls.count(),
        1,
        "one record at todo.task.created/1/{offset}, however Dapr re-enveloped it"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_business_key_from_data_and_the_record_ttl() {
    let calls = Calls::default();
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let server = TestServer::start(
        probe_keyed_by("data:/task_id"),
        probe(calls.clone()),
        &[("K_SINK", &sink_url), ("ZEROFN_IDEMPOTENCY_TTL", "1s")],
    )
    .await
    .unwrap();
    // Different CloudEvent ids, same task: one run.
    for id in ["a", "b", "c"] {
        assert_eq!(
            post(&server.url(), &fresh_id(id), "fine").await.status(),
            202
        );
    }
    assert_eq!(calls.count(), 1);
    // After the TTL the record is gone: the same key runs again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        post(&server.url(), &fresh_id("d"), "fine").await.status(),
        202
    );
    assert_eq!(calls.count(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_outbox_relay_publishes_what_a_failed_publish_left_behind() {
    for (name, url) in stores().await {
        let sink = Recorder::start().await.unwrap();
        sink.respond_with(500);
        let calls = Calls::default();
        let sink_url = sink.url();
        let server = TestServer::start(
            MANIFEST,
            probe(calls.clone()),
            &[
                ("K_SINK", &sink_url),
                ("ZEROFN_STORE", &url),
                ("ZEROFN_RELAY_INTERVAL", "200ms"),
            ],
        )
        .await
        .unwrap();
        let id = fresh_id("relay");
        let response = post(&server.url(), &id, "effect").await;
        assert_eq!(response.status(), 502, "{name}: the publish failed");
        assert_eq!(published_for(&sink, &id), 1, "{name}: one failed attempt");
        // Nobody redelivers; the sink comes back; the relay publishes the committed output.
        sink.respond_with(204);
        let deadline = Instant::now() + Duration::from_secs(15);
        while published_for(&sink, &id) < 2 {
            assert!(
                Instant::now() < deadline,
                "{name}: the relay never published"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await; // a few more relay rounds
        assert_eq!(
            published_for(&sink, &id),
            2,
            "{name}: published once more, not again"
        );
        assert_eq!(
            calls.count_of(&id),
            1,
            "{name}: the handler did not run again"
        );
        server.shutdown().await.unwrap();
    }
}

/// Redis as the platform chart connects to it: TLS (`rediss://`) and a password. The server's
/// certificate is checked against the roots the process trusts (here `SSL_CERT_FILE`, the test
/// CA): trusted, the same event delivered twice is one output; untrusted (the system's roots
/// only), the function refuses to start, naming the store and the certificate.
#[tokio::test]
async fn redis_over_tls_checks_the_server_certificate_and_keeps_events_once() {
    let url = zerofn_tests::service("ZEROFN_TEST_REDIS_TLS");
    let ca = zerofn_tests::service("ZEROFN_TEST_REDIS_CA");
    let sink = Recorder::start().await.unwrap();
    let sink_url = sink.url();
    let process = FnProcess::start(
        PROBE,
        &[
            ("K_SINK", &sink_url),
            ("ZEROFN_STORE", &url),
            ("SSL_CERT_FILE", &ca),
        ],
    )
    .await;
    let id = fresh_id("tls");
    for _ in 0..2 {
        assert_eq!(deliver_until_done(&process.url(), &id, "effect").await, 202);
    }
    assert_eq!(published_for(&sink, &id), 1, "one output over TLS");
    drop(process);

    let mut untrusted =
        FnProcess::spawn(PROBE, &[("K_SINK", &sink_url), ("ZEROFN_STORE", &url)]).await;
    let code = untrusted.wait_exit(Duration::from_secs(15)).await;
    let stderr = untrusted.stderr_lines().join("\n");
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("rediss://") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("zerofn-test"),
        "the password is not printed: {stderr}"
    );
}
