//! The engine's dashboard: one page (HTML, CSS and JS embedded in the binary), fed by a
//! server-sent event stream, and the dead-letter actions behind its buttons.
//!
//! - `GET /_zerofn/dashboard`: the page (and its `dashboard.css`, `dashboard.js`).
//! - `GET /_zerofn/dashboard/stream`: `text/event-stream`; every [`TICK`] an `update` event
//!   with every function's status and figures, the deliveries and scaling decisions since the
//!   previous update (all that are kept, in the first), and the newest dead letters.
//! - `GET /_zerofn/dashboard/dead-letters/{id}`: one dead letter and the event a replay sends.
//! - `POST /_zerofn/dashboard/dead-letters/{id}/replay`: what `zerofn dlq replay` does (the same
//!   code), optionally with the event's `data` fixed up (`{"data": …}`); the runtime applies a
//!   replay of one dead letter at most once. The request must carry `X-Zerofn-Dashboard: 1`,
//!   which a page of another origin cannot send without a preflight the engine never allows.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

use super::engine::Engine;
use crate::dlq::{Letters, Target, replay, replay_event};

/// How often the stream sends an update.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// Dead letters sent with each update.
const DEAD_LETTERS_SHOWN: usize = 50;
/// The header a replay must carry (see the module's docs).
const CSRF_HEADER: &str = "x-zerofn-dashboard";

const PAGE: &str = include_str!("dashboard/dashboard.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
/// Everything the page loads comes from the engine; nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes.
pub(crate) fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/_zerofn/dashboard", get(page))
        .route("/_zerofn/dashboard/dashboard.css", get(style))
        .route("/_zerofn/dashboard/dashboard.js", get(script))
        .route("/_zerofn/dashboard/stream", get(stream))
        .route("/_zerofn/dashboard/dead-letters/{id}", get(dead_letter))
        .route(
            "/_zerofn/dashboard/dead-letters/{id}/replay",
            post(replay_dead_letter),
        )
        .with_state(engine)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Where dead letters are read: the engine's state dir, or its `--store`.
async fn letters(engine: &Engine) -> anyhow::Result<Letters> {
    Letters::open(
        engine.opts.store.as_deref(),
        &engine.opts.state_dir,
        engine.log.kafka(),
    )
    .await
}

/// The functions' SQLite stores that exist now (none to watch with one `--store`).
fn stores_present(engine: &Engine) -> Vec<std::path::PathBuf> {
    if engine.opts.store.is_some() {
        return Vec::new();
    }
    crate::dlq::function_stores(&engine.opts.state_dir).unwrap_or_default()
}

/// One update: every function's status and figures, what happened after `after`, and the
/// newest dead letters (`None` when they could not be read this time).
async fn update(engine: &Engine, after: u64, letters: Option<&Letters>) -> (Value, u64) {
    let mut status = engine.status();
    if let Some(functions) = status["functions"].as_array_mut() {
        for f in functions {
            let name = f["name"].as_str().unwrap_or_default().to_string();
            let figures = engine.activity.figures(&name);
            f["figures"] = serde_json::to_value(figures).unwrap_or(Value::Null);
        }
    }
    let (events, decisions, last) = engine.activity.since(after);
    let dead_letters = match letters {
        Some(l) => match l.list(None, None, Some(DEAD_LETTERS_SHOWN)).await {
            Ok(list) => Value::Array(list.iter().map(summary).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "the dashboard cannot list dead letters");
                Value::Null
            }
        },
        None => Value::Null,
    };
    (
        json!({
            "at": chrono::Utc::now().timestamp_millis(),
            "functions": status["functions"],
            "topics": status["topics"],
            "events": events,
            "decisions": decisions,
            "dead_letters": dead_letters,
        }),
        last,
    )
}

/// A dead letter as the list shows it (the original stays out: `GET …/dead-letters/{id}`).
fn summary(d: &zerofn::dead_letter::DeadLetter) -> Value {
    json!({
        "id": d.id,
        "function": d.function,
        "type": d.event_type,
        "event_id": d.event_id,
        "topic": d.topic,
        "reason": d.error.kind,
        "message": d.error.messages.join(": "),
        "attempts": d.attempts,
        "last_failure": d.last_failure,
        "trace_id": d.trace_id,
    })
}

async fn stream(State(engine): State<Arc<Engine>>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut after = 0;
        let mut opened: Option<Letters> = None;
        let mut seen = Vec::new();
        let mut stop = engine.stopping();
        loop {
            // A function's store appears at its first start: open the stores again when the
            // set of them changed.
            let present = stores_present(&engine);
            if opened.is_none() || present != seen {
                opened = letters(&engine).await.ok();
                seen = present;
            }
            let (body, last) = update(&engine, after, opened.as_ref()).await;
            after = last;
            let event = Event::default().event("update").data(body.to_string());
            if tx.send(Ok(event)).await.is_err() {
                return; // the page went away
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
        }
    });
    Sse::new(ReceiverStream::<Result<Event, Infallible>>::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn problem(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

async fn dead_letter(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> Response {
    let record = match letters(&engine).await {
        Ok(l) => l.get(&id).await,
        Err(e) => Err(e),
    };
    match record {
        Ok(Some(d)) => {
            let event = replay_event(&d).ok();
            let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
            v["event"] = event.unwrap_or(Value::Null);
            Json(v).into_response()
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no dead letter {id}"),
        ),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &format!("{e:#}"),
        ),
    }
}

async fn replay_dead_letter(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if headers.get(CSRF_HEADER).is_none_or(|v| v != "1") {
        return problem(
            StatusCode::FORBIDDEN,
            "missing_header",
            "a replay must carry X-Zerofn-Dashboard: 1",
        );
    }
    let fixed = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut o)) => o.remove("data"),
            _ => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "the body is empty or {\"data\": <the event's fixed data>}",
                );
            }
        }
    };
    let letters = match letters(&engine).await {
        Ok(l) => l,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &format!("{e:#}"),
            );
        }
    };
    let record = match letters.get(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no dead letter {id}"),
            );
        }
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &format!("{e:#}"),
            );
        }
    };
    // Published through the engine's sidecar of the function (any one for the gateway's).
    let Some(sidecar) = engine
        .functions
        .get(&record.function)
        .or_else(|| engine.functions.values().next())
        .map(|f| f.sidecar_port)
    else {
        return problem(
            StatusCode::CONFLICT,
            "no_function",
            "the engine runs no function to publish through",
        );
    };
    let target = Target::Dapr {
        url: format!("http://127.0.0.1:{sidecar}"),
        token: std::env::var("DAPR_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    match replay(&engine.client, &target, &record, fixed.as_ref()).await {
        Ok(what) => {
            if let Err(e) = letters.mark_replayed(&record.id).await {
                tracing::warn!(error = %e, id = %record.id, "replayed, but the replay could not be noted");
            }
            tracing::info!(id = %record.id, function = %record.function, fixed = fixed.is_some(), "dead letter replayed from the dashboard");
            Json(json!({"id": record.id, "replayed": true, "fixed": fixed.is_some(), "result": what}))
                .into_response()
        }
        Err(e) => problem(StatusCode::CONFLICT, "not_replayed", &format!("{e:#}")),
    }
}
