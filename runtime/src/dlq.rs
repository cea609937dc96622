//! Dead letters as tools see them (`zerofn dlq`, the engine): listed, read and marked replayed
//! from the same store the functions write them to.

use crate::dead_letter::DeadLetter;

/// Read access to the dead letters of a store, for tools (`zerofn dlq`): the same store URL
/// the functions use (`sqlite:…`, `postgres://…`, `redis://…`).
pub struct DeadLetters {
    store: std::sync::Arc<dyn crate::idempotency::Store>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetters")
    }
}

impl DeadLetters {
    /// Open the store at `url`.
    pub async fn open(url: &str) -> Result<DeadLetters, crate::Error> {
        let store = crate::idempotency::open(url, "zerofn-cli", None)
            .await
            .map_err(|e| crate::Error::Store {
                url: crate::idempotency::sql::redact(url),
                reason: e.0,
            })?;
        Ok(DeadLetters { store })
    }

    /// Dead letters newest first, of one function or all, created at or after `since`.
    pub async fn list(
        &self,
        function: Option<&str>,
        since: Option<chrono::DateTime<chrono::Utc>>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, crate::Error> {
        let filter = crate::idempotency::DeadLetterFilter {
            function: function.map(str::to_string),
            since_ms: since.map(|t| t.timestamp_millis()),
            limit,
        };
        self.store.dead_letters(&filter).await.map_err(store_error)
    }

    /// One dead letter by id.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, crate::Error> {
        self.store.dead_letter_by_id(id).await.map_err(store_error)
    }

    /// Record that `id` was replayed.
    pub async fn mark_replayed(&self, id: &str) -> Result<(), crate::Error> {
        self.store.mark_replayed(id).await.map_err(store_error)
    }
}

fn store_error(e: crate::idempotency::StoreError) -> crate::Error {
    crate::Error::Store {
        url: String::from("(dead letters)"),
        reason: e.0,
    }
}
