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
            offset: 0,
            limit,
        };
        self.store.dead_letters(&filter).await.map_err(store_error)
    }

    /// Every dead letter, newest first, of one function or all, created at or after `since`,
    /// read in pages (no store is asked for more than a page at once).
    pub async fn all(
        &self,
        function: Option<&str>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<DeadLetter>, crate::Error> {
        const PAGE: usize = 500;
        let mut filter = crate::idempotency::DeadLetterFilter {
            function: function.map(str::to_string),
            since_ms: since.map(|t| t.timestamp_millis()),
            offset: 0,
            limit: PAGE,
        };
        let mut all = Vec::new();
        loop {
            let page = self
                .store
                .dead_letters(&filter)
                .await
                .map_err(store_error)?;
            let last = page.len() < PAGE;
            all.extend(page);
            if last {
                return Ok(all);
            }
            filter.offset += PAGE;
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    #[tokio::test]
    async fn all_pages_through_every_dead_letter() {
        let letters = DeadLetters::open("memory").await.unwrap();
        for i in 0..1203 {
            let function = if i % 2 == 0 { "a" } else { "b" };
            let record = DeadLetter::sample(&format!("{i:05}"), function, "");
            assert!(letters.store.dead_letter("", "", &record).await.unwrap());
        }
        let all = letters.all(None, None).await.unwrap();
        assert_eq!(all.len(), 1203);
        let mut ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 1203, "no page read twice");
        assert_eq!(letters.all(Some("a"), None).await.unwrap().len(), 602);
    }
}
