//! What a handler returns: [`Emit`], an event to publish, and [`IntoEmits`] for the shapes a
//! handler may return (nothing, one event, an optional event, a list).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::HandlerError;

/// An event a handler asks the runtime to publish once the handler succeeds.
///
/// The runtime fills in `id`, `source`, `time`, `specversion`, the trace context and
/// `causationid`/`correlationid`, checks `data` against the type's contract and publishes
/// it to the topic `function.toml` declares for the type.
#[derive(Clone, Debug, PartialEq)]
pub struct Emit {
    pub(crate) ty: String,
    pub(crate) data: Value,
    pub(crate) subject: Option<String>,
    pub(crate) partition_key: Option<String>,
    pub(crate) extensions: BTreeMap<String, String>,
}

impl Emit {
    /// An event of type `ty` with `data`. Fails (permanently) only if `data` cannot be
    /// represented as JSON.
    pub fn new(ty: impl Into<String>, data: &impl Serialize) -> Result<Emit, HandlerError> {
        let data = serde_json::to_value(data).map_err(HandlerError::permanent)?;
        Ok(Emit {
            ty: ty.into(),
            data,
            subject: None,
            partition_key: None,
            extensions: BTreeMap::new(),
        })
    }

    /// Set the CloudEvent `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Set the `partitionkey` extension; it also becomes the Kafka record key, so events with
    /// the same key stay in order.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// Add an extension attribute (names: lower-case letters and digits).
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// The CloudEvent type.
    pub fn ty(&self) -> &str {
        &self.ty
    }

    /// The event's data.
    pub fn data(&self) -> &Value {
        &self.data
    }
}

/// The return values a handler may produce on success.
pub trait IntoEmits: Send {
    /// The events to publish, in order.
    fn into_emits(self) -> Vec<Emit>;
}

impl IntoEmits for () {
    fn into_emits(self) -> Vec<Emit> {
        Vec::new()
    }
}

impl IntoEmits for Emit {
    fn into_emits(self) -> Vec<Emit> {
        vec![self]
    }
}

impl IntoEmits for Option<Emit> {
    fn into_emits(self) -> Vec<Emit> {
        self.into_iter().collect()
    }
}

impl IntoEmits for Vec<Emit> {
    fn into_emits(self) -> Vec<Emit> {
        self
    }
}
