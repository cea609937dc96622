//! CloudEvents 1.0 decoding: HTTP binary and structured mode, batches, and Dapr bulk entries.
//!
//! Required attributes and the data/content-type pairing are checked here first so that every
//! rejection names the exact attribute and reason; the attributes are then parsed by
//! `cloudevents-sdk`, whose `Event` is the source of the typed values.

use base64::Engine as _;
use cloudevents::AttributesReader;
use http::{HeaderMap, header::CONTENT_TYPE};
use serde_json::{Map, Value};

use crate::event::Context;
use crate::outcome::{Failure, FailureKind};

/// The longest CloudEvent `id` accepted, in bytes.
pub(crate) const MAX_ID_BYTES: usize = 1024;
/// The longest CloudEvent `source` accepted, in bytes.
pub(crate) const MAX_SOURCE_BYTES: usize = 2048;

/// A CloudEvent that passed envelope checks: its context and its `data` as JSON.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) ctx: Context,
    pub(crate) data: Value,
    /// The `traceparent` extension (the event's origin trace).
    pub(crate) trace_ext: Option<String>,
}

/// The three HTTP modes of the CloudEvents HTTP binding, decided by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Batch,
    Structured,
    Binary,
}

pub(crate) fn mode(headers: &HeaderMap) -> Mode {
    let ct = content_type(headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ct.starts_with("application/cloudevents-batch") {
        Mode::Batch
    } else if ct.starts_with("application/cloudevents") {
        Mode::Structured
    } else {
        Mode::Binary
    }
}

pub(crate) fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// True for `application/json`, `text/json` and any `*/*+json`, parameters ignored.
pub(crate) fn is_json_media(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn malformed(msg: impl Into<String>) -> Failure {
    Failure::new(FailureKind::Malformed, msg)
}

/// A structured-mode body (`application/cloudevents+json`).
pub(crate) fn structured(body: &[u8]) -> Result<Decoded, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("body is not valid JSON: {e}")))?;
    structured_value(value)
}

/// One event already parsed as JSON (an element of a batch, a Dapr bulk entry).
pub(crate) fn structured_value(value: Value) -> Result<Decoded, Failure> {
    let Value::Object(mut attrs) = value else {
        return Err(malformed(format!(
            "a structured CloudEvent must be a JSON object, not {}",
            json_kind(&value)
        )));
    };
    let payload = match (attrs.remove("data"), attrs.remove("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(malformed(
                "attributes `data` and `data_base64` are mutually exclusive",
            ));
        }
        (Some(v), None) => Payload::Json(v),
        (None, Some(Value::String(b64))) => Payload::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| malformed(format!("attribute `data_base64` is not base64: {e}")))?,
        ),
        (None, Some(other)) => {
            return Err(malformed(format!(
                "attribute `data_base64` must be a string, got {}",
                json_kind(&other)
            )));
        }
        (None, None) => Payload::None,
    };
    from_parts(attrs, payload, Binding::Structured)
}

/// One element of a batch: its decoding and its JSON text.
pub(crate) type BatchItem = (Result<Decoded, Failure>, String);

/// A batch body (`application/cloudevents-batch+json`): one result per element, with the
/// element's JSON text (its original bytes for a dead-letter record).
pub(crate) fn batch(body: &[u8]) -> Result<Vec<BatchItem>, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("body is not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(malformed(format!(
            "a CloudEvents batch must be a JSON array, not {}",
            json_kind(&value)
        )));
    };
    Ok(items
        .into_iter()
        .map(|item| {
            let raw = item.to_string();
            (structured_value(item), raw)
        })
        .collect())
}

/// A binary-mode request: attributes in `ce-*` headers, data in the body.
pub(crate) fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Decoded, Failure> {
    if !headers.contains_key("ce-specversion") {
        let ct = content_type(headers).unwrap_or("(none)");
        return Err(Failure::new(
            FailureKind::UnsupportedMediaType,
            format!(
                "not a CloudEvent: Content-Type {ct} is not application/cloudevents+json or \
                 application/cloudevents-batch+json, and there is no ce-specversion header for binary mode"
            ),
        ));
    }
    let mut attrs = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attr.is_empty() || attr == "datacontenttype" {
            continue;
        }
        let decoded = percent_decode(value.as_bytes()).ok_or_else(|| {
            malformed(format!(
                "header ce-{attr} is not valid UTF-8 after percent-decoding"
            ))
        })?;
        attrs.insert(attr.to_string(), Value::String(decoded));
    }
    if let Some(ct) = content_type(headers) {
        attrs.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    let payload = if body.is_empty() {
        Payload::None
    } else {
        Payload::Bytes(body.to_vec())
    };
    from_parts(attrs, payload, Binding::Binary)
}

/// Where the attributes came from, so that a rejection names what the sender has to fix.
#[derive(Clone, Copy)]
enum Binding {
    /// JSON members of a structured event.
    Structured,
    /// `ce-*` headers of a binary-mode request.
    Binary,
}

impl Binding {
    fn name(self, attr: &str) -> String {
        match self {
            Binding::Structured => format!("attribute `{attr}`"),
            Binding::Binary => format!("header `ce-{attr}`"),
        }
    }
}

enum Payload {
    None,
    Json(Value),
    Bytes(Vec<u8>),
}

fn from_parts(
    attrs: Map<String, Value>,
    payload: Payload,
    binding: Binding,
) -> Result<Decoded, Failure> {
    let name = |attr: &str| binding.name(attr);
    match attrs.get("specversion") {
        None => {
            return Err(malformed(format!(
                "missing required {}",
                name("specversion")
            )));
        }
        Some(Value::String(v)) if v == "1.0" => {}
        Some(Value::String(v)) => {
            return Err(malformed(format!(
                "unsupported specversion {v:?}: zerofn accepts CloudEvents 1.0"
            )));
        }
        Some(other) => {
            return Err(malformed(format!(
                "{} must be a string, got {}",
                name("specversion"),
                json_kind(other)
            )));
        }
    }
    for attr in ["id", "source", "type"] {
        match attrs.get(attr) {
            None => return Err(malformed(format!("missing required {}", name(attr)))),
            Some(Value::String(s)) if s.is_empty() => {
                return Err(malformed(format!("{} must not be empty", name(attr))));
            }
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(malformed(format!(
                    "{} must be a string, got {}",
                    name(attr),
                    json_kind(other)
                )));
            }
        }
    }
    // Bounded, so an identity can never outgrow what stores, logs and dead-letter records take.
    for (attr, max) in [("id", MAX_ID_BYTES), ("source", MAX_SOURCE_BYTES)] {
        if let Some(Value::String(s)) = attrs.get(attr)
            && s.len() > max
        {
            return Err(malformed(format!(
                "{} is {} bytes long; zerofn accepts at most {max}",
                name(attr),
                s.len()
            )));
        }
    }
    for attr in ["subject", "datacontenttype", "dataschema", "time"] {
        match attrs.get(attr) {
            None | Some(Value::String(_)) => {}
            Some(other) => {
                return Err(malformed(format!(
                    "{} must be a string, got {}",
                    name(attr),
                    json_kind(other)
                )));
            }
        }
    }
    if let Some(Value::String(t)) = attrs.get("time")
        && let Err(e) = chrono::DateTime::parse_from_rfc3339(t)
    {
        return Err(malformed(format!(
            "{} is not an RFC 3339 timestamp ({t:?}: {e})",
            name("time")
        )));
    }
    for (name, value) in &attrs {
        if !(value.is_string() || value.is_boolean() || value.is_i64()) {
            return Err(malformed(format!(
                "extension attribute `{name}` must be a string, boolean or integer, got {}",
                json_kind(value)
            )));
        }
    }
    let ct = attrs
        .get("datacontenttype")
        .and_then(Value::as_str)
        .unwrap_or("application/json")
        .to_string();
    let data = decode_data(&ct, payload)?;

    // The SDK parses and types the attributes (URI-references, timestamps, extensions).
    let event: cloudevents::Event = serde_json::from_value(Value::Object(attrs))
        .map_err(|e| malformed(format!("invalid CloudEvent attributes: {e}")))?;
    let mut extensions = std::collections::BTreeMap::new();
    let (mut trace_ext, mut tracestate, mut traceid) = (None, None, None);
    for (name, value) in event.iter_extensions() {
        let value = value.to_string();
        match name {
            "traceparent" => trace_ext = Some(value),
            "tracestate" => tracestate = Some(value).filter(|v| !v.is_empty()),
            "traceid" => traceid = Some(value),
            _ => {
                extensions.insert(name.to_string(), value);
            }
        }
    }
    Ok(Decoded {
        ctx: Context {
            id: event.id().to_string(),
            source: event.source().to_string(),
            ty: event.ty().to_string(),
            subject: event.subject().map(str::to_string),
            time: event.time().copied(),
            datacontenttype: event.datacontenttype().map(str::to_string),
            extensions,
            traceparent: String::new(),
            tracestate,
            attempt: 1,
            kafka: None,
        },
        data,
        trace_ext: trace_ext.or(traceid),
    })
}

fn decode_data(ct: &str, payload: Payload) -> Result<Value, Failure> {
    let json = is_json_media(ct);
    let unsupported = || {
        Failure::new(
            FailureKind::UnsupportedMediaType,
            format!(
                "datacontenttype {ct} is not JSON: zerofn functions take JSON data (application/json)"
            ),
        )
    };
    match payload {
        Payload::None => Ok(Value::Null),
        Payload::Json(v) if json => Ok(v),
        // Dapr wraps a JSON body published without a Content-Type as a text/plain string.
        Payload::Json(Value::String(s)) => serde_json::from_str(&s).map_err(|_| unsupported()),
        Payload::Json(_) => Err(unsupported()),
        Payload::Bytes(b) if json => serde_json::from_slice(&b).map_err(|e| {
            Failure::new(
                FailureKind::UndecodableData,
                format!("data is not valid JSON although datacontenttype is {ct}: {e}"),
            )
        }),
        Payload::Bytes(_) => Err(unsupported()),
    }
}

/// Undo the binding's percent-encoding of a header value (one round, UTF-8 result).
pub(crate) fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok()?;
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> Result<Decoded, Failure> {
        structured_value(v)
    }

    #[test]
    fn structured_with_dapr_extras() {
        let d = ev(json!({
            "specversion": "1.0", "id": "1", "source": "budgets", "type": "t",
            "datacontenttype": "application/json", "data": {"a": 1},
            "topic": "t", "pubsubname": "kafka-pubsub", "tracestate": "",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "time": "2026-11-23T10:00:00Z"
        }))
        .unwrap();
        assert_eq!(d.data, json!({"a": 1}));
        assert_eq!(d.ctx.extension("pubsubname"), Some("kafka-pubsub"));
        assert_eq!(d.ctx.tracestate, None);
        assert!(d.trace_ext.is_some());
        assert!(d.ctx.time.is_some());
    }

    #[test]
    fn text_plain_string_holding_json_is_accepted() {
        let d = ev(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
            "datacontenttype": "text/plain", "data": "{\"a\":2}"}),
        )
        .unwrap();
        assert_eq!(d.data, json!({"a": 2}));
    }

    #[test]
    fn data_base64_with_json_content() {
        let d = ev(
            json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t",
            "datacontenttype": "application/json", "data_base64": "eyJhIjozfQ=="}),
        )
        .unwrap();
        assert_eq!(d.data, json!({"a": 3}));
    }

    #[test]
    fn ids_and_sources_are_bounded() {
        let ok = ev(json!({"specversion": "1.0", "id": "i".repeat(MAX_ID_BYTES),
            "source": "s".repeat(MAX_SOURCE_BYTES), "type": "t"}));
        assert!(ok.is_ok());
        let f =
            ev(json!({"specversion": "1.0", "id": "i".repeat(5000), "source": "s", "type": "t"}))
                .unwrap_err();
        assert_eq!(f.kind, FailureKind::Malformed);
        assert_eq!(
            f.message,
            "attribute `id` is 5000 bytes long; zerofn accepts at most 1024"
        );
        let f = ev(json!({"specversion": "1.0", "id": "1", "source": "s".repeat(MAX_SOURCE_BYTES + 1), "type": "t"}))
            .unwrap_err();
        assert!(
            f.message
                .starts_with("attribute `source` is 2049 bytes long"),
            "{}",
            f.message
        );
    }

    #[test]
    fn binary_mode_percent_decodes() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "a%20b".parse().unwrap());
        h.insert("ce-source", "s".parse().unwrap());
        h.insert("ce-type", "t".parse().unwrap());
        h.insert("ce-subject", "caf%C3%A9".parse().unwrap());
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        let d = binary(&h, br#"{"x":true}"#).unwrap();
        assert_eq!(d.ctx.id, "a b");
        assert_eq!(d.ctx.subject.as_deref(), Some("café"));
        assert_eq!(d.data, json!({"x": true}));
        h.remove("ce-id");
        let f = binary(&h, b"{}").unwrap_err();
        assert_eq!(f.message, "missing required header `ce-id`");
    }

    #[test]
    fn percent_decoding_edge_cases() {
        assert_eq!(percent_decode(b"100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode(b"%41%zz").as_deref(), Some("A%zz"));
        assert_eq!(percent_decode(b"%ff"), None);
    }
}
