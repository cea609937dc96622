//! The engine playing daprd toward one function: the publish API (into the log), the state
//! API (a table of the log's file), and the health endpoints, on the function's
//! `DAPR_HTTP_PORT`. Answers and error bodies follow Dapr's (`shared/reference/dapr-http.md`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Map, Value, json};

use super::{
    engine::Function,
    log::{Log, NewRecord},
};

#[derive(Clone)]
struct Sidecar {
    function: Arc<Function>,
    log: Arc<Log>,
    /// Chaos `drop-publish`: fail every second publish with a 500.
    drop_publish: bool,
    publishes: Arc<AtomicU64>,
    token: Option<String>,
}

/// The sidecar's routes for `function`.
pub(crate) fn router(
    function: Arc<Function>,
    log: Arc<Log>,
    drop_publish: bool,
    token: Option<String>,
) -> Router {
    let state = Sidecar {
        function,
        log,
        drop_publish,
        publishes: Arc::default(),
        token,
    };
    Router::new()
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(publish).put(publish),
        )
        .route("/v1.0/state/{store}", post(state_save).put(state_save))
        .route(
            "/v1.0/state/{store}/{key}",
            get(state_get).delete(state_delete),
        )
        .route(
            "/v1.0-alpha1/jobs/{name}",
            post(job_schedule).get(job_get).delete(job_delete),
        )
        .route(
            "/v1.0/jobs/{name}",
            post(job_schedule).get(job_get).delete(job_delete),
        )
        // Every API but healthz needs the token, as in daprd.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz))
        .fallback(|| async {
            dapr_error(
                StatusCode::NOT_FOUND,
                "ERR_NOT_SUPPORTED",
                "the zerofn engine's sidecar serves publish, state (get, save, delete), jobs (schedule, get, delete) and healthz",
            )
        })
        .with_state(state)
}

fn dapr_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"errorCode": code, "message": message}))).into_response()
}

/// The state table could not be read or written.
fn store_failed(code: &str, e: sqlx::Error) -> Response {
    dapr_error(StatusCode::INTERNAL_SERVER_ERROR, code, &e.to_string())
}

async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Refuse a caller without the `DAPR_API_TOKEN` (when one is set).
async fn require_token(
    State(s): State<Sidecar>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(t) = &s.token
        && request
            .headers()
            .get("dapr-api-token")
            .and_then(|v| v.to_str().ok())
            != Some(t.as_str())
    {
        return dapr_error(
            StatusCode::UNAUTHORIZED,
            "ERR_API_TOKEN",
            "missing or invalid dapr-api-token",
        );
    }
    next.run(request).await
}

/// `POST /v1.0-alpha1/jobs/{name}` (or `/v1.0/…`): schedule a job of this function, kept in
/// the log (durable across restarts); 204 with no body, as daprd answers.
async fn job_schedule(State(s): State<Sidecar>, Path(name): Path<String>, body: Bytes) -> Response {
    let now = chrono::Utc::now().timestamp_millis();
    if name.trim().is_empty() {
        return dapr_error(
            StatusCode::BAD_REQUEST,
            "DAPR_SCHEDULER_JOB_NAME_EMPTY",
            "the job has no name",
        );
    }
    let spec = match super::jobs::parse_request(&body, now) {
        Ok(spec) => spec,
        Err(why) => {
            return dapr_error(StatusCode::BAD_REQUEST, "DAPR_SCHEDULER_SCHEDULE_JOB", &why);
        }
    };
    let Some(due) = super::jobs::first_due(&spec, now) else {
        return dapr_error(
            StatusCode::BAD_REQUEST,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "the job is never due",
        );
    };
    match s.log.put_job(&s.function.name, &name, &spec, due).await {
        Ok(true) => {
            tracing::info!(function = %s.function.name, job = %name, due_ms = due, "job scheduled");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => dapr_error(
            StatusCode::CONFLICT,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            &format!("job {name} exists: delete it first, or schedule with \"overwrite\": true"),
        ),
        Err(e) => store_failed("DAPR_SCHEDULER_SCHEDULE_JOB", e),
    }
}

/// `GET /v1.0-alpha1/jobs/{name}`: the job as scheduled, with when it is due next.
async fn job_get(State(s): State<Sidecar>, Path(name): Path<String>) -> Response {
    match s.log.job(&s.function.name, &name).await {
        Ok(Some(job)) => {
            let mut v = json!({"name": name, "data": job.spec.data});
            if let Some(sc) = &job.spec.schedule {
                v["schedule"] = json!(sc);
            }
            if let Some(d) = &job.spec.due_time {
                v["dueTime"] = json!(d);
            }
            if let Some(r) = job.repeats_left {
                v["repeats"] = json!(r);
            }
            if let Some(next) = chrono::DateTime::from_timestamp_millis(job.due) {
                v["next"] = json!(next.to_rfc3339());
            }
            Json(v).into_response()
        }
        Ok(None) => dapr_error(
            StatusCode::NOT_FOUND,
            "DAPR_SCHEDULER_GET_JOB",
            &format!("no job {name}"),
        ),
        Err(e) => store_failed("DAPR_SCHEDULER_GET_JOB", e),
    }
}

/// `DELETE /v1.0-alpha1/jobs/{name}`: 204, whether or not it existed (as daprd).
async fn job_delete(State(s): State<Sidecar>, Path(name): Path<String>) -> Response {
    match s.log.delete_job(&s.function.name, &name).await {
        Ok(existed) => {
            if existed {
                tracing::info!(function = %s.function.name, job = %name, "job deleted");
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_failed("DAPR_SCHEDULER_DELETE_JOB", e),
    }
}

/// `POST /v1.0/publish/{pubsub}/{topic}`: a CloudEvent passes through (topic and pubsubname
/// overwritten, missing attributes defaulted); any other body is wrapped in one.
async fn publish(
    State(s): State<Sidecar>,
    Path((pubsub, topic)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !s.function.pubsubs().contains(&pubsub) {
        return dapr_error(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_NOT_FOUND",
            &format!(
                "pubsub {pubsub} is not found (this engine has {})",
                s.function.pubsubs().join(", ")
            ),
        );
    }
    let n = s.publishes.fetch_add(1, Ordering::SeqCst);
    if s.drop_publish && n % 2 == 0 {
        return dapr_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            "chaos drop-publish: this publish failed on purpose",
        );
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut envelope = if ct.starts_with("application/cloudevents+json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return dapr_error(
                    StatusCode::BAD_REQUEST,
                    "ERR_PUBSUB_CLOUD_EVENTS_SER",
                    "the body is not a JSON object although Content-Type is application/cloudevents+json",
                );
            }
        }
    } else {
        let mut m = Map::new();
        m.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
        m.insert("datacontenttype".into(), ct.clone().into());
        let data = if ct.contains("json") {
            serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into())
        } else {
            Value::String(String::from_utf8_lossy(&body).into_owned())
        };
        m.insert("data".into(), data);
        m
    };
    envelope
        .entry("specversion")
        .or_insert_with(|| "1.0".into());
    envelope
        .entry("source")
        .or_insert_with(|| s.function.name.clone().into());
    envelope
        .entry("type")
        .or_insert_with(|| "com.dapr.event.sent".into());
    envelope.entry("time").or_insert_with(|| {
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into()
    });
    if let Some(tp) = &traceparent
        && !envelope.contains_key("traceid")
    {
        envelope.insert("traceid".into(), tp.clone().into());
        envelope.insert("traceparent".into(), tp.clone().into());
    }
    envelope.insert("topic".into(), topic.clone().into());
    envelope.insert("pubsubname".into(), pubsub.into());
    // Every metadata entry becomes a record header, as Dapr's Kafka component writes them.
    let mut record_headers: BTreeMap<String, String> = query
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    if let Some(tp) = envelope.get("traceparent").and_then(Value::as_str) {
        record_headers.insert("traceparent".into(), tp.to_string());
    }
    let key = record_headers
        .get("partitionKey")
        .or_else(|| record_headers.get("__key"))
        .cloned();
    let value = Value::Object(envelope).to_string().into_bytes();
    match s
        .log
        .append(vec![NewRecord {
            topic: topic.clone(),
            key,
            value,
            headers: record_headers,
        }])
        .await
    {
        Ok(_) => {
            s.function.published(&topic);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => dapr_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            &format!("the engine's log refused the record: {e}"),
        ),
    }
}

fn state_key(s: &Sidecar, key: &str) -> String {
    format!("{}||{key}", s.function.name)
}

async fn state_get(
    State(s): State<Sidecar>,
    Path((store, key)): Path<(String, String)>,
) -> Response {
    let row: Result<Option<(Vec<u8>, i64)>, _> =
        sqlx::query_as("SELECT value, etag FROM state WHERE store = ? AND key = ?")
            .bind(&store)
            .bind(state_key(&s, &key))
            .fetch_optional(s.log.pool())
            .await;
    match row {
        Ok(Some((value, etag))) => ([(header::ETAG, etag.to_string())], value).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_failed("ERR_STATE_GET", e),
    }
}

#[derive(serde::Deserialize)]
struct SetRequest {
    key: String,
    value: Value,
    etag: Option<String>,
}

async fn state_save(State(s): State<Sidecar>, Path(store): Path<String>, body: Bytes) -> Response {
    let items: Vec<SetRequest> = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return dapr_error(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                &format!("the body is not a JSON array of {{key, value, etag?}}: {e}"),
            );
        }
    };
    let _writing = s.log.write_lock().await;
    let mut tx = match s.log.pool().begin().await {
        Ok(tx) => tx,
        Err(e) => {
            return store_failed("ERR_STATE_SAVE", e);
        }
    };
    for item in items {
        let key = state_key(&s, &item.key);
        let current: Option<i64> =
            match sqlx::query_scalar("SELECT etag FROM state WHERE store = ? AND key = ?")
                .bind(&store)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    return store_failed("ERR_STATE_SAVE", e);
                }
            };
        if let Some(etag) = &item.etag {
            let Ok(expected) = etag.parse::<i64>() else {
                return dapr_error(
                    StatusCode::BAD_REQUEST,
                    "ERR_STATE_SAVE",
                    &format!("malformed etag {etag:?}"),
                );
            };
            if current != Some(expected) {
                return dapr_error(
                    StatusCode::CONFLICT,
                    "ERR_STATE_SAVE",
                    &format!("etag mismatch for key {}", item.key),
                );
            }
        }
        let value = match &item.value {
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        if let Err(e) = sqlx::query(
            "INSERT INTO state (store, key, value, etag) VALUES (?, ?, ?, ?)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value, etag = excluded.etag",
        )
        .bind(&store)
        .bind(&key)
        .bind(value)
        .bind(current.unwrap_or(0) + 1)
        .execute(&mut *tx)
        .await
        {
            return store_failed("ERR_STATE_SAVE", e);
        }
    }
    match tx.commit().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_failed("ERR_STATE_SAVE", e),
    }
}

async fn state_delete(
    State(s): State<Sidecar>,
    Path((store, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').parse::<i64>());
    let query = match if_match {
        Some(Ok(etag)) => sqlx::query("DELETE FROM state WHERE store = ? AND key = ? AND etag = ?")
            .bind(store)
            .bind(state_key(&s, &key))
            .bind(etag),
        Some(Err(_)) => {
            return dapr_error(
                StatusCode::BAD_REQUEST,
                "ERR_STATE_DELETE",
                "malformed If-Match etag",
            );
        }
        None => sqlx::query("DELETE FROM state WHERE store = ? AND key = ?")
            .bind(store)
            .bind(state_key(&s, &key)),
    };
    let _writing = s.log.write_lock().await;
    match query.execute(s.log.pool()).await {
        Ok(r) if r.rows_affected() == 0 && if_match.is_some() => dapr_error(
            StatusCode::CONFLICT,
            "ERR_STATE_DELETE",
            &format!("etag mismatch for key {key}"),
        ),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_failed("ERR_STATE_DELETE", e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dev::engine::FunctionSpec;
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    async fn sidecar(
        drop_publish: bool,
        token: Option<&str>,
    ) -> (Router, Arc<Log>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("zerofn-sidecar-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = Arc::new(Log::open(&dir.join("log.db"), 4, None).await.unwrap());
        for t in ["todo.reminder.due", "todo.notification.sent"] {
            log.ensure_topic(t).await.unwrap();
        }
        let manifest = zerofn::Manifest::parse(
            "[function]\nname = \"notify\"\n[[subscriptions]]\ntopic = \"todo.reminder.due\"\n[[publishes]]\ntype = \"todo.notification.sent\"\n",
            "notify",
            "0.0.0",
        )
        .unwrap();
        let spec = FunctionSpec {
            manifest,
            binary: "/bin/false".into(),
        };
        let function = Arc::new(Function::new(spec, 0, &log));
        (
            router(
                function,
                log.clone(),
                drop_publish,
                token.map(str::to_string),
            ),
            log,
            dir,
        )
    }

    async fn call(app: &Router, request: Request<Body>) -> (u16, Value, Option<String>) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get(header::ETAG)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            etag,
        )
    }

    fn publish_request(path: &str, ct: &str, body: &str) -> Request<Body> {
        Request::post(path)
            .header("content-type", ct)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn publish_passes_cloudevents_through_keyed_with_headers_and_wraps_the_rest() {
        let (app, log, dir) = sidecar(false, None).await;
        let event = r#"{"specversion":"1.0","id":"n-1","source":"/zerofn/notify","type":"todo.notification.sent","topic":"spoofed","data":{}}"#;
        let (status, _, _) = call(
            &app,
            publish_request(
                "/v1.0/publish/kafka-pubsub/todo.notification.sent?metadata.partitionKey=u-7",
                "application/cloudevents+json",
                event,
            ),
        )
        .await;
        assert_eq!(status, 204);
        let (status, _, _) = call(
            &app,
            publish_request(
                "/v1.0/publish/kafka-pubsub/todo.notification.sent",
                "application/json",
                r#"{"x":1}"#,
            ),
        )
        .await;
        assert_eq!(status, 204);
        let mut records = Vec::new();
        for p in 0..4 {
            records.extend(
                log.read("g", "todo.notification.sent", p, 0, 10)
                    .await
                    .unwrap()
                    .records(),
            );
        }
        assert_eq!(records.len(), 2);
        let keyed = records
            .iter()
            .find(|r| r.key.as_deref() == Some("u-7"))
            .unwrap();
        let v: Value = serde_json::from_slice(&keyed.value).unwrap();
        assert_eq!(
            (
                v["id"].as_str(),
                v["topic"].as_str(),
                v["pubsubname"].as_str()
            ),
            (
                Some("n-1"),
                Some("todo.notification.sent"),
                Some("kafka-pubsub")
            )
        );
        assert_eq!(
            keyed.headers.get("partitionKey").map(String::as_str),
            Some("u-7"),
            "metadata becomes record headers"
        );
        assert_eq!(
            keyed.headers.get("traceparent").map(String::as_str),
            v["traceparent"].as_str()
        );
        let wrapped = records.iter().find(|r| r.key.is_none()).unwrap();
        let w: Value = serde_json::from_slice(&wrapped.value).unwrap();
        assert_eq!(
            (w["type"].as_str(), w["source"].as_str(), &w["data"]),
            (
                Some("com.dapr.event.sent"),
                Some("notify"),
                &serde_json::json!({"x": 1})
            )
        );
        let (status, body, _) = call(
            &app,
            publish_request("/v1.0/publish/other-pubsub/t", "application/json", "{}"),
        )
        .await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (404, Some("ERR_PUBSUB_NOT_FOUND"))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn chaos_drop_publish_fails_every_second_publish() {
        let (app, _log, dir) = sidecar(true, None).await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let (status, _, _) = call(
                &app,
                publish_request(
                    "/v1.0/publish/kafka-pubsub/todo.notification.sent",
                    "application/json",
                    "{}",
                ),
            )
            .await;
            statuses.push(status);
        }
        assert_eq!(statuses, vec![500, 204, 500, 204]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn state_has_etags_and_the_token_guards_everything_but_healthz() {
        let (app, _log, dir) = sidecar(false, Some("secret")).await;
        let with_token = |r: axum::http::request::Builder| r.header("dapr-api-token", "secret");
        let save = |body: &str| {
            with_token(Request::post("/v1.0/state/statestore"))
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let get = || {
            with_token(Request::get("/v1.0/state/statestore/k"))
                .body(Body::empty())
                .unwrap()
        };

        assert_eq!(
            call(
                &app,
                Request::get("/v1.0/healthz").body(Body::empty()).unwrap()
            )
            .await
            .0,
            204
        );
        let (status, body, _) = call(
            &app,
            Request::get("/v1.0/state/statestore/k")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (401, Some("ERR_API_TOKEN"))
        );

        assert_eq!(call(&app, get()).await.0, 204, "absent key");
        assert_eq!(
            call(&app, save(r#"[{"key":"k","value":{"n":1}}]"#)).await.0,
            204
        );
        let (status, value, etag) = call(&app, get()).await;
        assert_eq!((status, value), (200, serde_json::json!({"n": 1})));
        let etag = etag.unwrap();
        assert_eq!(
            call(&app, save(r#"[{"key":"k","value":2,"etag":"999"}]"#))
                .await
                .0,
            409,
            "stale etag"
        );
        assert_eq!(
            call(
                &app,
                save(&format!(r#"[{{"key":"k","value":2,"etag":"{etag}"}}]"#))
            )
            .await
            .0,
            204
        );
        let delete = |etag: &str| {
            with_token(Request::delete("/v1.0/state/statestore/k"))
                .header("if-match", etag)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(call(&app, delete(&etag)).await.0, 409, "the etag moved on");
        let (_, _, current) = call(&app, get()).await;
        assert_eq!(call(&app, delete(&current.unwrap())).await.0, 204);
        assert_eq!(call(&app, get()).await.0, 204, "deleted");
        let _ = std::fs::remove_dir_all(dir);
    }
}
