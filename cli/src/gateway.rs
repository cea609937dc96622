//! The API gateway — the same code in `zerofn dev` and in production (`zerofn gateway`):
//!
//! - `/fn/{name}/...` proxies to an HTTP function; the backend holds the request while the
//!   first replica starts, and answers 503 (start failed) or 504 (timeout) with the reason;
//! - `POST /events` takes CloudEvents in binary, structured or batch mode, checks them against
//!   the contracts, and appends each to the topic of its type;
//! - `POST /async/{name}` wraps any request into an event on `async.{name}` and answers 202
//!   with the event id;
//! - every request starts (or continues) a trace, and `/metrics` counts requests by function
//!   and status, their latency, and requests queued at zero.
//!
//! A refused event gets a precise status and message, and its original bytes and the reason
//! are appended to the `deadletter.gateway` topic (its record id in `zerofn-dead-letter`).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use base64::Engine as _;
use serde_json::{Value, json};
use tracing::Instrument as _;
use zerofn::{
    edge::{Accepted, Edge, Rejection},
    instruments::GatewayInstruments,
};

/// The topic that receives what the gateway refuses.
pub(crate) const DEAD_LETTER_TOPIC: &str = "deadletter.gateway";

/// A boxed future (the backend is a trait object).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A record to append through the backend.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) value: Vec<u8>,
    pub(crate) traceparent: Option<String>,
}

/// An append that stopped: `stored` are the positions of the records before the failure, which
/// were stored; the rest were not.
#[derive(Debug)]
pub(crate) struct Partial {
    pub(crate) stored: Vec<Value>,
    pub(crate) reason: String,
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Partial {
    /// Nothing was stored.
    pub(crate) fn none(reason: impl Into<String>) -> Self {
        Partial {
            stored: Vec::new(),
            reason: reason.into(),
        }
    }
}

/// Where the gateway sends requests: the local engine, or the cluster.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Append records in order; one JSON description of where each landed. On a failure, the
    /// ones before it that were stored (none where appends are atomic, as the local log's are).
    fn append(&self, records: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Value>, Partial>>;
    /// A base URL for a request to HTTP function `name`, held until a replica is ready. The
    /// guard keeps the replica (and the demand) counted until the response is sent.
    fn upstream<'a>(
        &'a self,
        name: &'a str,
        queued: &'a metrics::Gauge,
    ) -> BoxFuture<'a, Result<Upstream, Refusal>>;
    /// Whether `name` is an HTTP function this backend knows.
    fn is_http_function(&self, name: &str) -> bool;
    /// Every function name (metric labels).
    fn functions(&self) -> Vec<String>;
    /// The engine's status (`GET /_zerofn/status`), if this backend has one.
    fn status(&self) -> Option<Value>;
    /// Whether something replays `async.{name}` here (the local engine does). Where nothing
    /// would, `POST /async` is refused rather than accepted and never run.
    fn replays_async(&self) -> bool;
}

/// A ready upstream for one request.
pub(crate) struct Upstream {
    pub(crate) base: String,
    pub(crate) timeout: Duration,
    pub(crate) _guard: Box<dyn Send>,
}

/// Why no upstream.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

#[derive(Clone)]
struct Gateway {
    backend: Arc<dyn Backend>,
    edge: Arc<Edge>,
    metrics: Arc<GatewayInstruments>,
    client: reqwest::Client,
    max_body: usize,
}

/// The gateway's routes over `backend`.
pub(crate) fn router(backend: Arc<dyn Backend>, max_body: usize) -> Result<Router, zerofn::Error> {
    let metrics = Arc::new(GatewayInstruments::new(&backend.functions()));
    let state = Gateway {
        backend,
        edge: Arc::new(Edge::new()?),
        metrics,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default(),
        max_body,
    };
    Ok(Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .route("/_zerofn/status", get(status))
        .route("/events", post(events))
        .route("/async/{name}", post(async_invoke))
        .route("/async/{name}/{*rest}", post(async_invoke))
        .route("/fn/{name}", any(proxy_root))
        .route("/fn/{name}/{*rest}", any(proxy))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route: the gateway serves /fn/{name}/..., POST /events, POST /async/{name}, /healthz, /metrics",
            )
        })
        .with_state(state))
}

fn unknown_function(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_function",
        &format!("no HTTP function named {name:?} (its function.toml needs an [http] section)"),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

async fn metrics_text(State(g): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        g.metrics.render(),
    )
        .into_response()
}

async fn status(State(g): State<Gateway>) -> Response {
    match g.backend.status() {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this gateway has no local engine",
        ),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The server span of one gateway request, continuing the caller's trace.
fn request_span(name: &str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "gateway.request",
        otel.kind = "server",
        otel.name = %name,
        http.response.status_code = tracing::field::Empty,
    );
    zerofn::edge::continue_trace(
        &span,
        header_str(headers, "traceparent"),
        header_str(headers, "tracestate"),
    );
    span
}

async fn read_limited(g: &Gateway, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, g.max_body).await.map_err(|_| {
        g.metrics.rejected("body_too_large");
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!(
                "request body exceeds the gateway's limit of {} bytes (--max-body-bytes)",
                g.max_body
            ),
        )
    })
}

/// `POST /events`.
async fn events(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let span = request_span("POST /events", &headers);
    let response = async {
        let bytes = match read_limited(&g, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        match g.edge.decode(&headers, &bytes) {
            Ok(events) => append_events(&g, events, &headers, &tracing::Span::current()).await,
            Err(rejection) => refuse(&g, &headers, &bytes, rejection).await,
        }
    }
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    g.metrics
        .request("", "events", response.status().as_u16(), started.elapsed());
    response
}

async fn append_events(
    g: &Gateway,
    events: Vec<Accepted>,
    headers: &HeaderMap,
    span: &tracing::Span,
) -> Response {
    let incoming = header_str(headers, "traceparent");
    let mut records = Vec::with_capacity(events.len());
    let mut accepted = Vec::with_capacity(events.len());
    for mut e in events {
        // The event continues its own trace if it carries one, else the request's.
        let parent = e.traceparent().map(str::to_string);
        let tp = zerofn::edge::traceparent_for(span, parent.as_deref().or(incoming));
        e.set_traceparent(&tp);
        records.push(Outgoing {
            topic: e.ty.clone(),
            key: e.partition_key.clone(),
            value: e.envelope.to_string().into_bytes(),
            traceparent: Some(tp),
        });
        accepted.push((e.ty, e.id));
    }
    let described = |accepted: Vec<(String, String)>, positions: Vec<Value>| -> Vec<Value> {
        accepted
            .into_iter()
            .zip(positions)
            .map(|((ty, id), mut pos)| {
                g.metrics.events(&ty, 1);
                if let Value::Object(m) = &mut pos {
                    m.insert("id".into(), id.into());
                    m.insert("type".into(), ty.into());
                }
                pos
            })
            .collect()
    };
    match g.backend.append(records).await {
        Ok(positions) => {
            let accepted = described(accepted, positions);
            (StatusCode::ACCEPTED, Json(json!({"accepted": accepted}))).into_response()
        }
        Err(p) if p.stored.is_empty() => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_unavailable",
            &format!(
                "the events were not stored (nothing was appended); retry: {}",
                p.reason
            ),
        ),
        // Some were stored: say which, so the client retries exactly the others.
        Err(p) => {
            let rest = accepted.split_off(p.stored.len());
            let stored = described(accepted, p.stored);
            let not_stored: Vec<Value> = rest
                .into_iter()
                .map(|(ty, id)| json!({"id": id, "type": ty, "error": "not_stored", "message": p.reason}))
                .collect();
            (
                StatusCode::MULTI_STATUS,
                Json(json!({
                    "accepted": stored,
                    "failed": not_stored,
                    "message": "the events under `accepted` were stored; those under `failed` were not: retry only those",
                })),
            )
                .into_response()
        }
    }
}

/// Refuse a request: the status and message, plus a dead-letter record of the original bytes.
async fn refuse(g: &Gateway, headers: &HeaderMap, bytes: &[u8], r: Rejection) -> Response {
    g.metrics.rejected(r.code);
    let record = g.edge.dead_letter(headers, bytes, &r);
    let id = record.id.clone();
    let stored = g
        .backend
        .append(vec![Outgoing {
            topic: DEAD_LETTER_TOPIC.into(),
            key: None,
            value: serde_json::to_vec(&record).unwrap_or_default(),
            traceparent: header_str(headers, "traceparent").map(str::to_string),
        }])
        .await;
    let mut response = error(r.status, r.code, &r.message);
    match stored {
        Ok(_) => {
            if let Ok(v) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("zerofn-dead-letter", v);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store a refused request in {DEAD_LETTER_TOPIC}")
        }
    }
    response
}

/// `POST /async/{name}`: the request becomes an event on `async.{name}`; 202 with its id.
async fn async_invoke(State(g): State<Gateway>, request: Request) -> Response {
    let name = request
        .uri()
        .path()
        .trim_start_matches("/async/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let span = request_span(&format!("POST /async/{name}"), request.headers());
    let response = async {
        if !g.backend.is_http_function(&name) {
            return unknown_function(&name);
        }
        if !g.backend.replays_async() {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "async_not_available",
                "asynchronous invocation needs a consumer of async.{name}, which only the local engine \
                 (zerofn dev) runs; call /fn/{name} synchronously, or publish an event the function subscribes to",
            );
        }
        let (parts, body) = request.into_parts();
        let bytes = match read_limited(&g, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let tp = zerofn::edge::traceparent_for(
            &tracing::Span::current(),
            header_str(&parts.headers, "traceparent"),
        );
        let headers: serde_json::Map<String, Value> = parts
            .headers
            .iter()
            .filter(|(n, _)| !is_hop_by_hop(n) && n.as_str() != "traceparent")
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_string(), Value::from(v)))
            })
            .collect();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .strip_prefix(&format!("/async/{name}"))
            .map(|rest| {
                if rest.is_empty() || rest.starts_with('?') {
                    format!("/{rest}")
                } else {
                    rest.to_string()
                }
            })
            .unwrap_or_else(|| "/".into());
        let event = json!({
            "specversion": "1.0",
            "id": id,
            "source": "/zerofn/gateway/async",
            "type": "dev.zerofn.async.request",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "traceparent": tp,
            "data": {
                "method": parts.method.as_str(),
                "path": path,
                "headers": headers,
                "body_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            },
        });
        match g
            .backend
            .append(vec![Outgoing {
                topic: crate::dev::engine::async_topic(&name),
                key: None,
                value: event.to_string().into_bytes(),
                traceparent: Some(tp),
            }])
            .await
        {
            Ok(_) => (
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "function": name})),
            )
                .into_response(),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                &format!("not stored; retry: {e}"),
            ),
        }
    }
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    g.metrics.request(
        &name,
        "async",
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
    )
}

async fn proxy_root(state: State<Gateway>, Path(name): Path<String>, request: Request) -> Response {
    forward(state, name, String::new(), request).await
}

async fn proxy(
    state: State<Gateway>,
    Path((name, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    forward(state, name, rest, request).await
}

/// `/fn/{name}/{rest}`: hold until a replica is ready, then proxy.
async fn forward(
    State(g): State<Gateway>,
    name: String,
    rest: String,
    request: Request,
) -> Response {
    let started = Instant::now();
    let span = request_span(
        &format!("{} /fn/{name}", request.method()),
        request.headers(),
    );
    let response = async {
        if !g.backend.is_http_function(&name) {
            return unknown_function(&name);
        }
        let queued = g.metrics.queued(&name);
        let upstream = match g.backend.upstream(&name, &queued).await {
            Ok(u) => u,
            Err(r) => return error(r.status, r.code, &r.message),
        };
        let (parts, body) = request.into_parts();
        let bytes = match read_limited(&g, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let url = format!("{}/{rest}{query}", upstream.base);
        let method =
            reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(Method::GET);
        let mut out = g
            .client
            .request(method, url)
            .timeout(upstream.timeout)
            .body(bytes);
        for (n, v) in &parts.headers {
            if !is_hop_by_hop(n) && n.as_str() != "traceparent" {
                out = out.header(n, v);
            }
        }
        let tp = zerofn::edge::traceparent_for(
            &tracing::Span::current(),
            header_str(&parts.headers, "traceparent"),
        );
        out = out.header("traceparent", tp);
        let answer = match out.send().await {
            Ok(a) => a,
            Err(e) if e.is_timeout() => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!(
                        "function {name} did not answer within {:?}",
                        upstream.timeout
                    ),
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    &format!("function {name} failed to answer: {e}"),
                );
            }
        };
        let status = answer.status().as_u16();
        let mut response = Response::builder().status(status);
        for (n, v) in answer.headers() {
            if !is_hop_by_hop(n) {
                response = response.header(n, v);
            }
        }
        let body = answer.bytes().await.unwrap_or_default();
        drop(upstream);
        response.body(Body::from(body)).unwrap_or_else(|_| {
            error(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "unreadable answer",
            )
        })
    }
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    g.metrics
        .request(&name, "fn", response.status().as_u16(), started.elapsed());
    response
}
