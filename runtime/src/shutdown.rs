//! Graceful shutdown: on SIGTERM stop taking new deliveries, let the in-flight ones finish
//! within the grace period, then stop the server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

/// Counts deliveries in flight and refuses new ones once draining has begun.
#[derive(Clone, Debug, Default)]
pub(crate) struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Held while one delivery runs; dropping it ends the delivery.
#[derive(Debug)]
pub(crate) struct InFlight {
    inner: Arc<Inner>,
}

impl Drain {
    /// Register a delivery, or `None` if the process is draining.
    pub(crate) fn enter(&self) -> Option<InFlight> {
        // Count first, then look: a drain that starts in between still waits for us.
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            inner: self.inner.clone(),
        };
        if self.inner.draining.load(Ordering::SeqCst) {
            return None; // the guard's drop undoes the count
        }
        Some(guard)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Begin draining and wait until nothing is in flight, or `grace` passes. On timeout,
    /// returns how many deliveries were still running.
    pub(crate) async fn drain(&self, grace: Duration) -> Result<(), usize> {
        self.inner.draining.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(grace, wait)
            .await
            .map_err(|_| self.in_flight())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = ctrl_c => tracing::info!("interrupt received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Resolves once the process that started this one is gone (its parent changed: the engine
/// died, even by SIGKILL, and the replica was re-parented). Never resolves without `parent`.
pub(crate) async fn parent_gone(parent: Option<u32>) {
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    #[cfg(unix)]
    loop {
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(
                parent,
                "the engine that started this replica is gone; shutting down"
            );
            return;
        }
        tokio::time::sleep(PARENT_CHECK).await;
    }
    #[cfg(not(unix))]
    std::future::pending().await
}

/// How often a replica checks that its engine is alive.
const PARENT_CHECK: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_in_flight_and_refuses_new() {
        let drain = Drain::default();
        let guard = drain.enter().unwrap();
        let d2 = drain.clone();
        let waiter = tokio::spawn(async move { d2.drain(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        while !drain.is_draining() {
            tokio::task::yield_now().await;
        }
        assert!(drain.enter().is_none());
        assert_eq!(drain.in_flight(), 1);
        drop(guard);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn drain_times_out_with_the_count() {
        let drain = Drain::default();
        let _a = drain.enter().unwrap();
        let _b = drain.enter().unwrap();
        assert_eq!(drain.drain(Duration::from_millis(20)).await, Err(2));
    }
}
