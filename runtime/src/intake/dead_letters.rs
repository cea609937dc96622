//! Building dead-letter records (the original bytes, the failure chain, attempts and times),
//! keeping them in the store (fenced by the holder of the claim) and forwarding them to the
//! function's dead-letter topic.

use tracing::Instrument;

use super::{DeliveryMeta, Intake};
use crate::{
    dead_letter::{DEAD_LETTER_TYPE, DeadLetter, DeadLetterError, Original},
    event::Context,
    idempotency::{Attempts, StoredOutput, now_ms},
    outcome::{Failure, FailureKind, Outcome},
    telemetry::TraceContext,
};

impl Intake {
    /// Keep a dead-letter record in the store and forward it to the dead-letter topic.
    pub(super) async fn dead_letter(
        &self,
        ctx: Option<&Context>,
        key: &str,
        owner: &str,
        failure: Failure,
        meta: &DeliveryMeta,
        exhausted: bool,
    ) -> Outcome {
        let now = now_ms();
        let attempts = match (key.is_empty(), ctx) {
            (false, Some(c)) => self.store.attempts(key).await.ok().flatten().map_or(
                Attempts {
                    failed: c.attempt,
                    first_failure_ms: now,
                    last_failure_ms: now,
                },
                |a| Attempts {
                    failed: a.failed.max(c.attempt),
                    ..a
                },
            ),
            _ => Attempts {
                failed: 1,
                first_failure_ms: now,
                last_failure_ms: now,
            },
        };
        let rfc3339 = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_else(chrono::Utc::now)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let (pubsub, topic) = match (&meta.source_topic, ctx.and_then(|c| c.kafka.as_ref())) {
            (Some((p, t)), _) => (Some(p.clone()), Some(t.clone())),
            (None, Some(k)) => (None, Some(k.topic.clone())),
            (None, None) => (None, None),
        };
        let record = DeadLetter {
            id: uuid::Uuid::now_v7().to_string(),
            function: self.manifest.name.clone(),
            function_version: self.manifest.version.clone(),
            key: key.to_string(),
            event_id: ctx.map(|c| c.id.clone()),
            event_type: ctx.map(|c| c.ty.clone()),
            event_source: ctx.map(|c| c.source.clone()),
            topic,
            pubsub,
            original: meta
                .original
                .clone()
                .unwrap_or_else(|| Original::new(None, b"", Default::default())),
            error: DeadLetterError {
                kind: failure.kind.code().to_string(),
                class: if failure.kind.is_retryable() {
                    "retryable"
                } else {
                    "permanent"
                }
                .to_string(),
                messages: failure.chain.clone(),
            },
            attempts: attempts.failed.max(1),
            first_failure: rfc3339(attempts.first_failure_ms),
            last_failure: rfc3339(attempts.last_failure_ms),
            trace_id: ctx.map(|c| c.trace_id().to_string()),
        };
        let dead_letter_span = tracing::info_span!("zerofn.dead_letter", otel.name = "dead letter", zerofn.dead_letter_id = %record.id);
        match self
            .store
            .dead_letter(key, owner, &record)
            .instrument(dead_letter_span)
            .await
        {
            Ok(true) => {}
            // Fenced: another delivery holds the event now and decides its fate.
            Ok(false) => {
                return Outcome::Retry(Failure::new(
                    FailureKind::InFlight,
                    format!(
                        "another delivery took the event over before this one could dead-letter it ({})",
                        failure.message
                    ),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record a dead letter; leaving it to the transport's dead-letter path");
                return Outcome::Drop(failure);
            }
        }
        self.instruments.dead_lettered(failure.kind.code());
        self.forward_dead_letter(&record, ctx).await;
        Outcome::DeadLettered {
            failure,
            id: record.id,
            exhausted,
        }
    }

    /// Publish the record to the function's dead-letter topic. The store already holds it, so
    /// a failure here is logged, not fatal.
    async fn forward_dead_letter(&self, record: &DeadLetter, ctx: Option<&Context>) {
        let traceparent = ctx.map_or_else(
            || TraceContext::root().to_string(),
            |c| c.traceparent.clone(),
        );
        let built = <cloudevents::EventBuilderV10 as cloudevents::EventBuilder>::new()
            .id(record.id.clone())
            .source(self.source.clone())
            .ty(DEAD_LETTER_TYPE)
            .time(chrono::Utc::now())
            .data(
                "application/json",
                serde_json::to_value(record).unwrap_or_default(),
            )
            .extension("traceparent", traceparent.clone());
        let body = cloudevents::EventBuilder::build(built)
            .map_err(|e| e.to_string())
            .and_then(|ev| serde_json::to_string(&ev).map_err(|e| e.to_string()));
        let result = match body {
            Ok(body) => {
                let out = StoredOutput {
                    seq: 0,
                    event_id: record.id.clone(),
                    event_type: DEAD_LETTER_TYPE.to_string(),
                    pubsub: record
                        .pubsub
                        .clone()
                        .unwrap_or_else(|| self.default_pubsub()),
                    topic: self.manifest.delivery.dead_letter_topic.clone(),
                    body,
                    traceparent,
                    partition_key: None,
                };
                self.publisher.publish(&out).await
            }
            Err(e) => Err(e),
        };
        if let Err(reason) = result {
            self.instruments
                .publish_failed(&self.manifest.delivery.dead_letter_topic);
            tracing::warn!(dead_letter_id = %record.id, %reason, "dead letter kept in the store but not forwarded to the dead-letter topic");
        }
    }

    fn default_pubsub(&self) -> String {
        self.manifest
            .subscriptions
            .first()
            .map_or_else(|| "kafka-pubsub".to_string(), |s| s.pubsub.clone())
    }
}
