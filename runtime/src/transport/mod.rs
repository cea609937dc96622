//! Transports: how events arrive over HTTP and how emitted events leave. Both run on one
//! axum server on `$PORT`; [`crate::config::TransportKind`] chooses which routes it serves.

pub(crate) mod dapr;
pub(crate) mod knative;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Body,
    http::{HeaderMap, StatusCode, header::CONTENT_LENGTH},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::{
    config::{Config, TransportKind},
    intake::{DeliveryMeta, Failure, FailureKind, Intake, Outgoing},
    manifest::Publish,
    shutdown::Drain,
};

/// Sends an emitted event to its topic.
pub(crate) trait Publisher: Send + Sync {
    fn publish<'a>(
        &'a self,
        target: &'a Publish,
        event: &'a Outgoing,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// For functions that publish nothing: any emit is already refused by the manifest check.
pub(crate) struct NoPublisher;

impl Publisher for NoPublisher {
    fn publish<'a>(
        &'a self,
        target: &'a Publish,
        _event: &'a Outgoing,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        let msg = format!("no publisher is configured for topic {}", target.topic);
        Box::pin(async move { Err(msg) })
    }
}

/// What every route handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) intake: Arc<Intake>,
    pub(crate) drain: Drain,
    pub(crate) config: Arc<Config>,
    /// Dapr: set once the sidecar has read `/dapr/subscribe`.
    pub(crate) subscribed: Arc<AtomicBool>,
}

impl AppState {
    fn ready(&self) -> Result<(), &'static str> {
        if self.drain.is_draining() {
            Err("draining: shutdown in progress")
        } else if self.config.transport == TransportKind::Dapr
            && !self.subscribed.load(Ordering::SeqCst)
        {
            Err("waiting for the Dapr sidecar to read /dapr/subscribe")
        } else {
            Ok(())
        }
    }
}

/// The whole HTTP surface: probes plus the configured transport's routes.
///
/// Delivery routes enforce `ZEROFN_MAX_BODY_BYTES` themselves so that an oversized event gets
/// the transport's own "never retry" answer (a Dapr `DROP`, not a `413` that Dapr retries
/// forever); every other route sits behind a plain body limit.
pub(crate) fn router(state: AppState) -> Router {
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(body_limit(&state));
    let transport = match state.config.transport {
        TransportKind::Dapr => dapr::routes(&state),
        TransportKind::Http => knative::routes(),
    };
    probes
        .merge(transport)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The limit layer for routes that do not deliver events.
pub(crate) fn body_limit(state: &AppState) -> tower_http::limit::RequestBodyLimitLayer {
    tower_http::limit::RequestBodyLimitLayer::new(state.config.max_body_bytes)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state.ready() {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A JSON error body: `{"error": code, "message": text}`.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// Read a request body, refusing more than `limit` bytes.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            FailureKind::TooLarge,
            format!("request body exceeds the limit of {limit} bytes (ZEROFN_MAX_BODY_BYTES)"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if is_length_limit(&*e) => Err(too_large()),
        Err(e) => Err(Failure::new(
            FailureKind::Malformed,
            format!("request body could not be read completely: {e}"),
        )),
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<LengthLimitError>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// Trace and Kafka facts from the request headers (Dapr forwards broker metadata as headers).
pub(crate) fn delivery_meta(headers: &HeaderMap) -> DeliveryMeta {
    DeliveryMeta {
        hop_traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        kafka: crate::event::KafkaCoordinates::from_metadata(|name| {
            headers.get(name).and_then(|v| v.to_str().ok())
        }),
    }
}

/// Build the outbound HTTP client shared by the publishers.
pub(crate) fn http_client(config: &Config) -> Result<reqwest::Client, crate::Error> {
    reqwest::Client::builder()
        .timeout(config.publish_timeout)
        .user_agent(concat!("zerofn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(crate::Error::Client)
}

/// POST `body` and turn anything but a 2xx into a readable reason.
pub(crate) async fn post(request: reqwest::RequestBuilder, what: &str) -> Result<(), String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(512).collect();
    Err(format!("{what} answered {status}: {body}"))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(err) = next {
        parts.push(err.to_string());
        next = err.source();
    }
    parts.join(": ")
}
