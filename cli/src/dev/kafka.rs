//! The engine's log on a Kafka cluster (`zerofn dev --kafka HOST:PORT`): topics are Kafka
//! topics, each function's consumer group is a Kafka consumer group, and offsets, log ends and
//! lag are Kafka's own (ListOffsets, OffsetFetch, OffsetCommit).
//!
//! The engine does what daprd does in the cluster: it reads each partition of a subscription
//! in order and commits the group's offset only once the outcome is final. It assigns
//! partitions itself (it runs every replica, so it knows which replica holds which partition):
//! its clients never join a group, and so never wait on a rebalance. Names can carry a prefix
//! (`--kafka-prefix`), so several engines can share a cluster without sharing topics.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::RDKafkaErrorCode,
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

use super::log::{Position, Read, Record};
use crate::kafka::{Settings, config};

/// How long one call to the brokers may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for the first record once the log end says there is one.
const READ_WAIT: Duration = Duration::from_secs(2);
/// The group name [`Kafka::scan`] reads as (it never commits).
const SCAN_GROUP: &str = "zerofn-scan";
/// Most replicas a topic is created with (fewer when the cluster has fewer brokers).
const MAX_REPLICATION: usize = 3;

/// Where an engine's log is, written into its state dir (`kafka.json`) so that `zerofn dlq`
/// and the dashboard find what it keeps on Kafka. No secret: the SASL password is read from
/// `ZEROFN_KAFKA_SASL_PASSWORD` by whoever opens it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Location {
    pub(crate) brokers: String,
    pub(crate) prefix: String,
    /// The `--kafka-setting`s, but the password.
    pub(crate) settings: Settings,
}

impl Location {
    /// The file's name in a state dir.
    pub(crate) const FILE: &str = "kafka.json";

    /// The location recorded in `state_dir`, if its engine runs on Kafka.
    pub(crate) fn read(state_dir: &std::path::Path) -> anyhow::Result<Option<Location>> {
        let path = state_dir.join(Location::FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not an engine's Kafka location: {e}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Record it in `state_dir` (or remove the record: the engine runs on SQLite).
    pub(crate) fn write(
        this: Option<&Location>,
        state_dir: &std::path::Path,
    ) -> std::io::Result<()> {
        let path = state_dir.join(Location::FILE);
        match this {
            Some(l) => std::fs::write(&path, serde_json::to_vec_pretty(l).unwrap_or_default()),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Clients for it, with the password from the environment.
    pub(crate) async fn connect(&self) -> Result<Kafka, String> {
        let settings =
            crate::kafka::with_password(self.settings.clone(), crate::dev::ENV_KAFKA_SASL_PASSWORD);
        Kafka::connect(&self.brokers, &self.prefix, settings).await
    }
}

/// A record to produce, its partition already chosen.
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) key: Option<&'a str>,
    pub(crate) value: &'a [u8],
    pub(crate) headers: &'a BTreeMap<String, String>,
}

/// One partition's reader for one group: a consumer assigned to the partition, and the offset
/// its next record has (`None`: unassigned).
struct Reader {
    consumer: BaseConsumer,
    next: Option<i64>,
}

/// A reader's (group, topic, partition).
type ReaderKey = (String, String, u32);

/// The clients.
pub(crate) struct Kafka {
    brokers: String,
    prefix: String,
    settings: Settings,
    admin: AdminClient<DefaultClientContext>,
    producer: FutureProducer,
    /// Metadata and log ends; never joins a group.
    meta: Arc<BaseConsumer>,
    /// One client per group, for its commits and committed offsets.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    readers: Mutex<HashMap<ReaderKey, Arc<Mutex<Reader>>>>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Run a blocking librdkafka call off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a Kafka call was cut off: {e}"))?
}

/// The record headers Kafka's CloudEvents binding reads, from a structured CloudEvent: its
/// content type and its context attributes as `ce_` headers (so that a consumer can route on
/// them without parsing the value). Nothing for a value that is not a CloudEvent.
pub(crate) fn cloudevent_headers(value: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Attributes {
        specversion: String,
        id: String,
        source: String,
        #[serde(rename = "type")]
        event_type: String,
        subject: Option<String>,
        time: Option<String>,
        datacontenttype: Option<String>,
    }
    let Ok(a) = serde_json::from_slice::<Attributes>(value) else {
        return Vec::new();
    };
    let mut out = vec![
        (
            "content-type".to_string(),
            "application/cloudevents+json; charset=utf-8".to_string(),
        ),
        ("ce_specversion".to_string(), a.specversion),
        ("ce_id".to_string(), a.id),
        ("ce_source".to_string(), a.source),
        ("ce_type".to_string(), a.event_type),
    ];
    for (name, v) in [
        ("ce_subject", a.subject),
        ("ce_time", a.time),
        ("ce_datacontenttype", a.datacontenttype),
    ] {
        if let Some(v) = v {
            out.push((name.to_string(), v));
        }
    }
    out
}

impl Kafka {
    /// Clients for `brokers`; fails when no broker answers.
    pub(crate) async fn connect(
        brokers: &str,
        prefix: &str,
        settings: Settings,
    ) -> Result<Kafka, String> {
        let made = |what: &str, e: rdkafka::error::KafkaError| {
            format!("cannot make a Kafka {what} for {brokers}: {e}")
        };
        let admin: AdminClient<DefaultClientContext> = config(brokers, "zerofn-dev", &settings)
            .create()
            .map_err(|e| made("admin client", e))?;
        let producer: FutureProducer = config(brokers, "zerofn-dev", &settings)
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()
            .map_err(|e| made("producer", e))?;
        let meta: BaseConsumer = config(brokers, "zerofn-dev", &settings)
            .create()
            .map_err(|e| made("client", e))?;
        let meta = Arc::new(meta);
        let probe = meta.clone();
        let at = brokers.to_string();
        blocking(move || {
            probe
                .fetch_metadata(None, CALL_TIMEOUT)
                .map(|_| ())
                .map_err(|e| format!("no Kafka broker answers at {at}: {e}"))
        })
        .await?;
        Ok(Kafka {
            brokers: brokers.to_string(),
            prefix: prefix.to_string(),
            settings,
            admin,
            producer,
            meta,
            groups: Mutex::default(),
            readers: Mutex::default(),
        })
    }

    /// The Kafka name of the engine's topic or group `name`.
    pub(crate) fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The partitions of `topic` (metadata), `None` when it does not exist.
    async fn partitions(&self, topic: &str) -> Result<Option<u32>, String> {
        let meta = self.meta.clone();
        let name = self.name(topic);
        blocking(move || {
            let md = meta
                .fetch_metadata(Some(&name), CALL_TIMEOUT)
                .map_err(|e| format!("metadata of {name}: {e}"))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| u32::try_from(t.partitions().len()).unwrap_or(u32::MAX)))
        })
        .await
    }

    /// The partitions of `topic`, creating it with `partitions` if it does not exist (with as
    /// many replicas as the cluster has brokers, at most 3).
    pub(crate) async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32, String> {
        if let Some(n) = self.partitions(topic).await? {
            return Ok(n);
        }
        let meta = self.meta.clone();
        let brokers = blocking(move || {
            meta.fetch_metadata(None, CALL_TIMEOUT)
                .map(|md| md.brokers().len())
                .map_err(|e| format!("metadata: {e}"))
        })
        .await?;
        let name = self.name(topic);
        let replication = i32::try_from(brokers.clamp(1, MAX_REPLICATION)).unwrap_or(1);
        let new = NewTopic::new(
            &name,
            i32::try_from(partitions).unwrap_or(i32::MAX),
            TopicReplication::Fixed(replication),
        );
        let results = self
            .admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)),
            )
            .await
            .map_err(|e| format!("cannot create topic {name}: {e}"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(format!("cannot create topic {t}: {code}")),
            }
        }
        // Creation is asynchronous on the brokers: wait until the metadata shows it.
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            if let Some(n) = self.partitions(topic).await? {
                tracing::info!(topic = %name, partitions = n, replication, "Kafka topic created");
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "topic {name} was created but its metadata never showed it"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every partition of `topics` (with their partition counts), under their Kafka names.
    fn partition_list(&self, topics: &[(String, u32)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (topic, n) in topics {
            for p in 0..*n {
                list.add_partition(&self.name(topic), p as i32);
            }
        }
        list
    }

    /// The offsets in `found`, by the engine's (topic, partition); none that is not an offset.
    fn by_partition(&self, found: &TopicPartitionList) -> HashMap<(String, u32), i64> {
        found
            .elements()
            .iter()
            .filter_map(
                |e| match (e.topic().strip_prefix(self.prefix.as_str()), e.offset()) {
                    (Some(topic), Offset::Offset(n)) if n >= 0 => {
                        Some(((topic.to_string(), e.partition() as u32), n))
                    }
                    _ => None,
                },
            )
            .collect()
    }

    /// Each partition's log end (ListOffsets, latest), in one request per broker.
    pub(crate) async fn ends(
        &self,
        topics: &[(String, u32)],
    ) -> Result<HashMap<(String, u32), i64>, String> {
        let list = self.partition_list(topics);
        if list.count() == 0 {
            return Ok(HashMap::new());
        }
        let meta = self.meta.clone();
        let found = blocking(move || crate::kafka::log_ends(&meta, &list)).await?;
        Ok(self.by_partition(&found))
    }

    fn group(&self, group: &str) -> Result<Arc<BaseConsumer>, String> {
        let mut groups = lock(&self.groups);
        if let Some(c) = groups.get(group) {
            return Ok(c.clone());
        }
        let consumer: BaseConsumer = config(&self.brokers, "zerofn-dev", &self.settings)
            .set("group.id", self.name(group))
            // Offsets are committed only once an outcome is final.
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("cannot make a Kafka client for group {group}: {e}"))?;
        let consumer = Arc::new(consumer);
        groups.insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }

    /// `group`'s committed offsets on `topics` (OffsetFetch); a partition never committed is
    /// left out.
    pub(crate) async fn committed(
        &self,
        group: &str,
        topics: &[(String, u32)],
    ) -> Result<HashMap<(String, u32), i64>, String> {
        let client = self.group(group)?;
        let list = self.partition_list(topics);
        let found = blocking(move || {
            client
                .committed_offsets(list, CALL_TIMEOUT)
                .map_err(|e| format!("committed offsets: {e}"))
        })
        .await?;
        Ok(self.by_partition(&found))
    }

    /// Commit `next` for `group` on a partition (OffsetCommit, synchronous: done when the
    /// group coordinator has it).
    pub(crate) async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next: i64,
    ) -> Result<(), String> {
        let client = self.group(group)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.name(topic), partition as i32, Offset::Offset(next))
            .map_err(|e| e.to_string())?;
        blocking(move || {
            client
                .commit(&list, CommitMode::Sync)
                .map_err(|e| format!("cannot commit: {e}"))
        })
        .await
    }

    /// Produce `records`, all at once, each to its partition. Where each landed, in order; on a
    /// failure, the ones before the first failure that were stored, and why.
    pub(crate) async fn produce(
        &self,
        records: &[Outgoing<'_>],
    ) -> Result<Vec<Position>, (Vec<Position>, String)> {
        let names: Vec<String> = records.iter().map(|r| self.name(r.topic)).collect();
        let sends = records.iter().zip(&names).map(|(r, name)| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 8);
            let mut all: BTreeMap<&str, &str> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let ce = cloudevent_headers(r.value);
            for (k, v) in &ce {
                all.entry(k.as_str()).or_insert(v.as_str());
            }
            for (k, v) in all {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut record = FutureRecord::to(name)
                .payload(r.value)
                .partition(r.partition as i32)
                .headers(headers);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            // Queued now, all of them; librdkafka batches them per partition.
            self.producer
                .send_result(record)
                .map_err(|(e, _)| e.to_string())
        });
        let queued: Vec<_> = sends.collect();
        let mut stored = Vec::with_capacity(records.len());
        for (r, queued) in records.iter().zip(queued) {
            let delivered = match queued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(d)) => Ok(d),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer went away".to_string()),
                },
                Err(e) => Err(e),
            };
            match delivered {
                Ok(d) => stored.push(Position {
                    topic: r.topic.to_string(),
                    partition: d.partition as u32,
                    offset: d.offset,
                }),
                Err(e) => {
                    return Err((
                        stored,
                        format!("Kafka refused a record for {}: {e}", r.topic),
                    ));
                }
            }
        }
        Ok(stored)
    }

    /// The records of `topic` after `next` (each partition's next offset to read, 0 when
    /// absent), moving `next` past them: a listing of a dead-letter topic reads each record once
    /// however often it is listed. Nothing is committed.
    pub(crate) async fn scan(
        &self,
        topic: &str,
        next: &mut HashMap<u32, i64>,
    ) -> Result<Vec<Record>, String> {
        let Some(n) = self.partitions(topic).await? else {
            return Ok(Vec::new());
        };
        let ends = self.ends(&[(topic.to_string(), n)]).await?;
        let mut out = Vec::new();
        for p in 0..n {
            let end = ends.get(&(topic.to_string(), p)).copied().unwrap_or(0);
            let at = next.entry(p).or_default();
            while *at < end {
                match self.read(SCAN_GROUP, topic, p, *at, 500, end).await? {
                    Read::Records(records) if !records.is_empty() => {
                        *at = records.last().map_or(end, |r| r.offset + 1);
                        out.extend(records);
                    }
                    Read::Gone { resume_at } => *at = resume_at,
                    // Nothing arrived in time: the next listing reads on from here.
                    Read::Records(_) => break,
                }
            }
        }
        Ok(out)
    }

    fn reader(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Mutex<Reader>>, String> {
        let key = (group.to_string(), topic.to_string(), partition);
        let mut readers = lock(&self.readers);
        if let Some(r) = readers.get(&key) {
            return Ok(r.clone());
        }
        let consumer: BaseConsumer = config(&self.brokers, "zerofn-dev", &self.settings)
            .set("group.id", self.name(group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Past what retention removed: the oldest record left (Dapr's `initialOffset:
            // oldest`, KEDA's `earliest`).
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| format!("cannot make a Kafka consumer for {group}: {e}"))?;
        let reader = Arc::new(Mutex::new(Reader {
            consumer,
            next: None,
        }));
        readers.insert(key, reader.clone());
        Ok(reader)
    }

    /// Up to `max` records of a partition for `group` from `offset` on; `end` is the log end
    /// known before the read. A reader that reaches `end` lets go of the partition, so that an
    /// idle engine sends no fetches.
    pub(crate) async fn read(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        max: u32,
        end: i64,
    ) -> Result<Read, String> {
        let reader = self.reader(group, topic, partition)?;
        let name = self.name(topic);
        let engine_topic = topic.to_string();
        let meta = self.meta.clone();
        blocking(move || {
            let mut r = lock(&reader);
            if r.next != Some(offset) {
                let mut list = TopicPartitionList::new();
                list.add_partition_offset(&name, partition as i32, Offset::Offset(offset))
                    .map_err(|e| e.to_string())?;
                r.consumer
                    .assign(&list)
                    .map_err(|e| format!("cannot read {name}/{partition}: {e}"))?;
                r.next = Some(offset);
            }
            let deadline = Instant::now() + READ_WAIT;
            let mut out: Vec<Record> = Vec::new();
            let mut failure = None;
            while out.len() < max as usize {
                let wait = if out.is_empty() {
                    deadline.saturating_duration_since(Instant::now())
                } else {
                    Duration::ZERO
                };
                match r.consumer.poll(wait) {
                    None => break,
                    Some(Err(e)) => {
                        failure = Some(format!("cannot read {name}/{partition}: {e}"));
                        break;
                    }
                    Some(Ok(m)) if m.offset() < offset => {}
                    Some(Ok(m)) => {
                        let headers = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .filter_map(|h| {
                                        Some((
                                            h.key.to_string(),
                                            String::from_utf8_lossy(h.value?).into_owned(),
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.push(Record {
                            topic: engine_topic.clone(),
                            partition,
                            offset: m.offset(),
                            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                            value: m.payload().unwrap_or_default().to_vec(),
                            headers,
                            timestamp_ms: m.timestamp().to_millis().unwrap_or_default(),
                        });
                        if m.offset() + 1 >= end {
                            break;
                        }
                    }
                }
            }
            match out.last() {
                Some(last) if last.offset + 1 < end => r.next = Some(last.offset + 1),
                Some(_) => {
                    // Caught up: stop fetching until the next read.
                    let _ = r.consumer.unassign();
                    r.next = None;
                }
                None => {
                    let _ = r.consumer.unassign();
                    r.next = None;
                    if let Some(e) = failure {
                        return Err(e);
                    }
                    // Nothing arrived: removed by retention when the oldest record left is the
                    // end; otherwise (a slow broker) the caller reads again.
                    let (low, high) = meta
                        .fetch_watermarks(&name, partition as i32, CALL_TIMEOUT)
                        .map_err(|e| format!("watermarks of {name}/{partition}: {e}"))?;
                    if low >= high && high > offset {
                        return Ok(Read::Gone { resume_at: high });
                    }
                }
            }
            Ok(Read::Records(out))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloudevent_s_attributes_become_ce_headers() {
        let h = cloudevent_headers(
            br#"{"specversion":"1.0","id":"e-1","source":"/s","type":"t.x","subject":"u-1","data":{}}"#,
        );
        let h: BTreeMap<_, _> = h.into_iter().collect();
        assert_eq!(h["ce_id"], "e-1");
        assert_eq!(h["ce_type"], "t.x");
        assert_eq!(h["ce_source"], "/s");
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_subject"], "u-1");
        assert!(!h.contains_key("ce_time"));
        assert!(h["content-type"].starts_with("application/cloudevents+json"));
    }

    #[test]
    fn a_value_that_is_not_a_cloudevent_gets_no_ce_headers() {
        assert!(cloudevent_headers(b"not json").is_empty());
        assert!(cloudevent_headers(br#"{"id":"x"}"#).is_empty());
    }
}
