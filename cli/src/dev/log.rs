//! The engine's durable event log: one SQLite file with Kafka's semantics where they matter —
//! topics with partitions, records keyed and ordered per partition, committed offsets per
//! consumer group (the next offset to read), lag = log end − committed, and retention by age.
//! Everything survives a restart.
//!
//! With `--kafka`, the records, the log ends and the committed offsets are a Kafka cluster's
//! ([`super::kafka`]); the SQLite file keeps the state store and the scheduled jobs.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    Row,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use tokio::sync::watch;

use super::{jobs::JobSpec, kafka::Kafka};

/// Why the log refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The SQLite file.
    #[error(transparent)]
    Sqlite(#[from] sqlx::Error),
    /// The Kafka cluster; `stored` are the records of an append before the first refused one
    /// that were stored (a Kafka append is not atomic).
    #[error("{reason}")]
    Kafka {
        reason: String,
        stored: Vec<Position>,
    },
}

impl From<String> for Error {
    fn from(reason: String) -> Error {
        Error::Kafka {
            reason,
            stored: Vec::new(),
        }
    }
}

/// A scheduled job as the log keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) function: String,
    pub(crate) name: String,
    pub(crate) spec: JobSpec,
    /// When it is due next (ms).
    pub(crate) due: i64,
    /// Triggers left, for a job with `repeats`.
    pub(crate) repeats_left: Option<u32>,
}

impl Job {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> Option<Job> {
        Some(Job {
            function: r.try_get("fn").ok()?,
            name: r.try_get("name").ok()?,
            spec: serde_json::from_str(&r.try_get::<String, _>("spec").ok()?).ok()?,
            due: r.try_get("due").ok()?,
            repeats_left: r
                .try_get::<Option<i64>, _>("repeats_left")
                .ok()?
                .and_then(|n| u32::try_from(n).ok()),
        })
    }
}

/// A record to append.
#[derive(Clone, Debug)]
pub(crate) struct NewRecord {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    /// The structured CloudEvent (or, on a dead-letter topic, whatever was dead-lettered).
    pub(crate) value: Vec<u8>,
    /// Record headers (Kafka's), e.g. `traceparent`.
    pub(crate) headers: BTreeMap<String, String>,
}

/// A stored record.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: i64,
    pub(crate) key: Option<String>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) timestamp_ms: i64,
}

/// Where an appended record landed.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Position {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: i64,
}

type TopicPartition = (String, u32);

#[derive(Default)]
struct Meta {
    partitions: HashMap<String, u32>,
    /// Next offset to be written, per partition.
    ends: HashMap<TopicPartition, i64>,
    /// Next offset to be read, per (group, topic, partition).
    committed: HashMap<(String, String, u32), i64>,
    round_robin: HashMap<String, u32>,
}

/// The log. Cheap to share behind an `Arc`.
pub(crate) struct Log {
    pool: SqlitePool,
    default_partitions: u32,
    meta: Mutex<Meta>,
    /// One writer at a time: SQLite allows one anyway, and a deferred transaction that reads
    /// before it writes fails (`SQLITE_BUSY_SNAPSHOT`) when another commit slips in between.
    writer: tokio::sync::Mutex<()>,
    /// Bumped on every append, so that consumers and scalers wake at once.
    appended: watch::Sender<u64>,
    /// Records retention deleted before every consumer group had committed past them.
    dropped_unread: std::sync::atomic::AtomicU64,
    /// Notified when a job is scheduled.
    jobs_changed: tokio::sync::Notify,
    /// The records, ends and commits are Kafka's.
    kafka: Option<Arc<Kafka>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("default_partitions", &self.default_partitions)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, part INTEGER NOT NULL, offs INTEGER NOT NULL,
    key TEXT, value BLOB NOT NULL, headers TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, part, offs));
CREATE TABLE IF NOT EXISTS ends (topic TEXT NOT NULL, part INTEGER NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (topic, part));
CREATE TABLE IF NOT EXISTS offsets (grp TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL,
    committed INTEGER NOT NULL, PRIMARY KEY (grp, topic, part));
CREATE TABLE IF NOT EXISTS state (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    etag INTEGER NOT NULL, PRIMARY KEY (store, key));
CREATE TABLE IF NOT EXISTS jobs (fn TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
    due INTEGER NOT NULL, repeats_left INTEGER, PRIMARY KEY (fn, name));
CREATE INDEX IF NOT EXISTS jobs_by_due ON jobs (due);
";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Kafka's partitioner idea (hash of the key modulo partitions) with FNV-1a: stable across
/// restarts and platforms.
fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

impl Log {
    /// Open (or create) the log at `path`; new topics get `default_partitions`. With `kafka`,
    /// records live on that cluster and `path` keeps the state store and the jobs.
    pub(crate) async fn open(
        path: &Path,
        default_partitions: u32,
        kafka: Option<Kafka>,
    ) -> Result<Log, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let mut meta = Meta::default();
        if kafka.is_some() {
            // Topics, ends and commits are read from the cluster as they are used.
            return Ok(Log::new(
                pool,
                default_partitions,
                meta,
                kafka.map(Arc::new),
            ));
        }
        for row in sqlx::query("SELECT name, partitions FROM topics")
            .fetch_all(&pool)
            .await?
        {
            meta.partitions
                .insert(row.get("name"), row.get::<i64, _>("partitions") as u32);
        }
        for row in sqlx::query("SELECT topic, part, next FROM ends")
            .fetch_all(&pool)
            .await?
        {
            meta.ends.insert(
                (row.get("topic"), row.get::<i64, _>("part") as u32),
                row.get("next"),
            );
        }
        for row in sqlx::query("SELECT grp, topic, part, committed FROM offsets")
            .fetch_all(&pool)
            .await?
        {
            meta.committed.insert(
                (
                    row.get("grp"),
                    row.get("topic"),
                    row.get::<i64, _>("part") as u32,
                ),
                row.get("committed"),
            );
        }
        Ok(Log::new(pool, default_partitions, meta, None))
    }

    fn new(
        pool: SqlitePool,
        default_partitions: u32,
        meta: Meta,
        kafka: Option<Arc<Kafka>>,
    ) -> Log {
        Log {
            pool,
            default_partitions: default_partitions.max(1),
            meta: Mutex::new(meta),
            writer: tokio::sync::Mutex::new(()),
            appended: watch::channel(0).0,
            dropped_unread: std::sync::atomic::AtomicU64::new(0),
            jobs_changed: tokio::sync::Notify::new(),
            kafka,
        }
    }

    /// Whether the records are a Kafka cluster's.
    pub(crate) fn on_kafka(&self) -> bool {
        self.kafka.is_some()
    }

    /// The Kafka clients, when the records are a Kafka cluster's (for readers of its topics
    /// in the engine, such as the dashboard's dead letters).
    pub(crate) fn kafka(&self) -> Option<Arc<Kafka>> {
        self.kafka.clone()
    }

    /// Read `group`'s committed offsets on `topics` (Kafka: from the group coordinator; the
    /// SQLite log has them all since it opened).
    pub(crate) async fn join(&self, group: &str, topics: &[String]) -> Result<(), Error> {
        let Some(kafka) = &self.kafka else {
            return Ok(());
        };
        let mut counts = Vec::new();
        for t in topics {
            counts.push((t.clone(), self.ensure_topic(t).await?));
        }
        let committed = kafka.committed(group, &counts).await?;
        let mut meta = self.meta();
        for ((topic, partition), next) in committed {
            meta.committed
                .insert((group.to_string(), topic, partition), next);
        }
        Ok(())
    }

    /// Kafka: follow the log ends of every topic (records other clients produce), waking the
    /// consumers and scalers when one moves. Returns at once for the SQLite log, where only
    /// the engine appends.
    pub(crate) async fn follow(&self, every: Duration) {
        let Some(kafka) = &self.kafka else {
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            let topics: Vec<(String, u32)> = self.topics().into_iter().collect();
            match kafka.ends(&topics).await {
                Ok(ends) => self.moved(ends),
                Err(e) => tracing::warn!(error = %e, "cannot read the Kafka log ends"),
            }
        }
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool, for the sidecar's state store (same file).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Hold this while writing (the sidecar's state API writes the same file).
    pub(crate) async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// Partitions of `topic`, creating it with the default count if it is new.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<u32, Error> {
        if let Some(n) = self.meta().partitions.get(topic) {
            return Ok(*n);
        }
        if let Some(kafka) = &self.kafka {
            let n = kafka.ensure_topic(topic, self.default_partitions).await?;
            let ends = kafka.ends(&[(topic.to_string(), n)]).await?;
            self.meta().partitions.insert(topic.to_string(), n);
            self.moved(ends);
            return Ok(n);
        }
        let _writing = self.write_lock().await;
        sqlx::query("INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)")
            .bind(topic)
            .bind(i64::from(self.default_partitions))
            .execute(&self.pool)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
            .bind(topic)
            .fetch_one(&self.pool)
            .await?;
        self.meta().partitions.insert(topic.to_string(), n as u32);
        Ok(n as u32)
    }

    /// Append `records` atomically (all or none); each goes to the partition of its key
    /// (round-robin without one).
    pub(crate) async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Position>, Error> {
        for r in &records {
            self.ensure_topic(&r.topic).await?;
        }
        if let Some(kafka) = &self.kafka {
            return self.produce(kafka, &records).await;
        }
        let _writing = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let (positions, next) = self.insert_records(&mut tx, records).await?;
        tx.commit().await?;
        self.moved(next);
        Ok(positions)
    }

    /// Insert `records` in `tx` (the write lock held, their topics known): their positions,
    /// and the partition ends to publish with [`Log::moved`] once `tx` commits.
    async fn insert_records(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        records: Vec<NewRecord>,
    ) -> Result<(Vec<Position>, HashMap<TopicPartition, i64>), sqlx::Error> {
        let mut positions = Vec::with_capacity(records.len());
        // Offsets are assigned from the database inside the transaction (one writer at a time),
        // and the in-memory ends only move after commit.
        let mut next: HashMap<TopicPartition, i64> = HashMap::new();
        let ts = now_ms();
        for r in records {
            let partition = self.place(&r);
            let tp = (r.topic.clone(), partition);
            let offset = match next.get(&tp) {
                Some(o) => *o,
                None => sqlx::query_scalar::<_, i64>(
                    "SELECT next FROM ends WHERE topic = ? AND part = ?",
                )
                .bind(&r.topic)
                .bind(i64::from(partition))
                .fetch_optional(&mut **tx)
                .await?
                .unwrap_or(0),
            };
            sqlx::query(
                "INSERT INTO records (topic, part, offs, key, value, headers, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.topic)
            .bind(i64::from(partition))
            .bind(offset)
            .bind(&r.key)
            .bind(&r.value)
            .bind(serde_json::to_string(&r.headers).unwrap_or_else(|_| "{}".into()))
            .bind(ts)
            .execute(&mut **tx)
            .await?;
            next.insert(tp, offset + 1);
            positions.push(Position {
                topic: r.topic,
                partition,
                offset,
            });
        }
        for ((topic, part), n) in &next {
            sqlx::query(
                "INSERT INTO ends (topic, part, next) VALUES (?, ?, ?)
                 ON CONFLICT (topic, part) DO UPDATE SET next = excluded.next",
            )
            .bind(topic)
            .bind(i64::from(*part))
            .bind(n)
            .execute(&mut **tx)
            .await?;
        }
        Ok((positions, next))
    }

    /// The partition of a record: of its key (the same rule on SQLite and Kafka), round-robin
    /// without one.
    fn place(&self, r: &NewRecord) -> u32 {
        let mut meta = self.meta();
        let n = meta.partitions.get(&r.topic).copied().unwrap_or(1);
        match &r.key {
            Some(k) => partition_of(k, n),
            None => {
                let c = meta.round_robin.entry(r.topic.clone()).or_default();
                *c = c.wrapping_add(1);
                *c % n
            }
        }
    }

    /// Kafka: produce `records` (their topics known), moving the ends past them.
    async fn produce(&self, kafka: &Kafka, records: &[NewRecord]) -> Result<Vec<Position>, Error> {
        let outgoing: Vec<super::kafka::Outgoing<'_>> = records
            .iter()
            .map(|r| super::kafka::Outgoing {
                topic: &r.topic,
                partition: self.place(r),
                key: r.key.as_deref(),
                value: &r.value,
                headers: &r.headers,
            })
            .collect();
        let (stored, failed) = match kafka.produce(&outgoing).await {
            Ok(stored) => (stored, None),
            Err((stored, reason)) => (stored, Some(reason)),
        };
        self.moved(
            stored
                .iter()
                .map(|p| ((p.topic.clone(), p.partition), p.offset + 1))
                .collect(),
        );
        match failed {
            None => Ok(stored),
            Some(reason) => Err(Error::Kafka { reason, stored }),
        }
    }

    /// Partition ends moved (after a commit that appended, or read from Kafka): the new ends,
    /// and a wake-up for consumers when one moved forward.
    fn moved(&self, next: HashMap<TopicPartition, i64>) {
        let mut forward = false;
        {
            let mut meta = self.meta();
            for (tp, n) in next {
                let end = meta.ends.entry(tp).or_default();
                if n > *end {
                    *end = n;
                    forward = true;
                }
            }
        }
        if forward {
            self.appended.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// Keep `function`'s job `name`, due first at `due`; `false` when one exists and `spec`
    /// does not overwrite it. Overwriting a periodic job (a schedule, no `dueTime`) with the
    /// very same spec keeps it as it is: a schedule registered again at every start must not
    /// move a trigger that is due now.
    pub(crate) async fn put_job(
        &self,
        function: &str,
        name: &str,
        spec: &JobSpec,
        due: i64,
    ) -> Result<bool, sqlx::Error> {
        let _writing = self.write_lock().await;
        if spec.overwrite
            && spec.due_time.is_none()
            && self
                .job(function, name)
                .await?
                .is_some_and(|j| j.spec == *spec)
        {
            return Ok(true);
        }
        let json = serde_json::to_string(spec).unwrap_or_default();
        let sql = if spec.overwrite {
            "INSERT INTO jobs (fn, name, spec, due, repeats_left) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (fn, name) DO UPDATE SET spec = excluded.spec, due = excluded.due,
             repeats_left = excluded.repeats_left"
        } else {
            "INSERT INTO jobs (fn, name, spec, due, repeats_left) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (fn, name) DO NOTHING"
        };
        let done = sqlx::query(sql)
            .bind(function)
            .bind(name)
            .bind(json)
            .bind(due)
            .bind(spec.repeats.map(i64::from))
            .execute(&self.pool)
            .await?;
        self.jobs_changed.notify_one();
        Ok(done.rows_affected() == 1)
    }

    /// `function`'s job `name`, if it is still scheduled.
    pub(crate) async fn job(&self, function: &str, name: &str) -> Result<Option<Job>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT fn, name, spec, due, repeats_left FROM jobs WHERE fn = ? AND name = ?",
        )
        .bind(function)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| Job::from_row(&r)))
    }

    /// The names of `function`'s jobs.
    pub(crate) async fn job_names(&self, function: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM jobs WHERE fn = ? ORDER BY name")
            .bind(function)
            .fetch_all(&self.pool)
            .await
    }

    /// Remove `function`'s job `name`; whether there was one.
    pub(crate) async fn delete_job(&self, function: &str, name: &str) -> Result<bool, sqlx::Error> {
        let _writing = self.write_lock().await;
        let done = sqlx::query("DELETE FROM jobs WHERE fn = ? AND name = ?")
            .bind(function)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Jobs due at `now` or before, soonest first.
    pub(crate) async fn due_jobs(&self, now: i64) -> Result<Vec<Job>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT fn, name, spec, due, repeats_left FROM jobs WHERE due <= ? ORDER BY due LIMIT 256",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(Job::from_row).collect())
    }

    /// When the soonest job is due.
    pub(crate) async fn next_job_due(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT MIN(due) FROM jobs")
            .fetch_one(&self.pool)
            .await
    }

    /// Fire `job` once: append `record` and move the job to `next` (or remove it), in one
    /// transaction, only if the job is still due at the time it was read (so a trigger is
    /// appended at most once per due time). Whether it fired.
    pub(crate) async fn fire_job(
        &self,
        job: &Job,
        next: Option<i64>,
        record: NewRecord,
    ) -> Result<bool, Error> {
        self.ensure_topic(&record.topic).await?;
        if let Some(kafka) = &self.kafka {
            // Two stores, no transaction across them: the trigger first, then the job moves. A
            // crash between the two fires it again, with the same event id (`job:…@due`), which
            // the function's idempotency applies once.
            if self.job(&job.function, &job.name).await?.map(|j| j.due) != Some(job.due) {
                return Ok(false);
            }
            self.produce(kafka, std::slice::from_ref(&record)).await?;
            let _writing = self.write_lock().await;
            let mut tx = self.pool.begin().await?;
            let moved = Log::move_job(&mut tx, job, next).await?;
            tx.commit().await?;
            return Ok(moved);
        }
        let _writing = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        if !Log::move_job(&mut tx, job, next).await? {
            return Ok(false); // rescheduled, deleted or fired meanwhile
        }
        let (_, ends) = self.insert_records(&mut tx, vec![record]).await?;
        tx.commit().await?;
        self.moved(ends);
        Ok(true)
    }

    /// Move `job` to `next` (or remove it) in `tx` if it is still due when it was read.
    async fn move_job(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        job: &Job,
        next: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        let moved = match next {
            Some(due) => sqlx::query(
                "UPDATE jobs SET due = ?, repeats_left = repeats_left - 1 WHERE fn = ? AND name = ? AND due = ?",
            )
            .bind(due),
            None => sqlx::query("DELETE FROM jobs WHERE fn = ? AND name = ? AND due = ?"),
        }
        .bind(&job.function)
        .bind(&job.name)
        .bind(job.due)
        .execute(&mut **tx)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Woken when a job is scheduled (the engine's job loop waits on it).
    pub(crate) fn jobs_changed(&self) -> &tokio::sync::Notify {
        &self.jobs_changed
    }

    /// Up to `max` records of a partition for `group` from `offset` on, or, when retention
    /// removed all of them, where to resume.
    pub(crate) async fn read(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        max: u32,
    ) -> Result<Read, Error> {
        // The end before reading: ends move only after an append committed, so every record
        // below it is visible to the read, and an empty read means all of [offset, end) is gone.
        // A record appended meanwhile is at `end` or later: resuming at `end` never skips it.
        let end = self.end(topic, partition);
        if let Some(kafka) = &self.kafka {
            return Ok(kafka
                .read(group, topic, partition, offset, max, end)
                .await?);
        }
        let records = self.records(topic, partition, offset, max).await?;
        Ok(if records.is_empty() {
            Read::Gone {
                resume_at: end.max(offset),
            }
        } else {
            Read::Records(records)
        })
    }

    async fn records(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max: u32,
    ) -> Result<Vec<Record>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT offs, key, value, headers, ts FROM records
             WHERE topic = ? AND part = ? AND offs >= ? ORDER BY offs LIMIT ?",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .bind(offset)
        .bind(i64::from(max))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Record {
                topic: topic.to_string(),
                partition,
                offset: row.get("offs"),
                key: row.get("key"),
                value: row.get("value"),
                headers: serde_json::from_str(row.get::<&str, _>("headers")).unwrap_or_default(),
                timestamp_ms: row.get("ts"),
            })
            .collect())
    }

    /// Next offset to be written.
    pub(crate) fn end(&self, topic: &str, partition: u32) -> i64 {
        self.meta()
            .ends
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Next offset `group` reads (a group without a commit starts at the beginning:
    /// `initialOffset: oldest`, KEDA `offsetResetPolicy: earliest`).
    pub(crate) fn committed(&self, group: &str, topic: &str, partition: u32) -> i64 {
        self.meta()
            .committed
            .get(&(group.to_string(), topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Commit: `group` has processed everything before `next`.
    pub(crate) async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next: i64,
    ) -> Result<(), Error> {
        if let Some(kafka) = &self.kafka {
            kafka.commit(group, topic, partition, next).await?;
            self.meta()
                .committed
                .insert((group.to_string(), topic.to_string(), partition), next);
            return Ok(());
        }
        let _writing = self.write_lock().await;
        sqlx::query(
            "INSERT INTO offsets (grp, topic, part, committed) VALUES (?, ?, ?, ?)
             ON CONFLICT (grp, topic, part) DO UPDATE SET committed = excluded.committed",
        )
        .bind(group)
        .bind(topic)
        .bind(i64::from(partition))
        .bind(next)
        .execute(&self.pool)
        .await?;
        self.meta()
            .committed
            .insert((group.to_string(), topic.to_string(), partition), next);
        // No wake-up: consumers and scalers wait for appends; a commit only lowers lag, which
        // the scaler's periodic evaluation picks up (scale-down waits for the cooldown anyway).
        Ok(())
    }

    /// Lag of `group` on each partition of `topics`.
    pub(crate) fn lags(&self, group: &str, topics: &[String]) -> Vec<(String, u32, i64)> {
        let meta = self.meta();
        let mut out = Vec::new();
        for topic in topics {
            let n = meta
                .partitions
                .get(topic)
                .copied()
                .unwrap_or(self.default_partitions);
            for p in 0..n {
                let end = meta.ends.get(&(topic.clone(), p)).copied().unwrap_or(0);
                // Dapr starts a new group at the oldest record (KEDA: `earliest`).
                let committed = meta
                    .committed
                    .get(&(group.to_string(), topic.clone(), p))
                    .copied();
                let lag = crate::lag::partition_lag(end, committed, crate::lag::Rules::default());
                out.push((topic.clone(), p, i64::try_from(lag).unwrap_or(i64::MAX)));
            }
        }
        out
    }

    /// Records retention deleted before every consumer group had read them, since start.
    pub(crate) fn dropped_unread(&self) -> u64 {
        self.dropped_unread
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wakes on every append.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Delete records older than `age` (offsets keep counting; a consumer behind the
    /// retention point skips to the oldest record left, like Kafka's `earliest` reset).
    /// Kafka applies its own retention (the topic's `retention.ms`): nothing is deleted here.
    pub(crate) async fn apply_retention(&self, age: Duration) -> Result<u64, sqlx::Error> {
        if self.kafka.is_some() {
            return Ok(0);
        }
        let _writing = self.write_lock().await;
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        // Kafka's retention is by age, but a dead letter no consumer group has committed past
        // is kept: it exists so that it is read. Any other record is deleted by age, read or
        // not; what was not read by every group is counted and logged, never silent.
        const UNREAD: &str = "offs >= COALESCE((SELECT MIN(o.committed) FROM offsets o \
             WHERE o.topic = records.topic AND o.part = records.part), 0)";
        let unread = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT topic, part, COUNT(*) AS n, MIN(offs) AS first, MAX(offs) AS last FROM records \
             WHERE ts <= ? AND topic NOT LIKE 'deadletter.%' AND {UNREAD} GROUP BY topic, part"
        )))
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        for row in &unread {
            let (topic, partition, n, first, last): (String, i64, i64, i64, i64) = (
                row.get("topic"),
                row.get("part"),
                row.get("n"),
                row.get("first"),
                row.get("last"),
            );
            self.dropped_unread.fetch_add(
                u64::try_from(n).unwrap_or_default(),
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(%topic, partition, records = n, first_offset = first, last_offset = last, "retention deleted records before every consumer group had read them");
        }
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM records WHERE ts <= ? AND NOT (topic LIKE 'deadletter.%' AND {UNREAD})"
        )))
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Every topic and its partition count.
    pub(crate) fn topics(&self) -> BTreeMap<String, u32> {
        self.meta()
            .partitions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// What a read found.
#[derive(Debug)]
pub(crate) enum Read {
    /// Records from the offset asked for (the first may be later, past what retention removed).
    Records(Vec<Record>),
    /// Nothing from the offset on: retention removed it. Resume (commit) at `resume_at`, the log
    /// end when the read began.
    Gone { resume_at: i64 },
}

impl Read {
    /// The records (none when gone).
    #[cfg(test)]
    pub(crate) fn records(self) -> Vec<Record> {
        match self {
            Read::Records(r) => r,
            Read::Gone { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(topic: &str, key: Option<&str>, v: &str) -> NewRecord {
        NewRecord {
            topic: topic.into(),
            key: key.map(str::to_string),
            value: v.as_bytes().to_vec(),
            headers: BTreeMap::from([("traceparent".into(), "tp".into())]),
        }
    }

    #[tokio::test]
    async fn keyed_records_keep_order_offsets_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("zerofn-log-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.db");
        {
            let log = Log::open(&path, 4, None).await.unwrap();
            let batch = (0..20)
                .map(|i| rec("t", Some("user-1"), &format!("v{i}")))
                .collect();
            let pos = log.append(batch).await.unwrap();
            let p = pos[0].partition;
            assert!(
                pos.iter().all(|x| x.partition == p),
                "one key, one partition"
            );
            assert_eq!(
                pos.iter().map(|x| x.offset).collect::<Vec<_>>(),
                (0..20).collect::<Vec<_>>()
            );
            log.commit("g", "t", p, 5).await.unwrap();
            let lag: i64 = log.lags("g", &["t".into()]).iter().map(|l| l.2).sum();
            assert_eq!(lag, 15);
            let got = log.read("g", "t", p, 5, 3).await.unwrap().records();
            assert_eq!(
                got.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
                vec![b"v5".to_vec(), b"v6".to_vec(), b"v7".to_vec()]
            );
            assert_eq!(
                got[0].headers.get("traceparent").map(String::as_str),
                Some("tp")
            );
            // Unkeyed records spread over partitions.
            let pos = log
                .append((0..8).map(|i| rec("u", None, &i.to_string())).collect())
                .await
                .unwrap();
            let used: std::collections::BTreeSet<u32> = pos.iter().map(|p| p.partition).collect();
            assert_eq!(used.len(), 4);
        }
        let log = Log::open(&path, 4, None).await.unwrap();
        let lag: i64 = log.lags("g", &["t".into()]).iter().map(|l| l.2).sum();
        assert_eq!(lag, 15, "offsets and ends survive a restart");
        assert_eq!(log.topics().get("u"), Some(&4));
        assert_eq!(
            log.apply_retention(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(log.apply_retention(Duration::ZERO).await.unwrap(), 28);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_consumer_behind_retention_resumes_without_skipping_racing_appends() {
        let dir = std::env::temp_dir().join(format!("zerofn-log-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::sync::Arc::new(Log::open(&dir.join("log.db"), 1, None).await.unwrap());
        log.append((0..5).map(|i| rec("t", None, &format!("old{i}"))).collect())
            .await
            .unwrap();
        assert_eq!(log.apply_retention(Duration::ZERO).await.unwrap(), 5);
        // Appends race a consumer that starts behind the retained start.
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    log.append(vec![rec("t", None, &format!("new{i}"))])
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut committed = 0;
        let mut delivered = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while delivered.len() < 200 && std::time::Instant::now() < deadline {
            match log.read("g", "t", 0, committed, 7).await.unwrap() {
                Read::Records(r) => {
                    committed = r.last().unwrap().offset + 1;
                    delivered.extend(r.into_iter().map(|r| r.value));
                }
                Read::Gone { resume_at } => committed = resume_at,
            }
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        let want: Vec<Vec<u8>> = (0..200).map(|i| format!("new{i}").into_bytes()).collect();
        assert_eq!(
            delivered, want,
            "every record appended after retention, in order"
        );
    }

    #[tokio::test]
    async fn retention_counts_what_it_deletes_unread_and_keeps_unread_dead_letters() {
        let dir = std::env::temp_dir().join(format!("zerofn-log-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = Log::open(&dir.join("log.db"), 1, None).await.unwrap();
        log.append((0..10).map(|i| rec("t", None, &i.to_string())).collect())
            .await
            .unwrap();
        log.append(
            (0..3)
                .map(|i| rec("deadletter.f", None, &i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
        log.commit("g", "t", 0, 4).await.unwrap();
        log.commit("f", "deadletter.f", 0, 1).await.unwrap();
        assert_eq!(log.apply_retention(Duration::ZERO).await.unwrap(), 11);
        assert_eq!(
            log.dropped_unread(),
            6,
            "offsets 4..9 of t were never read by g"
        );
        let left = log
            .read("g", "deadletter.f", 0, 0, 10)
            .await
            .unwrap()
            .records();
        assert_eq!(left.len(), 2, "unread dead letters are kept");
    }
}
