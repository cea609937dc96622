//! Building dead-letter records (the original bytes, the failure chain, attempts and times),
//! keeping them in the store (fenced by the holder of the claim) and forwarding them to the
//! function's dead-letter topic.

use tracing::Instrument;

use super::{DeliveryMeta, Intake, key};
use crate::{
    codec,
    dead_letter::{DEAD_LETTER_TYPE, DeadLetter, DeadLetterError, Original},
    event::Context,
    idempotency::{Attempts, Claim, StoredOutput, now_ms},
    outcome::{Failure, FailureKind, Outcome},
    telemetry::TraceContext,
};

/// The error kind of a raw dead letter: the transport's retries ran out.
pub(crate) const RETRIES_EXHAUSTED: &str = "delivery_retries_exhausted";

impl Intake {
    /// A message the transport itself dead-lettered (Dapr after its retry budget, or the local
    /// engine acting like it), delivered back on the function's own dead-letter topic: kept
    /// as a dead-letter record like the runtime's own, with the original bytes, so
    /// `zerofn dlq` lists and replays every dead letter of the function from whichever layer.
    /// The runtime's own records, forwarded to the same topic, are acknowledged as they are.
    pub(crate) async fn record_raw_dead_letter(&self, body: &[u8], meta: DeliveryMeta) -> Outcome {
        let decoded = codec::structured(body).ok();
        if decoded
            .as_ref()
            .is_some_and(|d| d.ctx.ty == DEAD_LETTER_TYPE && d.ctx.source == self.source)
        {
            return Outcome::Duplicate;
        }
        // One record per raw copy, however often the copy is delivered.
        let copy = match (&meta.kafka, &decoded) {
            (Some(k), _) => format!("rawdl:kafka:{}/{}/{}", k.topic, k.partition, k.offset),
            (None, Some(d)) => format!("rawdl:ce:{}\u{1f}{}", d.ctx.source, d.ctx.id),
            (None, None) => format!("rawdl:bytes:{}", String::from_utf8_lossy(body)),
        };
        let copy_key = key::hashed(&copy, None);
        let owner = uuid::Uuid::new_v4().to_string();
        match self
            .store
            .claim(
                &copy_key,
                &owner,
                self.config.lease,
                self.config.idempotency_ttl,
            )
            .await
        {
            Ok(Claim::Acquired { .. }) => {}
            Ok(Claim::InFlight { .. }) => {
                return Outcome::Retry(Failure::new(
                    FailureKind::InFlight,
                    "this raw dead letter is being recorded right now",
                ));
            }
            Ok(Claim::Done { .. } | Claim::Dead { .. }) => return Outcome::Duplicate,
            Err(e) => {
                return Outcome::Retry(Failure::new(FailureKind::StoreUnavailable, e.to_string()));
            }
        }
        // The event's own key (so a replay of it is recognised), and the topic it came from.
        let (ctx, event_key, origin) = match decoded {
            Some(d) => {
                let event_key = key::hashed(
                    &key::identity(&self.manifest.idempotency_key, &d.ctx, &d.data),
                    None,
                );
                let origin = self
                    .manifest
                    .subscriptions
                    .iter()
                    .find(|s| s.types.contains(&d.ctx.ty))
                    .map(|s| (s.pubsub.clone(), s.topic.clone()));
                (Some(d.ctx), event_key, origin)
            }
            None => (None, String::new(), None),
        };
        let attempts = self.attempts_of(&event_key, 1).await;
        let error = DeadLetterError {
            kind: RETRIES_EXHAUSTED.to_string(),
            class: "retryable".to_string(),
            messages: vec![
                "delivery retries exhausted: the transport gave up on the message and \
                 dead-lettered it raw (the function answered RETRY, or could not be reached, \
                 for the whole retry budget)"
                    .to_string(),
            ],
        };
        let meta = DeliveryMeta {
            source_topic: origin.or(meta.source_topic.clone()),
            ..meta
        };
        let record = self.record(ctx.as_ref(), &event_key, error, &meta, &attempts);
        match self.store.dead_letter(&copy_key, &owner, &record).await {
            Ok(true) => {
                self.instruments.dead_lettered(RETRIES_EXHAUSTED);
                tracing::warn!(
                    dead_letter_id = %record.id,
                    event_id = record.event_id.as_deref().unwrap_or(""),
                    event_type = record.event_type.as_deref().unwrap_or(""),
                    "raw dead letter recorded (the transport's retries were exhausted)"
                );
                Outcome::Success
            }
            Ok(false) => Outcome::Duplicate,
            Err(e) => Outcome::Retry(Failure::new(FailureKind::StoreUnavailable, e.to_string())),
        }
    }

    /// The failure facts of `key` for its record: the store's, with at least `attempt` failed
    /// (1 for an event without a key).
    async fn attempts_of(&self, key: &str, attempt: u32) -> Attempts {
        let now = now_ms();
        let at_least = Attempts {
            failed: attempt.max(1),
            first_failure_ms: now,
            last_failure_ms: now,
        };
        if key.is_empty() {
            return at_least;
        }
        match self.store.attempts(key).await {
            Ok(Some(a)) => Attempts {
                failed: a.failed.max(attempt).max(1),
                ..a
            },
            _ => at_least,
        }
    }

    /// A dead-letter record of this function: the event's identity (when it decoded), where it
    /// came from, the original message, why and how often it failed.
    fn record(
        &self,
        ctx: Option<&Context>,
        key: &str,
        error: DeadLetterError,
        meta: &DeliveryMeta,
        attempts: &Attempts,
    ) -> DeadLetter {
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
        DeadLetter {
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
            error,
            attempts: attempts.failed.max(1),
            first_failure: rfc3339(attempts.first_failure_ms),
            last_failure: rfc3339(attempts.last_failure_ms),
            trace_id: ctx.map(|c| c.trace_id().to_string()),
        }
    }

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
        let attempts = self.attempts_of(key, ctx.map_or(1, |c| c.attempt)).await;
        let error = DeadLetterError {
            kind: failure.kind.code().to_string(),
            class: if failure.kind.is_retryable() {
                "retryable"
            } else {
                "permanent"
            }
            .to_string(),
            messages: failure.chain.clone(),
        };
        let record = self.record(ctx, key, error, meta, &attempts);
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
                    job: None,
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
