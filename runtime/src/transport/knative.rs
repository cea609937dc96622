//! Plain CloudEvents over HTTP, as Knative delivers them: `POST /` in binary, structured or
//! batch mode. 2xx = done, 5xx = retry, other 4xx = permanent (Knative retries 404, 408, 409
//! and 429 too, so none of those is used for a permanent failure). Emitted events are POSTed
//! to `K_SINK`.

use std::{future::Future, pin::Pin};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::json;

use super::{AppState, delivery_meta, post as send, read_body};
use crate::{
    codec::{self as decode, Mode},
    idempotency::StoredOutput,
    outcome::{Failure, FailureKind, Outcome},
    publish::Publisher,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/", post(deliver))
}

async fn deliver(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let Some(_in_flight) = state.drain.enter() else {
        return failure_response(&Failure::new(
            FailureKind::Draining,
            "the function is shutting down and takes no new deliveries",
        ));
    };
    let accepted = state.intake.consumed_types();
    let bytes = match read_body(&headers, body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(f) => {
            return respond(
                &state
                    .intake
                    .process(Err(f), accepted, delivery_meta(&headers, b""))
                    .await,
            );
        }
    };
    let meta = delivery_meta(&headers, &bytes);
    match decode::mode(&headers) {
        Mode::Structured => respond(
            &state
                .intake
                .process(decode::structured(&bytes), accepted, meta)
                .await,
        ),
        Mode::Binary => respond(
            &state
                .intake
                .process(decode::binary(&headers, &bytes), accepted, meta)
                .await,
        ),
        Mode::Batch => {
            let events = match decode::batch(&bytes) {
                Ok(events) => events,
                Err(f) => return respond(&state.intake.process(Err(f), accepted, meta).await),
            };
            let mut results = Vec::with_capacity(events.len());
            for (event, raw) in events {
                let id = event.as_ref().ok().map(|d| d.ctx.id.clone());
                let mut meta = meta.clone();
                meta.original = Some(super::original(&headers, raw.as_bytes()));
                let outcome = state.intake.process(event, accepted, meta).await;
                results.push((id, outcome));
            }
            respond_batch(&results)
        }
    }
}

/// HTTP status for a failure on this transport.
fn status_of(f: &Failure) -> StatusCode {
    match f.kind {
        FailureKind::Unauthorized => StatusCode::UNAUTHORIZED,
        FailureKind::Malformed => StatusCode::BAD_REQUEST,
        FailureKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        FailureKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        FailureKind::UnknownType
        | FailureKind::SchemaViolation
        | FailureKind::UndecodableData
        | FailureKind::HandlerPermanent => StatusCode::UNPROCESSABLE_ENTITY,
        FailureKind::HandlerRetryable
        | FailureKind::HandlerPanic
        | FailureKind::HandlerTimeout
        | FailureKind::WorkerLost => StatusCode::INTERNAL_SERVER_ERROR,
        FailureKind::PublishFailed => StatusCode::BAD_GATEWAY,
        FailureKind::BodyIncomplete => StatusCode::REQUEST_TIMEOUT,
        FailureKind::Draining | FailureKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        // Knative retries 409: the delivery holding the lease finishes the work.
        FailureKind::InFlight => StatusCode::CONFLICT,
    }
}

fn failure_response(f: &Failure) -> Response {
    let mut response = super::error_response(status_of(f), f.kind.code(), &f.message);
    if matches!(
        f.kind,
        FailureKind::Draining | FailureKind::InFlight | FailureKind::StoreUnavailable
    ) {
        response
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
    }
    response
}

/// Success is `202` with an empty body: Knative treats a non-empty body that is not a
/// CloudEvent as a failed delivery. A dead-lettered event keeps its precise error status (the
/// sender should know what was wrong) and names its record in `zerofn-dead-letter`; retries
/// that ran out answer `422 attempts_exhausted`.
fn respond(outcome: &Outcome) -> Response {
    match outcome {
        Outcome::Success | Outcome::Duplicate => StatusCode::ACCEPTED.into_response(),
        Outcome::Retry(f) | Outcome::Drop(f) => failure_response(f),
        Outcome::DeadLettered {
            failure,
            id,
            exhausted,
        } => {
            let mut response = if *exhausted {
                super::error_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "attempts_exhausted",
                    &format!(
                        "gave up after the last allowed attempt: {}",
                        failure.message
                    ),
                )
            } else {
                failure_response(failure)
            };
            if let Ok(v) = http::HeaderValue::from_str(id) {
                response.headers_mut().insert("zerofn-dead-letter", v);
            }
            response
        }
    }
}

/// A batch: 202 when all succeeded; any retryable failure makes the whole batch retryable
/// (redelivering the successful ones is safe under idempotency); otherwise 207 with the
/// per-event results when some succeeded, or the first failure's status when none did.
fn respond_batch(results: &[(Option<String>, Outcome)]) -> Response {
    let done = |o: &Outcome| matches!(o, Outcome::Success | Outcome::Duplicate);
    if results.iter().all(|(_, o)| done(o)) {
        return StatusCode::ACCEPTED.into_response();
    }
    let body = json!({"results": results.iter().map(|(id, o)| {
        let mut r = json!({"id": id, "outcome": o.label()});
        match o {
            Outcome::Retry(f) | Outcome::Drop(f) => {
                r["error"] = json!(f.kind.code());
                r["message"] = json!(f.message);
            }
            Outcome::DeadLettered { failure, id, .. } => {
                r["error"] = json!(failure.kind.code());
                r["message"] = json!(failure.message);
                r["deadLetterId"] = json!(id);
            }
            Outcome::Success | Outcome::Duplicate => {}
        }
        r
    }).collect::<Vec<_>>()});
    let status = if let Some(f) = results.iter().find_map(|(_, o)| match o {
        Outcome::Retry(f) => Some(f),
        _ => None,
    }) {
        status_of(f)
    } else if results.iter().any(|(_, o)| done(o)) {
        StatusCode::MULTI_STATUS
    } else {
        results
            .iter()
            .find_map(|(_, o)| match o {
                Outcome::Drop(f) | Outcome::DeadLettered { failure: f, .. } => Some(status_of(f)),
                _ => None,
            })
            .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
    };
    (status, Json(body)).into_response()
}

/// POSTs emitted events to `K_SINK` in structured mode.
pub(crate) struct SinkPublisher {
    client: reqwest::Client,
    url: String,
}

impl SinkPublisher {
    pub(crate) fn new(client: reqwest::Client, url: String) -> Self {
        Self { client, url }
    }
}

impl Publisher for SinkPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a StoredOutput,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(job) = &event.job {
                return Err(format!(
                    "job {}: jobs need a Dapr sidecar (the Jobs API); this function runs on the HTTP transport",
                    job.name
                ));
            }
            let request = self
                .client
                .post(&self.url)
                .header("content-type", "application/cloudevents+json")
                .header("traceparent", &event.traceparent)
                .body(event.body.clone());
            send(request, &format!("K_SINK {}", self.url)).await
        })
    }
}
