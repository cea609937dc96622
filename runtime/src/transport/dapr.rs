//! The Dapr app contract: `GET /dapr/subscribe`, deliveries on each subscription's route
//! (single and bulk), replies as Dapr reads them, and publishing through the sidecar.
//!
//! Dapr retries every non-2xx answer except 404, so nothing is ever answered with a 4xx: an
//! event that can never succeed is dead-lettered by the runtime (its record kept and forwarded)
//! and answered `200 {"status":"SUCCESS"}`; only when that record cannot be written is it
//! answered `DROP`, so Dapr's own dead-letter topic keeps the raw message.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::{AppState, delivery_meta, error_response, post as send, read_body};
use crate::{
    codec::{self as decode, is_json_media},
    event::KafkaCoordinates,
    idempotency::{JobOutput, StoredOutput},
    intake::DeliveryMeta,
    manifest::{DEAD_LETTER_ROUTE, DeclaredSchedule, SCHEDULE_JOB_PREFIX, Subscription},
    outcome::{Failure, FailureKind, Outcome},
    publish::Publisher,
};

/// The header Dapr uses for API tokens, in both directions.
const TOKEN_HEADER: &str = "dapr-api-token";

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let mut router = Router::new().route(
        "/dapr/subscribe",
        get(subscribe).layer(super::body_limit(state)),
    );
    if let Some(pubsub) = state.intake.manifest().dead_letter_pubsub() {
        let origin = Arc::new((
            pubsub.to_string(),
            state.intake.manifest().delivery.dead_letter_topic.clone(),
        ));
        router = router.route(
            DEAD_LETTER_ROUTE,
            post(
                move |State(state): State<AppState>, headers: HeaderMap, body: Body| {
                    deliver_dead_letter(state, origin, headers, body)
                },
            ),
        );
    }
    for sub in &state.intake.manifest().subscriptions {
        let route = sub.route.clone();
        let sub = Arc::new(sub.clone());
        router = router.route(
            &route,
            post(
                move |State(state): State<AppState>, headers: HeaderMap, body: Body| {
                    deliver(state, sub, headers, body)
                },
            ),
        );
    }
    let manifest = state.intake.manifest();
    if !manifest.jobs.is_empty() || !manifest.schedules.is_empty() {
        router = router.route("/job/{name}", post(deliver_job));
    }
    router.route_layer(middleware::from_fn_with_state(state.clone(), check_token))
}

/// Reject callers that do not present `APP_API_TOKEN` (compared in constant time).
async fn check_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.config.app_api_token {
        let presented = request
            .headers()
            .get(TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(presented.ct_eq(expected.as_bytes())) {
            tracing::warn!(path = %request.uri().path(), "rejected a call without a valid dapr-api-token");
            return error_response(
                StatusCode::UNAUTHORIZED,
                FailureKind::Unauthorized.code(),
                "missing or invalid dapr-api-token header (APP_API_TOKEN is set)",
            );
        }
    }
    next.run(request).await
}

async fn subscribe(State(state): State<AppState>) -> Response {
    let subs = state.intake.manifest().dapr_subscriptions();
    state.subscribed.store(true, Ordering::SeqCst);
    tracing::info!(subscriptions = subs.len(), "Dapr read the subscriptions");
    Json(subs).into_response()
}

/// A delivery on the function's own dead-letter topic: recorded in the store (see
/// `Intake::record_raw_dead_letter`). Never dead-lettered again: this subscription has no
/// dead-letter topic, so what cannot be recorded now is answered RETRY.
async fn deliver_dead_letter(
    state: AppState,
    origin: Arc<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(_in_flight) = state.drain.enter() else {
        return draining();
    };
    // A raw copy carries the transport's envelope around what the function admitted.
    let limit = state.config.max_body_bytes.saturating_mul(2);
    let bytes = match read_body(&headers, body, limit).await {
        Ok(b) => b,
        Err(f) => return reply(&Outcome::Retry(f)),
    };
    let mut meta = delivery_meta(&headers, &bytes);
    meta.source_topic = Some((origin.0.clone(), origin.1.clone()));
    reply(&state.intake.record_raw_dead_letter(&bytes, meta).await)
}

async fn deliver(
    state: AppState,
    sub: Arc<Subscription>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(_in_flight) = state.drain.enter() else {
        return draining();
    };
    let limit = state.config.max_body_bytes;
    let bulk_limit = sub
        .bulk
        .map_or(limit, |b| limit.saturating_mul(b.max_messages as usize));
    let source_topic = Some((sub.pubsub.clone(), sub.topic.clone()));
    let bytes = match read_body(&headers, body, bulk_limit).await {
        Ok(b) => b,
        // Refused unread past the limit: the runtime does not have the bytes, Dapr does. DROP
        // makes Dapr copy the message raw to the dead-letter topic, where this function records
        // it with its bytes (that route takes twice the limit).
        Err(f) if f.kind == FailureKind::TooLarge => {
            tracing::warn!(topic = %sub.topic, reason = %f.message, "delivery too large to read: answered DROP so Dapr dead-letters it raw");
            return reply(&Outcome::Drop(f));
        }
        Err(f) => {
            let mut meta = delivery_meta(&headers, b"");
            meta.source_topic = source_topic;
            return reply(&state.intake.process(Err(f), &sub.types, meta).await);
        }
    };
    let ct = decode::content_type(&headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    if sub.bulk.is_some() && ct.starts_with("application/json") {
        return deliver_bulk(&state, &sub, &headers, &bytes).await;
    }
    let input = if bytes.len() > limit {
        Err(Failure::new(
            FailureKind::TooLarge,
            format!("request body exceeds the limit of {limit} bytes (ZEROFN_MAX_BODY_BYTES)"),
        ))
    } else if ct.starts_with("application/cloudevents+json") || is_json_media(&ct) {
        decode::structured(&bytes)
    } else {
        Err(Failure::new(
            FailureKind::UnsupportedMediaType,
            format!(
                "Content-Type {} is not application/cloudevents+json, which Dapr uses for deliveries",
                if ct.is_empty() { "(none)" } else { &ct }
            ),
        ))
    };
    let mut meta = delivery_meta(&headers, &bytes);
    meta.source_topic = source_topic;
    reply(&state.intake.process(input, &sub.types, meta).await)
}

/// A due job (`POST /job/{name}`, the job's data as the body): the CloudEvent the function
/// scheduled with `Emit::at`, or a trigger of a declared schedule (its event made here, named
/// after its cron instant), processed as any delivery (idempotency, dead letters, its trace
/// continued). Dapr reads the status only: 200 is done, anything else is retried under the
/// job's failure policy.
async fn deliver_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(_in_flight) = state.drain.enter() else {
        return draining();
    };
    let manifest = state.intake.manifest();
    let body = read_body(&headers, body, state.config.max_body_bytes).await;
    let (input, types) = if let Some(schedule) = manifest.schedule_for_job(&name) {
        let now = chrono::Utc::now().timestamp_millis();
        let trigger = trigger_event(&manifest.name, schedule, now);
        (decode::structured(&trigger), vec![schedule.ty.clone()])
    } else if name.starts_with(SCHEDULE_JOB_PREFIX) {
        // A schedule no longer declared (the function was redeployed without it): its job
        // still fires, so remove it.
        tracing::warn!(job = %name, "a schedule that function.toml no longer declares fired; deleting its job");
        if let Some(dapr) = state.dapr.clone() {
            tokio::spawn(async move {
                if let Err(e) = dapr.delete_job(&name).await {
                    tracing::warn!(error = %e, "cannot delete the job of a removed schedule");
                }
            });
        }
        return reply(&Outcome::Success);
    } else {
        (
            body.and_then(|b| decode::structured(&b)),
            manifest.jobs.clone(),
        )
    };
    let meta = delivery_meta(&headers, b"");
    let outcome = state.intake.process(input, &types, meta).await;
    tracing::debug!(job = %name, status = status_of(&outcome), "job delivered");
    match outcome {
        Outcome::Retry(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(reply_body(&outcome, None)),
        )
            .into_response(),
        _ => reply(&outcome),
    }
}

/// The event of a trigger of `schedule` delivered at `now_ms`: its id and time are the cron
/// instant it belongs to, so every delivery of one trigger is the same event.
fn trigger_event(function: &str, schedule: &DeclaredSchedule, now_ms: i64) -> Vec<u8> {
    let at = schedule
        .instant(now_ms)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut data = schedule.data.clone();
    data.insert("schedule".into(), json!(schedule.name));
    data.insert("scheduled_at".into(), json!(at));
    let event = json!({
        "specversion": "1.0",
        "id": format!("{}@{at}", schedule.job_name()),
        "source": format!("/zerofn/{function}/schedules"),
        "type": schedule.ty,
        "subject": schedule.name,
        "time": at,
        "datacontenttype": "application/json",
        "data": data,
    });
    serde_json::to_vec(&event).unwrap_or_default()
}

/// Register every declared schedule with the sidecar's Jobs API, each retried (1 s doubling to
/// 30 s) until the sidecar takes it: it may start after the app, and its scheduler later still.
pub(crate) async fn register_schedules(dapr: Arc<DaprPublisher>, schedules: Vec<DeclaredSchedule>) {
    for schedule in schedules {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            match dapr.schedule(&schedule).await {
                Ok(()) => {
                    tracing::info!(schedule = %schedule.name, cron = %schedule.cron, "schedule registered");
                    break;
                }
                Err(e) => {
                    tracing::warn!(schedule = %schedule.name, error = %e, retry_in = ?wait, "cannot register a schedule yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(30));
                }
            }
        }
    }
}

/// The status Dapr reads for an outcome. A dead-lettered event is acknowledged (`SUCCESS`):
/// the runtime already forwarded its record to the dead-letter topic, and a `DROP` would make
/// Dapr copy the raw message there a second time.
fn status_of(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Success | Outcome::Duplicate | Outcome::DeadLettered { .. } => "SUCCESS",
        Outcome::Retry(_) => "RETRY",
        Outcome::Drop(_) => "DROP",
    }
}

/// Dapr's single-delivery reply: always 200, the status in the body.
fn reply(outcome: &Outcome) -> Response {
    (StatusCode::OK, Json(reply_body(outcome, None))).into_response()
}

/// `{"status": …}`, plus what happened for anything but a plain success.
fn reply_body(outcome: &Outcome, entry_id: Option<&str>) -> Value {
    let mut body = json!({"status": status_of(outcome)});
    if let Some(id) = entry_id {
        body["entryId"] = json!(id);
    }
    match outcome {
        Outcome::Success => {}
        Outcome::Duplicate => body["outcome"] = json!("duplicate"),
        Outcome::Retry(f) | Outcome::Drop(f) => {
            body["error"] = json!(f.kind.code());
            body["message"] = json!(f.message);
        }
        Outcome::DeadLettered { failure, id, .. } => {
            body["outcome"] = json!("dead_letter");
            body["deadLetterId"] = json!(id);
            body["error"] = json!(failure.kind.code());
            body["message"] = json!(failure.message);
        }
    }
    body
}

/// While draining: a non-2xx, which Dapr retries (after the restart or on another replica).
fn draining() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "1")],
        Json(json!({
            "status": "RETRY",
            "error": FailureKind::Draining.code(),
            "message": "the function is shutting down and takes no new deliveries",
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BulkRequest {
    entries: Vec<BulkEntry>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkEntry {
    entry_id: String,
    event: Value,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    content_type: Option<String>,
}

async fn deliver_bulk(
    state: &AppState,
    sub: &Subscription,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Response {
    let request: BulkRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            let f = Failure::new(
                FailureKind::Malformed,
                format!("bulk delivery body is not a Dapr bulk envelope: {e}"),
            );
            let mut meta = delivery_meta(headers, bytes);
            meta.source_topic = Some((sub.pubsub.clone(), sub.topic.clone()));
            return match state.intake.process(Err(f.clone()), &sub.types, meta).await {
                // One dead letter holds the whole body: acknowledge every entry.
                Outcome::DeadLettered { id, .. } => (
                    StatusCode::OK,
                    Json(json!({"statuses": [], "deadLetterId": id})),
                )
                    .into_response(),
                // No entry ids to answer per entry: 404 is Dapr's "drop them all" for bulk.
                _ => error_response(StatusCode::NOT_FOUND, f.kind.code(), &f.message),
            };
        }
    };
    let limit = state.config.max_body_bytes;
    let mut statuses = Vec::with_capacity(request.entries.len());
    for entry in request.entries {
        let meta_get = |name: &str| {
            entry
                .metadata
                .get(name)
                .or_else(|| request.metadata.get(name))
                .and_then(Value::as_str)
        };
        let entry_bytes = serde_json::to_vec(&entry.event).unwrap_or_default();
        let entry_headers = entry
            .metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect();
        let meta = DeliveryMeta {
            hop_traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            kafka: KafkaCoordinates::from_metadata(meta_get),
            source_topic: Some((sub.pubsub.clone(), sub.topic.clone())),
            original: Some(crate::dead_letter::Original::new(
                entry.content_type.clone(),
                &entry_bytes,
                entry_headers,
            )),
        };
        let input = bulk_entry_event(entry.event, entry.content_type.as_deref(), limit);
        let outcome = state.intake.process(input, &sub.types, meta).await;
        statuses.push(reply_body(&outcome, Some(&entry.entry_id)));
    }
    (StatusCode::OK, Json(json!({"statuses": statuses}))).into_response()
}

/// A bulk entry's event: a CloudEvent object, or (with `rawPayload`) base64 of the record.
fn bulk_entry_event(
    event: Value,
    content_type: Option<&str>,
    limit: usize,
) -> Result<decode::Decoded, Failure> {
    let size = match &event {
        Value::String(s) => s.len() * 3 / 4,
        other => other.to_string().len(),
    };
    if size > limit {
        return Err(Failure::new(
            FailureKind::TooLarge,
            format!("bulk entry exceeds the limit of {limit} bytes (ZEROFN_MAX_BODY_BYTES)"),
        ));
    }
    match event {
        Value::String(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    Failure::new(
                        FailureKind::Malformed,
                        format!("bulk entry event is not base64: {e}"),
                    )
                })?;
            let ct = content_type.unwrap_or("application/octet-stream");
            if !(ct.starts_with("application/cloudevents")
                || is_json_media(ct)
                || ct == "application/octet-stream")
            {
                return Err(Failure::new(
                    FailureKind::UnsupportedMediaType,
                    format!("bulk entry content type {ct} does not hold a CloudEvent"),
                ));
            }
            decode::structured(&raw)
        }
        other => decode::structured_value(other),
    }
}

/// Publishes through the sidecar: `POST /v1.0/publish/{pubsub}/{topic}` with the event as a
/// structured CloudEvent (Dapr passes it through, keeping our id, source and type).
pub(crate) struct DaprPublisher {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl DaprPublisher {
    pub(crate) fn new(client: reqwest::Client, base: String, token: Option<String>) -> Self {
        Self {
            client,
            base,
            token,
        }
    }
}

impl DaprPublisher {
    /// `/v1.0-alpha1/jobs/{name}` on the sidecar.
    fn job_url(&self, name: &str) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| e.to_string())?;
        url.path_segments_mut()
            .map_err(|()| "the Dapr URL cannot have a path".to_string())?
            .extend(["v1.0-alpha1", "jobs", name]);
        Ok(url)
    }

    /// Send a Jobs API request, with the API token when there is one.
    async fn send_job(
        &self,
        mut request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(), String> {
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        send(request, what).await
    }

    /// Register a declared schedule (overwriting the job of that name).
    async fn schedule(&self, schedule: &DeclaredSchedule) -> Result<(), String> {
        let name = schedule.job_name();
        let request = self
            .client
            .post(self.job_url(&name)?)
            .json(&schedule.job_request());
        self.send_job(request, &format!("Dapr job {name} ({})", schedule.cron))
            .await
    }

    /// Remove job `name`.
    async fn delete_job(&self, name: &str) -> Result<(), String> {
        let request = self.client.delete(self.job_url(name)?);
        self.send_job(request, &format!("Dapr job {name} delete"))
            .await
    }

    /// The Jobs API: `POST /v1.0-alpha1/jobs/{name}` with `{dueTime, data, overwrite}` (the data
    /// is the outbox entry's CloudEvent, which comes back as the body of `POST /job/{name}`),
    /// or `DELETE` for a cancel.
    async fn job(&self, event: &StoredOutput, job: &JobOutput) -> Result<(), String> {
        let url = self.job_url(&job.name)?;
        let request = match &job.due {
            Some(due) => {
                let data: Value = serde_json::from_str(&event.body).map_err(|e| e.to_string())?;
                self.client
                    .post(url)
                    .json(&json!({"dueTime": due, "data": data, "overwrite": true}))
            }
            None => self.client.delete(url),
        }
        .header("traceparent", &event.traceparent);
        let what = match &job.due {
            Some(due) => format!("Dapr job {} due {due}", job.name),
            None => format!("Dapr job {} cancel", job.name),
        };
        self.send_job(request, &what).await
    }
}

impl Publisher for DaprPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a StoredOutput,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(job) = &event.job {
                return self.job(event, job).await;
            }
            let mut url = reqwest::Url::parse(&self.base).map_err(|e| e.to_string())?;
            url.path_segments_mut()
                .map_err(|()| "the Dapr URL cannot have a path".to_string())?
                .extend(["v1.0", "publish", &event.pubsub, &event.topic]);
            if let Some(key) = &event.partition_key {
                url.query_pairs_mut()
                    .append_pair("metadata.partitionKey", key);
            }
            let mut request = self
                .client
                .post(url)
                .header("content-type", "application/cloudevents+json")
                .header("traceparent", &event.traceparent)
                .body(event.body.clone());
            if let Some(token) = &self.token {
                request = request.header(TOKEN_HEADER, token);
            }
            send(
                request,
                &format!("Dapr publish to {}/{}", event.pubsub, event.topic),
            )
            .await
        })
    }
}
