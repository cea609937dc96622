//! Transports: how events arrive over HTTP and how emitted events leave. Both run on one
//! axum server on `$PORT`; [`crate::config::TransportKind`] chooses which routes it serves.

pub(crate) mod dapr;
pub(crate) mod knative;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    body::Body,
    http::{HeaderMap, StatusCode, header::CONTENT_LENGTH},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;

use crate::{
    config::{Config, TransportKind},
    dead_letter::Original,
    intake::{DeliveryMeta, Intake},
    outcome::{Failure, FailureKind},
    shutdown::Drain,
    telemetry::TraceContext,
};

/// What every route handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) intake: Arc<Intake>,
    pub(crate) drain: Drain,
    pub(crate) config: Arc<Config>,
    /// Dapr: set once the sidecar has read `/dapr/subscribe`.
    pub(crate) subscribed: Arc<AtomicBool>,
    /// The function's own routes, built at start.
    pub(crate) extra: Option<Router>,
    /// The Dapr sidecar's client (Dapr transport only): the Jobs API for declared schedules.
    pub(crate) dapr: Option<Arc<dapr::DaprPublisher>>,
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
        .route("/metrics", get(metrics))
        .layer(body_limit(&state));
    let transport = match state.config.transport {
        TransportKind::Dapr => dapr::routes(&state),
        TransportKind::Http => knative::routes(),
    };
    let extra = state.extra.clone();
    let router = probes
        .merge(transport)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    match extra {
        Some(own) => router.merge(
            own.layer(body_limit(&state))
                .layer(axum::middleware::from_fn_with_state(state, own_route)),
        ),
        None => router,
    }
}

/// Around the function's own routes (HTTP-triggered functions): a server span continuing
/// the caller's `traceparent`, and the drain — a request in progress holds shutdown back, and
/// one arriving during shutdown gets a 503 to retry elsewhere.
async fn own_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request
        .extensions_mut()
        .insert(crate::write::Writes(state.intake.clone()));
    use tracing::Instrument as _;
    let Some(_in_flight) = state.drain.enter() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            FailureKind::Draining.code(),
            "this replica is shutting down; retry the request",
        );
    };
    let name = format!("{} {}", request.method(), request.uri().path());
    // `Body` is not `Sync`: no reference to the request may live across the await.
    let (traceparent, tracestate) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (header("traceparent"), header("tracestate"))
    };
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        otel.name = %name,
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(tp) = traceparent.filter(|tp| TraceContext::parse(tp).is_some()) {
        crate::telemetry::set_parent(&span, &tp, tracestate.as_deref());
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The limit layer for routes that do not deliver events.
pub(crate) fn body_limit(state: &AppState) -> tower_http::limit::RequestBodyLimitLayer {
    tower_http::limit::RequestBodyLimitLayer::new(state.config.max_body_bytes)
}

/// Alive, and which process this is: a supervisor that chose the port checks it is talking to
/// the process it started (another one may have taken the port in between).
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "function": state.intake.manifest().name,
        "pid": std::process::id(),
    }))
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

/// Prometheus text exposition of this function's metrics.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.intake.instruments().render(),
    )
        .into_response()
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

/// After the limit, at most this much more is read and thrown away, so that the sender is not
/// reset mid-upload and actually receives the `413` (or Dapr reply) instead of a broken
/// connection. Anything larger is cut off.
const DRAIN_EXTRA: usize = 1 << 20;
/// Longest time spent reading (and draining) a body.
const READ_TIME: std::time::Duration = std::time::Duration::from_secs(30);

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
    if declared.is_some_and(|n| n > (limit.saturating_add(DRAIN_EXTRA)) as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            // A broken connection: the same bytes may arrive whole next time.
            let frame = frame.map_err(|e| {
                Failure::new(
                    FailureKind::BodyIncomplete,
                    format!("request body could not be read completely: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen <= limit {
                    buf.extend_from_slice(&data);
                } else if seen > limit.saturating_add(DRAIN_EXTRA) {
                    break;
                }
            }
        }
        Ok::<(), Failure>(())
    };
    let outcome = tokio::time::timeout(READ_TIME, read).await;
    if seen > limit {
        return Err(too_large());
    }
    match outcome {
        Ok(Ok(())) => Ok(buf.freeze()),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::new(
            FailureKind::BodyIncomplete,
            format!("request body did not arrive within {READ_TIME:?}"),
        )),
    }
}

/// Trace and Kafka facts from the request headers (Dapr forwards broker metadata as headers),
/// and the message as it arrived.
pub(crate) fn delivery_meta(headers: &HeaderMap, body: &[u8]) -> DeliveryMeta {
    DeliveryMeta {
        hop_traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        kafka: crate::event::KafkaCoordinates::from_metadata(|name| {
            headers.get(name).and_then(|v| v.to_str().ok())
        }),
        source_topic: None,
        original: Some(original(headers, body)),
    }
}

/// The original message for a dead-letter record: body and headers, secrets removed.
pub(crate) fn original(headers: &HeaderMap, body: &[u8]) -> Original {
    Original::from_http(headers, body)
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
    let response = request.send().await.map_err(|e| {
        let causes: Vec<String> = crate::error::chain(&e).map(ToString::to_string).collect();
        format!("{what}: {}", causes.join(": "))
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(512).collect();
    Err(format!("{what} answered {status}: {body}"))
}
