//! `zerofn dlq`: list, show and replay dead letters.

use std::{io::Write, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::collections::HashMap;

use zerofn::{dead_letter::DeadLetter, dlq::DeadLetters};

/// Dead-letter tools.
#[derive(Debug, Args)]
pub(crate) struct Dlq {
    /// The store the functions use: sqlite:PATH, postgres://…, redis://…. Without it, the
    /// runtime's default follows ZEROFN_DATA_DIR (`.zerofn`): in a `zerofn dev` state dir,
    /// every function's store and the gateway's refused requests.
    #[arg(long, env = "ZEROFN_STORE", global = true)]
    store: Option<String>,
    /// The data dir (the runtime's, or an engine's state dir) when no --store is given.
    #[arg(
        long,
        env = "ZEROFN_DATA_DIR",
        default_value = ".zerofn",
        global = true
    )]
    data_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, newest first.
    Ls {
        /// Only this function's.
        #[arg(long = "fn")]
        function: Option<String>,
        /// Only those recorded within this long (e.g. 30m, 1h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show {
        /// The dead letter's id.
        id: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters' original events again, marked `replayof`; the idempotency layer
    /// handles each replay at most once.
    Replay {
        /// The dead letter to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter (narrowed by --fn and --since).
        #[arg(long)]
        all: bool,
        /// With --all: only this function's.
        #[arg(long = "fn")]
        function: Option<String>,
        /// With --all: only those recorded within this long.
        #[arg(long)]
        since: Option<String>,
        /// At most this many events per second (e.g. 10 or 10/s).
        #[arg(long, default_value = "10/s")]
        rate: String,
        /// Print what would be published, publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Publish through this Dapr sidecar, to the event's original pub/sub and topic.
        #[arg(long, env = "ZEROFN_REPLAY_DAPR", conflicts_with = "sink")]
        dapr: Option<String>,
        /// POST the event to this CloudEvents endpoint (a Knative broker, a function) instead.
        #[arg(long)]
        sink: Option<String>,
        /// Token for the Dapr sidecar.
        #[arg(long, env = "DAPR_API_TOKEN", hide_env_values = true)]
        dapr_api_token: Option<String>,
    },
}

impl Dlq {
    pub(crate) async fn run(self, out: &mut impl Write) -> anyhow::Result<()> {
        let letters = Letters::open(self.store.as_deref(), &self.data_dir, None).await?;
        match self.command {
            DlqCommand::Ls {
                function,
                since,
                limit,
                json,
            } => {
                let list = letters
                    .list(
                        function.as_deref(),
                        since_time(since.as_deref())?,
                        Some(limit),
                    )
                    .await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                } else {
                    write_table(out, &list)?;
                }
            }
            DlqCommand::Show { id, json } => {
                let record = letters
                    .get(&id)
                    .await?
                    .with_context(|| format!("no dead letter {id}"))?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?;
                } else {
                    write_record(out, &record)?;
                }
            }
            DlqCommand::Replay {
                id,
                all,
                function,
                since,
                rate,
                dry_run,
                dapr,
                sink,
                dapr_api_token,
            } => {
                let records = match (id, all) {
                    (Some(id), _) => vec![
                        letters
                            .get(&id)
                            .await?
                            .with_context(|| format!("no dead letter {id}"))?,
                    ],
                    (None, true) => {
                        letters
                            .list(function.as_deref(), since_time(since.as_deref())?, None)
                            .await?
                    }
                    (None, false) => bail!("name a dead letter id or --all"),
                };
                let target = match (dapr, sink, dry_run) {
                    (Some(url), _, _) => Target::Dapr {
                        url,
                        token: dapr_api_token,
                    },
                    (None, Some(url), _) => Target::Sink(url),
                    (None, None, true) => Target::DryRun,
                    (None, None, false) => bail!(
                        "say where to publish: --dapr http://127.0.0.1:3500 or --sink URL (or --dry-run)"
                    ),
                };
                let pause = pause_for(&rate)?;
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                let mut failed = 0;
                for (i, record) in records.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    match replay(&client, &target, record, None).await {
                        Ok(what) => {
                            writeln!(out, "{}  {what}", record.id)?;
                            if !matches!(target, Target::DryRun) {
                                letters.mark_replayed(&record.id).await?;
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            writeln!(out, "{}  FAILED: {e:#}", record.id)?;
                        }
                    }
                }
                if failed > 0 {
                    bail!("{failed} of {} replays failed", records.len());
                }
            }
        }
        Ok(())
    }
}

/// Where dead letters are read: one store, or an engine's state dir (each function's store
/// under `functions/<name>/`, and the gateway's records on `deadletter.gateway` in its log).
pub(crate) struct Letters {
    stores: Vec<DeadLetters>,
    gateway_log: Option<GatewayLog>,
}

/// A Kafka topic's reading so far: each partition's next offset, and the records read (their
/// timestamps and values).
type Scanned = (HashMap<u32, i64>, Vec<(i64, Vec<u8>)>);

/// Where an engine keeps the gateway's dead-letter topic: its SQLite log, or Kafka (with the
/// records read so far and where each partition's reading stands, so that a listing reads only
/// what is new).
enum GatewayLog {
    Sqlite(sqlx::AnyPool),
    Kafka {
        kafka: std::sync::Arc<crate::dev::kafka::Kafka>,
        read: tokio::sync::Mutex<Scanned>,
    },
}

/// The SQLite stores of an engine's functions (`functions/<name>/zerofn.db` under its state
/// dir) that exist now, sorted; a function's appears at its first start.
pub(crate) fn function_stores(
    state_dir: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut dbs: Vec<_> = std::fs::read_dir(state_dir.join("functions"))?
        .flatten()
        .map(|e| e.path().join("zerofn.db"))
        .filter(|db| db.is_file())
        .collect();
    dbs.sort();
    Ok(dbs)
}

impl Letters {
    /// The dead letters of `store`, or of the engine whose state dir is `data_dir`. `kafka`:
    /// the engine's own clients when the engine itself reads (else the state dir says where
    /// its log is).
    pub(crate) async fn open(
        store: Option<&str>,
        data_dir: &std::path::Path,
        kafka: Option<std::sync::Arc<crate::dev::kafka::Kafka>>,
    ) -> anyhow::Result<Letters> {
        if let Some(url) = store {
            return Ok(Letters {
                stores: vec![DeadLetters::open(url).await?],
                gateway_log: None,
            });
        }
        let log = data_dir.join("log.db");
        let functions = data_dir.join("functions");
        if !(log.is_file() && functions.is_dir()) {
            let url = format!("sqlite:{}", data_dir.join("zerofn.db").display());
            return Ok(Letters {
                stores: vec![DeadLetters::open(&url).await?],
                gateway_log: None,
            });
        }
        let mut stores = Vec::new();
        for db in function_stores(data_dir)
            .with_context(|| format!("cannot list {}", functions.display()))?
        {
            stores.push(DeadLetters::open(&format!("sqlite:{}", db.display())).await?);
        }
        let kafka = match (kafka, crate::dev::kafka::Location::read(data_dir)?) {
            (Some(kafka), _) => Some(kafka),
            (None, Some(location)) => Some(std::sync::Arc::new(location.connect().await.map_err(
                |e| anyhow::anyhow!("the engine's log is on Kafka at {}: {e}", location.brokers),
            )?)),
            (None, None) => None,
        };
        let gateway_log = match kafka {
            Some(kafka) => GatewayLog::Kafka {
                kafka,
                read: tokio::sync::Mutex::default(),
            },
            None => {
                sqlx::any::install_default_drivers();
                GatewayLog::Sqlite(
                    sqlx::AnyPool::connect(&format!("sqlite://{}?mode=ro", log.display()))
                        .await
                        .with_context(|| {
                            format!("cannot open the engine's log {}", log.display())
                        })?,
                )
            }
        };
        Ok(Letters {
            stores,
            gateway_log: Some(gateway_log),
        })
    }

    /// Newest first, over every source: at most `limit`, or every one (paged from each store)
    /// when `limit` is `None`.
    pub(crate) async fn list(
        &self,
        function: Option<&str>,
        since: Option<chrono::DateTime<chrono::Utc>>,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let mut all = Vec::new();
        for store in &self.stores {
            all.extend(match limit {
                Some(n) => store.list(function, since, n).await?,
                None => store.all(function, since).await?,
            });
        }
        if function.is_none_or(|f| f == "gateway") {
            all.extend(self.gateway(since).await?);
        }
        // Record ids are UUID v7: their order is the order they were recorded in.
        all.sort_by(|a, b| b.id.cmp(&a.id));
        all.dedup_by(|a, b| a.id == b.id);
        if let Some(n) = limit {
            all.truncate(n);
        }
        Ok(all)
    }

    /// The gateway's records of refused requests, kept on its dead-letter topic.
    async fn gateway(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let since = since.map_or(0, |t| t.timestamp_millis());
        let values: Vec<Vec<u8>> = match &self.gateway_log {
            None => return Ok(Vec::new()),
            Some(GatewayLog::Sqlite(pool)) => {
                sqlx::query_scalar(
                    "SELECT value FROM records WHERE topic = 'deadletter.gateway' AND ts >= $1",
                )
                .bind(since)
                .fetch_all(pool)
                .await?
            }
            Some(GatewayLog::Kafka { kafka, read }) => {
                let (next, values) = &mut *read.lock().await;
                let new = kafka
                    .scan(crate::gateway::DEAD_LETTER_TOPIC, next)
                    .await
                    .map_err(|e| anyhow::anyhow!("the gateway's dead letters on Kafka: {e}"))?;
                values.extend(new.into_iter().map(|r| (r.timestamp_ms, r.value)));
                values
                    .iter()
                    .filter(|(ts, _)| *ts >= since)
                    .map(|(_, v)| v.clone())
                    .collect()
            }
        };
        Ok(values
            .iter()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect())
    }

    /// One dead letter by id, from whichever source holds it.
    pub(crate) async fn get(&self, id: &str) -> anyhow::Result<Option<DeadLetter>> {
        for store in &self.stores {
            if let Some(d) = store.get(id).await? {
                return Ok(Some(d));
            }
        }
        Ok(self.gateway(None).await?.into_iter().find(|d| d.id == id))
    }

    /// Note the replay in the store that holds the record (the gateway's log is read-only).
    pub(crate) async fn mark_replayed(&self, id: &str) -> anyhow::Result<()> {
        for store in &self.stores {
            if store.get(id).await?.is_some() {
                return Ok(store.mark_replayed(id).await?);
            }
        }
        Ok(())
    }
}

/// Where a replay is published.
pub(crate) enum Target {
    /// A Dapr sidecar (or the engine's), to the record's pub/sub and topic.
    Dapr { url: String, token: Option<String> },
    /// A CloudEvents endpoint.
    Sink(String),
    /// Nowhere: say what would be published.
    DryRun,
}

/// The original CloudEvent of a dead letter, marked `replayof`.
pub(crate) fn replay_event(record: &DeadLetter) -> anyhow::Result<Value> {
    let bytes = record.original.bytes();
    let mut event = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) if v.get("specversion").is_some() => v,
        _ if record.original.headers.contains_key("ce-specversion") => {
            // Binary mode: the attributes were headers, the body was the data.
            let mut event = serde_json::Map::new();
            for (name, value) in &record.original.headers {
                if let Some(attr) = name.strip_prefix("ce-") {
                    event.insert(attr.to_string(), json!(value));
                }
            }
            let content_type = record
                .original
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".into());
            let data = serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
            event.insert("datacontenttype".into(), json!(content_type));
            event.insert("data".into(), data);
            Value::Object(event)
        }
        _ => bail!(
            "holds no CloudEvent to replay: it failed as {} ({})",
            record.error.kind,
            record.error.messages.join(": ")
        ),
    };
    event["replayof"] = json!(record.id);
    Ok(event)
}

/// Publish `record`'s original event again, marked `replayof`, with its `data` replaced by
/// `fixed_data` when given (a fixed-up copy: same id and source, so the runtime still knows it
/// for a replay of that dead letter and applies it at most once).
pub(crate) async fn replay(
    client: &reqwest::Client,
    target: &Target,
    record: &DeadLetter,
    fixed_data: Option<&Value>,
) -> anyhow::Result<String> {
    let mut event = replay_event(record)?;
    if let Some(data) = fixed_data {
        event["data"] = data.clone();
        event["datacontenttype"] = json!("application/json");
    }
    let request = match target {
        Target::DryRun => return Ok(format!("would publish {}", serde_json::to_string(&event)?)),
        Target::Sink(url) => client.post(url),
        Target::Dapr { url, token } => {
            let (Some(pubsub), Some(topic)) = (&record.pubsub, &record.topic) else {
                bail!("the record names no pub/sub and topic to replay to; use --sink");
            };
            let mut request = client.post(format!(
                "{}/v1.0/publish/{pubsub}/{topic}",
                url.trim_end_matches('/')
            ));
            if let Some(token) = token {
                request = request.header("dapr-api-token", token);
            }
            request
        }
    };
    let response = request
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&event)?)
        .send()
        .await
        .context("publish failed")?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("publish answered {status}: {body}");
    }
    Ok(format!("replayed ({status})"))
}

fn since_time(since: Option<&str>) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let Some(since) = since else { return Ok(None) };
    let d = parse_age(since)
        .with_context(|| format!("--since {since:?}: expected a duration such as 30m, 1h or 7d"))?;
    Ok(Some(chrono::Utc::now() - d))
}

fn parse_age(v: &str) -> Option<chrono::Duration> {
    zerofn::config::parse_duration(v)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
}

fn pause_for(rate: &str) -> anyhow::Result<Duration> {
    let n: f64 = rate
        .trim_end_matches("/s")
        .parse()
        .ok()
        .filter(|n: &f64| *n > 0.0)
        .with_context(|| format!("--rate {rate:?}: expected events per second, e.g. 10 or 10/s"))?;
    Ok(Duration::from_secs_f64(1.0 / n))
}

fn write_table(out: &mut impl Write, list: &[DeadLetter]) -> std::io::Result<()> {
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|d| {
            [
                d.id.clone(),
                d.function.clone(),
                d.event_type.clone().unwrap_or_else(|| "-".into()),
                d.error.kind.clone(),
                d.attempts.to_string(),
                d.last_failure.clone(),
                d.event_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "ID",
        "FUNCTION",
        "TYPE",
        "ERROR",
        "ATTEMPTS",
        "LAST FAILURE",
        "EVENT ID",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&header))?;
    for r in &rows {
        writeln!(
            out,
            "{}",
            line(&r.iter().map(String::as_str).collect::<Vec<_>>())
        )?;
    }
    if rows.is_empty() {
        writeln!(out, "(no dead letters)")?;
    }
    Ok(())
}

fn write_record(out: &mut impl Write, d: &DeadLetter) -> std::io::Result<()> {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    writeln!(out, "id:            {}", d.id)?;
    writeln!(out, "function:      {} {}", d.function, d.function_version)?;
    writeln!(
        out,
        "event:         {} {} from {}",
        or_dash(&d.event_type),
        or_dash(&d.event_id),
        or_dash(&d.event_source)
    )?;
    writeln!(
        out,
        "topic:         {} / {}",
        or_dash(&d.pubsub),
        or_dash(&d.topic)
    )?;
    writeln!(out, "error:         {} ({})", d.error.kind, d.error.class)?;
    for m in &d.error.messages {
        writeln!(out, "               {m}")?;
    }
    writeln!(
        out,
        "attempts:      {} (first {}, last {})",
        d.attempts, d.first_failure, d.last_failure
    )?;
    writeln!(out, "trace id:      {}", or_dash(&d.trace_id))?;
    writeln!(out, "idempotency:   {}", d.key)?;
    writeln!(out, "content type:  {}", or_dash(&d.original.content_type))?;
    match (&d.original.body, &d.original.body_base64) {
        (Some(body), _) => writeln!(out, "original:\n{body}")?,
        (None, Some(b64)) => writeln!(out, "original (base64):\n{b64}")?,
        (None, None) => writeln!(out, "original:      (empty)")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_ages() {
        assert_eq!(pause_for("10/s").unwrap(), Duration::from_millis(100));
        assert_eq!(pause_for("2").unwrap(), Duration::from_millis(500));
        assert!(pause_for("0").is_err() && pause_for("fast").is_err());
        assert_eq!(parse_age("90m"), Some(chrono::Duration::minutes(90)));
        assert_eq!(parse_age("1w"), None);
    }
}
