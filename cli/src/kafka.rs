//! Kafka clients' shared parts: settings, client configuration, and a consumer group's position
//! on a topic, read from Kafka's own APIs through librdkafka:
//! the partitions (Metadata), each partition's log end (ListOffsets, the high watermark) and the
//! group's committed offsets (OffsetFetch). One client per (brokers, group), never joining the
//! group: it reads offsets, it does not consume.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

/// How long one call to the brokers may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition: its log end, and the group's committed offset (`None`: never committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) partition: i32,
    pub(crate) end: i64,
    pub(crate) committed: Option<i64>,
}

/// Extra client settings for every connection (`security.protocol`, `sasl.*`, `ssl.*`).
pub(crate) type Settings = Vec<(String, String)>;

/// `--kafka-setting KEY=VALUE` arguments as settings; the SASL password is refused there (`ps`
/// would show it): it belongs in the environment variable `password_env`.
pub(crate) fn settings(args: &[String], password_env: &str) -> anyhow::Result<Settings> {
    let mut settings = Vec::new();
    for s in args {
        let Some((k, v)) = s.split_once('=') else {
            anyhow::bail!("--kafka-setting {s:?}: expected KEY=VALUE");
        };
        if k.trim() == "sasl.password" {
            anyhow::bail!("--kafka-setting sasl.password: give it in {password_env}");
        }
        settings.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(settings)
}

/// `settings` with the SASL password from the environment variable `password_env`, if set.
pub(crate) fn with_password(mut settings: Settings, password_env: &str) -> Settings {
    if let Ok(p) = std::env::var(password_env)
        && !p.is_empty()
    {
        settings.push(("sasl.password".into(), p));
    }
    settings
}

/// A client's configuration: the brokers, a client id the brokers' logs show, and `settings`.
pub(crate) fn config(brokers: &str, client_id: &str, settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id);
    for (k, v) in settings {
        config.set(k, v);
    }
    config
}

/// Clients by (brokers, group), made on first use.
#[derive(Default)]
pub(crate) struct Offsets {
    settings: Settings,
    clients: Mutex<HashMap<(String, String), Arc<BaseConsumer>>>,
}

impl std::fmt::Debug for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offsets").finish_non_exhaustive()
    }
}

impl Offsets {
    pub(crate) fn new(settings: Settings) -> Offsets {
        Offsets {
            settings,
            clients: Mutex::default(),
        }
    }

    fn client(&self, brokers: &str, group: &str) -> Result<Arc<BaseConsumer>, String> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&(brokers.to_string(), group.to_string())) {
            return Ok(c.clone());
        }
        let consumer: BaseConsumer = config(brokers, "zerofn-scaler", &self.settings)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("cannot make a Kafka client for {brokers}: {e}"))?;
        let consumer = Arc::new(consumer);
        clients.insert((brokers.to_string(), group.to_string()), consumer.clone());
        Ok(consumer)
    }

    /// Every partition of `topic` with its log end and `group`'s committed offset.
    pub(crate) async fn positions(
        &self,
        brokers: &str,
        group: &str,
        topic: &str,
    ) -> Result<Vec<Position>, String> {
        let client = self.client(brokers, group)?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || read(&client, &topic))
            .await
            .map_err(|e| format!("the Kafka read was cut off: {e}"))?
    }
}

fn read(client: &BaseConsumer, topic: &str) -> Result<Vec<Position>, String> {
    let metadata = client
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("no topic {topic}"));
    };
    if let Some(e) = t.error() {
        return Err(format!("topic {topic}: {e:?}"));
    }
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions"));
    }
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let ends = log_ends(client, &list)?;
    let committed = client
        .committed_offsets(list, CALL_TIMEOUT)
        .map_err(|e| format!("committed offsets on {topic}: {e}"))?;
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let end = match ends.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(n)) => n,
            _ => return Err(format!("no log end for {topic}/{p}")),
        };
        let committed = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(n) if n >= 0 => Some(n),
                _ => None,
            });
        out.push(Position {
            partition: p,
            end,
            committed,
        });
    }
    Ok(out)
}

/// The log end of every partition in `partitions` (ListOffsets for the latest offset, one
/// request per broker, not one per partition). Blocking.
pub(crate) fn log_ends(
    client: &BaseConsumer,
    partitions: &TopicPartitionList,
) -> Result<TopicPartitionList, String> {
    let mut list = partitions.clone();
    list.set_all_offsets(Offset::End)
        .map_err(|e| format!("log ends: {e}"))?;
    client
        .offsets_for_times(list, CALL_TIMEOUT)
        .map_err(|e| format!("log ends: {e}"))
}
