//! Dead-letter records: everything a person needs to understand an event that could not be
//! processed, and to replay it once the cause is fixed.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One event that could not be processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Record id (UUID v7, time-ordered).
    pub id: String,
    /// Function that gave up on the event.
    pub function: String,
    /// Its version.
    pub function_version: String,
    /// Idempotency key of the event (empty when the event could not even be decoded).
    pub key: String,
    /// CloudEvent `id`, `type` and `source`, when the event could be decoded.
    pub event_id: Option<String>,
    /// CloudEvent `type`.
    pub event_type: Option<String>,
    /// CloudEvent `source`.
    pub event_source: Option<String>,
    /// The topic the event arrived on (and is replayed to), when known.
    pub topic: Option<String>,
    /// The pub/sub component, when known.
    pub pubsub: Option<String>,
    /// The message exactly as it arrived.
    pub original: Original,
    /// Why it failed.
    pub error: DeadLetterError,
    /// Attempts made (1 for failures that are never retried).
    pub attempts: u32,
    /// First failure, RFC 3339.
    pub first_failure: String,
    /// Last failure, RFC 3339.
    pub last_failure: String,
    /// W3C trace id of the last attempt.
    pub trace_id: Option<String>,
}

/// The original message: body (text when UTF-8, otherwise base64) and headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// `Content-Type` of the original message.
    pub content_type: Option<String>,
    /// The body, when it is valid UTF-8.
    pub body: Option<String>,
    /// The body in base64, when it is not valid UTF-8.
    pub body_base64: Option<String>,
    /// The request headers, lower-cased (tokens removed).
    pub headers: BTreeMap<String, String>,
}

impl Original {
    /// Keep `body` as text when it is UTF-8, as base64 otherwise.
    pub fn new(
        content_type: Option<String>,
        body: &[u8],
        headers: BTreeMap<String, String>,
    ) -> Self {
        match std::str::from_utf8(body) {
            Ok(text) => Original {
                content_type,
                body: Some(text.to_string()),
                body_base64: None,
                headers,
            },
            Err(_) => Original {
                content_type,
                body: None,
                body_base64: Some(base64::engine::general_purpose::STANDARD.encode(body)),
                headers,
            },
        }
    }

    /// An HTTP request as it arrived: its `Content-Type`, its body, and its headers without
    /// credentials (`authorization`, `cookie`, `proxy-authorization`, `dapr-api-token`).
    pub fn from_http(headers: &http::HeaderMap, body: &[u8]) -> Self {
        let kept = headers
            .iter()
            .filter(|(name, _)| !SECRET_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let content_type = crate::codec::content_type(headers).map(str::to_string);
        Original::new(content_type, body, kept)
    }

    /// The original bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// Headers that must not end up in a dead-letter record.
const SECRET_HEADERS: &[&str] = &[
    "dapr-api-token",
    "authorization",
    "cookie",
    "proxy-authorization",
];

/// The failure: its stable code, whether it was retryable, and the message chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterError {
    /// Stable code, e.g. `schema_violation` or `handler_retryable`.
    pub kind: String,
    /// `retryable` (attempts exhausted) or `permanent`.
    pub class: String,
    /// Outermost message first.
    pub messages: Vec<String>,
}

/// The CloudEvent type under which dead-letter records are published.
pub const DEAD_LETTER_TYPE: &str = "zerofn.deadletter.recorded";

#[cfg(test)]
impl DeadLetter {
    /// A record for store tests: a permanent failure of function `function`, key `key`.
    pub(crate) fn sample(id: &str, function: &str, key: &str) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            function: function.into(),
            function_version: "0".into(),
            key: key.into(),
            event_id: None,
            event_type: None,
            event_source: None,
            topic: None,
            pubsub: None,
            original: Original::new(None, b"", Default::default()),
            error: DeadLetterError {
                kind: "handler_permanent".into(),
                class: "permanent".into(),
                messages: vec![],
            },
            attempts: 1,
            first_failure: String::new(),
            last_failure: String::new(),
            trace_id: None,
        }
    }
}
