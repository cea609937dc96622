//! Event intake: from a decoded CloudEvent to an [`Outcome`]. The fixed pipeline is
//! type check → contract → typed decode → handler (panics caught, time-bounded) →
//! contract check of emitted events → publish. Transports turn the outcome into their reply.

pub(crate) mod decode;

use std::{collections::BTreeSet, future::Future, pin::Pin, sync::Arc, time::Instant};

use serde_json::Value;

use crate::{
    config::Config,
    contract::Contracts,
    emit::Emit,
    event::{Context, Event, EventData, KafkaCoordinates},
    handler::Handler,
    manifest::{Manifest, Publish},
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
        )
    }
}

/// A failure with its human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// What became of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Retry(Failure),
    Drop(Failure),
}

impl Outcome {
    fn from_failure(f: Failure) -> Self {
        if f.kind.is_retryable() {
            Outcome::Retry(f)
        } else {
            Outcome::Drop(f)
        }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retry(_) => "retry",
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
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A [`Handler`] with its data type erased, so the pipeline is not generic.
trait ErasedHandler: Send + Sync {
    fn call(&self, ctx: Context, data: Value) -> BoxFuture<Result<Vec<Emit>, Failure>>;
}

impl<H: Handler> ErasedHandler for H {
    fn call(&self, ctx: Context, data: Value) -> BoxFuture<Result<Vec<Emit>, Failure>> {
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
        let fut = Handler::call(self, Event { data, ctx });
        Box::pin(async move {
            fut.await.map_err(|e| {
                let kind = if e.is_permanent() {
                    FailureKind::HandlerPermanent
                } else {
                    FailureKind::HandlerRetryable
                };
                Failure::new(kind, e.to_string())
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
    config: Arc<Config>,
    source: String,
}

impl Intake {
    pub(crate) fn new<H: Handler>(
        manifest: Arc<Manifest>,
        contracts: Contracts,
        handler: H,
        publisher: Arc<dyn Publisher>,
        config: Arc<Config>,
    ) -> Self {
        Intake {
            source: format!("/zerofn/{}", manifest.name),
            consumed: manifest.consumed_types().map(str::to_string).collect(),
            manifest,
            contracts,
            handler: Arc::new(handler),
            publisher,
            config,
        }
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub(crate) fn consumed_types(&self) -> &[String] {
        &self.consumed
    }

    /// Run one event through the pipeline and log one line about it.
    pub(crate) async fn process(
        &self,
        input: Result<Decoded, Failure>,
        accepted: &[String],
        meta: DeliveryMeta,
    ) -> Outcome {
        let started = Instant::now();
        let (outcome, ctx) = match input {
            Err(f) => (Outcome::Drop(f), None),
            Ok(decoded) => {
                let mut ctx = decoded.ctx;
                ctx.kafka = meta.kafka;
                ctx.traceparent = TraceContext::continue_from([
                    meta.hop_traceparent.as_deref(),
                    decoded.trace_ext.as_deref(),
                ])
                .to_string();
                let outcome = match self.run(ctx.clone(), decoded.data, accepted).await {
                    Ok(()) => Outcome::Success,
                    Err(f) => Outcome::from_failure(f),
                };
                (outcome, Some(ctx))
            }
        };
        log_outcome(&self.manifest.name, &outcome, ctx.as_ref(), started);
        outcome
    }

    async fn run(&self, ctx: Context, data: Value, accepted: &[String]) -> Result<(), Failure> {
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
        let emits = self.call_handler(ctx.clone(), data).await?;
        let outgoing = emits
            .into_iter()
            .map(|e| self.outgoing(&ctx, e))
            .collect::<Result<Vec<_>, _>>()?;
        for (target, event) in &outgoing {
            self.publisher
                .publish(target, event)
                .await
                .map_err(|reason| {
                    Failure::new(
                        FailureKind::PublishFailed,
                        format!("publishing {} ({}) failed: {reason}", event.ty, event.id),
                    )
                })?;
        }
        Ok(())
    }

    async fn call_handler(&self, ctx: Context, data: Value) -> Result<Vec<Emit>, Failure> {
        let timeout = self.config.handler_timeout;
        let mut task = tokio::spawn(self.handler.call(ctx, data));
        match tokio::time::timeout(timeout, &mut task).await {
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
    fn outgoing<'m>(
        &'m self,
        cause: &Context,
        e: Emit,
    ) -> Result<(&'m Publish, Outgoing), Failure> {
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
        let id = uuid::Uuid::now_v7().to_string();
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
            )
            .extension("zerofnversion", self.manifest.version.clone());
        if let Some(subject) = &e.subject {
            builder = builder.subject(subject.clone());
        }
        if let Some(key) = &e.partition_key {
            builder = builder.extension("partitionkey", key.clone());
        }
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
        let body = serde_json::to_vec(&event)
            .map_err(|err| bug(format!("the emitted {} cannot be serialised: {err}", e.ty)))?;
        Ok((
            target,
            Outgoing {
                id,
                ty: e.ty,
                body,
                traceparent: cause.traceparent.clone(),
                partition_key: e.partition_key,
            },
        ))
    }
}

/// A CloudEvent ready to publish, in structured JSON.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: String,
    pub(crate) ty: String,
    pub(crate) body: Vec<u8>,
    pub(crate) traceparent: String,
    pub(crate) partition_key: Option<String>,
}

fn log_outcome(function: &str, outcome: &Outcome, ctx: Option<&Context>, started: Instant) {
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ty, id, source, trace_id, attempt) = match ctx {
        Some(c) => (
            c.ty.as_str(),
            c.id.as_str(),
            c.source.as_str(),
            c.trace_id(),
            c.attempt,
        ),
        None => ("", "", "", "", 0),
    };
    let (kafka_topic, kafka_partition, kafka_offset) = ctx
        .and_then(|c| c.kafka.as_ref())
        .map_or((None, None, None), |k| {
            (Some(k.topic.as_str()), Some(k.partition), Some(k.offset))
        });
    match outcome {
        Outcome::Success => tracing::info!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = "success",
            duration_ms, trace_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event handled"
        ),
        Outcome::Retry(f) => tracing::warn!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = "retry",
            error = f.kind.code(), reason = %f.message,
            duration_ms, trace_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event will be retried"
        ),
        Outcome::Drop(f) => tracing::error!(
            target: "zerofn::event",
            function, event_type = ty, event_id = id, event_source = source, outcome = "drop",
            error = f.kind.code(), reason = %f.message,
            duration_ms, trace_id, attempt, kafka_topic, kafka_partition, kafka_offset,
            "event dropped"
        ),
    }
}
