//! Idempotency: every event is claimed in a store before its handler runs and completed after,
//! so that any number of deliveries, in any interleaving, through crashes, produce its effects
//! once. The store also counts attempts, keeps the outbox of emitted events and the dead
//! letters.
//!
//! | state | meaning | a new delivery gets |
//! |---|---|---|
//! | (absent or expired) | never seen | claimed: handler runs |
//! | `in_flight`, lease valid | a worker is handling it (and renewing its lease) | waits for the lease once, then RETRY |
//! | `in_flight`, lease expired | its worker died | claimed again (counts as a failed attempt) |
//! | `failed` | last attempt failed (retryable) | claimed again |
//! | `done` | handled | acknowledged (a duplicate); unsent outputs are published by whoever holds the publish right: the completing worker while its lease lives, else this delivery or the relay |
//! | `dead` | dead-lettered | acknowledged |
//!
//! Leases are short (seconds) and renewed by a heartbeat while their holder works, so a dead
//! holder's claim lapses within one lease, whatever the handler timeout. Every write is fenced
//! by the owner: a holder that lost its lease can neither complete nor dead-letter the record.
//! Records expire `ttl` after their last state change (claim, completion).

#[cfg(test)]
pub(crate) mod conformance;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod sql;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::dead_letter::DeadLetter;

pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a claim found.
#[derive(Debug, PartialEq)]
pub(crate) enum Claim {
    /// This delivery holds the lease; `attempt` counts from 1.
    Acquired { attempt: u32 },
    /// Already handled. `unsent` are outputs not yet published whose publish right this
    /// delivery now holds; empty when nothing is left or another worker holds the right.
    Done { unsent: Vec<StoredOutput> },
    /// Another delivery holds a valid lease, for `lease_left` more (when the store knows).
    InFlight { lease_left: Option<Duration> },
    /// Already dead-lettered under this record id.
    Dead { dead_letter_id: String },
}

/// An emitted event kept until it is published (the outbox).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredOutput {
    pub(crate) seq: u32,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) pubsub: String,
    pub(crate) topic: String,
    pub(crate) body: String,
    pub(crate) traceparent: String,
    pub(crate) partition_key: Option<String>,
    /// A Dapr job to schedule (or cancel) instead of a publish.
    #[serde(default)]
    pub(crate) job: Option<JobOutput>,
}

/// An outbox entry for the Dapr Jobs API: schedule job `name` due at `due` (RFC 3339) with the
/// entry's event as its data, or, without `due`, delete it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct JobOutput {
    pub(crate) name: String,
    pub(crate) due: Option<String>,
}

/// The first response to an HTTP write with an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredResponse {
    pub(crate) status: u16,
    /// JSON.
    pub(crate) body: String,
}

/// Failure facts after an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Failed attempts so far, this one included.
    pub(crate) failed: u32,
    pub(crate) first_failure_ms: i64,
    pub(crate) last_failure_ms: i64,
}

/// Which dead letters to list.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeadLetterFilter {
    pub(crate) function: Option<String>,
    pub(crate) since_ms: Option<i64>,
    /// Skip this many (newest first): pages.
    pub(crate) offset: usize,
    pub(crate) limit: usize,
}

/// A store fault (connection, query, serialisation). Always retryable for the event.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub(crate) struct StoreError(pub(crate) String);

impl StoreError {
    pub(crate) fn from(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

/// A database transaction handed to the handler (SQL stores): its writes commit together with
/// the idempotency record and the outbox, or not at all.
#[derive(Clone)]
pub struct Transaction {
    slot: Arc<std::sync::Mutex<Option<sqlx::Transaction<'static, sqlx::Any>>>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transaction")
    }
}

/// Exclusive use of the delivery's transaction, for queries: `.execute(&mut **conn)`. Dropping
/// it hands the transaction back to the runtime, which commits it with the idempotency record.
pub struct TransactionGuard {
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
    slot: Arc<std::sync::Mutex<Option<sqlx::Transaction<'static, sqlx::Any>>>>,
}

impl std::fmt::Debug for TransactionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransactionGuard")
    }
}

impl std::ops::Deref for TransactionGuard {
    type Target = sqlx::Transaction<'static, sqlx::Any>;
    fn deref(&self) -> &Self::Target {
        self.tx.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for TransactionGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.tx.as_mut().expect("present until drop")
    }
}

impl Drop for TransactionGuard {
    fn drop(&mut self) {
        if let (Some(tx), Ok(mut slot)) = (self.tx.take(), self.slot.lock()) {
            *slot = Some(tx);
        }
    }
}

impl Transaction {
    pub(crate) fn new(tx: sqlx::Transaction<'static, sqlx::Any>) -> Self {
        Transaction {
            slot: Arc::new(std::sync::Mutex::new(Some(tx))),
        }
    }

    /// Take the transaction for queries until the guard drops. Fails (retryably) while another
    /// guard holds it, or once the runtime has ended it.
    pub async fn conn(&self) -> Result<TransactionGuard, crate::HandlerError> {
        let tx = self.slot.lock().ok().and_then(|mut slot| slot.take());
        match tx {
            Some(tx) => Ok(TransactionGuard {
                tx: Some(tx),
                slot: self.slot.clone(),
            }),
            None => Err(crate::HandlerError::retryable(
                "the delivery's transaction is in use by another guard or has already ended",
            )),
        }
    }

    pub(crate) async fn take(&self) -> Option<sqlx::Transaction<'static, sqlx::Any>> {
        self.slot.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The idempotency store. Every method is atomic with respect to concurrent deliveries.
pub(crate) trait Store: Send + Sync + 'static {
    /// Claim `key` for `owner` for `lease`; records live for `ttl`.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
        ttl: Duration,
    ) -> BoxFut<'a, Result<Claim, StoreError>>;

    /// A transaction for the handler's writes (SQL stores only).
    fn begin(&self) -> BoxFut<'_, Result<Option<Transaction>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// Extend `owner`'s lease on `key` (in flight, or done with the publish right) to `lease`
    /// from now. `Ok(false)` when `owner` no longer holds it: another delivery took it over.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>>;

    /// Mark `key` done and keep `outputs` unsent, inside `tx` when given (then commit it); the
    /// record then lives `ttl` from now. `Ok(false)` when `owner` no longer holds the lease:
    /// nothing was written.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        outputs: &'a [StoredOutput],
        tx: Option<Transaction>,
        ttl: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>>;

    /// The outbox relay's claim: when `key` is done, not expired, with unsent outputs and no
    /// live publish right, take the right for `owner` and return those outputs. Never creates
    /// or revives a record.
    fn take_unsent<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<Vec<StoredOutput>, StoreError>>;

    /// Give up the right to publish `key`'s outputs (after a failed publish), so the next
    /// delivery publishes them at once instead of waiting for the lease to end.
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, Result<(), StoreError>>;

    /// Keys of completed events with outputs still unsent, completed before `before_ms`: the
    /// outbox relay's work list.
    fn keys_with_unsent<'a>(
        &'a self,
        before_ms: i64,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<String>, StoreError>>;

    /// Whether any completed, unexpired record has outputs still unsent, whoever holds its
    /// publish right: the backlog a scaler wakes a function at zero for.
    fn has_unsent(&self) -> BoxFut<'_, Result<bool, StoreError>>;

    /// Record that output `seq` of `key` was published.
    fn mark_sent<'a>(&'a self, key: &'a str, seq: u32) -> BoxFut<'a, Result<(), StoreError>>;

    /// Record a failed attempt and release the lease.
    fn fail<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        error: &'a str,
    ) -> BoxFut<'a, Result<Attempts, StoreError>>;

    /// The failure facts so far (for a failure that is dead-lettered at once).
    fn attempts<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Attempts>, StoreError>>;

    /// Keep `record`; when `key` is not empty, mark it dead so redeliveries are acknowledged,
    /// fenced like `complete`: only while `owner` holds it (in flight, or failed by `owner`).
    /// `Ok(false)` when it does not: nothing was written.
    fn dead_letter<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFut<'a, Result<bool, StoreError>>;

    /// Dead letters, newest first.
    fn dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFut<'a, Result<Vec<DeadLetter>, StoreError>>;

    /// One dead letter by id (any function).
    fn dead_letter_by_id<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFut<'a, Result<Option<DeadLetter>, StoreError>>;

    /// Note that a dead letter was replayed.
    fn mark_replayed<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), StoreError>>;

    /// Forget records whose TTL has passed; how many.
    fn purge_expired(&self) -> BoxFut<'_, Result<u64, StoreError>>;

    /// Keep the response to an HTTP write in its transaction `tx` (SQL stores only), so that a
    /// retry with the same `Idempotency-Key` gets it again.
    fn save_response<'a>(
        &'a self,
        _tx: &'a Transaction,
        _key: &'a str,
        _response: &'a StoredResponse,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError("responses are kept by SQL stores only".into())) })
    }

    /// The response kept for `key`, if any.
    fn response<'a>(
        &'a self,
        _key: &'a str,
    ) -> BoxFut<'a, Result<Option<StoredResponse>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// The SQL pool, for a function's own routes (SQL stores only).
    fn pool(&self) -> Option<sqlx::AnyPool> {
        None
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Open the store `url` names for `function`: `memory`, `sqlite:…`, `postgres://…`, `redis://…`.
/// SQL stores also run the function's own `migrations`.
pub(crate) async fn open(
    url: &str,
    function: &str,
    migrations: Option<&sqlx::migrate::Migrator>,
) -> Result<Arc<dyn Store>, StoreError> {
    if url == "memory" {
        Ok(Arc::new(memory::MemoryStore::new()))
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        #[cfg(feature = "redis")]
        return Ok(Arc::new(redis::RedisStore::connect(url, function).await?));
        #[cfg(not(feature = "redis"))]
        return Err(StoreError(
            "this function was built without the runtime's `redis` feature".into(),
        ));
    } else {
        Ok(Arc::new(
            sql::SqlStore::connect(url, function, migrations).await?,
        ))
    }
}
