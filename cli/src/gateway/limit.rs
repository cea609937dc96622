//! Rate limits: one token bucket per credential and per client address. The arithmetic is a
//! pure function of the instant it is given, tested here; the limiter only keeps the buckets.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::config::Rate;

/// One bucket: tokens left as of `at`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Take one token at `now`, or say how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        }
    }

    /// Full again by `now` (nothing to remember).
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second
            >= rate.burst
    }
}

/// The buckets of one kind of key (credentials, or addresses).
#[derive(Debug)]
pub(crate) struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Past this many buckets, the full ones are forgotten (a full bucket is a new one).
const SWEEP_AT: usize = 10_000;

impl Limiter {
    pub(crate) fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Let one request of `key` through at `now`, or say when to retry.
    pub(crate) fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
            let rate = self.rate;
            buckets.retain(|_, b| !b.is_full(rate, now));
        }
        buckets
            .entry(key.to_string())
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, now)
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 2.0,
        burst: 3.0,
    };

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(RATE);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("k", t0).is_ok(), "the burst");
        }
        let wait = l.check("k", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one token per 1/2 s");
        assert_eq!(retry_after_secs(wait), 1);
        assert!(l.check("other", t0).is_ok(), "keys do not share a bucket");
        assert!(l.check("k", t0 + Duration::from_millis(499)).is_err());
        assert!(l.check("k", t0 + Duration::from_millis(1000)).is_ok());
        // Idle for long: the burst again, never more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check("k", later).is_ok());
        }
        assert!(l.check("k", later).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn full_buckets_are_forgotten_when_there_are_many() {
        let l = Limiter::new(RATE);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            l.check(&format!("a{i}"), t0).unwrap();
        }
        let later = t0 + Duration::from_secs(10);
        l.check("new", later).unwrap();
        assert_eq!(l.buckets.lock().unwrap().len(), 1, "the refilled ones went");
    }
}
