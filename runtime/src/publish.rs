//! Publishing: the one interface through which outbox entries and dead-letter records leave
//! the process (the Dapr sidecar or a Knative sink implement it in `transport`).

use std::{future::Future, pin::Pin};

use crate::idempotency::StoredOutput;

/// Sends an event (an outbox entry or a dead-letter record) to its topic.
pub(crate) trait Publisher: Send + Sync {
    fn publish<'a>(
        &'a self,
        event: &'a StoredOutput,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Where nothing can be published (the HTTP transport without `K_SINK`, for a function that
/// emits nothing): dead-letter records stay in the store only.
pub(crate) struct NoPublisher;

impl Publisher for NoPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a StoredOutput,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        let msg = format!("no publisher is configured for topic {}", event.topic);
        Box::pin(async move { Err(msg) })
    }
}
