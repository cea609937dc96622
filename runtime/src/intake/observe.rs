//! Observation of a delivery: the log line about its outcome.

use std::time::Instant;

use crate::{event::Context, outcome::Outcome};

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
