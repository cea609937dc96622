//! Redis store (the seeds' Dapr state store choice). The lease is a `SET NX PX` key; the
//! record, its outputs and the dead letters are hashes and sorted sets. Every read-modify-write
//! is one Lua script, so concurrent deliveries see an atomic claim.
//!
//! Keys: `zerofn:{fn}:rec:{key}` (hash), `zerofn:{fn}:lease:{key}` (owner, PX lease),
//! `zerofn:{fn}:out:{key}` (hash seq → output JSON, removed once sent), `zerofn:dlq:{id}`
//! (record JSON), `zerofn:dlq:index` and `zerofn:dlq:fn:{fn}` (sorted by time).

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{
    Attempts, BoxFut, Claim, DeadLetterFilter, Store, StoreError, StoredOutput, Transaction,
    memory::LEASE_EXPIRED, ms, now_ms,
};
use crate::dead_letter::DeadLetter;

const CLAIM: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  -- A duplicate. Unsent outputs are published by whoever holds the lease (the publish right).
  if redis.call('HLEN', KEYS[3]) > 0 and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'done', '1'} end
  return {'done', '0'}
end
if state == 'dead' then return {'dead', redis.call('HGET', KEYS[1], 'dead_letter_id') or ''} end
-- No record (never seen, or expired): a lease left by an expired record's worker means nothing.
if not state then redis.call('DEL', KEYS[2]) end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'in_flight', tostring(redis.call('PTTL', KEYS[2]))} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if state == 'in_flight' then
  attempts = attempts + 1
  redis.call('HSET', KEYS[1], 'attempts', attempts, 'last_failure', ARGV[4], 'last_error', ARGV[5])
  if not redis.call('HGET', KEYS[1], 'first_failure') then redis.call('HSET', KEYS[1], 'first_failure', ARGV[4]) end
end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'owner', ARGV[1], 'attempts', attempts)
if not state then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {'acquired', tostring(attempts + 1)}
";

const COMPLETE: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'in_flight' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 4 then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[3])
end
return 1
";

const MARK_SENT: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1
";

const FAIL: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'in_flight' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'first_failure') then redis.call('HSET', KEYS[1], 'first_failure', ARGV[2]) end
redis.call('HSET', KEYS[1], 'state', 'failed', 'last_failure', ARGV[2], 'last_error', ARGV[3])
redis.call('DEL', KEYS[2])
return {tostring(attempts), redis.call('HGET', KEYS[1], 'first_failure'), ARGV[2]}
";

const RENEW: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] and (state == 'in_flight' or state == 'done') then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
-- A lapsed lease that nobody took: the record still names this owner.
if not holder and state == 'in_flight' and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

const TAKE_UNSENT: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'done' or redis.call('HLEN', KEYS[3]) == 0 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

const DEAD_LETTER: &str = r"
if ARGV[5] == '1' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if (state ~= 'in_flight' and state ~= 'failed') or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'dead', 'dead_letter_id', ARGV[2])
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2])
return 1
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

pub(crate) struct RedisStore {
    con: MultiplexedConnection,
    function: String,
    claim: redis::Script,
    complete: redis::Script,
    fail: redis::Script,
    release: redis::Script,
    mark_sent: redis::Script,
    renew: redis::Script,
    take_unsent: redis::Script,
    dead_letter: redis::Script,
}

impl RedisStore {
    pub(crate) async fn connect(url: &str, function: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError(format!("bad Redis URL {}: {e}", super::sql::redact(url))))?;
        let con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| {
                StoreError(format!(
                    "cannot connect to {}: {e}",
                    super::sql::redact(url)
                ))
            })?;
        Ok(RedisStore {
            con,
            function: function.to_string(),
            claim: redis::Script::new(CLAIM),
            complete: redis::Script::new(COMPLETE),
            fail: redis::Script::new(FAIL),
            release: redis::Script::new(RELEASE),
            mark_sent: redis::Script::new(MARK_SENT),
            renew: redis::Script::new(RENEW),
            take_unsent: redis::Script::new(TAKE_UNSENT),
            dead_letter: redis::Script::new(DEAD_LETTER),
        })
    }

    fn k(&self, kind: &str, key: &str) -> String {
        format!("zerofn:{}:{kind}:{key}", self.function)
    }

    /// The set of keys whose outputs are not all published (the relay's work list).
    fn unsent_set(&self) -> String {
        format!("zerofn:{}:unsent", self.function)
    }
}

impl RedisStore {
    /// The unsent outputs of `key`, in order.
    async fn unsent(
        &self,
        con: &mut MultiplexedConnection,
        key: &str,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        let outputs: Vec<String> = redis::cmd("HVALS")
            .arg(self.k("out", key))
            .query_async(con)
            .await
            .map_err(StoreError::from)?;
        let mut unsent: Vec<StoredOutput> = outputs
            .iter()
            .map(|o| serde_json::from_str(o))
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)?;
        unsent.sort_by_key(|o| o.seq);
        Ok(unsent)
    }
}

fn parse_ms(v: Option<&String>) -> i64 {
    v.and_then(|s| s.parse().ok()).unwrap_or_else(now_ms)
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
        ttl: Duration,
    ) -> BoxFut<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let reply: Vec<String> = self
                .claim
                .key(self.k("rec", key))
                .key(self.k("lease", key))
                .key(self.k("out", key))
                .arg(owner)
                .arg(ms(lease).max(1))
                .arg(ms(ttl).max(1))
                .arg(now_ms())
                .arg(LEASE_EXPIRED)
                .invoke_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(match reply.first().map(String::as_str) {
                Some("acquired") => Claim::Acquired {
                    attempt: reply.get(1).and_then(|a| a.parse().ok()).unwrap_or(1),
                },
                Some("done") if reply.get(1).map(String::as_str) == Some("1") => Claim::Done {
                    unsent: self.unsent(&mut con, key).await?,
                },
                Some("done") => Claim::Done { unsent: Vec::new() },
                Some("dead") => Claim::Dead {
                    dead_letter_id: reply.get(1).cloned().unwrap_or_default(),
                },
                _ => Claim::InFlight {
                    lease_left: reply
                        .get(1)
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(Duration::from_millis),
                },
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
            let mut con = self.con.clone();
            let mut invocation = self.complete.key(self.k("rec", key));
            invocation
                .key(self.k("lease", key))
                .key(self.k("out", key))
                .key(self.unsent_set())
                .arg(owner)
                .arg(ms(ttl).max(1))
                .arg(key);
            for o in outputs {
                invocation
                    .arg(o.seq)
                    .arg(serde_json::to_string(o).map_err(StoreError::from)?);
            }
            let done: i64 = invocation
                .invoke_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(done == 1)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let renewed: i64 = self
                .renew
                .key(self.k("rec", key))
                .key(self.k("lease", key))
                .arg(owner)
                .arg(ms(lease).max(1))
                .invoke_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(renewed == 1)
        })
    }

    fn take_unsent<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<Vec<StoredOutput>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let took: i64 = self
                .take_unsent
                .key(self.k("rec", key))
                .key(self.k("lease", key))
                .key(self.k("out", key))
                .arg(owner)
                .arg(ms(lease).max(1))
                .invoke_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            if took == 1 {
                self.unsent(&mut con, key).await
            } else {
                Ok(Vec::new())
            }
        })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            self.release
                .key(self.k("lease", key))
                .arg(owner)
                .invoke_async::<i64>(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn keys_with_unsent<'a>(
        &'a self,
        _before_ms: i64,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<String>, StoreError>> {
        // Recency is left to the claim: a key whose completing worker still holds the lease is
        // answered in-flight there, so the relay skips it.
        Box::pin(async move {
            let mut con = self.con.clone();
            let members: Vec<String> = redis::cmd("SRANDMEMBER")
                .arg(self.unsent_set())
                .arg(limit.max(1))
                .query_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            let mut keys = Vec::with_capacity(members.len());
            for key in members {
                let state: Option<String> = redis::cmd("HGET")
                    .arg(self.k("rec", &key))
                    .arg("state")
                    .query_async(&mut con)
                    .await
                    .map_err(StoreError::from)?;
                if state.as_deref() == Some("done") {
                    keys.push(key);
                } else {
                    // Expired record: nothing left to relay for it.
                    redis::cmd("SREM")
                        .arg(self.unsent_set())
                        .arg(&key)
                        .query_async::<i64>(&mut con)
                        .await
                        .map_err(StoreError::from)?;
                }
            }
            Ok(keys)
        })
    }

    fn has_unsent(&self) -> BoxFut<'_, Result<bool, StoreError>> {
        // The set may still name an expired record (the relay drops those when it meets
        // them): at worst one wake-up with nothing to publish.
        Box::pin(async move {
            let mut con = self.con.clone();
            let n: i64 = redis::cmd("SCARD")
                .arg(self.unsent_set())
                .query_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(n > 0)
        })
    }

    fn mark_sent<'a>(&'a self, key: &'a str, seq: u32) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            self.mark_sent
                .key(self.k("out", key))
                .key(self.unsent_set())
                .arg(seq)
                .arg(key)
                .invoke_async::<i64>(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn fail<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        error: &'a str,
    ) -> BoxFut<'a, Result<Attempts, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let reply: Vec<String> = self
                .fail
                .key(self.k("rec", key))
                .key(self.k("lease", key))
                .arg(owner)
                .arg(now_ms())
                .arg(error)
                .invoke_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            if reply.is_empty() {
                return Err(StoreError(format!(
                    "record {key} is not held by this delivery"
                )));
            }
            Ok(Attempts {
                failed: reply[0].parse().unwrap_or(1),
                first_failure_ms: parse_ms(reply.get(1)),
                last_failure_ms: parse_ms(reply.get(2)),
            })
        })
    }

    fn attempts<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Attempts>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let v: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.k("rec", key))
                .arg("attempts")
                .arg("first_failure")
                .arg("last_failure")
                .query_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(v.get(1).cloned().flatten().map(|first| Attempts {
                failed: v[0].as_deref().and_then(|a| a.parse().ok()).unwrap_or(0),
                first_failure_ms: first.parse().unwrap_or_else(|_| now_ms()),
                last_failure_ms: parse_ms(v[2].as_ref()),
            }))
        })
    }

    fn dead_letter<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let json = serde_json::to_string(record).map_err(StoreError::from)?;
            let written: i64 = self
                .dead_letter
                .key(self.k("rec", key))
                .key(self.k("lease", key))
                .key(format!("zerofn:dlq:{}", record.id))
                .key("zerofn:dlq:index")
                .key(format!("zerofn:dlq:fn:{}", self.function))
                .arg(owner)
                .arg(&record.id)
                .arg(json)
                .arg(now_ms())
                .arg(if key.is_empty() { "0" } else { "1" })
                .invoke_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(written == 1)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFut<'a, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let index = match &filter.function {
                Some(f) => format!("zerofn:dlq:fn:{f}"),
                None => "zerofn:dlq:index".to_string(),
            };
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(index)
                .arg("+inf")
                .arg(filter.since_ms.unwrap_or(0))
                .arg("LIMIT")
                .arg(filter.offset)
                .arg(filter.limit.max(1))
                .query_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(d) = self.dead_letter_by_id(&id).await? {
                    out.push(d);
                }
            }
            Ok(out)
        })
    }

    fn dead_letter_by_id<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFut<'a, Result<Option<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let json: Option<String> = redis::cmd("GET")
                .arg(format!("zerofn:dlq:{id}"))
                .query_async(&mut con)
                .await
                .map_err(StoreError::from)?;
            json.map(|j| serde_json::from_str(&j))
                .transpose()
                .map_err(StoreError::from)
        })
    }

    fn mark_replayed<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            redis::cmd("HSET")
                .arg("zerofn:dlq:replayed")
                .arg(id)
                .arg(now_ms())
                .query_async::<i64>(&mut con)
                .await
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn purge_expired(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        // Redis expires records by itself (PEXPIRE at first claim).
        Box::pin(async { Ok(0) })
    }
}
