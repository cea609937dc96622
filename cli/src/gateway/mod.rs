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
//!
//! With a configuration file ([`config`]) the public routes are guarded: a per-address rate
//! limit, then the caller's credential ([`auth`], 401 without one), its rate limit, and what
//! its policy allows ([`policy`], 403 otherwise). `/metrics` and `/_zerofn/status` are then
//! served on the internal listener only.

pub(crate) mod auth;
pub(crate) mod config;
mod cors;
mod limit;
mod policy;
mod upstream;

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
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
    /// A request to HTTP function `name` (`what`: method and path) was answered `status`
    /// after `took` (the local engine shows it on its dashboard).
    fn served(&self, _name: &str, _what: &str, _status: u16, _took: Duration) {}
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
    client: upstream::Client,
    max_body: usize,
    guard: Option<Arc<Guard>>,
    limits: Arc<config::Limits>,
    /// One bucket for what the gateway records on `deadletter.gateway`.
    dead_letters: Arc<limit::Limiter>,
    /// Requests held per function while it has no ready replica.
    held: Arc<std::collections::HashMap<String, std::sync::atomic::AtomicUsize>>,
}

/// What guards the public routes when a configuration file is given.
#[derive(Debug)]
pub(crate) struct Guard {
    /// `None`: no `[auth]` (an open gateway, still rate-limited per address).
    auth: Option<auth::Authenticator>,
    per_credential: limit::Limiter,
    per_address: limit::Limiter,
    cors: std::collections::BTreeMap<String, cors::Cors>,
}

impl Guard {
    /// Read the configuration file at `path` (every error names it; the JWKS file is read too):
    /// the guard, and the limits that go in [`Options::limits`].
    pub(crate) async fn load(
        path: &std::path::Path,
    ) -> Result<(Guard, config::Limits), config::ConfigError> {
        let c = config::GatewayConfig::load(path, |v| std::env::var(v).ok())?;
        let auth = match &c.auth {
            Some(a) => Some(auth::Authenticator::new(a).await.map_err(|mut e| {
                e.file = path.display().to_string();
                e
            })?),
            None => None,
        };
        let guard = Guard {
            auth,
            per_credential: limit::Limiter::new(c.limits.per_credential),
            per_address: limit::Limiter::new(c.limits.per_address),
            cors: c.cors,
        };
        Ok((guard, c.limits))
    }

    /// No `[auth]`: every caller may call everything.
    pub(crate) fn is_open(&self) -> bool {
        self.auth.is_none()
    }
}

/// How the routes are served.
pub(crate) struct Options {
    /// Largest request body accepted.
    pub(crate) max_body: usize,
    /// Credentials, policies and rate limits (`None`: open, unlimited — `zerofn dev`'s default).
    pub(crate) guard: Option<Guard>,
    /// The caps and timeouts every request meets (the configuration's, or the defaults).
    pub(crate) limits: config::Limits,
    /// Serve `/metrics` and `/_zerofn/status` on the public routes too (an open local engine).
    pub(crate) internal_on_public: bool,
}

/// The public routes, and the internal ones (`/metrics`, `/_zerofn/status`, `/healthz`) for a
/// listener only the cluster (Prometheus) reaches.
pub(crate) struct Routers {
    pub(crate) public: Router,
    pub(crate) internal: Router,
}

/// The gateway's routes over `backend`.
pub(crate) fn router(backend: Arc<dyn Backend>, options: Options) -> anyhow::Result<Routers> {
    let backend_functions = backend.functions();
    let metrics = Arc::new(GatewayInstruments::new(&backend_functions));
    let state = Gateway {
        backend,
        edge: Arc::new(Edge::new()?),
        metrics,
        client: upstream::Client::new()?,
        max_body: options.max_body,
        guard: options.guard.map(Arc::new),
        held: Arc::new(
            backend_functions
                .iter()
                .map(|f| (f.clone(), std::sync::atomic::AtomicUsize::new(0)))
                .collect(),
        ),
        dead_letters: Arc::new(limit::Limiter::new(options.limits.dead_letters)),
        limits: Arc::new(options.limits),
    };
    let internal = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/_zerofn/status", get(status));
    let guarded = Router::new()
        .route("/events", post(events))
        .route("/async/{name}", post(async_invoke))
        .route("/async/{name}/{*rest}", post(async_invoke))
        .route("/fn/{name}", any(no_event_route))
        .route("/fn/{name}/", any(no_event_route))
        .route("/fn/{name}/{*rest}", any(proxy))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    let mut public = Router::new().route("/healthz", get(healthz)).merge(guarded);
    if options.internal_on_public {
        public = public
            .route("/metrics", get(metrics_text))
            .route("/_zerofn/status", get(status));
    }
    let public = public
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route: the gateway serves /fn/{name}/..., POST /events, POST /async/{name}, /healthz",
            )
        })
        .with_state(state.clone());
    Ok(Routers {
        public,
        internal: internal.with_state(state),
    })
}

/// Serve `router` on `listener` until `stop` turns true, then finish the requests in flight
/// (at most [`DRAIN`]). Each request carries its connection's peer address (the per-address
/// limit); a client that has not sent its request headers within `header_timeout` is cut off.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    use tower::ServiceExt as _;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let connections = GracefulShutdown::new();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The peer goes on each request as axum's `ConnectInfo` (a cheap wrapper per
                    // connection, not a re-layered router).
                    let service = TowerToHyperService::new(router.clone().map_request(
                        move |mut request: http::Request<hyper::body::Incoming>| {
                            request.extensions_mut().insert(ConnectInfo(peer));
                            request
                        },
                    ));
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = connections.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}: closing");
    }
    Ok(())
}

/// The most a request line and its headers may take (more is a 431).
const MAX_HEADER_BYTES: usize = 32 << 10;

/// Longest the gateway waits for its requests in flight once told to stop.
const DRAIN: Duration = Duration::from_secs(30);

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// The caller's address: the peer, or the first `X-Forwarded-For` hop when the configuration
/// trusts the proxy in front.
fn client_address(request: &Request, trust_forwarded: bool) -> String {
    if trust_forwarded
        && let Some(first) = header_str(request.headers(), "x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    {
        return first.to_string();
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A 429 with `Retry-After`.
fn too_many(g: &Gateway, what: &str, wait: Duration) -> Response {
    g.metrics.rejected("rate_limited");
    let secs = limit::retry_after_secs(wait);
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("too many requests from this {what}: retry after {secs} s"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Guard a public route: the address's rate limit, the credential (401), its rate limit, and
/// the function its policy allows (403); the principal goes on to the handler (events are
/// checked there, once decoded).
async fn admit(State(g): State<Gateway>, request: Request, next: Next) -> Response {
    let Some(guard) = g.guard.clone() else {
        return next.run(request).await;
    };
    let function = function_of(request.uri().path());
    let cors = function.as_deref().and_then(|f| guard.cors.get(f));
    let origin = header_str(request.headers(), "origin").map(str::to_string);
    // A browser's preflight carries no credential: answered here, for the function's policy.
    if let Some(c) = cors
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match c.preflight(request.headers()) {
            Ok(headers) => (StatusCode::NO_CONTENT, headers).into_response(),
            Err(why) => {
                g.metrics.rejected("cors");
                error(StatusCode::FORBIDDEN, "cors", &why)
            }
        };
    }
    let mut response = guarded(&g, &guard, function, request, next).await;
    // Every answer to an allowed origin says so, refusals included (so the page can read them).
    if let (Some(c), Some(origin)) = (cors, origin) {
        response.headers_mut().extend(c.actual(&origin));
    }
    response
}

/// The function a `/fn/{name}/…` or `/async/{name}/…` path calls.
fn function_of(path: &str) -> Option<String> {
    path.strip_prefix("/fn/")
        .or_else(|| path.strip_prefix("/async/"))
        .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
}

async fn guarded(
    g: &Gateway,
    guard: &Guard,
    function: Option<String>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = Instant::now();
    let address = client_address(&request, g.limits.trust_forwarded);
    if let Err(wait) = guard.per_address.check(&address, now) {
        return too_many(g, "address", wait);
    }
    let Some(authenticator) = &guard.auth else {
        return next.run(request).await;
    };
    let principal = match authenticator.authenticate(request.headers()).await {
        Ok(p) => p,
        Err(e) => {
            g.metrics.rejected("unauthenticated");
            let (message, challenge) = match &e {
                auth::AuthError::Missing => (
                    "this gateway needs a credential: Authorization: Bearer <API key or JWT>"
                        .to_string(),
                    r#"Bearer realm="zerofn""#.to_string(),
                ),
                auth::AuthError::Invalid(why) => (
                    format!("the credential is not accepted: {why}"),
                    format!(
                        r#"Bearer realm="zerofn", error="invalid_token", error_description="{}""#,
                        why.replace(['"', '\\'], "'")
                    ),
                ),
            };
            tracing::warn!(path = %request.uri().path(), client = %address, reason = %message, "refused: no valid credential");
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthenticated", &message);
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return r;
        }
    };
    if let Err(wait) = guard.per_credential.check(&principal.name, now) {
        return too_many(g, "credential", wait);
    }
    if let Some(name) = function
        && let Err(f) = principal.policy.function(&name)
    {
        return forbidden(g, &principal, &f);
    }
    request.extensions_mut().insert(Arc::new(principal));
    next.run(request).await
}

fn forbidden(g: &Gateway, principal: &auth::Principal, f: &policy::Forbidden) -> Response {
    g.metrics.rejected("forbidden");
    tracing::warn!(credential = %principal.name, reason = %f.0, "refused: not allowed");
    error(StatusCode::FORBIDDEN, "forbidden", &f.0)
}

/// `/fn/{name}` with no path of its own: that is an HTTP function's event route (`POST /`
/// under Knative), which only its event source may call.
async fn no_event_route(Path(name): Path<String>) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!(
            "/fn/{name} has no route of its own: call /fn/{name}/<path> (a function's event route is not reachable through the gateway)"
        ),
    )
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
    let read = axum::body::to_bytes(body, g.max_body);
    match tokio::time::timeout(g.limits.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => {
            g.metrics.rejected("body_too_large");
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!(
                    "request body exceeds the gateway's limit of {} bytes (--max-body-bytes)",
                    g.max_body
                ),
            ))
        }
        Err(_) => {
            g.metrics.rejected("body_timeout");
            Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "the request body did not arrive within {:?} (limits.body_timeout)",
                    g.limits.body_timeout
                ),
            ))
        }
    }
}

/// `POST /events`.
async fn events(State(g): State<Gateway>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let principal = parts.extensions.get::<Arc<auth::Principal>>().cloned();
    let span = request_span("POST /events", &headers);
    let response = async {
        let bytes = match read_limited(&g, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let events = match g.edge.decode(&headers, &bytes) {
            Ok(events) => events,
            Err(rejection) => return refuse(&g, &headers, &bytes, rejection).await,
        };
        // Only a configured gateway caps batches (an open local engine takes what it is sent).
        if let Some(max) = g.guard.as_ref().map(|_| g.limits.max_batch)
            && events.len() > max
        {
            let r = Rejection {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "batch_too_large",
                message: format!(
                    "{} events in one request; this gateway takes at most {max} (limits.max_batch)",
                    events.len()
                ),
            };
            return refuse(&g, &headers, &bytes, r).await;
        }
        if let Some(p) = &principal {
            for (i, e) in events.iter().enumerate() {
                let subject = e.envelope.get("subject").and_then(Value::as_str);
                if let Err(mut f) = p.policy.event(&e.ty, subject, p.subject.as_deref()) {
                    if events.len() > 1 {
                        f.0 = format!("event [{i}] ({}): {}", e.id, f.0);
                    }
                    return forbidden(&g, p, &f);
                }
            }
        }
        append_events(&g, events, &headers, &tracing::Span::current()).await
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
    let response = error(r.status, r.code, &r.message);
    // Bounded, so refused input cannot be used to fill Kafka: a rate for the whole gateway,
    // and the first `dead_letter_bytes` of the original.
    if g.dead_letters.check("all", Instant::now()).is_err() {
        g.metrics.rejected("dead_letter_dropped");
        tracing::warn!(
            code = r.code,
            "refused input past limits.dead_letters: not recorded"
        );
        return response;
    }
    let cap = g.limits.dead_letter_bytes;
    let (bytes, r) = if bytes.len() > cap {
        let mut r = r;
        r.message = format!(
            "{} (the original is cut to its first {cap} of {} bytes: limits.dead_letter_bytes)",
            r.message,
            bytes.len()
        );
        (&bytes[..cap], r)
    } else {
        (bytes, r)
    };
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
    let mut response = response;
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
            | "proxy-authenticate"
            | "proxy-authorization"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
    )
}

/// The headers a message names in `Connection` (hop-by-hop too, RFC 9110 §7.6.1), lower case.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    header_tokens(headers, header::CONNECTION)
}

/// The comma-separated tokens of every `name` header, trimmed and in lower case
/// (`Connection`, `Access-Control-Request-Headers`).
fn header_tokens(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether `name` goes on to the next hop: not hop-by-hop, not named in `Connection`.
fn end_to_end(name: &HeaderName, named: &[String]) -> bool {
    !is_hop_by_hop(name) && !named.iter().any(|n| n == name.as_str())
}

/// The headers a proxied request carries to the function: the client's end-to-end headers
/// but `traceparent` (the gateway sets its own) and `X-Zerofn-*`; `X-Forwarded-*` set by the
/// gateway (extending a trusted proxy's, never a client's); and, for an authenticated caller,
/// who it is (`X-Zerofn-Principal`, `X-Zerofn-Subject`). An API key stays at the gateway (its
/// `Authorization` is not passed on); a JWT goes on, for functions that read its claims.
fn upstream_headers(
    client: &HeaderMap,
    principal: Option<&auth::Principal>,
    trust: bool,
    peer: &str,
) -> HeaderMap {
    let named = connection_named(client);
    let mut out = HeaderMap::new();
    for (n, v) in client {
        let name = n.as_str();
        let forwarded = name.starts_with("x-forwarded-") || name == "forwarded";
        let ours = name.starts_with("x-zerofn-") || name == "traceparent";
        let key = name == "authorization" && principal.is_some_and(|p| p.api_key);
        if end_to_end(n, &named) && !ours && !key && (trust || !forwarded) {
            out.append(n.clone(), v.clone());
        }
    }
    let set = |out: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.insert(HeaderName::from_static(name), v);
        }
    };
    let xff = match header_str(client, "x-forwarded-for") {
        Some(before) if trust => format!("{before}, {peer}"),
        _ => peer.to_string(),
    };
    set(&mut out, "x-forwarded-for", &xff);
    let proto = header_str(client, "x-forwarded-proto")
        .filter(|_| trust)
        .unwrap_or("http");
    set(&mut out, "x-forwarded-proto", proto);
    if let Some(host) = header_str(client, "host") {
        set(&mut out, "x-forwarded-host", host);
    }
    if let Some(p) = principal {
        set(&mut out, "x-zerofn-principal", &p.name);
        if let Some(s) = &p.subject {
            set(&mut out, "x-zerofn-subject", s);
        }
    }
    out
}

/// Decrements a function's held-request count when the request stops waiting.
struct Held<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
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
    let what = format!("{} /{rest}", request.method());
    let trust = g.limits.trust_forwarded;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let response = async {
        if !g.backend.is_http_function(&name) {
            return unknown_function(&name);
        }
        // Held while the function has no ready replica: bounded, so a flood at a cold function
        // is refused rather than piled up.
        let Some(count) = g.held.get(&name) else {
            return unknown_function(&name);
        };
        let _held = Held(count);
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= g.limits.max_held {
            g.metrics.rejected("too_many_held");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_held",
                &format!(
                    "function {name} already has {} requests waiting for a replica (limits.max_held): retry shortly",
                    g.limits.max_held
                ),
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            return r;
        }
        let queued = g.metrics.queued(&name);
        let upstream = match g.backend.upstream(&name, &queued).await {
            Ok(u) => u,
            Err(r) => return error(r.status, r.code, &r.message),
        };
        drop(_held);
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
        let rest = upstream::rest_of(parts.uri.path());
        let uri = format!("{}/{rest}{query}", upstream.base);
        let mut headers = upstream_headers(
            &parts.headers,
            parts.extensions.get::<Arc<auth::Principal>>().map(AsRef::as_ref),
            trust,
            peer.as_deref().unwrap_or("unknown"),
        );
        let tp = zerofn::edge::traceparent_for(
            &tracing::Span::current(),
            header_str(&parts.headers, "traceparent"),
        );
        if let Ok(tp) = HeaderValue::from_str(&tp) {
            headers.insert(HeaderName::from_static("traceparent"), tp);
        }
        let mut out = match axum::http::Request::builder()
            .method(parts.method)
            .uri(&uri)
            .body(http_body_util::Full::new(bytes))
        {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    &format!("function {name}: its route makes no valid URI ({uri}): {e}"),
                );
            }
        };
        *out.headers_mut() = headers;
        let answer = match g
            .client
            .exchange(out, upstream.timeout, g.limits.max_response_bytes)
            .await
        {
            Ok(a) => a,
            Err(failure) => {
                if matches!(failure, upstream::Failure::TooLarge(_)) {
                    g.metrics.rejected("upstream_too_large");
                }
                let (status, code, message) = failure.answer(&name);
                return error(status, code, &message);
            }
        };
        let mut response = Response::builder().status(answer.status);
        let named = connection_named(&answer.headers);
        for (n, v) in &answer.headers {
            if end_to_end(n, &named) {
                response = response.header(n, v);
            }
        }
        let body = answer.body;
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
    g.backend
        .served(&name, &what, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_function_is_sent_about_its_caller() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer zk_secret"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-zerofn-principal", "admin"),
            ("content-type", "application/json"),
            ("host", "api.test"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ] {
            client.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let key = auth::Principal {
            name: "importer".into(),
            policy: config::Policy::default(),
            subject: None,
            api_key: true,
        };
        let h = upstream_headers(&client, Some(&key), false, "10.1.2.3");
        assert!(
            !h.contains_key("authorization"),
            "an API key stays at the gateway"
        );
        assert_eq!(
            h["x-zerofn-principal"], "importer",
            "not the client's claim"
        );
        assert_eq!(
            h["x-forwarded-for"], "10.1.2.3",
            "the client's X-Forwarded-For is dropped"
        );
        assert_eq!(h["x-forwarded-host"], "api.test");
        assert_eq!(h["content-type"], "application/json");
        assert!(!h.contains_key("x-hop") && !h.contains_key("host"));
        let jwt = auth::Principal {
            name: "jwt:u-1".into(),
            subject: Some("u-1".into()),
            api_key: false,
            ..key
        };
        let h = upstream_headers(&client, Some(&jwt), true, "10.1.2.3");
        assert_eq!(h["authorization"], "Bearer zk_secret", "a JWT goes on");
        assert_eq!(h["x-zerofn-subject"], "u-1");
        assert_eq!(
            h["x-forwarded-for"], "6.6.6.6, 10.1.2.3",
            "a trusted proxy's chain, extended"
        );
        let open = upstream_headers(&client, None, false, "10.1.2.3");
        assert!(
            !open.contains_key("x-zerofn-principal"),
            "the client's is dropped, none set"
        );
    }

    #[test]
    fn headers_named_in_connection_are_hop_by_hop_too() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        let named = connection_named(&h);
        assert_eq!(named, vec!["keep-alive", "x-secret-hop", "x-other"]);
        for (name, passes) in [
            ("x-secret-hop", false),
            ("x-other", false),
            ("connection", false),
            ("proxy-authorization", false),
            ("transfer-encoding", false),
            ("content-type", true),
            ("authorization", true),
        ] {
            assert_eq!(
                end_to_end(&HeaderName::from_static(name), &named),
                passes,
                "{name}"
            );
        }
    }
}
