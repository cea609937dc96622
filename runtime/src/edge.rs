//! What an HTTP edge in front of functions (the zerofn gateway) shares with the runtime:
//! CloudEvents decoding with the same precise errors, contract validation of `data`, and the
//! same logs and trace export.
//!
//! An edge accepts events in any HTTP mode (binary, structured, batch) and stores them in
//! structured mode, the form Dapr writes to Kafka: [`Edge::decode`] returns each event as
//! that JSON object, or one [`Rejection`] for the whole request.

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::{
    Error,
    codec::{self as decode, Decoded, Mode},
    config::{Config, ConfigError},
    contract::Contracts,
    dead_letter::{DeadLetter, DeadLetterError, Original},
    outcome::{Failure, FailureKind},
    telemetry::{self, TraceContext},
};

/// A CloudEvent an edge accepted: checked envelope, contract-valid `data`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Accepted {
    /// `id`.
    pub id: String,
    /// `type`: also the topic it is appended to.
    pub ty: String,
    /// The record key: the `partitionkey` extension, else `subject`, else none.
    pub partition_key: Option<String>,
    /// The event in structured mode (`specversion`, attributes, extensions, `data`).
    pub envelope: Value,
}

impl Accepted {
    /// Set the `traceparent` extension (the edge's span), keeping a sender's `tracestate`.
    pub fn set_traceparent(&mut self, traceparent: &str) {
        if let Value::Object(attrs) = &mut self.envelope {
            attrs.insert("traceparent".into(), Value::String(traceparent.into()));
        }
    }

    /// The `traceparent` extension the sender set, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.envelope.get("traceparent").and_then(Value::as_str)
    }
}

/// Why a request's events were refused: HTTP status, a stable code and a message naming the
/// attribute (and, in a batch, the element) at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// 400 malformed, 413 too large, 415 not a CloudEvent, 422 unknown type or contract violation.
    pub status: StatusCode,
    /// `malformed_event`, `unsupported_media_type`, `unknown_event_type`, `schema_violation`, ….
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl From<Failure> for Rejection {
    fn from(f: Failure) -> Self {
        let status = match f.kind {
            FailureKind::Malformed => StatusCode::BAD_REQUEST,
            FailureKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FailureKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Rejection {
            status,
            code: f.kind.code(),
            message: f.message,
        }
    }
}

/// Decodes and checks events against the embedded contracts.
pub struct Edge {
    contracts: Contracts,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("contracts", &self.contracts.types().count())
            .finish()
    }
}

impl Edge {
    /// An edge checking the contracts embedded in this build (`contracts/events`).
    pub fn new() -> Result<Edge, Error> {
        Ok(Edge {
            contracts: Contracts::embedded()?,
        })
    }

    /// Every event of one HTTP request (binary, structured or batch mode), or the first
    /// reason to refuse the request. A batch is all or nothing.
    pub fn decode(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Accepted>, Rejection> {
        let decoded = match decode::mode(headers) {
            Mode::Structured => vec![decode::structured(body)?],
            Mode::Binary => vec![decode::binary(headers, body)?],
            Mode::Batch => {
                let items = decode::batch(body)?;
                if items.is_empty() {
                    return Err(Failure::new(
                        FailureKind::Malformed,
                        "the batch is empty: send at least one event",
                    )
                    .into());
                }
                let mut all = Vec::with_capacity(items.len());
                for (i, (item, _raw)) in items.into_iter().enumerate() {
                    let d = item.map_err(|f| Failure {
                        message: format!("batch element {i}: {}", f.message),
                        ..f
                    })?;
                    all.push(d);
                }
                all
            }
        };
        decoded
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                self.check(&d).map_err(|mut r| {
                    if matches!(decode::mode(headers), Mode::Batch) {
                        r.message = format!("batch element {i}: {}", r.message);
                    }
                    r
                })?;
                Ok(accepted(d))
            })
            .collect()
    }

    /// The dead-letter record of a refused request, in the runtime's format (`zerofn dlq`
    /// reads the same shape): function `gateway`, the original request (credentials removed),
    /// and the rejection's code and message.
    pub fn dead_letter(&self, headers: &HeaderMap, body: &[u8], r: &Rejection) -> DeadLetter {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let [event_id, event_type, event_source] = attributes(headers, body);
        DeadLetter {
            id: uuid::Uuid::now_v7().to_string(),
            function: "gateway".into(),
            function_version: env!("CARGO_PKG_VERSION").into(),
            key: String::new(),
            // Where the gateway would have put it (the topic of its type, on the default
            // pub/sub), so a replay goes there.
            topic: event_type.clone(),
            pubsub: event_type
                .is_some()
                .then(|| crate::manifest::DEFAULT_PUBSUB.to_string()),
            event_id,
            event_type,
            event_source,
            original: Original::from_http(headers, body),
            error: DeadLetterError {
                kind: r.code.into(),
                class: "permanent".into(),
                messages: vec![r.message.clone()],
            },
            attempts: 1,
            first_failure: now.clone(),
            last_failure: now,
            trace_id: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::parse)
                .and_then(|t| t.to_string().get(3..35).map(str::to_string)),
        }
    }

    fn check(&self, d: &Decoded) -> Result<(), Rejection> {
        match self.contracts.validate(&d.ctx.ty, &d.data) {
            Some(Ok(())) => Ok(()),
            Some(Err(v)) => Err(Failure::new(
                FailureKind::SchemaViolation,
                format!("data violates the contract of {}: {v}", d.ctx.ty),
            )
            .into()),
            None => Err(Failure::new(
                FailureKind::UnknownType,
                format!(
                    "event type {:?} has no contract in contracts/events: no function can consume it",
                    d.ctx.ty
                ),
            )
            .into()),
        }
    }
}

/// The `id`, `type` and `source` of a refused single event, as far as they can be read (a
/// structured body's members, or a binary one's `ce-` headers); none for a batch or garbage.
fn attributes(headers: &HeaderMap, body: &[u8]) -> [Option<String>; 3] {
    const NAMES: [&str; 3] = ["id", "type", "source"];
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body)
        && o.contains_key("specversion")
    {
        return NAMES.map(|n| o.get(n).and_then(Value::as_str).map(str::to_string));
    }
    NAMES.map(|n| {
        headers
            .get(format!("ce-{n}").as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

/// Extensions only the platform sets: `replayof` (a replay of a dead letter, which the
/// idempotency layer keys on) and `causationid` (derived from the event an output was emitted
/// for). A client's are removed at the edge; `id` and `source` stay the client's (they are the
/// event's identity: a client that reuses them gets its earlier event's result, once).
pub const RESERVED_EXTENSIONS: &[&str] = &["replayof", "causationid"];

fn accepted(d: Decoded) -> Accepted {
    let ctx = d.ctx;
    let mut attrs = Map::new();
    attrs.insert("specversion".into(), "1.0".into());
    attrs.insert("id".into(), ctx.id.clone().into());
    attrs.insert("source".into(), ctx.source.clone().into());
    attrs.insert("type".into(), ctx.ty.clone().into());
    if let Some(s) = &ctx.subject {
        attrs.insert("subject".into(), s.clone().into());
    }
    let time = ctx.time.unwrap_or_else(chrono::Utc::now);
    attrs.insert(
        "time".into(),
        time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            .into(),
    );
    attrs.insert("datacontenttype".into(), "application/json".into());
    for (k, v) in &ctx.extensions {
        if RESERVED_EXTENSIONS.contains(&k.as_str()) {
            tracing::warn!(extension = %k, event_id = %ctx.id, "a client set a reserved extension; removed");
            continue;
        }
        attrs.insert(k.clone(), v.clone().into());
    }
    if let Some(tp) = &d.trace_ext {
        attrs.insert("traceparent".into(), tp.clone().into());
    }
    if let Some(ts) = &ctx.tracestate {
        attrs.insert("tracestate".into(), ts.clone().into());
    }
    if !d.data.is_null() {
        attrs.insert("data".into(), d.data);
    }
    let partition_key = ctx
        .extension("partitionkey")
        .map(str::to_string)
        .or(ctx.subject.clone());
    Accepted {
        id: ctx.id,
        ty: ctx.ty,
        partition_key,
        envelope: Value::Object(attrs),
    }
}

/// The edge's logs and trace export, configured like a function's (`ZEROFN_LOG_*`, `OTEL_*`).
/// Flushes the exporter when dropped.
pub struct Telemetry(telemetry::Tracing);

impl Telemetry {
    /// Install the global subscriber for `service` from the environment.
    pub fn init(service: &str) -> Result<Telemetry, ConfigError> {
        let config = Config::from_source(&crate::config::Env)?;
        Ok(Telemetry(telemetry::init(&config, service)))
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Parent `span` on an incoming `traceparent` (a malformed one is ignored: the span starts a
/// new trace).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if let Some(tp) = traceparent.filter(|tp| TraceContext::parse(tp).is_some()) {
        telemetry::set_parent(span, tp, tracestate);
    }
}

/// The `traceparent` to send on from `span`: the span's own context when it is exported,
/// else the incoming one continued with a fresh span id, else a new trace.
pub fn traceparent_for(span: &tracing::Span, incoming: Option<&str>) -> String {
    telemetry::traceparent_of(span)
        .unwrap_or_else(|| TraceContext::continue_from([incoming]).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).unwrap(),
        );
        h
    }

    fn reminder() -> Value {
        serde_json::from_str(include_str!(
            "../../contracts/events/todo.reminder.due/valid/rent.json"
        ))
        .unwrap()
    }

    #[test]
    fn reserved_extensions_from_clients_are_removed() {
        let edge = Edge::new().unwrap();
        let event = json!({
            "specversion": "1.0", "id": "e-9", "source": "/client", "type": "todo.reminder.due",
            "replayof": "0193a7c2-0000-7000-8000-000000000000", "causationid": "x",
            "partitionkey": "u-1", "myext": "kept", "data": reminder()
        });
        let got = edge
            .decode(
                &headers("application/cloudevents+json"),
                &serde_json::to_vec(&event).unwrap(),
            )
            .unwrap();
        let envelope = &got[0].envelope;
        assert!(envelope.get("replayof").is_none(), "{envelope}");
        assert!(envelope.get("causationid").is_none(), "{envelope}");
        assert_eq!(envelope["partitionkey"], "u-1");
        assert_eq!(envelope["myext"], "kept");
        assert_eq!(envelope["id"], "e-9", "the identity stays the client's");
    }

    #[test]
    fn binary_mode_becomes_structured_with_key_and_trace() {
        let edge = Edge::new().unwrap();
        let mut h = headers("application/json");
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/test"),
            ("ce-type", "todo.reminder.due"),
            ("ce-partitionkey", "u-1"),
            (
                "ce-traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let body = serde_json::to_vec(&reminder()).unwrap();
        let got = edge.decode(&h, &body).unwrap();
        assert_eq!(got.len(), 1);
        let e = &got[0];
        assert_eq!(e.ty, "todo.reminder.due");
        assert_eq!(e.partition_key.as_deref(), Some("u-1"));
        assert_eq!(
            e.traceparent(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(e.envelope["data"], reminder());
        assert_eq!(e.envelope["specversion"], "1.0");
        assert!(e.envelope["time"].is_string());
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_names_the_element() {
        let edge = Edge::new().unwrap();
        let good = json!({"specversion":"1.0","id":"a","source":"/s","type":"todo.reminder.due","data":reminder()});
        let bad = json!({"specversion":"1.0","id":"b","source":"/s","type":"todo.reminder.due","data":{"user_id":"u"}});
        let body = serde_json::to_vec(&json!([good.clone(), bad])).unwrap();
        let r = edge
            .decode(&headers("application/cloudevents-batch+json"), &body)
            .unwrap_err();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.code, "schema_violation");
        assert!(r.message.starts_with("batch element 1: "), "{r}");
        let body = serde_json::to_vec(&json!([good.clone(), good])).unwrap();
        assert_eq!(
            edge.decode(&headers("application/cloudevents-batch+json"), &body)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn rejections_carry_precise_statuses() {
        let edge = Edge::new().unwrap();
        let cases: &[(&str, &[u8], u16, &str)] = &[
            ("text/plain", b"hello", 415, "unsupported_media_type"),
            ("application/cloudevents+json", b"{", 400, "malformed_event"),
            (
                "application/cloudevents+json",
                br#"{"specversion":"1.0","id":"x","source":"/s","type":"no.such.type","data":{}}"#,
                422,
                "unknown_event_type",
            ),
            (
                "application/cloudevents-batch+json",
                b"[]",
                400,
                "malformed_event",
            ),
        ];
        for (ct, body, status, code) in cases {
            let r = edge.decode(&headers(ct), body).unwrap_err();
            assert_eq!((r.status.as_u16(), r.code), (*status, *code), "{ct}: {r}");
        }
    }

    #[test]
    fn a_refused_event_is_named_by_what_can_be_read_of_it() {
        let structured = br#"{"specversion":"1.0","id":"e-1","type":"todo.task.created","source":"/c","data":{}}"#;
        assert_eq!(
            attributes(&headers("application/cloudevents+json"), structured),
            [
                Some("e-1".into()),
                Some("todo.task.created".into()),
                Some("/c".into())
            ]
        );
        let mut binary = headers("application/json");
        binary.insert("ce-id", HeaderValue::from_static("e-2"));
        binary.insert("ce-type", HeaderValue::from_static("todo.task.created"));
        assert_eq!(
            attributes(&binary, b"{}"),
            [Some("e-2".into()), Some("todo.task.created".into()), None]
        );
        assert_eq!(
            attributes(&headers("application/json"), b"[1,2]"),
            [None, None, None]
        );
        assert_eq!(
            attributes(&headers("text/plain"), b"\xff"),
            [None, None, None]
        );
    }
}
