//! In-memory store: the reference semantics, for tests of functions. Lost on restart.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::{
    Attempts, BoxFut, Claim, DeadLetterFilter, Store, StoreError, StoredOutput, Transaction, ms,
    now_ms,
};
use crate::dead_letter::DeadLetter;

/// The message recorded when a lease expired under a worker that never finished.
pub(crate) const LEASE_EXPIRED: &str =
    "lease expired: the worker handling the previous attempt stopped";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    InFlight,
    Failed,
    Done,
    Dead,
}

#[derive(Debug)]
struct Record {
    state: State,
    owner: String,
    lease_until: i64,
    attempts: u32,
    first_failure: Option<i64>,
    last_failure: Option<i64>,
    dead_letter_id: Option<String>,
    expires_at: i64,
    outputs: Vec<(StoredOutput, bool)>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, Record>,
    dead: Vec<(DeadLetter, i64)>,
}

pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError("memory store lock poisoned".into()))?;
        Ok(f(&mut inner))
    }
}

fn failed(r: &mut Record, now: i64) -> Attempts {
    r.attempts += 1;
    let first = *r.first_failure.get_or_insert(now);
    r.last_failure = Some(now);
    Attempts {
        failed: r.attempts,
        first_failure_ms: first,
        last_failure_ms: now,
    }
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
        ttl: Duration,
    ) -> BoxFut<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| {
                let fresh = || Record {
                    state: State::InFlight,
                    owner: owner.to_string(),
                    lease_until: now + ms(lease),
                    attempts: 0,
                    first_failure: None,
                    last_failure: None,
                    dead_letter_id: None,
                    expires_at: now + ms(ttl),
                    outputs: Vec::new(),
                };
                let record = match inner.records.get_mut(key) {
                    Some(r) if r.expires_at > now => r,
                    _ => {
                        inner.records.insert(key.to_string(), fresh());
                        return Claim::Acquired { attempt: 1 };
                    }
                };
                match record.state {
                    State::Done => {
                        let unsent: Vec<StoredOutput> = record
                            .outputs
                            .iter()
                            .filter(|(_, sent)| !sent)
                            .map(|(o, _)| o.clone())
                            .collect();
                        if unsent.is_empty() || record.lease_until > now {
                            Claim::Done { unsent: Vec::new() }
                        } else {
                            record.owner = owner.to_string();
                            record.lease_until = now + ms(lease);
                            Claim::Done { unsent }
                        }
                    }
                    State::Dead => Claim::Dead {
                        dead_letter_id: record.dead_letter_id.clone().unwrap_or_default(),
                    },
                    State::InFlight if record.lease_until > now => Claim::InFlight {
                        lease_left: Some(Duration::from_millis(
                            u64::try_from(record.lease_until - now).unwrap_or(0),
                        )),
                    },
                    State::InFlight | State::Failed => {
                        if record.state == State::InFlight {
                            failed(record, now);
                        }
                        record.state = State::InFlight;
                        record.owner = owner.to_string();
                        record.lease_until = now + ms(lease);
                        Claim::Acquired {
                            attempt: record.attempts + 1,
                        }
                    }
                }
            })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        outputs: &'a [StoredOutput],
        _tx: Option<Transaction>,
        ttl: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| match inner.records.get_mut(key) {
                Some(r) if r.state == State::InFlight && r.owner == owner => {
                    r.state = State::Done;
                    r.expires_at = now + ms(ttl);
                    r.outputs = outputs.iter().map(|o| (o.clone(), false)).collect();
                    true
                }
                _ => false,
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| match inner.records.get_mut(key) {
                Some(r) if r.owner == owner && matches!(r.state, State::InFlight | State::Done) => {
                    r.lease_until = now + ms(lease);
                    true
                }
                _ => false,
            })
        })
    }

    fn take_unsent<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<Vec<StoredOutput>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| match inner.records.get_mut(key) {
                Some(r) if r.state == State::Done && r.lease_until <= now && r.expires_at > now => {
                    let unsent: Vec<StoredOutput> = r
                        .outputs
                        .iter()
                        .filter(|(_, sent)| !sent)
                        .map(|(o, _)| o.clone())
                        .collect();
                    if !unsent.is_empty() {
                        r.owner = owner.to_string();
                        r.lease_until = now + ms(lease);
                    }
                    unsent
                }
                _ => Vec::new(),
            })
        })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.with(|inner| {
                if let Some(r) = inner
                    .records
                    .get_mut(key)
                    .filter(|r| r.owner == owner && r.state == State::Done)
                {
                    r.lease_until = 0;
                }
            })
        })
    }

    fn keys_with_unsent<'a>(
        &'a self,
        _before_ms: i64,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| {
                inner
                    .records
                    .iter()
                    .filter(|(_, r)| {
                        r.state == State::Done
                            && r.expires_at > now
                            && r.outputs.iter().any(|(_, sent)| !sent)
                    })
                    .map(|(k, _)| k.clone())
                    .take(limit)
                    .collect()
            })
        })
    }

    fn has_unsent(&self) -> BoxFut<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| {
                inner.records.values().any(|r| {
                    r.state == State::Done
                        && r.expires_at > now
                        && r.outputs.iter().any(|(_, sent)| !sent)
                })
            })
        })
    }

    fn mark_sent<'a>(&'a self, key: &'a str, seq: u32) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.with(|inner| {
                if let Some(r) = inner.records.get_mut(key) {
                    for (o, sent) in &mut r.outputs {
                        if o.seq == seq {
                            *sent = true;
                        }
                    }
                }
            })
        })
    }

    fn fail<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        _error: &'a str,
    ) -> BoxFut<'a, Result<Attempts, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| match inner.records.get_mut(key) {
                Some(r) if r.owner == owner && r.state == State::InFlight => {
                    r.state = State::Failed;
                    r.lease_until = 0;
                    Ok(failed(r, now))
                }
                _ => Err(StoreError(format!(
                    "record {key} is not held by this delivery"
                ))),
            })?
        })
    }

    fn attempts<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Attempts>, StoreError>> {
        Box::pin(async move {
            self.with(|inner| {
                inner.records.get(key).and_then(|r| {
                    Some(Attempts {
                        failed: r.attempts,
                        first_failure_ms: r.first_failure?,
                        last_failure_ms: r.last_failure?,
                    })
                })
            })
        })
    }

    fn dead_letter<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| {
                if !key.is_empty() {
                    match inner.records.get_mut(key) {
                        Some(r)
                            if r.owner == owner
                                && matches!(r.state, State::InFlight | State::Failed) =>
                        {
                            r.state = State::Dead;
                            r.lease_until = 0;
                            r.dead_letter_id = Some(record.id.clone());
                        }
                        _ => return false,
                    }
                }
                inner.dead.push((record.clone(), now));
                true
            })
        })
    }

    fn dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFut<'a, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(async move {
            self.with(|inner| {
                inner
                    .dead
                    .iter()
                    .rev()
                    .filter(|(d, at)| {
                        filter.function.as_ref().is_none_or(|f| *f == d.function)
                            && filter.since_ms.is_none_or(|s| *at >= s)
                    })
                    .skip(filter.offset)
                    .take(filter.limit.max(1))
                    .map(|(d, _)| d.clone())
                    .collect()
            })
        })
    }

    fn dead_letter_by_id<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFut<'a, Result<Option<DeadLetter>, StoreError>> {
        Box::pin(async move {
            self.with(|inner| {
                inner
                    .dead
                    .iter()
                    .find(|(d, _)| d.id == id)
                    .map(|(d, _)| d.clone())
            })
        })
    }

    fn mark_replayed<'a>(&'a self, _id: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn purge_expired(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.with(|inner| {
                let before = inner.records.len();
                inner.records.retain(|_, r| r.expires_at > now);
                (before - inner.records.len()) as u64
            })
        })
    }
}
