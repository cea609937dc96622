//! SQL store: SQLite (the embedded default, one file) and PostgreSQL (production), one
//! implementation over sqlx's `Any` driver with portable SQL. The handler's transaction, the
//! idempotency record and the outbox commit together.

use std::{path::Path, time::Duration};

use sqlx::{Row, any::AnyPoolOptions};

use super::{
    Attempts, BoxFut, Claim, DeadLetterFilter, Store, StoreError, StoredOutput, StoredResponse,
    Transaction, memory::LEASE_EXPIRED, ms, now_ms,
};
use crate::dead_letter::DeadLetter;

pub(crate) struct SqlStore {
    pool: sqlx::AnyPool,
    function: String,
    sqlite: bool,
}

/// How long a SQLite statement waits for the write lock before it fails.
const SQLITE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout=10000";

/// Claims retry this often when they lose a race to a concurrent claim.
const CLAIM_ROUNDS: usize = 5;

impl SqlStore {
    pub(crate) async fn connect(
        url: &str,
        function: &str,
        migrations: Option<&sqlx::migrate::Migrator>,
    ) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite {
            sqlite_url(url)?
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 10 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            SQLITE_BUSY_TIMEOUT,
                            "PRAGMA synchronous=NORMAL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| StoreError(format!("cannot open {}: {e}", redact(&url))))?;
        // Replicas starting together on one fresh store migrate one at a time: PostgreSQL through
        // sqlx's advisory lock, SQLite (whose sqlx lock is a no-op) through a file lock beside
        // the database, held across both migrators.
        let _serialised = match sqlite_file(&url) {
            Some(db) => Some(lock_file(&db).await?),
            None => None,
        };
        migrate(&pool, function, migrations).await?;
        Ok(SqlStore {
            pool,
            function: function.to_string(),
            sqlite,
        })
    }

    async fn begin_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        // SQLite: take the write lock up front, so two transactions never deadlock upgrading.
        let tx = if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        };
        tx.map_err(StoreError::from)
    }

    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let now = now_ms();
        // PostgreSQL: a first delivery (the common case) is one statement, the insert claims it.
        // SQLite: read first, since an insert waits for the file's write lock, which a running
        // handler's transaction holds; a duplicate must learn "in flight" without waiting for it.
        if !self.sqlite && self.insert_claim(key, owner, lease, ttl, now).await? {
            return Ok(Some(Claim::Acquired { attempt: 1 }));
        }
        let row = sqlx::query("SELECT state, lease_until, attempts, dead_letter_id, expires_at FROM zerofn_inbox WHERE function = $1 AND key = $2")
            .bind(&self.function)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
        let Some(row) = row else {
            // SQLite: none yet, claim it. PostgreSQL: purged since the insert found it, the
            // next round inserts. Either way a lost race is `None`, another round.
            let inserted = self.sqlite && self.insert_claim(key, owner, lease, ttl, now).await?;
            return Ok(inserted.then_some(Claim::Acquired { attempt: 1 }));
        };
        let state: String = row.try_get("state").map_err(StoreError::from)?;
        let lease_until: i64 = row.try_get("lease_until").map_err(StoreError::from)?;
        let expires_at: i64 = row.try_get("expires_at").map_err(StoreError::from)?;
        if expires_at <= now {
            sqlx::query(
                "DELETE FROM zerofn_inbox WHERE function = $1 AND key = $2 AND expires_at <= $3",
            )
            .bind(&self.function)
            .bind(key)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
            return Ok(None);
        }
        let taken = match state.as_str() {
            "done" => {
                // A duplicate. Outputs not yet published belong to whoever holds the publish
                // right: the completing worker while its lease lives, else this delivery.
                if lease_until > now {
                    return Ok(Some(Claim::Done { unsent: Vec::new() }));
                }
                let unsent = self.unsent(key).await?;
                let took = !unsent.is_empty() && self.take_publish_right(key, owner, lease, now).await?;
                return Ok(Some(Claim::Done { unsent: if took { unsent } else { Vec::new() } }));
            }
            "dead" => {
                let id: Option<String> = row.try_get("dead_letter_id").map_err(StoreError::from)?;
                return Ok(Some(Claim::Dead { dead_letter_id: id.unwrap_or_default() }));
            }
            "in_flight" if lease_until > now => {
                return Ok(Some(Claim::InFlight {
                    lease_left: Some(Duration::from_millis(u64::try_from(lease_until - now).unwrap_or(0))),
                }));
            }
            "in_flight" => sqlx::query(
                // The previous holder died: its attempt counts as failed.
                "UPDATE zerofn_inbox SET owner = $3, lease_until = $4, attempts = attempts + 1, \
                 first_failure = COALESCE(first_failure, $5), last_failure = $5, last_error = $6 \
                 WHERE function = $1 AND key = $2 AND state = 'in_flight' AND lease_until <= $5 RETURNING attempts",
            )
            .bind(&self.function)
            .bind(key)
            .bind(owner)
            .bind(now + ms(lease))
            .bind(now)
            .bind(LEASE_EXPIRED),
            _ => sqlx::query(
                "UPDATE zerofn_inbox SET state = 'in_flight', owner = $3, lease_until = $4 \
                 WHERE function = $1 AND key = $2 AND state = 'failed' RETURNING attempts",
            )
            .bind(&self.function)
            .bind(key)
            .bind(owner)
            .bind(now + ms(lease)),
        }
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?;
        match taken {
            Some(row) => {
                let failed: i64 = row.try_get("attempts").map_err(StoreError::from)?;
                Ok(Some(Claim::Acquired {
                    attempt: u32::try_from(failed).unwrap_or(u32::MAX - 1) + 1,
                }))
            }
            None => Ok(None),
        }
    }

    /// Insert a fresh in-flight record owned by `owner`: `true` if it was inserted, `false` if a
    /// record for `key` exists.
    async fn insert_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        ttl: Duration,
        now: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO zerofn_inbox (function, key, state, owner, lease_until, attempts, created_at, expires_at) \
             VALUES ($1, $2, 'in_flight', $3, $4, 0, $5, $6) ON CONFLICT (function, key) DO NOTHING",
        )
        .bind(&self.function)
        .bind(key)
        .bind(owner)
        .bind(now + ms(lease))
        .bind(now)
        .bind(now + ms(ttl))
        .execute(&self.pool)
        .await
        .map_err(StoreError::from)?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Take the publish right of a done, unexpired record whose lease lapsed; `false` when
    /// someone else holds it (or the record is gone).
    async fn take_publish_right(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        now: i64,
    ) -> Result<bool, StoreError> {
        let took = sqlx::query(
            "UPDATE zerofn_inbox SET owner = $3, lease_until = $4 \
             WHERE function = $1 AND key = $2 AND state = 'done' AND lease_until <= $5 AND expires_at > $5",
        )
        .bind(&self.function)
        .bind(key)
        .bind(owner)
        .bind(now + ms(lease))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from)?;
        Ok(took.rows_affected() == 1)
    }

    async fn unsent(&self, key: &str) -> Result<Vec<StoredOutput>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, event_type, pubsub, topic, body, traceparent, partition_key, job FROM zerofn_outbox \
             WHERE function = $1 AND key = $2 AND sent_at IS NULL ORDER BY seq",
        )
        .bind(&self.function)
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)?;
        rows.iter()
            .map(|r| {
                Ok(StoredOutput {
                    seq: u32::try_from(r.try_get::<i64, _>("seq")?).unwrap_or_default(),
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    pubsub: r.try_get("pubsub")?,
                    topic: r.try_get("topic")?,
                    body: r.try_get("body")?,
                    traceparent: r.try_get("traceparent")?,
                    partition_key: r.try_get("partition_key")?,
                    job: r
                        .try_get::<Option<String>, _>("job")?
                        .and_then(|j| serde_json::from_str(&j).ok()),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// Run the runtime's migrations (history in `_zerofn_migrations`), then the function's own
/// (history in `_zerofn_fn_<name>_migrations`), so that functions sharing a database never
/// see each other's migrations.
async fn migrate(
    pool: &sqlx::AnyPool,
    function: &str,
    own: Option<&sqlx::migrate::Migrator>,
) -> Result<(), StoreError> {
    let mut runtime = sqlx::migrate!("./migrations");
    runtime.dangerous_set_table_name("_zerofn_migrations");
    runtime
        .run(pool)
        .await
        .map_err(|e| StoreError(format!("runtime migrations failed: {e}")))?;
    if let Some(own) = own {
        let mut m = sqlx::migrate::Migrator::with_migrations(own.iter().cloned().collect());
        m.dangerous_set_table_name(format!(
            "_zerofn_fn_{}_migrations",
            function.replace('-', "_")
        ));
        m.run(pool)
            .await
            .map_err(|e| StoreError(format!("migrations of function {function} failed: {e}")))?;
    }
    Ok(())
}

/// The database file of a `sqlite://path?…` URL (none in memory).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    (path != ":memory:" && !path.is_empty()).then(|| Path::new(path).to_path_buf())
}

/// An exclusive lock on `<db>.migrate.lock`, held until dropped (released by the OS if the
/// process dies).
async fn lock_file(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut path = db.as_os_str().to_owned();
    path.push(".migrate.lock");
    let path = std::path::PathBuf::from(path);
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| StoreError(format!("cannot lock {}: {e}", path.display())))?;
        Ok(file)
    })
    .await
    .map_err(|e| StoreError(format!("migration lock task failed: {e}")))?
}

/// `sqlite:path` / `sqlite://path`: create the directory and the file when missing.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
    }
    let query = if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        query.to_string()
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// A URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl Store for SqlStore {
    fn pool(&self) -> Option<sqlx::AnyPool> {
        Some(self.pool.clone())
    }

    fn save_response<'a>(
        &'a self,
        tx: &'a Transaction,
        key: &'a str,
        response: &'a StoredResponse,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = tx.conn().await.map_err(|e| StoreError(e.to_string()))?;
            sqlx::query(
                "INSERT INTO zerofn_responses (function, key, status, body, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&self.function)
            .bind(key)
            .bind(i64::from(response.status))
            .bind(&response.body)
            .bind(now_ms())
            .execute(&mut **conn)
            .await
            .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn response<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFut<'a, Result<Option<StoredResponse>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT status, body FROM zerofn_responses WHERE function = $1 AND key = $2",
            )
            .bind(&self.function)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
            row.map(|r| {
                Ok(StoredResponse {
                    status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(200),
                    body: r.try_get("body")?,
                })
            })
            .transpose()
            .map_err(|e: sqlx::Error| StoreError::from(e))
        })
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
        ttl: Duration,
    ) -> BoxFut<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            for _ in 0..CLAIM_ROUNDS {
                if let Some(claim) = self.try_claim(key, owner, lease, ttl).await? {
                    return Ok(claim);
                }
            }
            // Lost every race: someone else is working on it right now.
            Ok(Claim::InFlight { lease_left: None })
        })
    }

    fn begin(&self) -> BoxFut<'_, Result<Option<Transaction>, StoreError>> {
        Box::pin(async move { Ok(Some(Transaction::new(self.begin_tx().await?))) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        outputs: &'a [StoredOutput],
        tx: Option<Transaction>,
        ttl: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // The handler's transaction, or none (no handler ran one): a transaction handed over
            // but no longer there would mean recording the event as done without the handler's
            // writes, so that is an error, never a fresh transaction.
            let mut tx = match tx {
                Some(t) => t.take().await.ok_or_else(|| {
                    StoreError(
                        "the handler's transaction is still in use (a TransactionGuard outlived the \
                         handler) or was ended: its writes cannot be committed with the event"
                            .into(),
                    )
                })?,
                None => self.begin_tx().await?,
            };
            let done = sqlx::query(
                // The lease stays: it is now the right to publish the outputs. The TTL counts
                // from completion.
                "UPDATE zerofn_inbox SET state = 'done', expires_at = $4 \
                 WHERE function = $1 AND key = $2 AND owner = $3 AND state = 'in_flight'",
            )
            .bind(&self.function)
            .bind(key)
            .bind(owner)
            .bind(now_ms() + ms(ttl))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            if done.rows_affected() != 1 {
                tx.rollback().await.map_err(StoreError::from)?;
                return Ok(false);
            }
            let now = now_ms();
            for o in outputs {
                sqlx::query(
                    "INSERT INTO zerofn_outbox (function, key, seq, event_id, event_type, pubsub, topic, body, traceparent, partition_key, created_at, job) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&self.function)
                .bind(key)
                .bind(i64::from(o.seq))
                .bind(&o.event_id)
                .bind(&o.event_type)
                .bind(&o.pubsub)
                .bind(&o.topic)
                .bind(&o.body)
                .bind(&o.traceparent)
                .bind(o.partition_key.as_deref())
                .bind(now)
                .bind(o.job.as_ref().and_then(|j| serde_json::to_string(j).ok()))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
            tx.commit().await.map_err(StoreError::from)?;
            Ok(true)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            // SQLite: a handler's transaction in this process may hold the write lock (and
            // fences the record by itself while it does): give up quickly instead of waiting,
            // and let the next heartbeat try again.
            if self.sqlite {
                sqlx::query("PRAGMA busy_timeout=200")
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::from)?;
            }
            let renewed = sqlx::query(
                "UPDATE zerofn_inbox SET lease_until = $4 \
                 WHERE function = $1 AND key = $2 AND owner = $3 AND state IN ('in_flight', 'done')",
            )
            .bind(&self.function)
            .bind(key)
            .bind(owner)
            .bind(now_ms() + ms(lease))
            .execute(&mut *conn)
            .await;
            if self.sqlite {
                sqlx::query(SQLITE_BUSY_TIMEOUT)
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::from)?;
            }
            Ok(renewed.map_err(StoreError::from)?.rows_affected() == 1)
        })
    }

    fn take_unsent<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<Vec<StoredOutput>, StoreError>> {
        Box::pin(async move {
            if self.take_publish_right(key, owner, lease, now_ms()).await? {
                self.unsent(key).await
            } else {
                Ok(Vec::new())
            }
        })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("UPDATE zerofn_inbox SET lease_until = 0 WHERE function = $1 AND key = $2 AND owner = $3 AND state = 'done'")
                .bind(&self.function)
                .bind(key)
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn keys_with_unsent<'a>(
        &'a self,
        before_ms: i64,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT DISTINCT o.key AS key FROM zerofn_outbox o JOIN zerofn_inbox i ON i.function = o.function AND i.key = o.key \
                 WHERE o.function = $1 AND o.sent_at IS NULL AND o.created_at <= $2 AND i.state = 'done' \
                 AND i.lease_until <= $4 AND i.expires_at > $4 LIMIT $3",
            )
            .bind(&self.function)
            .bind(before_ms)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)?;
            rows.iter()
                .map(|r| r.try_get::<String, _>("key"))
                .collect::<Result<_, _>>()
                .map_err(StoreError::from)
        })
    }

    fn has_unsent(&self) -> BoxFut<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM zerofn_outbox o JOIN zerofn_inbox i ON i.function = o.function AND i.key = o.key \
                 WHERE o.function = $1 AND o.sent_at IS NULL AND i.state = 'done' AND i.expires_at > $2 LIMIT 1) AS any_unsent",
            )
            .bind(&self.function)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from)?;
            Ok(row.try_get::<i64, _>("n").map_err(StoreError::from)? > 0)
        })
    }

    fn mark_sent<'a>(&'a self, key: &'a str, seq: u32) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("UPDATE zerofn_outbox SET sent_at = $4 WHERE function = $1 AND key = $2 AND seq = $3")
                .bind(&self.function)
                .bind(key)
                .bind(i64::from(seq))
                .bind(now_ms())
                .execute(&self.pool)
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
            let now = now_ms();
            let row = sqlx::query(
                "UPDATE zerofn_inbox SET state = 'failed', lease_until = 0, attempts = attempts + 1, \
                 first_failure = COALESCE(first_failure, $4), last_failure = $4, last_error = $5 \
                 WHERE function = $1 AND key = $2 AND owner = $3 AND state = 'in_flight' \
                 RETURNING attempts, first_failure, last_failure",
            )
            .bind(&self.function)
            .bind(key)
            .bind(owner)
            .bind(now)
            .bind(error)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| StoreError(format!("record {key} is not held by this delivery")))?;
            attempts_of(&row)
        })
    }

    fn attempts<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Attempts>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT attempts, first_failure, last_failure FROM zerofn_inbox \
                 WHERE function = $1 AND key = $2 AND first_failure IS NOT NULL",
            )
            .bind(&self.function)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
            row.as_ref().map(attempts_of).transpose()
        })
    }

    fn dead_letter<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(record).map_err(StoreError::from)?;
            let mut tx = self.begin_tx().await?;
            if !key.is_empty() {
                let marked = sqlx::query(
                    "UPDATE zerofn_inbox SET state = 'dead', lease_until = 0, dead_letter_id = $4 \
                     WHERE function = $1 AND key = $2 AND owner = $3 AND state IN ('in_flight', 'failed')",
                )
                .bind(&self.function)
                .bind(key)
                .bind(owner)
                .bind(&record.id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                if marked.rows_affected() != 1 {
                    tx.rollback().await.map_err(StoreError::from)?;
                    return Ok(false);
                }
            }
            sqlx::query("INSERT INTO zerofn_dead_letters (id, function, created_at, record) VALUES ($1, $2, $3, $4)")
                .bind(&record.id)
                .bind(&self.function)
                .bind(now_ms())
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(true)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        filter: &'a DeadLetterFilter,
    ) -> BoxFut<'a, Result<Vec<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let since = filter.since_ms.unwrap_or(0);
            let limit = i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX);
            let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
            let rows = match &filter.function {
                Some(f) => sqlx::query(
                    "SELECT record FROM zerofn_dead_letters WHERE function = $1 AND created_at >= $2 ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
                )
                .bind(f)
                .bind(since)
                .bind(limit)
                .bind(offset),
                None => sqlx::query("SELECT record FROM zerofn_dead_letters WHERE created_at >= $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3")
                    .bind(since)
                    .bind(limit)
                    .bind(offset),
            }
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)?;
            rows.iter().map(record_of).collect()
        })
    }

    fn dead_letter_by_id<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFut<'a, Result<Option<DeadLetter>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT record FROM zerofn_dead_letters WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from)?;
            row.as_ref().map(record_of).transpose()
        })
    }

    fn mark_replayed<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("UPDATE zerofn_dead_letters SET replayed_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn purge_expired(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let purged =
                sqlx::query("DELETE FROM zerofn_inbox WHERE function = $1 AND expires_at <= $2")
                    .bind(&self.function)
                    .bind(now_ms())
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected();
            sqlx::query(
                "DELETE FROM zerofn_responses WHERE function = $1 AND NOT EXISTS \
                 (SELECT 1 FROM zerofn_inbox i WHERE i.function = zerofn_responses.function AND i.key = zerofn_responses.key)",
            )
            .bind(&self.function)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
            sqlx::query(
                "DELETE FROM zerofn_outbox WHERE function = $1 AND sent_at IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM zerofn_inbox i WHERE i.function = zerofn_outbox.function AND i.key = zerofn_outbox.key)",
            )
            .bind(&self.function)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
            Ok(purged)
        })
    }
}

fn attempts_of(row: &sqlx::any::AnyRow) -> Result<Attempts, StoreError> {
    let failed: i64 = row.try_get("attempts").map_err(StoreError::from)?;
    let first: Option<i64> = row.try_get("first_failure").map_err(StoreError::from)?;
    let last: Option<i64> = row.try_get("last_failure").map_err(StoreError::from)?;
    let now = now_ms();
    Ok(Attempts {
        failed: u32::try_from(failed).unwrap_or(u32::MAX),
        first_failure_ms: first.unwrap_or(now),
        last_failure_ms: last.unwrap_or(now),
    })
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<DeadLetter, StoreError> {
    let json: String = row.try_get("record").map_err(StoreError::from)?;
    serde_json::from_str(&json).map_err(StoreError::from)
}
