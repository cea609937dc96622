//! Observation of a delivery: its consumer span (parented on the hop's trace, else the
//! event's) and the log line about its outcome.

use std::time::Instant;

use super::DeliveryMeta;
use crate::{
    codec::Decoded,
    event::Context,
    outcome::{Failure, Outcome},
    telemetry::TraceContext,
};

/// The consumer span of one delivery, its parent set before it starts.
pub(super) fn delivery_span(
    function: &str,
    input: &Result<Decoded, Failure>,
    meta: &DeliveryMeta,
) -> tracing::Span {
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
        zerofn.function = %function,
        zerofn.attempt = tracing::field::Empty,
        zerofn.idempotency = tracing::field::Empty,
        zerofn.outcome = tracing::field::Empty,
    );
    // Parent first (the span must not have started): the hop's context, else the event's.
    let parent = match input {
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
        format!("{} process", topic.as_deref().unwrap_or(function)),
    );
    if let Some(t) = &topic {
        span.record("messaging.destination.name", t.as_str());
    }
    span
}

pub(super) fn log_outcome(
    function: &str,
    outcome: &Outcome,
    ctx: Option<&Context>,
    started: Instant,
) {
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
