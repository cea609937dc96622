//! The lease heartbeat: while a delivery works on a claimed event (handler, completion,
//! publish), its lease is renewed every third of its length, so the lease can be short and a
//! dead worker's claim lapses within seconds. When a renewal finds that another delivery took
//! the event over, the heartbeat says so and the attempt stops without committing.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

use super::policy;
use crate::idempotency::Store;

/// Renews one claim until dropped.
pub(crate) struct Heartbeat {
    task: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl Heartbeat {
    pub(crate) fn start(
        store: Arc<dyn Store>,
        key: String,
        owner: String,
        lease: Duration,
    ) -> Self {
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(async move {
            let every = policy::renew_every(lease);
            let mut renewed = tokio::time::Instant::now();
            let mut warned = false;
            loop {
                tokio::time::sleep(every).await;
                match store.renew(&key, &owner, lease).await {
                    Ok(true) => {
                        renewed = tokio::time::Instant::now();
                        warned = false;
                    }
                    Ok(false) => {
                        tracing::warn!("lease lost: another delivery took this event over");
                        let _ = tx.send(true);
                        return;
                    }
                    // A slow store, or (SQLite) this attempt's own transaction holding the write
                    // lock, which fences the record by itself. Writes stay fenced by owner.
                    Err(e) if renewed.elapsed() > lease && !warned => {
                        warned = true;
                        tracing::warn!(error = %e, "lease not renewed for a whole lease; still trying");
                    }
                    Err(e) => tracing::debug!(error = %e, "lease renewal failed; will try again"),
                }
            }
        });
        Heartbeat { task, lost }
    }

    /// Resolves when the lease was lost to another delivery (never, while it is held).
    pub(crate) async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{Claim, memory::MemoryStore};

    #[tokio::test]
    async fn keeps_a_lease_alive_and_reports_a_takeover() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (lease, ttl) = (Duration::from_millis(300), Duration::from_secs(60));
        assert_eq!(
            store.claim("k", "a", lease, ttl).await.unwrap(),
            Claim::Acquired { attempt: 1 }
        );
        let mut beat = Heartbeat::start(store.clone(), "k".into(), "a".into(), lease);
        tokio::time::sleep(lease * 3).await;
        assert!(
            matches!(
                store.claim("k", "b", lease, ttl).await.unwrap(),
                Claim::InFlight { .. }
            ),
            "renewed past three leases"
        );
        drop(beat);
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        assert_eq!(
            store.claim("k", "b", lease, ttl).await.unwrap(),
            Claim::Acquired { attempt: 2 },
            "lapsed once the heartbeat stopped"
        );
        beat = Heartbeat::start(store.clone(), "k".into(), "a".into(), lease);
        tokio::time::timeout(Duration::from_secs(5), beat.lost())
            .await
            .expect("the old owner learns it lost the lease");
    }
}
