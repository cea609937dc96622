//! The pipeline's state machine, in-process: the memory store, a recording publisher, no
//! sockets. Processes are kept for signals and crashes (`tests/`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use super::{DeliveryMeta, Intake, key};
use crate::{
    Emit, Event, HandlerError,
    codec::structured_value,
    config::Config,
    contract::Contracts,
    handler_fn,
    idempotency::{Claim, Store, StoredOutput, conformance::output, memory::MemoryStore},
    manifest::{KeyStrategy, Manifest},
    outcome::{FailureKind, Outcome},
    publish::Publisher,
};

const MANIFEST: &str = r#"
[function]
name = "sm"
[[subscriptions]]
topic = "todo.task.created"
[[publishes]]
type = "todo.notification.sent"
[delivery]
max_attempts = 3
"#;

/// Records what is published; fails while `failing` is set.
#[derive(Default)]
struct Recording {
    sent: Mutex<Vec<StoredOutput>>,
    failing: AtomicBool,
}

impl Publisher for Recording {
    fn publish<'a>(
        &'a self,
        event: &'a StoredOutput,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err("the broker is down".into());
            }
            self.sent.lock().unwrap().push(event.clone());
            Ok(())
        })
    }
}

struct Rig {
    intake: Arc<Intake>,
    store: Arc<dyn Store>,
    publisher: Arc<Recording>,
    /// Handler calls that began, and that ran to their end.
    began: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

fn rig(lease: &str) -> Rig {
    let manifest = Arc::new(Manifest::parse(MANIFEST, "sm", "0.1.0").unwrap());
    let env: HashMap<String, String> = [("ZEROFN_STORE", "memory"), ("ZEROFN_LEASE", lease)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Arc::new(Config::from_source(&env).unwrap());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let publisher = Arc::new(Recording::default());
    let (began, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (b, e) = (began.clone(), ended.clone());
    let handler = handler_fn(move |event: Event<Value>| {
        let (b, e) = (b.clone(), e.clone());
        async move {
            b.fetch_add(1, Ordering::SeqCst);
            let title = event.data["title"].as_str().unwrap_or_default().to_string();
            if let Some(ms) = title.strip_prefix("sleep:") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            let result = match title.as_str() {
                "retry" => Err(HandlerError::retryable("database unavailable")),
                "permanent" => Err(HandlerError::permanent("no such user")),
                "emit" => Ok(vec![Emit::new(
                    "todo.notification.sent",
                    &json!({"notification_id": "0193a7c2-a000-7000-8000-000000000001",
                        "user_id": "u-1", "channel": "in_app", "title": "t", "body": "b",
                        "cause": {"event_id": "e", "event_type": "todo.task.created"},
                        "sent_at": "2026-11-23T07:30:01Z"}),
                )?]),
                _ => Ok(vec![]),
            };
            e.fetch_add(1, Ordering::SeqCst);
            result
        }
    });
    let intake = Arc::new(Intake::new(
        manifest,
        Contracts::embedded().unwrap(),
        handler,
        publisher.clone(),
        store.clone(),
        config,
    ));
    Rig {
        intake,
        store,
        publisher,
        began,
        ended,
    }
}

fn event(id: &str, title: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/test", "type": "todo.task.created",
        "datacontenttype": "application/json",
        "data": {"task_id": "0190a0e4-7c3a-7cc0-b1a2-0f3e4d5c6b7a", "user_id": "u-1",
                 "title": title, "priority": "low", "created_at": "2026-12-02T10:00:00Z"}
    })
}

impl Rig {
    async fn deliver(&self, ev: &Value) -> Outcome {
        self.intake
            .process(
                structured_value(ev.clone()),
                &["todo.task.created".to_string()],
                DeliveryMeta::default(),
            )
            .await
    }

    fn key_of(&self, id: &str) -> String {
        let mut ctx = crate::Context::test("todo.task.created");
        ctx.id = id.into();
        ctx.source = "/test".into();
        key::hashed(
            &key::identity(&KeyStrategy::SourceId, &ctx, &json!({})),
            None,
        )
    }

    /// `key` completed by `owner` with one unsent output, as a worker that died after its
    /// commit leaves it (its lease, the publish right, ends after `lease`).
    async fn done_unpublished(&self, key: &str, owner: &str, lease: Duration, ttl: Duration) {
        self.store.claim(key, owner, lease, ttl).await.unwrap();
        let completed = self
            .store
            .complete(key, owner, &[output("out-1")], None, ttl)
            .await
            .unwrap();
        assert!(completed);
    }

    fn published(&self) -> usize {
        self.publisher.sent.lock().unwrap().len()
    }
}

fn dead_letter_id(o: &Outcome) -> String {
    match o {
        Outcome::DeadLettered { id, .. } => id.clone(),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[tokio::test]
async fn handled_once_then_duplicates() {
    let r = rig("6s");
    let ev = event("a-1", "emit");
    assert_eq!(r.deliver(&ev).await, Outcome::Success);
    assert_eq!(r.deliver(&ev).await, Outcome::Duplicate);
    assert_eq!(r.began.load(Ordering::SeqCst), 1);
    assert_eq!(r.published(), 1);
}

#[tokio::test]
async fn retryable_failures_run_out_into_one_dead_letter() {
    let r = rig("6s");
    let ev = event("a-2", "retry");
    for _ in 0..2 {
        assert!(
            matches!(r.deliver(&ev).await, Outcome::Retry(f) if f.kind == FailureKind::HandlerRetryable)
        );
    }
    let last = r.deliver(&ev).await;
    assert!(
        matches!(
            &last,
            Outcome::DeadLettered {
                exhausted: true,
                ..
            }
        ),
        "{last:?}"
    );
    let record = r
        .store
        .dead_letter_by_id(&dead_letter_id(&last))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.attempts, 3);
    assert_eq!(record.key, r.key_of("a-2"));
    assert_eq!(r.deliver(&ev).await, Outcome::Duplicate);
    assert_eq!(r.began.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn permanent_failures_are_dead_lettered_at_once() {
    let r = rig("6s");
    let o = r.deliver(&event("a-3", "permanent")).await;
    assert!(
        matches!(&o, Outcome::DeadLettered { exhausted: false, failure, .. } if failure.kind == FailureKind::HandlerPermanent),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_takeover_past_max_attempts_is_dead_lettered_without_running() {
    // Three workers died holding the event (the handler kills its process every time).
    let r = rig("1s");
    let key = r.key_of("a-4");
    let ttl = Duration::from_secs(60);
    for (n, owner) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let claim = r
            .store
            .claim(&key, owner, Duration::from_millis(30), ttl)
            .await
            .unwrap();
        assert_eq!(
            claim,
            Claim::Acquired {
                attempt: n as u32 + 1
            }
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let o = r.deliver(&event("a-4", "ok")).await;
    assert!(
        matches!(&o, Outcome::DeadLettered { exhausted: true, failure, .. } if failure.kind == FailureKind::WorkerLost),
        "{o:?}"
    );
    assert_eq!(r.began.load(Ordering::SeqCst), 0, "not run a fourth time");
    let record = r
        .store
        .dead_letter_by_id(&dead_letter_id(&o))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.attempts, 3);
}

#[tokio::test]
async fn a_dead_holders_lease_is_waited_for_not_answered_in_flight() {
    let r = rig("1s");
    let key = r.key_of("a-5");
    r.store
        .claim(
            &key,
            "dead",
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    // Without the wait this delivery would answer "in flight" and spend a retry.
    assert_eq!(r.deliver(&event("a-5", "ok")).await, Outcome::Success);
    assert_eq!(r.began.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_live_holder_renews_its_lease_past_many_leases() {
    let r = rig("1s");
    let ev = event("a-6", "sleep:3500");
    let first = {
        let (intake, ev) = (r.intake.clone(), ev.clone());
        tokio::spawn(async move {
            intake
                .process(
                    structured_value(ev),
                    &["todo.task.created".into()],
                    DeliveryMeta::default(),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past the first lease: the holder renewed, so the second delivery waits once, then retries.
    let second = r.deliver(&ev).await;
    assert!(
        matches!(&second, Outcome::Retry(f) if f.kind == FailureKind::InFlight),
        "{second:?}"
    );
    assert_eq!(first.await.unwrap(), Outcome::Success);
    assert_eq!(r.began.load(Ordering::SeqCst), 1, "never run twice");
}

#[tokio::test]
async fn abandoned_attempts_stop_their_handler_and_release_the_claim() {
    let r = rig("6s");
    let ev = event("a-7", "sleep:10000");
    let running = {
        let (intake, ev) = (r.intake.clone(), ev.clone());
        tokio::spawn(async move {
            intake
                .process(
                    structured_value(ev),
                    &["todo.task.created".into()],
                    DeliveryMeta::default(),
                )
                .await
        })
    };
    while r.began.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.intake.abandon();
    let o = tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&o, Outcome::Retry(f) if f.kind == FailureKind::Draining),
        "{o:?}"
    );
    // Released: the next delivery takes over at once, as attempt 2.
    let claim = r
        .store
        .claim(
            &r.key_of("a-7"),
            "next",
            Duration::from_secs(6),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(claim, Claim::Acquired { attempt: 2 });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.ended.load(Ordering::SeqCst), 0, "the handler was aborted");
}

#[tokio::test]
async fn a_done_record_with_unsent_outputs_is_a_duplicate_and_the_relays_job() {
    // A worker completed, then died before publishing: its lease still holds the publish right.
    let r = rig("1s");
    let key = r.key_of("a-8");
    let ttl = Duration::from_secs(60);
    r.done_unpublished(&key, "dead", Duration::from_millis(400), ttl)
        .await;
    assert_eq!(r.deliver(&event("a-8", "emit")).await, Outcome::Duplicate);
    assert_eq!(
        r.published(),
        0,
        "the publish right is still the dead worker's"
    );
    assert_eq!(r.intake.relay_once().await, 0);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(r.intake.relay_once().await, 1);
    assert_eq!(r.intake.relay_once().await, 0, "published once");
    assert_eq!(r.began.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_duplicate_publishes_unsent_outputs_once_the_right_is_free() {
    let r = rig("1s");
    r.publisher.failing.store(true, Ordering::SeqCst);
    let ev = event("a-9", "emit");
    assert!(
        matches!(r.deliver(&ev).await, Outcome::Retry(f) if f.kind == FailureKind::PublishFailed)
    );
    r.publisher.failing.store(false, Ordering::SeqCst);
    // The failed publisher released its right: the redelivery publishes, without the handler.
    assert_eq!(r.deliver(&ev).await, Outcome::Duplicate);
    assert_eq!(r.published(), 1);
    assert_eq!(r.began.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_relay_backs_off_a_key_it_could_not_publish() {
    let r = rig("1s");
    let key = r.key_of("a-13");
    r.done_unpublished(
        &key,
        "dead",
        Duration::from_millis(10),
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.publisher.failing.store(true, Ordering::SeqCst);
    assert_eq!(r.intake.relay_once().await, 0, "the broker is down");
    r.publisher.failing.store(false, Ordering::SeqCst);
    // It keeps the right for a lease: the next rounds reach other keys first.
    assert_eq!(r.intake.relay_once().await, 0, "backing off");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(r.intake.relay_once().await, 1);
}

#[tokio::test]
async fn a_replica_flushes_its_outbox_before_it_exits() {
    // A dead worker's completed event with its output unsent: the exiting replica waits for
    // the right to lapse and publishes it, since nothing would wake the function later.
    let r = rig("1s");
    let key = r.key_of("a-14");
    let ttl = Duration::from_secs(60);
    r.done_unpublished(&key, "dead", Duration::from_millis(300), ttl)
        .await;
    r.intake
        .flush_outbox(std::time::Instant::now() + Duration::from_secs(30))
        .await;
    assert_eq!(r.published(), 1, "published before exiting");
    // Nothing left: a second flush returns with nothing to do.
    r.intake
        .flush_outbox(std::time::Instant::now() + Duration::from_secs(30))
        .await;
    assert_eq!(r.published(), 1, "once");
}

#[tokio::test]
async fn a_replica_does_not_wait_on_a_broker_that_is_down() {
    // The publish fails: the flush gives up at once (the next replica's relay retries)
    // rather than holding the replica for its whole grace.
    let r = rig("1s");
    let key = r.key_of("a-15");
    let ttl = Duration::from_secs(60);
    r.done_unpublished(&key, "dead", Duration::from_millis(10), ttl)
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.publisher.failing.store(true, Ordering::SeqCst);
    let flushed = tokio::time::timeout(
        Duration::from_secs(60),
        r.intake
            .flush_outbox(std::time::Instant::now() + Duration::from_secs(600)),
    )
    .await;
    assert!(
        flushed.is_ok(),
        "returned on the failure, not at the deadline"
    );
    assert_eq!(r.published(), 0);
    assert_eq!(
        r.store.keys_with_unsent(i64::MAX, 10).await.unwrap(),
        vec![key],
        "still unsent, for the next relay"
    );
}

#[tokio::test]
async fn the_relay_never_revives_an_expired_record() {
    let r = rig("1s");
    let key = r.key_of("a-10");
    let short = Duration::from_millis(100);
    r.done_unpublished(&key, "w", Duration::from_millis(10), short)
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(r.intake.relay_once().await, 0);
    assert_eq!(
        r.store
            .claim(&key, "x", Duration::from_secs(1), short)
            .await
            .unwrap(),
        Claim::Acquired { attempt: 1 },
        "no in-flight row left behind"
    );
}

#[tokio::test]
async fn dead_lettering_is_fenced_by_the_holder() {
    let r = rig("1s");
    let key = r.key_of("a-12");
    let ttl = Duration::from_secs(60);
    r.store
        .claim(&key, "old", Duration::from_millis(10), ttl)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.store
        .claim(&key, "new", Duration::from_secs(5), ttl)
        .await
        .unwrap();
    assert!(r.store.complete(&key, "new", &[], None, ttl).await.unwrap());
    let o = r.deliver(&event("a-12", "ok")).await;
    assert_eq!(o, Outcome::Duplicate);
    // The stale holder cannot overwrite `done`.
    let stale = crate::dead_letter::DeadLetter::sample("dl-stale", "sm", &key);
    assert!(!r.store.dead_letter(&key, "old", &stale).await.unwrap());
    assert_eq!(
        r.store
            .claim(&key, "x", Duration::from_secs(1), ttl)
            .await
            .unwrap(),
        Claim::Done { unsent: vec![] }
    );
    assert!(
        r.store
            .dead_letter_by_id("dl-stale")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_forged_replayof_cannot_reapply_a_genuine_one_applies_once() {
    let r = rig("6s");
    let applied = event("b-1", "ok");
    assert_eq!(r.deliver(&applied).await, Outcome::Success);
    let mut forged = applied.clone();
    forged["replayof"] = json!("0190a0e4-0000-7000-8000-000000000000");
    assert_eq!(
        r.deliver(&forged).await,
        Outcome::Duplicate,
        "unknown dead letter"
    );
    // A real dead letter of another event does not open this one either.
    let other = r.deliver(&event("b-2", "permanent")).await;
    forged["replayof"] = json!(dead_letter_id(&other));
    assert_eq!(
        r.deliver(&forged).await,
        Outcome::Duplicate,
        "dead letter of another event"
    );
    assert_eq!(r.began.load(Ordering::SeqCst), 2);
    // The genuine replay of b-2 (fixed up), as `zerofn dlq replay` sends it: applied once.
    let mut replay = event("b-2", "ok");
    replay["replayof"] = json!(dead_letter_id(&other));
    assert_eq!(r.deliver(&replay).await, Outcome::Success);
    assert_eq!(r.deliver(&replay).await, Outcome::Duplicate);
    assert_eq!(r.began.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn raw_dead_letters_are_recorded_once_and_replay_once() {
    let r = rig("6s");
    let raw = event("c-1", "ok");
    let body = serde_json::to_vec(&raw).unwrap();
    let meta = || DeliveryMeta {
        original: Some(crate::dead_letter::Original::new(
            Some("application/cloudevents+json".into()),
            &body,
            Default::default(),
        )),
        ..DeliveryMeta::default()
    };
    assert_eq!(
        r.intake.record_raw_dead_letter(&body, meta()).await,
        Outcome::Success
    );
    assert_eq!(
        r.intake.record_raw_dead_letter(&body, meta()).await,
        Outcome::Duplicate,
        "one record per raw copy"
    );
    let listed = r
        .store
        .dead_letters(&crate::idempotency::DeadLetterFilter {
            function: Some("sm".into()),
            since_ms: None,
            offset: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let d = &listed[0];
    assert_eq!(d.error.kind, "delivery_retries_exhausted");
    assert_eq!(d.key, r.key_of("c-1"));
    assert_eq!(d.topic.as_deref(), Some("todo.task.created"));
    assert_eq!(d.event_id.as_deref(), Some("c-1"));
    // The runtime's own records on the same topic are acknowledged, not recorded again.
    let own = json!({"specversion": "1.0", "id": "x", "source": "/zerofn/sm",
        "type": "zerofn.deadletter.recorded", "data": {}});
    assert_eq!(
        r.intake
            .record_raw_dead_letter(&serde_json::to_vec(&own).unwrap(), DeliveryMeta::default())
            .await,
        Outcome::Duplicate
    );
    // Replayed (the event never ran): applied once.
    let mut replay = raw.clone();
    replay["replayof"] = json!(d.id);
    assert_eq!(r.deliver(&replay).await, Outcome::Success);
    assert_eq!(r.deliver(&replay).await, Outcome::Duplicate);
    assert_eq!(r.began.load(Ordering::SeqCst), 1);
}

/// The Dapr transport's side of the same machine, through `testing::router` and `oneshot`:
/// the function subscribes to its own dead-letter topic and acknowledges what it records.
#[tokio::test]
async fn the_dapr_app_records_raw_dead_letters_on_its_own_route() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let app = crate::testing::router(
        crate::ManifestSource::new(MANIFEST, "sm", "0.1.0"),
        handler_fn(|_: Event<Value>| async { Ok::<_, HandlerError>(()) }),
        &[("DAPR_HTTP_PORT", "9")],
    )
    .await
    .unwrap();
    // The health probe names the function and the process (supervisors check who answered).
    let health = http::Request::get("/healthz")
        .body(axum::body::Body::empty())
        .unwrap();
    let body = app.clone().oneshot(health).await.unwrap().into_body();
    let health: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(health["function"], "sm");
    assert_eq!(health["pid"], std::process::id());
    let get = http::Request::get("/dapr/subscribe")
        .body(axum::body::Body::empty())
        .unwrap();
    let body = app.clone().oneshot(get).await.unwrap().into_body();
    let subs: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    let own = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["topic"] == "deadletter.sm")
        .unwrap_or_else(|| panic!("{subs}"));
    assert_eq!(own["routes"]["default"], crate::manifest::DEAD_LETTER_ROUTE);
    assert!(
        own.get("deadLetterTopic").is_none(),
        "no dead-letter topic of its own: {own}"
    );
    let mut raw = event("d-1", "ok");
    raw["topic"] = json!("deadletter.sm");
    raw["pubsubname"] = json!("kafka-pubsub");
    for _ in 0..2 {
        let post = http::Request::post(crate::manifest::DEAD_LETTER_ROUTE)
            .header("content-type", "application/cloudevents+json")
            .body(axum::body::Body::from(raw.to_string()))
            .unwrap();
        let response = app.clone().oneshot(post).await.unwrap();
        assert_eq!(response.status(), 200);
        let reply: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(reply["status"], "SUCCESS", "recorded, then a duplicate");
    }
}

/// SQL routes need a SQL store: refused at start, naming what to declare.
#[tokio::test]
async fn sql_routes_without_a_sql_store_do_not_start() {
    fn routes(_pool: sqlx::AnyPool) -> axum::Router {
        axum::Router::new()
    }
    let err = crate::testing::router(
        crate::ManifestSource::new(MANIFEST, "sm", "0.1.0").sql_routes(routes),
        handler_fn(|_: Event<Value>| async { Ok::<_, HandlerError>(()) }),
        &[("DAPR_HTTP_PORT", "9"), ("ZEROFN_STORE", "memory")],
    )
    .await
    .unwrap_err();
    assert!(err.is_usage());
    assert!(
        err.to_string().contains("declare [store] sql = true"),
        "{err}"
    );
}
