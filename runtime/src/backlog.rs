//! The outbox backlog of one function, for a platform's scaler. A function's outbox relay runs
//! only inside its replicas, so a function at zero whose last replica died before publishing
//! would keep those outputs unsent until some new event woke it; the scaler counts a backlog as
//! work and wakes the function to publish it.

use std::sync::Arc;

use crate::idempotency::{self, Store};

/// Read access to one function's outbox in a store (`sqlite:…`, `postgres://…`, `redis://…`).
pub struct Backlog {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backlog")
    }
}

impl Backlog {
    /// Open `function`'s outbox in the store at `url`.
    pub async fn open(url: &str, function: &str) -> Result<Backlog, crate::Error> {
        let store =
            idempotency::open(url, function, None)
                .await
                .map_err(|e| crate::Error::Store {
                    url: idempotency::sql::redact(url),
                    reason: e.0,
                })?;
        Ok(Backlog { store })
    }

    /// Whether any completed event of the function has outputs still unsent.
    pub async fn pending(&self) -> Result<bool, crate::Error> {
        self.store
            .has_unsent()
            .await
            .map_err(|e| crate::Error::Store {
                url: "(the function's store)".into(),
                reason: e.0,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::idempotency::conformance::output;

    #[tokio::test]
    async fn a_backlog_is_the_unsent_outputs_of_one_function() {
        let dir = std::env::temp_dir().join(format!("zerofn-backlog-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite:{}/zerofn.db", dir.display());
        let store = idempotency::open(&url, "notify", None).await.unwrap();
        let backlog = Backlog::open(&url, "notify").await.unwrap();
        let other = Backlog::open(&url, "audit").await.unwrap();
        assert!(!backlog.pending().await.unwrap());
        let (lease, ttl) = (Duration::from_secs(5), Duration::from_secs(60));
        store.claim("k", "w", lease, ttl).await.unwrap();
        assert!(
            store
                .complete("k", "w", &[output("o-1")], None, ttl)
                .await
                .unwrap()
        );
        assert!(backlog.pending().await.unwrap(), "completed, unsent");
        assert!(!other.pending().await.unwrap(), "another function's");
        store.mark_sent("k", 0).await.unwrap();
        assert!(!backlog.pending().await.unwrap(), "sent");
    }
}
