//! What became of a delivery: the failure kinds with their stable codes, and the outcome the
//! transports turn into their replies.

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
    WorkerLost,
    BodyIncomplete,
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
            FailureKind::WorkerLost => "worker_lost",
            FailureKind::BodyIncomplete => "body_incomplete",
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
                | FailureKind::WorkerLost
                | FailureKind::BodyIncomplete
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
