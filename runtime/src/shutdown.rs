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

/// A future that resolves on SIGTERM or SIGINT (Ctrl-C), for a server's graceful shutdown.
///
/// The handlers are installed by this call, not when the future is first polled: call it
/// before serving. Otherwise a SIGTERM that arrives between "ready" and the first poll takes
/// the default action and kills the process with no drain and no exit code. [`run`](crate::run)
/// and [`serve`](crate::serve) call it before they bind; the `zerofn` CLI's servers do too.
///
/// ```no_run
/// # async fn example() {
/// let stop = zerofn::shutdown_signal(); // installed now
/// // ... start serving ...
/// stop.await; // then drain
/// # }
/// ```
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let installed = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, signal = name, "cannot listen for this signal; it will not stop the process gracefully");
                None
            }
        };
        let term = installed(SignalKind::terminate(), "SIGTERM");
        let interrupt = installed(SignalKind::interrupt(), "SIGINT");
        async move {
            tokio::select! {
                () = received(term) => tracing::info!("SIGTERM received"),
                () = received(interrupt) => tracing::info!("interrupt received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The first delivery of `signal` (never, when its handler could not be installed).
#[cfg(unix)]
async fn received(signal: Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
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
