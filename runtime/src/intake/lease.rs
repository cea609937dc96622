//! The lease heartbeat: while a delivery works on a claimed event (handler, completion,
//! publish), its lease is renewed every third of its length, so the lease can be short and a
//! dead worker's claim lapses within seconds. When a renewal finds that another delivery took
//! the event over, the heartbeat says so and the attempt stops without committing.
//!
//! Renewals run in a task of their own. An event's heartbeat spawns it only when the first
//! renewal falls due, while the attempt polls [`Heartbeat::lost`] or [`Heartbeat::keep`]: most
//! attempts end long before (milliseconds against a third of a lease), and then an event costs
//! no task and no wake-up of another worker thread.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::policy;
use crate::idempotency::Store;

/// Renews one claim until dropped.
pub(crate) struct Heartbeat {
    /// The renewals, until their task is spawned.
    pending: Option<Renewals>,
    task: Option<JoinHandle<()>>,
    lost: watch::Receiver<bool>,
}

/// What the renewal task needs.
struct Renewals {
    store: Arc<dyn Store>,
    key: String,
    owner: String,
    lease: Duration,
    /// When the lease was taken (the last renewal, before the first).
    since: Instant,
    lost: watch::Sender<bool>,
}

impl Renewals {
    /// When the first renewal is due.
    fn first(&self) -> Instant {
        self.since + policy::renew_every(self.lease)
    }

    async fn run(self) {
        let every = policy::renew_every(self.lease);
        let mut next = self.first();
        let mut renewed = self.since;
        let mut warned = false;
        loop {
            tokio::time::sleep_until(next).await;
            next += every;
            match self.store.renew(&self.key, &self.owner, self.lease).await {
                Ok(true) => {
                    renewed = Instant::now();
                    warned = false;
                }
                Ok(false) => {
                    tracing::warn!("lease lost: another delivery took this event over");
                    let _ = self.lost.send(true);
                    return;
                }
                // A slow store, or (SQLite) this attempt's own transaction holding the write
                // lock, which fences the record by itself. Writes stay fenced by owner.
                Err(e) if renewed.elapsed() > self.lease && !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "lease not renewed for a whole lease; still trying");
                }
                Err(e) => tracing::debug!(error = %e, "lease renewal failed; will try again"),
            }
        }
    }
}

impl Heartbeat {
    /// Renewals in their own task from now on, whether or not anyone polls the heartbeat (a
    /// write's claim, held across the handler's own awaits).
    pub(crate) fn start(
        store: Arc<dyn Store>,
        key: String,
        owner: String,
        lease: Duration,
    ) -> Self {
        let mut heartbeat = Self::deferred(store, key, owner, lease);
        heartbeat.spawn();
        heartbeat
    }

    /// Renewals that start (in their own task) when the first falls due, provided the holder
    /// is then polling [`lost`](Self::lost) or [`keep`](Self::keep).
    pub(crate) fn deferred(
        store: Arc<dyn Store>,
        key: String,
        owner: String,
        lease: Duration,
    ) -> Self {
        let (tx, lost) = watch::channel(false);
        Heartbeat {
            pending: Some(Renewals {
                store,
                key,
                owner,
                lease,
                since: Instant::now(),
                lost: tx,
            }),
            task: None,
            lost,
        }
    }

    fn spawn(&mut self) {
        if let Some(renewals) = self.pending.take() {
            self.task = Some(tokio::spawn(renewals.run()));
        }
    }

    /// Until the renewals run: spawns them once the first is due.
    async fn running(&mut self) {
        if let Some(first) = self.pending.as_ref().map(Renewals::first) {
            tokio::time::sleep_until(first).await;
            self.spawn();
        }
    }

    /// Resolves when the lease was lost to another delivery (never, while it is held).
    /// Cancel-safe.
    pub(crate) async fn lost(&mut self) {
        self.running().await;
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `work`, with the lease renewed while it runs; a lost lease does not stop it.
    pub(crate) async fn keep<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = self.running() => {}
        }
        work.await
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{Claim, memory::MemoryStore};

    /// `beat` kept "k" in flight past three leases; once dropped, the lease lapses and the
    /// next claim takes the event over as attempt 2.
    async fn held_then_lapsed(store: &Arc<dyn Store>, beat: Heartbeat, lease: Duration) {
        let ttl = Duration::from_secs(60);
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
    }

    #[tokio::test]
    async fn keeps_a_lease_alive_and_reports_a_takeover() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (lease, ttl) = (Duration::from_millis(300), Duration::from_secs(60));
        assert_eq!(
            store.claim("k", "a", lease, ttl).await.unwrap(),
            Claim::Acquired { attempt: 1 }
        );
        let beat = Heartbeat::start(store.clone(), "k".into(), "a".into(), lease);
        tokio::time::sleep(lease * 3).await;
        held_then_lapsed(&store, beat, lease).await;
        let mut beat = Heartbeat::start(store.clone(), "k".into(), "a".into(), lease);
        tokio::time::timeout(Duration::from_secs(5), beat.lost())
            .await
            .expect("the old owner learns it lost the lease");
    }

    #[tokio::test]
    async fn a_deferred_heartbeat_spawns_only_for_work_that_outlasts_a_renewal() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (lease, ttl) = (Duration::from_millis(300), Duration::from_secs(60));
        store.claim("k", "a", lease, ttl).await.unwrap();
        let mut beat = Heartbeat::deferred(store.clone(), "k".into(), "a".into(), lease);
        beat.keep(tokio::time::sleep(Duration::from_millis(10)))
            .await;
        assert!(beat.task.is_none(), "short work: no task");
        beat.keep(tokio::time::sleep(lease * 3)).await;
        assert!(beat.task.is_some(), "long work: renewals in their task");
        held_then_lapsed(&store, beat, lease).await;
        // Polled through `lost`, it renews, finds the takeover and says so.
        let mut beat = Heartbeat::deferred(store.clone(), "k".into(), "a".into(), lease);
        tokio::time::timeout(Duration::from_secs(5), beat.lost())
            .await
            .expect("the old owner learns it lost the lease");
    }
}
