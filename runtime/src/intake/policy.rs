//! The pipeline's decisions, as pure functions of what is known (kube-rs's `error_policy` is
//! the model): whether a failed attempt is retried or dead-lettered, whether a claimed event
//! may run at all, how long to wait for another worker's lease, how often to renew one's own.

use std::time::Duration;

use crate::outcome::FailureKind;

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Answer "retry": the transport delivers the event again.
    Retry,
    /// Keep a dead-letter record and acknowledge the event. `exhausted` when retryable
    /// failures used up `max_attempts`; otherwise the failure was permanent.
    DeadLetter { exhausted: bool },
}

/// Whether a failure of `kind` counts as one of the event's attempts (is recorded in the
/// store). A lost lease is not this delivery's failure: whoever took the event over counts.
pub(crate) fn counts_as_attempt(kind: FailureKind) -> bool {
    kind.is_retryable() && kind != FailureKind::InFlight
}

/// After a failure of `kind`: `failed` is the number of failed attempts the store now holds
/// (`None` when it could not be recorded).
pub(crate) fn after_failure(kind: FailureKind, failed: Option<u32>, max_attempts: u32) -> Next {
    if !kind.is_retryable() {
        return Next::DeadLetter { exhausted: false };
    }
    match failed {
        Some(n) if n >= max_attempts => Next::DeadLetter { exhausted: true },
        _ => Next::Retry,
    }
}

/// Whether a claimed `attempt` (counting from 1) may run the handler. A takeover counts the
/// dead worker's attempt as failed, so a handler that kills its process (OOM, abort) reaches
/// `max_attempts` like one that returns errors, and is dead-lettered instead of run again.
pub(crate) fn may_run(attempt: u32, max_attempts: u32) -> bool {
    attempt <= max_attempts
}

/// How long a delivery that found the event in flight waits for the holder's lease before it
/// claims again, once. A live holder renews its lease, so the second claim answers "in flight"
/// again; a dead one's lease lapses, and the waiting delivery takes the event over instead of
/// spending a retry of the transport's budget. `None`: answer "in flight" at once (the lease
/// is unknown, or longer than leases are).
pub(crate) fn wait_for_lease(lease_left: Option<Duration>, lease: Duration) -> Option<Duration> {
    let left = lease_left?;
    (left <= lease).then(|| left + LEASE_MARGIN)
}

/// Past a lease's end before a waiting delivery claims again (clock steps between stores).
const LEASE_MARGIN: Duration = Duration::from_millis(100);

/// How often a holder renews its lease: three renewals fit in one lease, so two can fail
/// (a slow store, a lock held by the holder's own transaction) before the lease lapses.
pub(crate) fn renew_every(lease: Duration) -> Duration {
    lease / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_failures_are_dead_lettered_at_once() {
        for kind in [
            FailureKind::SchemaViolation,
            FailureKind::HandlerPermanent,
            FailureKind::UnknownType,
            FailureKind::Malformed,
        ] {
            assert_eq!(
                after_failure(kind, None, 5),
                Next::DeadLetter { exhausted: false }
            );
            assert!(!counts_as_attempt(kind));
        }
    }

    #[test]
    fn retryable_failures_are_retried_until_max_attempts() {
        let k = FailureKind::HandlerRetryable;
        assert!(counts_as_attempt(k));
        assert_eq!(after_failure(k, Some(1), 3), Next::Retry);
        assert_eq!(after_failure(k, Some(2), 3), Next::Retry);
        assert_eq!(
            after_failure(k, Some(3), 3),
            Next::DeadLetter { exhausted: true }
        );
        assert_eq!(
            after_failure(k, Some(9), 3),
            Next::DeadLetter { exhausted: true }
        );
        // Not recorded (the store is down): never dead-letter on a guess.
        assert_eq!(after_failure(k, None, 1), Next::Retry);
    }

    #[test]
    fn a_lost_lease_is_retried_and_not_counted() {
        assert!(!counts_as_attempt(FailureKind::InFlight));
        assert_eq!(after_failure(FailureKind::InFlight, None, 1), Next::Retry);
        assert!(counts_as_attempt(FailureKind::Draining));
        assert!(counts_as_attempt(FailureKind::WorkerLost));
    }

    #[test]
    fn a_takeover_past_max_attempts_does_not_run() {
        assert!(may_run(1, 1));
        assert!(may_run(3, 3));
        assert!(!may_run(4, 3));
        assert!(!may_run(2, 1));
    }

    #[test]
    fn waits_for_a_lease_no_longer_than_leases_are() {
        let lease = Duration::from_secs(6);
        assert_eq!(
            wait_for_lease(Some(Duration::from_secs(2)), lease),
            Some(Duration::from_millis(2100))
        );
        assert_eq!(
            wait_for_lease(Some(lease), lease),
            Some(lease + LEASE_MARGIN)
        );
        // A lease written by a worker configured with a longer one, or none known.
        assert_eq!(wait_for_lease(Some(Duration::from_secs(60)), lease), None);
        assert_eq!(wait_for_lease(None, lease), None);
    }

    #[test]
    fn renews_three_times_per_lease() {
        assert_eq!(renew_every(Duration::from_secs(6)), Duration::from_secs(2));
        let min = crate::config::MIN_LEASE;
        assert!(renew_every(min) * 3 <= min);
    }
}
