//! What a handler receives: [`Event<T>`], typed `data` plus the CloudEvent [`Context`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One CloudEvent as a handler sees it: the typed `data` and the event's context.
#[derive(Clone, Debug)]
pub struct Event<T> {
    /// The event's `data`, already checked against its contract and decoded.
    pub data: T,
    /// Everything else about the event and its delivery.
    pub ctx: Context,
    pub(crate) tx: Option<crate::Transaction>,
}

impl<T> Event<T> {
    /// The delivery's database transaction, with a SQL store (SQLite or PostgreSQL): write your
    /// effects through it and they commit atomically with the idempotency record and the
    /// events you emit — or not at all. `None` with the Redis or memory store.
    ///
    /// ```no_run
    /// # async fn f(event: zerofn::Event<()>) -> Result<(), zerofn::HandlerError> {
    /// let tx = event.transaction().ok_or_else(|| zerofn::HandlerError::permanent("needs a SQL store"))?;
    /// let mut conn = tx.conn().await?;
    /// sqlx::query("INSERT INTO seen (id) VALUES ($1)").bind(&event.ctx.id).execute(&mut **conn).await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction(&self) -> Option<&crate::Transaction> {
        self.tx.as_ref()
    }

    /// The delivery's transaction for queries, for a function that declares `[store] sql =
    /// true` (the runtime then always has one; `zerofn::testing::TestDb` gives tests one).
    /// Without one this is a permanent error that says so, never a silent fallback.
    pub async fn conn(&self) -> Result<crate::TransactionGuard, crate::HandlerError> {
        match &self.tx {
            Some(tx) => tx.conn().await,
            None => Err(crate::HandlerError::permanent(
                "this event has no SQL transaction: declare [store] sql = true in function.toml (the \
                 runtime then needs a SQL store), and test with zerofn::testing::TestDb",
            )),
        }
    }
}

/// The CloudEvent attributes and delivery facts of one event.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Context {
    /// CloudEvent `id`.
    pub id: String,
    /// CloudEvent `source`.
    pub source: String,
    /// CloudEvent `type`.
    pub ty: String,
    /// CloudEvent `subject`.
    pub subject: Option<String>,
    /// CloudEvent `time`.
    pub time: Option<DateTime<Utc>>,
    /// CloudEvent `datacontenttype` as sent.
    pub datacontenttype: Option<String>,
    /// Extension attributes other than the tracing ones, as strings.
    pub extensions: BTreeMap<String, String>,
    /// W3C trace context this event's handling runs under (a child of the incoming one).
    pub traceparent: String,
    /// W3C `tracestate` that came with the event.
    pub tracestate: Option<String>,
    /// Which delivery of this event this is, starting at 1.
    pub attempt: u32,
    /// Where the event sits in Kafka, when the transport knows.
    pub kafka: Option<KafkaCoordinates>,
}

impl Context {
    /// The extension `name`, if the event carries it.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(String::as_str)
    }
    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The 16-hex-digit span id of the span handling this event.
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }
}

/// A record's position in Kafka, from the metadata Dapr forwards (`__topic`, `__partition`,
/// `__offset`, `__key`, `__timestamp`). Stable across redeliveries, unlike Dapr's envelope id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KafkaCoordinates {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record key, when the record has one.
    pub key: Option<String>,
    /// Record timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl KafkaCoordinates {
    /// Read the coordinates from delivery metadata; `None` unless topic, partition and offset
    /// are all present and well-formed.
    pub(crate) fn from_metadata<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        Some(KafkaCoordinates {
            topic: get("__topic")?.to_string(),
            partition: get("__partition")?.trim().parse().ok()?,
            offset: get("__offset")?.trim().parse().ok()?,
            key: get("__key").map(str::to_string),
            timestamp_ms: get("__timestamp").and_then(|t| t.trim().parse().ok()),
        })
    }
}

/// How an event's `data` becomes the handler's input type.
///
/// Every `serde::de::DeserializeOwned` type implements it by decoding `data` alone. A function
/// that consumes several event types implements it for its own enum, choosing the variant by
/// the CloudEvent type:
///
/// ```
/// # use serde::Deserialize;
/// # #[derive(Deserialize)] struct Warning { percent: u8 }
/// # #[derive(Deserialize)] struct Exceeded { over_by: u64 }
/// enum Budget { Warning(Warning), Exceeded(Exceeded) }
///
/// impl zerofn::EventData for Budget {
///     fn from_event(ty: &str, data: serde_json::Value) -> Result<Self, serde_json::Error> {
///         match ty {
///             "finance.budget.warning" => serde_json::from_value(data).map(Budget::Warning),
///             _ => serde_json::from_value(data).map(Budget::Exceeded),
///         }
///     }
/// }
/// ```
///
/// Or, without writing that match, a serde enum tagged by the type inside [`Typed`]:
///
/// ```
/// # use serde::Deserialize;
/// # #[derive(Deserialize)] struct Warning { percent: u8 }
/// # #[derive(Deserialize)] struct Exceeded { over_by: u64 }
/// #[derive(Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum Budget {
///     #[serde(rename = "finance.budget.warning")]
///     Warning(Warning),
///     #[serde(rename = "finance.budget.exceeded")]
///     Exceeded(Exceeded),
/// }
///
/// async fn handle(event: zerofn::Event<zerofn::Typed<Budget>>) -> Result<(), zerofn::HandlerError> {
///     match &*event.data {
///         Budget::Warning(w) => tracing::info!(w.percent, "warned"),
///         Budget::Exceeded(e) => tracing::info!(e.over_by, "exceeded"),
///     }
///     Ok(())
/// }
/// ```
pub trait EventData: Sized + Send + 'static {
    /// Decode `data` of an event of type `ty`.
    fn from_event(ty: &str, data: Value) -> Result<Self, serde_json::Error>;
}

impl<T: DeserializeOwned + Send + 'static> EventData for T {
    fn from_event(_ty: &str, data: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(data)
    }
}

/// The input of a handler that consumes several event types: `T` is a serde enum with
/// `#[serde(tag = "type", content = "data")]` and one variant per type, renamed to the
/// CloudEvent type, so that the type picks the variant (see [`EventData`]). An event of a type
/// the enum lacks is a permanent failure (`undecodable_data`) naming it.
#[derive(Clone, Debug, PartialEq)]
pub struct Typed<T>(pub T);

impl<T> std::ops::Deref for Typed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + Send + 'static> EventData for Typed<T> {
    fn from_event(ty: &str, data: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"type": ty, "data": data})).map(Typed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn typed_picks_the_variant_by_the_event_type() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(tag = "type", content = "data")]
        enum Two {
            #[serde(rename = "a.created")]
            Created { id: String },
            #[serde(rename = "a.deleted")]
            Deleted { id: String },
        }
        let got = Typed::<Two>::from_event("a.deleted", serde_json::json!({"id": "7"})).unwrap();
        assert_eq!(*got, Two::Deleted { id: "7".into() });
        let err =
            Typed::<Two>::from_event("a.renamed", serde_json::json!({"id": "7"})).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `a.renamed`"),
            "{err}"
        );
        let err =
            Typed::<Two>::from_event("a.created", serde_json::json!({"name": 1})).unwrap_err();
        assert!(err.to_string().contains("missing field `id`"), "{err}");
    }

    #[test]
    fn kafka_coordinates_need_topic_partition_offset() {
        let m: HashMap<&str, &str> = [
            ("__topic", "t"),
            ("__partition", "3"),
            ("__offset", "41"),
            ("__key", "user-1"),
        ]
        .into();
        let k = KafkaCoordinates::from_metadata(|n| m.get(n).copied()).unwrap();
        assert_eq!(
            (k.partition, k.offset, k.key.as_deref()),
            (3, 41, Some("user-1"))
        );
        let partial: HashMap<&str, &str> = [("__topic", "t"), ("__offset", "x")].into();
        assert!(KafkaCoordinates::from_metadata(|n| partial.get(n).copied()).is_none());
    }
}
