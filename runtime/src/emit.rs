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
    /// A job instead of a publish: the event comes back to this function at its due time.
    pub(crate) job: Option<EmitJob>,
}

/// What an [`Emit`] asks of the Dapr Jobs API.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum EmitJob {
    /// Schedule job `name` (replacing one of that name) to deliver the event at `due`.
    At {
        name: String,
        due: chrono::DateTime<chrono::Utc>,
    },
    /// Delete job `name` (nothing happens if there is none).
    Cancel { name: String },
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
            job: None,
        })
    }

    /// An event of type `ty` (declared under `[[jobs]]` in `function.toml`) delivered back to
    /// this function at `due`, through the Dapr Jobs API, as job `name`: scheduled once the
    /// handler's outcome commits, with the same idempotency, dead letters and trace as any
    /// event. Scheduling a name again replaces the job; [`Emit::cancel`] removes it.
    pub fn at(
        name: impl Into<String>,
        due: chrono::DateTime<chrono::Utc>,
        ty: impl Into<String>,
        data: &impl Serialize,
    ) -> Result<Emit, HandlerError> {
        let mut e = Emit::new(ty, data)?;
        e.job = Some(EmitJob::At {
            name: name.into(),
            due,
        });
        Ok(e)
    }

    /// Remove job `name` once the handler's outcome commits (nothing happens if it fired
    /// already or never existed).
    pub fn cancel(name: impl Into<String>) -> Emit {
        Emit {
            ty: String::new(),
            data: Value::Null,
            subject: None,
            partition_key: None,
            extensions: BTreeMap::new(),
            job: Some(EmitJob::Cancel { name: name.into() }),
        }
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

    /// For an [`Emit::at`]: the job's name and when it is due.
    pub fn scheduled(&self) -> Option<(&str, chrono::DateTime<chrono::Utc>)> {
        match &self.job {
            Some(EmitJob::At { name, due }) => Some((name, *due)),
            _ => None,
        }
    }

    /// For an [`Emit::cancel`]: the job's name.
    pub fn cancelled(&self) -> Option<&str> {
        match &self.job {
            Some(EmitJob::Cancel { name }) => Some(name),
            _ => None,
        }
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
