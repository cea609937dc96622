//! Event intake: from a decoded CloudEvent to an [`Outcome`]. The fixed pipeline is
//! claim (idempotency) → type check → contract → typed decode → handler (panics caught,
//! time-bounded, in a transaction with SQL stores) → contract check of emitted events →
//! complete (record + outbox, one commit) → publish → mark sent. Failures are retried until
//! `delivery.max_attempts`, then — and at once for permanent failures — dead-lettered.
//! Transports turn the outcome into their reply.

pub(crate) mod decode;

use serde_json::Value;
use std::{collections::BTreeSet, future::Future, pin::Pin, sync::Arc, time::Instant};
use tracing::Instrument;

use crate::{
    Transaction,
    config::{Config, CrashPoint},
    contract::Contracts,
    dead_letter::{DEAD_LETTER_TYPE, DeadLetter, DeadLetterError, Original},
    emit::Emit,
    event::{Context, Event, EventData, KafkaCoordinates},
    handler::Handler,
    idempotency::{Attempts, Claim, Store, StoredOutput, now_ms},
    instruments::Instruments,
    manifest::{KeyStrategy, Manifest},
    telemetry::TraceContext,
    transport::Publisher,
};
pub(crate) use decode::Decoded;

/// Why a delivery did not succeed. The code is stable: it is logged, returned to senders and
/// (with the reliability layer) stored in dead-letter records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Unauthorized,
    Malformed,
    UnsupportedMediaType,
    TooLarge,
    UnknownType,
    SchemaViolation,
    UndecodableData,
    HandlerPermanent,
    HandlerRetryable,
    HandlerPanic,
    HandlerTimeout,
    PublishFailed,
    Draining,
    InFlight,
    StoreUnavailable,
}

impl FailureKind {
    pub(crate) fn code(self) -> &'static str {
        match self {
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Malformed => "malformed_event",
            FailureKind::UnsupportedMediaType => "unsupported_media_type",
            FailureKind::TooLarge => "body_too_large",
            FailureKind::UnknownType => "unknown_event_type",
            FailureKind::SchemaViolation => "schema_violation",
            FailureKind::UndecodableData => "undecodable_data",
            FailureKind::HandlerPermanent => "handler_permanent",
            FailureKind::HandlerRetryable => "handler_retryable",
            FailureKind::HandlerPanic => "handler_panic",
            FailureKind::HandlerTimeout => "handler_timeout",
            FailureKind::PublishFailed => "publish_failed",
            FailureKind::Draining => "draining",
            FailureKind::InFlight => "in_flight",
            FailureKind::StoreUnavailable => "store_unavailable",
        }
    }

    /// Whether a new delivery of the same bytes could succeed.
    pub(crate) fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::HandlerRetryable
                | FailureKind::HandlerPanic
                | FailureKind::HandlerTimeout
                | FailureKind::PublishFailed
                | FailureKind::Draining
                | FailureKind::InFlight
                | FailureKind::StoreUnavailable
        )
    }
}

/// A failure with its human-readable reason and, for handler errors, the cause chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) chain: Vec<String>,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            kind,
            chain: vec![message.clone()],
            message,
        }
    }
}

/// What became of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled now.
    Success,
    /// Handled (or dead-lettered) before: acknowledged without running the handler.
    Duplicate,
    /// Deliver again.
    Retry(Failure),
    /// Given up: the dead-letter record `id` holds the event; acknowledge it.
    DeadLettered {
        failure: Failure,
        id: String,
        /// True when retryable failures used up `max_attempts`.
        exhausted: bool,
    },
    /// Given up, but the dead letter could not be recorded: the transport's own dead-letter
    /// path (Dapr's `DROP` → deadLetterTopic, Knative's DLS) must keep it.
    Drop(Failure),
}

impl Outcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Duplicate => "duplicate",
            Outcome::Retry(_) => "retry",
            Outcome::DeadLettered { .. } => "dead_letter",
            Outcome::Drop(_) => "drop",
        }
    }
}

/// Facts the transport knows about a delivery besides the event itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeliveryMeta {
    /// The HTTP `traceparent` of this hop.
    pub(crate) hop_traceparent: Option<String>,
    pub(crate) kafka: Option<KafkaCoordinates>,
    /// The pub/sub component and topic the event came from (Dapr).
    pub(crate) source_topic: Option<(String, String)>,
    /// The message as it arrived, for the dead-letter record.
    pub(crate) original: Option<Original>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A [`Handler`] with its data type erased, so the pipeline is not generic.
trait ErasedHandler: Send + Sync {
    fn call(
        &self,
        ctx: Context,
        data: Value,
        tx: Option<Transaction>,
    ) -> BoxFuture<Result<Vec<Emit>, Failure>>;
}

impl<H: Handler> ErasedHandler for H {
    fn call(
        &self,
        ctx: Context,
        data: Value,
        tx: Option<Transaction>,
    ) -> BoxFuture<Result<Vec<Emit>, Failure>> {
        let data = match H::Data::from_event(&ctx.ty, data) {
            Ok(d) => d,
            Err(e) => {
                let f = Failure::new(
                    FailureKind::UndecodableData,
                    format!("data does not decode into the handler's input type: {e}"),
                );
                return Box::pin(async move { Err(f) });
            }
        };
        let fut = Handler::call(self, Event { data, ctx, tx });
        Box::pin(async move {
            fut.await.map_err(|e| {
                let kind = if e.is_permanent() {
                    FailureKind::HandlerPermanent
                } else {
                    FailureKind::HandlerRetryable
                };
                Failure {
                    kind,
                    message: e.to_string(),
                    chain: e.messages(),
                }
            })
        })
    }
}

/// The pipeline shared by every transport.
pub(crate) struct Intake {
    manifest: Arc<Manifest>,
    /// Every type any subscription accepts (the HTTP transport's single route takes them all).
    consumed: Vec<String>,
    contracts: Contracts,
    handler: Arc<dyn ErasedHandler>,
    publisher: Arc<dyn Publisher>,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    source: String,
    instruments: Instruments,
}

impl Intake {
    pub(crate) fn new<H: Handler>(
        manifest: Arc<Manifest>,
        contracts: Contracts,
        handler: H,
        publisher: Arc<dyn Publisher>,
        store: Arc<dyn Store>,
        config: Arc<Config>,
    ) -> Self {
        let consumed: Vec<String> = manifest.consumed_types().map(str::to_string).collect();
        Intake {
            source: format!("/zerofn/{}", manifest.name),
            instruments: Instruments::new(&manifest.name, &consumed, Instant::now()),
            consumed,
            manifest,
            contracts,
            handler: Arc::new(handler),
            publisher,
            store,
            config,
        }
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub(crate) fn consumed_types(&self) -> &[String] {
        &self.consumed
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    /// Run one event through the pipeline, in one consumer span, and log one line about it.
    pub(crate) async fn process(
        &self,
        input: Result<Decoded, Failure>,
        accepted: &[String],
        meta: DeliveryMeta,
    ) -> Outcome {
        let span = tracing::info_span!(
            "zerofn.process",
            otel.name = tracing::field::Empty,
            otel.kind = "consumer",
            messaging.system = if meta.source_topic.is_some() { "dapr" } else { "cloudevents" },
            messaging.operation.type = "process",
            messaging.destination.name = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
            cloudevents.event_id = tracing::field::Empty,
            cloudevents.event_type = tracing::field::Empty,
            cloudevents.event_source = tracing::field::Empty,
            zerofn.function = %self.manifest.name,
            zerofn.attempt = tracing::field::Empty,
            zerofn.idempotency = tracing::field::Empty,
            zerofn.outcome = tracing::field::Empty,
        );
        // Parent first (the span must not have started): the hop's context, else the event's.
        let parent = match &input {
            Ok(d) => [meta.hop_traceparent.as_deref(), d.trace_ext.as_deref()]
                .into_iter()
                .flatten()
                .find(|tp| TraceContext::parse(tp).is_some())
                .map(|tp| (tp.to_string(), d.ctx.tracestate.clone())),
            Err(_) => meta
                .hop_traceparent
                .clone()
                .filter(|tp| TraceContext::parse(tp).is_some())
                .map(|tp| (tp, None)),
        };
        if let Some((tp, state)) = &parent {
            crate::telemetry::set_parent(&span, tp, state.as_deref());
        }
        let topic = meta
            .source_topic
            .as_ref()
            .map(|(_, t)| t.clone())
            .or_else(|| meta.kafka.as_ref().map(|k| k.topic.clone()));
        span.record(
            "otel.name",
            format!(
                "{} process",
                topic.as_deref().unwrap_or(&self.manifest.name)
            ),
        );
        if let Some(t) = &topic {
            span.record("messaging.destination.name", t.as_str());
        }
        let body = async {
            let started = Instant::now();
            let in_flight = self.instruments.in_flight();
            in_flight.increment(1.0);
            self.instruments
                .received(input.as_ref().ok().map(|d| d.ctx.ty.as_str()));
            if let Some(cold) = self.instruments.cold_start() {
                tracing::info!(
                    cold_start_seconds = cold.as_secs_f64(),
                    "cold start: first event since the process started"
                );
            }
            let (outcome, ctx) = match input {
                Err(f) => (self.dead_letter(None, "", f, &meta, false).await, None),
                Ok(decoded) => {
                    let mut ctx = decoded.ctx;
                    let current = tracing::Span::current();
                    current.record("cloudevents.event_id", ctx.id.as_str());
                    current.record("messaging.message.id", ctx.id.as_str());
                    current.record("cloudevents.event_type", ctx.ty.as_str());
                    current.record("cloudevents.event_source", ctx.source.as_str());
                    ctx.kafka = meta.kafka.clone();
                    ctx.traceparent =
                        crate::telemetry::traceparent_of(&current).unwrap_or_else(|| {
                            TraceContext::continue_from([
                                meta.hop_traceparent.as_deref(),
                                decoded.trace_ext.as_deref(),
                            ])
                            .to_string()
                        });
                    let outcome = self.claimed(&mut ctx, decoded.data, accepted, &meta).await;
                    (outcome, Some(ctx))
                }
            };
            tracing::Span::current().record("zerofn.outcome", outcome.label());
            log_outcome(&self.manifest.name, &outcome, ctx.as_ref(), started);
            self.instruments
                .handled(ctx.as_ref().map(|c| c.ty.as_str()), outcome.label());
            if let (
                Outcome::Success,
                Some(Context {
                    ty, time: Some(t), ..
                }),
            ) = (&outcome, ctx.as_ref())
            {
                self.instruments.latency(ty, *t);
            }
            in_flight.decrement(1.0);
            outcome
        };
        body.instrument(span).await
    }

    /// The idempotency key of an event.
    fn key(&self, ctx: &Context, data: &Value) -> String {
        let base = match (&self.manifest.idempotency_key, &ctx.kafka) {
            (KeyStrategy::Kafka, Some(k)) => {
                format!("kafka:{}/{}/{}", k.topic, k.partition, k.offset)
            }
            (KeyStrategy::Data(pointer), _) => match data.pointer(pointer) {
                Some(Value::String(s)) => format!("data:{s}"),
                Some(v) if !v.is_null() => format!("data:{v}"),
                _ => format!("ce:{}\u{1f}{}", ctx.source, ctx.id),
            },
            _ => format!("ce:{}\u{1f}{}", ctx.source, ctx.id),
        };
        // A replay of a dead letter is a new event for idempotency, once per dead letter.
        match ctx.extension("replayof") {
            Some(id) => format!("{base}\u{1f}replayof:{id}"),
            None => base,
        }
    }

    async fn claimed(
        &self,
        ctx: &mut Context,
        data: Value,
        accepted: &[String],
        meta: &DeliveryMeta,
    ) -> Outcome {
        let key = self.key(ctx, &data);
        let owner = uuid::Uuid::new_v4().to_string();
        let claiming = Instant::now();
        let claimed = self
            .store
            .claim(&key, &owner, self.config.lease, self.config.idempotency_ttl)
            .instrument(tracing::info_span!(
                "zerofn.claim",
                otel.name = "idempotency claim"
            ))
            .await;
        self.instruments.store_op("claim", claiming.elapsed());
        let claim = match claimed {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Retry(Failure::new(FailureKind::StoreUnavailable, e.to_string()));
            }
        };
        let idempotency = match &claim {
            Claim::Acquired { .. } => "first",
            Claim::InFlight => "in_flight",
            Claim::Done { .. } | Claim::Dead { .. } => "duplicate",
        };
        tracing::Span::current().record("zerofn.idempotency", idempotency);
        let attempt = match claim {
            Claim::InFlight => {
                return Outcome::Retry(Failure::new(
                    FailureKind::InFlight,
                    "another delivery of this event is being handled right now",
                ));
            }
            Claim::Dead { .. } => return Outcome::Duplicate,
            Claim::Done { unsent } => {
                return match self.publish_outputs(&key, &unsent).await {
                    Ok(()) => Outcome::Duplicate,
                    Err(f) => Outcome::Retry(f),
                };
            }
            Claim::Acquired { attempt } => attempt,
        };
        ctx.attempt = attempt;
        tracing::Span::current().record("zerofn.attempt", attempt);
        self.crash_point(CrashPoint::AfterClaim);
        match self.attempt(ctx, data, accepted, &key, &owner).await {
            Ok(outputs) => {
                self.crash_point(CrashPoint::AfterCommit);
                match self.publish_outputs(&key, &outputs).await {
                    Ok(()) => Outcome::Success,
                    // The record is done: the next delivery publishes what is still unsent.
                    Err(f) => {
                        if let Err(e) = self.store.release(&key, &owner).await {
                            tracing::warn!(error = %e, "could not release the publish right; a redelivery waits for the lease");
                        }
                        Outcome::Retry(f)
                    }
                }
            }
            Err(f) if f.kind == FailureKind::InFlight => Outcome::Retry(f),
            Err(f) if f.kind.is_retryable() => {
                match self.store.fail(&key, &owner, &f.message).await {
                    Ok(a) if a.failed >= self.manifest.delivery.max_attempts => {
                        self.dead_letter(Some(ctx), &key, f, meta, true).await
                    }
                    _ => Outcome::Retry(f),
                }
            }
            Err(f) => self.dead_letter(Some(ctx), &key, f, meta, false).await,
        }
    }

    /// One attempt: checks, handler, completion. Returns the outputs to publish.
    async fn attempt(
        &self,
        ctx: &Context,
        data: Value,
        accepted: &[String],
        key: &str,
        owner: &str,
    ) -> Result<Vec<StoredOutput>, Failure> {
        if !accepted.contains(&ctx.ty) {
            return Err(Failure::new(
                FailureKind::UnknownType,
                format!(
                    "event type {:?} is not consumed here: function {} accepts {}",
                    ctx.ty,
                    self.manifest.name,
                    accepted.join(", ")
                ),
            ));
        }
        match self.contracts.validate(&ctx.ty, &data) {
            Some(Ok(())) => {}
            Some(Err(v)) => {
                return Err(Failure::new(
                    FailureKind::SchemaViolation,
                    format!("data violates the contract of {}: {v}", ctx.ty),
                ));
            }
            None => {
                return Err(Failure::new(
                    FailureKind::UnknownType,
                    format!("event type {:?} has no contract", ctx.ty),
                ));
            }
        }
        let store_down = |e: crate::idempotency::StoreError| {
            Failure::new(FailureKind::StoreUnavailable, e.to_string())
        };
        let tx = self.store.begin().await.map_err(store_down)?;
        // The handler runs in its own span; what it emits carries that span's context.
        let handler_span =
            tracing::info_span!("zerofn.handler", otel.name = format!("handle {}", ctx.ty));
        let mut handled = ctx.clone();
        if let Some(tp) = crate::telemetry::traceparent_of(&handler_span) {
            handled.traceparent = tp;
        }
        let emits = self
            .call_handler(handled.clone(), data, tx.clone(), handler_span)
            .await?;
        let outputs = emits
            .into_iter()
            .enumerate()
            .map(|(seq, e)| self.outgoing(&handled, u32::try_from(seq).unwrap_or(u32::MAX), e))
            .collect::<Result<Vec<_>, _>>()?;
        self.crash_point(CrashPoint::AfterHandler);
        let completing = Instant::now();
        let completed = self
            .store
            .complete(key, owner, &outputs, tx)
            .instrument(tracing::info_span!(
                "zerofn.complete",
                otel.name = "idempotency complete"
            ))
            .await;
        self.instruments.store_op("complete", completing.elapsed());
        if !completed.map_err(store_down)? {
            return Err(Failure::new(
                FailureKind::InFlight,
                "the lease on this event expired and another delivery took it over; this attempt's effects were rolled back",
            ));
        }
        Ok(outputs)
    }
    async fn call_handler(
        &self,
        ctx: Context,
        data: Value,
        tx: Option<Transaction>,
        span: tracing::Span,
    ) -> Result<Vec<Emit>, Failure> {
        let timeout = self.config.handler_timeout;
        let (ty, running) = (ctx.ty.clone(), Instant::now());
        let mut task = tokio::spawn(self.handler.call(ctx, data, tx).instrument(span));
        let finished = tokio::time::timeout(timeout, &mut task).await;
        self.instruments.handler_duration(&ty, running.elapsed());
        match finished {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                let message = if join.is_panic() {
                    let panic = join.into_panic();
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(non-string panic payload)".into())
                } else {
                    "handler task was cancelled".into()
                };
                Err(Failure::new(
                    FailureKind::HandlerPanic,
                    format!("handler panicked: {message}"),
                ))
            }
            Err(_) => {
                task.abort();
                Err(Failure::new(
                    FailureKind::HandlerTimeout,
                    format!("handler did not finish within {timeout:?} (ZEROFN_HANDLER_TIMEOUT)"),
                ))
            }
        }
    }

    /// Turn an [`Emit`] into the CloudEvent to publish, checking it against the manifest and
    /// its contract first: an emitted event that breaks its contract is a handler bug.
    fn outgoing(&self, cause: &Context, seq: u32, e: Emit) -> Result<StoredOutput, Failure> {
        let bug = |msg: String| Failure::new(FailureKind::HandlerPermanent, msg);
        let target = self.manifest.publish_for(&e.ty).ok_or_else(|| {
            bug(format!(
                "the handler emitted {:?}, which function.toml does not declare under [[publishes]]",
                e.ty
            ))
        })?;
        if let Some(Err(v)) = self.contracts.validate(&e.ty, &e.data) {
            return Err(bug(format!(
                "the handler emitted {} with data that violates its contract: {v}",
                e.ty
            )));
        }
        // Derived from the cause, so a re-run after a crash emits the same ids.
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}#{}#{seq}", cause.source, cause.id).as_bytes(),
        )
        .to_string();
        let mut builder = <cloudevents::EventBuilderV10 as cloudevents::EventBuilder>::new()
            .id(id.clone())
            .source(self.source.clone())
            .ty(e.ty.clone())
            .time(chrono::Utc::now())
            .data("application/json", e.data)
            .extension("traceparent", cause.traceparent.clone())
            .extension("causationid", cause.id.clone())
            .extension(
                "correlationid",
                cause
                    .extension("correlationid")
                    .unwrap_or(&cause.id)
                    .to_string(),
            );
        if let Some(subject) = &e.subject {
            builder = builder.subject(subject.clone());
        }
        if let Some(key) = &e.partition_key {
            builder = builder.extension("partitionkey", key.clone());
        }
        // A handler's own extensions may not override the ones the runtime sets.
        let mut reserved = BTreeSet::from([
            "traceparent",
            "causationid",
            "correlationid",
            "partitionkey",
        ]);
        for (name, value) in &e.extensions {
            if reserved.insert(name.as_str()) {
                builder = builder.extension(name, value.clone());
            }
        }
        let event = cloudevents::EventBuilder::build(builder).map_err(|err| {
            bug(format!(
                "the emitted {} is not a valid CloudEvent: {err}",
                e.ty
            ))
        })?;
        let body = serde_json::to_string(&event)
            .map_err(|err| bug(format!("the emitted {} cannot be serialised: {err}", e.ty)))?;
        Ok(StoredOutput {
            seq,
            event_id: id,
            event_type: e.ty,
            pubsub: target.pubsub.clone(),
            topic: target.topic.clone(),
            body,
            traceparent: cause.traceparent.clone(),
            partition_key: e.partition_key,
        })
    }

    /// Publish outbox entries in order, marking each sent.
    async fn publish_outputs(&self, key: &str, outputs: &[StoredOutput]) -> Result<(), Failure> {
        for o in outputs {
            let publish_span = tracing::info_span!(
                "zerofn.publish",
                otel.name = format!("{} publish", o.topic),
                otel.kind = "producer",
                messaging.destination.name = %o.topic,
                messaging.message.id = %o.event_id,
            );
            self.publisher
                .publish(o)
                .instrument(publish_span)
                .await
                .map_err(|reason| {
                    self.instruments.publish_failed(&o.topic);
                    Failure::new(
                        FailureKind::PublishFailed,
                        format!(
                            "publishing {} ({}) failed: {reason}",
                            o.event_type, o.event_id
                        ),
                    )
                })?;
            if let Err(e) = self.store.mark_sent(key, o.seq).await {
                // Published but not marked: a redelivery publishes it again with the same id.
                tracing::warn!(error = %e, event_id = %o.event_id, "could not mark an output as sent");
            }
        }
        Ok(())
    }

    /// The outbox relay, one round: publish the outputs of completed events that are still
    /// unsent (their publish failed and no redelivery came), taking the publish right first so
    /// a live worker is never raced. Returns how many outputs were published.
    pub(crate) async fn relay_once(&self) -> usize {
        let keys = match self.store.keys_with_unsent(now_ms() - 1000, 100).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay could not list unsent outputs");
                return 0;
            }
        };
        let mut published = 0;
        for key in keys {
            let owner = uuid::Uuid::new_v4().to_string();
            match self
                .store
                .claim(&key, &owner, self.config.lease, self.config.idempotency_ttl)
                .await
            {
                Ok(Claim::Done { unsent }) if !unsent.is_empty() => {
                    match self.publish_outputs(&key, &unsent).await {
                        Ok(()) => {
                            published += unsent.len();
                            tracing::info!(
                                outputs = unsent.len(),
                                "outbox relay published outputs left unsent"
                            );
                        }
                        Err(f) => {
                            let _ = self.store.release(&key, &owner).await;
                            tracing::warn!(reason = %f.message, "outbox relay could not publish; will try again");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox relay could not claim a record"),
            }
        }
        published
    }

    /// Keep a dead-letter record in the store and forward it to the dead-letter topic.
    async fn dead_letter(
        &self,
        ctx: Option<&Context>,
        key: &str,
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
        if let Err(e) = self
            .store
            .dead_letter(key, &record)
            .instrument(dead_letter_span)
            .await
        {
            tracing::error!(error = %e, "could not record a dead letter; leaving it to the transport's dead-letter path");
            return Outcome::Drop(failure);
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

    fn crash_point(&self, point: CrashPoint) {
        if self.config.crash_at == Some(point) {
            tracing::error!(?point, "ZEROFN_CRASH_AT: aborting the process");
            std::process::abort();
        }
    }
}

fn log_outcome(function: &str, outcome: &Outcome, ctx: Option<&Context>, started: Instant) {
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ty, id, source, trace_id, span_id, attempt) = match ctx {
        Some(c) => (
            c.ty.as_str(),
            c.id.as_str(),
            c.source.as_str(),
            c.trace_id(),
            c.span_id(),
            c.attempt,
        ),
        None => ("", "", "", "", "", 0),
    };
    let (kafka_topic, kafka_partition, kafka_offset) = ctx
        .and_then(|c| c.kafka.as_ref())
        .map_or((None, None, None), |k| {
            (Some(k.topic.as_str()), Some(k.partition), Some(k.offset))
        });
    let label = outcome.label();
    match outcome {
        Outcome::Success | Outcome::Duplicate => tracing::info!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = label,
            duration_ms, trace_id, span_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event handled"
        ),
        Outcome::Retry(f) => tracing::warn!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = label,
            error = f.kind.code(), reason = %f.message,
            duration_ms, trace_id, span_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event will be retried"
        ),
        Outcome::DeadLettered {
            failure: f,
            id: dead_letter_id,
            ..
        } => tracing::error!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = label,
            error = f.kind.code(), reason = %f.message, dead_letter_id = %dead_letter_id,
            duration_ms, trace_id, span_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event dead-lettered"
        ),
        Outcome::Drop(f) => tracing::error!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = label,
            error = f.kind.code(), reason = %f.message,
            duration_ms, trace_id, span_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event dropped"
        ),
    }
}
