//! `zerofn dev`: the local engine. Production semantics on one machine — a durable log with
//! Kafka's semantics, a Dapr-compatible sidecar per function, KEDA's scaling arithmetic over
//! real OS processes of the unchanged function binaries, and the API gateway on
//! `127.0.0.1:8080`.

pub(crate) mod activity;
pub(crate) mod consume;
pub(crate) mod dashboard;
pub(crate) mod engine;
pub(crate) mod jobs;
pub(crate) mod kafka;
pub(crate) mod log;
pub(crate) mod replica;
pub(crate) mod scaler;
pub(crate) mod sidecar;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::gateway::{self, Backend, BoxFuture, Outgoing, Partial, Refusal, Upstream};
use engine::{Chaos, Engine, Function, FunctionSpec, Options, Unavailable};

/// Run functions locally, scaled 0..N, behind the gateway.
#[derive(Debug, Args)]
pub(crate) struct Dev {
    /// A function to run: a directory holding `function.toml` (the binary is
    /// `<bin-dir>/<package name>`), or `PATH/function.toml=BINARY`. Repeatable.
    /// Default: every `<functions-dir>/*/function.toml`.
    #[arg(long = "fn", value_name = "DIR | TOML=BINARY")]
    functions: Vec<String>,
    /// Where to look for functions when no `--fn` is given.
    #[arg(long, default_value = "functions")]
    functions_dir: PathBuf,
    /// Where the function binaries are (default: next to this `zerofn` binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The engine's state: the log, and each function's store under `functions/<name>/`.
    #[arg(long, env = "ZEROFN_DATA_DIR", default_value = ".zerofn")]
    state_dir: PathBuf,
    /// One store for every function's replicas instead of each function's SQLite file under
    /// the state dir: e.g. `postgres://…`, to run the engine against the production store.
    #[arg(long)]
    store: Option<String>,
    /// Partitions of each new topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Run on a Kafka cluster instead of the SQLite log: its bootstrap servers (HOST:PORT,…).
    /// Topics, consumer groups (one per function, named after it) and offsets are Kafka's;
    /// the state store and scheduled jobs stay in the state dir.
    #[arg(long, env = "ZEROFN_KAFKA_BROKERS", value_name = "HOST:PORT")]
    kafka: Option<String>,
    /// Put this in front of every Kafka topic and consumer group name, so that several
    /// engines can share one cluster (e.g. `alice.`).
    #[arg(
        long,
        env = "ZEROFN_KAFKA_PREFIX",
        default_value = "",
        requires = "kafka"
    )]
    kafka_prefix: String,
    /// A librdkafka setting for every Kafka client, KEY=VALUE, repeatable (e.g.
    /// security.protocol=SASL_SSL). The SASL password comes from ZEROFN_KAFKA_SASL_PASSWORD.
    #[arg(long = "kafka-setting", value_name = "KEY=VALUE", requires = "kafka")]
    kafka_settings: Vec<String>,
    /// Longest a replica may take to become ready.
    #[arg(long, default_value = "30s", value_parser = duration)]
    start_timeout: Duration,
    /// Longest a stopping replica may drain before SIGKILL.
    #[arg(long, default_value = "30s", value_parser = duration)]
    stop_grace: Duration,
    /// Records older than this are deleted.
    #[arg(long, default_value = "7d", value_parser = duration)]
    retention: Duration,
    /// Fault injection: kill-replica, slow, drop-publish. Repeatable.
    #[arg(long, value_enum)]
    chaos: Vec<Chaos>,
    /// How often `--chaos kill-replica` strikes.
    #[arg(long, default_value = "5s", value_parser = duration)]
    chaos_interval: Duration,
    /// Keep at least N replicas of function NAME (`NAME=N`, overriding its `[scaling] min`),
    /// e.g. to see two replicas share its partitions. Repeatable.
    #[arg(long = "min", value_name = "NAME=N", value_parser = min_replicas)]
    min: Vec<(String, u32)>,
    /// Every function's idle time before it scales to zero, instead of its `[scaling] cooldown`
    /// (e.g. `2s`, to watch a chain go back to zero, or to measure it from zero).
    #[arg(long, value_parser = duration)]
    cooldown: Option<Duration>,
    /// Largest request body the gateway accepts.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// The gateway's configuration (credentials, policies, limits; see the README). Without
    /// one the local gateway is open, as befits 127.0.0.1.
    #[arg(long, value_name = "FILE")]
    gateway_config: Option<PathBuf>,
    /// Where `/metrics` and `/_zerofn/status` are served when a `--gateway-config` takes them
    /// off the public listener (default 127.0.0.1:8081; `:0` picks a free port, logged).
    #[arg(long)]
    internal_listen: Option<SocketAddr>,
}

/// The environment variable holding the Kafka SASL password (never on the command line).
pub(crate) const ENV_KAFKA_SASL_PASSWORD: &str = "ZEROFN_KAFKA_SASL_PASSWORD";
/// How often the engine on Kafka reads the log ends (records other clients produced).
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

fn min_replicas(v: &str) -> Result<(String, u32), String> {
    let (name, n) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: expected NAME=N, e.g. budget=2"))?;
    let n = n
        .parse::<u32>()
        .map_err(|e| format!("{v:?}: N is not a number of replicas ({e})"))?;
    Ok((name.to_string(), n))
}

pub(crate) fn duration(v: &str) -> Result<Duration, String> {
    zerofn::config::parse_duration(v)
}

fn load(toml_path: &Path, binary: Option<PathBuf>, bin_dir: &Path) -> anyhow::Result<FunctionSpec> {
    let manifest = crate::values::load_manifest(toml_path)
        .with_context(|| format!("--fn {}", toml_path.display()))?;
    // The binary is named after the crate; the manifest's name defaults to it.
    let crate_name = toml_path
        .parent()
        .and_then(crate::values::package_name)
        .unwrap_or_else(|| manifest.name.clone());
    let binary = binary.unwrap_or_else(|| bin_dir.join(&crate_name));
    if !binary.is_file() {
        bail!(
            "--fn {}: binary {} does not exist (build it: cargo build -p {crate_name})",
            toml_path.display(),
            binary.display()
        );
    }
    Ok(FunctionSpec { manifest, binary })
}

impl Dev {
    fn specs(&self) -> anyhow::Result<Vec<FunctionSpec>> {
        let bin_dir = match &self.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("target/debug")),
        };
        let mut specs = Vec::new();
        if self.functions.is_empty() {
            let entries = std::fs::read_dir(&self.functions_dir).with_context(|| {
                format!(
                    "--functions-dir {}: cannot list it (run from the project root, or pass --fn)",
                    self.functions_dir.display()
                )
            })?;
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("function.toml").is_file())
                .collect();
            dirs.sort();
            for d in dirs {
                specs.push(load(&d.join("function.toml"), None, &bin_dir)?);
            }
        }
        for f in &self.functions {
            let (path, binary) = match f.split_once('=') {
                Some((p, b)) => (PathBuf::from(p), Some(PathBuf::from(b))),
                None => (PathBuf::from(f), None),
            };
            let toml = if path.is_dir() {
                path.join("function.toml")
            } else {
                path
            };
            specs.push(load(&toml, binary, &bin_dir)?);
        }
        if specs.is_empty() {
            bail!(
                "no functions to run: pass --fn DIR or run from a directory with functions/*/function.toml"
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &specs {
            if !seen.insert(s.manifest.name.clone()) {
                bail!("function name {:?} is used twice", s.manifest.name);
            }
        }
        if let Some(cooldown) = self.cooldown {
            for spec in &mut specs {
                spec.manifest.scaling.cooldown = cooldown;
            }
        }
        for (name, n) in &self.min {
            let Some(spec) = specs.iter_mut().find(|s| &s.manifest.name == name) else {
                bail!("--min {name}={n}: no function {name} is running");
            };
            let scaling = &mut spec.manifest.scaling;
            if *n > scaling.max {
                bail!(
                    "--min {name}={n}: more than its [scaling] max ({})",
                    scaling.max
                );
            }
            scaling.min = *n;
        }
        Ok(specs)
    }

    /// Run until SIGINT or SIGTERM, then drain every replica.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let _telemetry =
            zerofn::edge::Telemetry::init("zerofn-gateway").map_err(|e| anyhow::anyhow!("{e}"))?;
        let specs = self.specs()?;
        let (guard, limits) = match &self.gateway_config {
            None => (None, gateway::config::Limits::default()),
            Some(path) => {
                let (guard, limits) = gateway::Guard::load(path).await?;
                (Some(guard), limits)
            }
        };
        let header_timeout = limits.header_timeout;
        std::fs::create_dir_all(&self.state_dir).with_context(|| {
            format!("--state-dir {}: cannot create it", self.state_dir.display())
        })?;
        let _lock = lock_state_dir(&self.state_dir)?;
        let swept = replica::sweep(&self.state_dir.join(engine::PID_DIR));
        if swept > 0 {
            tracing::warn!(
                swept,
                "replicas of a previous engine on this state dir were still running: killed"
            );
        }
        let location = match &self.kafka {
            None => None,
            Some(brokers) => Some(kafka::Location {
                brokers: brokers.clone(),
                prefix: self.kafka_prefix.clone(),
                settings: crate::kafka::settings(&self.kafka_settings, ENV_KAFKA_SASL_PASSWORD)?,
            }),
        };
        let kafka = match &location {
            None => None,
            Some(l) => {
                let kafka = l
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("--kafka {}: {e}", l.brokers))?;
                tracing::info!(brokers = %l.brokers, prefix = %l.prefix, "the log is a Kafka cluster");
                Some(kafka)
            }
        };
        kafka::Location::write(location.as_ref(), &self.state_dir).with_context(|| {
            format!(
                "--state-dir {}: cannot record where the log is",
                self.state_dir.display()
            )
        })?;
        let log = Arc::new(
            log::Log::open(&self.state_dir.join("log.db"), self.partitions, kafka)
                .await
                .with_context(|| format!("cannot open the log in {}", self.state_dir.display()))?,
        );
        let removed = log.apply_retention(self.retention).await?;
        if removed > 0 {
            tracing::info!(removed, "records past retention deleted");
        }
        let drop_publish = self.chaos.contains(&Chaos::DropPublish);
        // The functions send DAPR_API_TOKEN (they inherit the engine's environment); the
        // sidecars then require it, as daprd does.
        let token = std::env::var("DAPR_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let mut functions = BTreeMap::new();
        for spec in specs {
            let f = &spec.manifest;
            for t in f
                .subscriptions
                .iter()
                .map(|s| s.topic.clone())
                .chain(f.http.as_ref().map(|_| engine::async_topic(&f.name)))
                .chain([engine::jobs_topic(&f.name)])
                .chain([f.delivery.dead_letter_topic.clone()])
            {
                log.ensure_topic(&t).await?;
            }
            register_schedules(&log, f).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let function = Arc::new(Function::new(spec, port, &log));
            // Where its consumer group stands (on Kafka, read from the cluster).
            log.join(&function.name, &function.topics).await?;
            let router =
                sidecar::router(function.clone(), log.clone(), drop_publish, token.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            tracing::info!(
                function = %function.name,
                topics = ?function.topics,
                http = function.manifest.http.is_some(),
                sidecar_port = port,
                "function registered (0 replicas)"
            );
            functions.insert(function.name.clone(), function);
        }
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", self.listen))?;
        let gateway_url = format!("http://{}", listener.local_addr()?);
        let engine = Engine::new(
            log.clone(),
            functions,
            Options {
                state_dir: self.state_dir.clone(),
                store: self.store.clone(),
                start_timeout: self.start_timeout,
                stop_grace: self.stop_grace,
                chaos: self.chaos.clone(),
                chaos_interval: self.chaos_interval,
                gateway_url,
            },
        );
        let mut loops = Vec::new();
        for f in engine.functions.values() {
            loops.push(tokio::spawn(engine.clone().scale_loop(f.clone())));
            for topic in &f.topics {
                let partitions = log.ensure_topic(topic).await?;
                for p in 0..partitions {
                    loops.push(tokio::spawn(consume::partition_loop(
                        engine.clone(),
                        f.clone(),
                        topic.clone(),
                        p,
                    )));
                }
            }
        }
        if self.chaos.contains(&Chaos::KillReplica) {
            loops.push(tokio::spawn(engine.clone().chaos_loop()));
        }
        loops.push(tokio::spawn(engine.clone().jobs_loop()));
        let following = log.clone();
        loops.push(tokio::spawn(async move {
            following.follow(FOLLOW_EVERY).await;
        }));
        let retention = self.retention;
        let retention_log = log.clone();
        loops.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let _ = retention_log.apply_retention(retention).await;
            }
        }));
        let backend: Arc<dyn Backend> = Arc::new(Local {
            engine: engine.clone(),
        });
        let internal_addr = match (self.internal_listen, &guard) {
            (Some(a), _) => Some(a),
            (None, Some(_)) => Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            (None, None) => None,
        };
        let open = guard.is_none();
        let mut routers = gateway::router(
            backend,
            gateway::Options {
                max_body: self.max_body_bytes,
                internal_on_public: open,
                guard,
                limits,
            },
        )?;
        // The dashboard goes where /_zerofn/status goes: the internal listener, and the public
        // one of an open local engine.
        let board = dashboard::router(engine.clone());
        if open {
            routers.public = routers.public.merge(board.clone());
        }
        routers.internal = routers.internal.merge(board);
        let stop_signal = zerofn::shutdown_signal(); // installed before anything is served
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        if let Some(addr) = internal_addr {
            let internal = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--internal-listen {addr}: cannot bind"))?;
            tracing::info!(addr = %internal.local_addr()?, "internal listener (/metrics, /_zerofn/status, /_zerofn/dashboard)");
            tracing::info!(url = %format!("http://{}/_zerofn/dashboard", internal.local_addr()?), "dashboard");
            servers.push(tokio::spawn(gateway::serve(
                internal,
                routers.internal,
                header_timeout,
                stopped_rx.clone(),
            )));
        }
        tracing::info!(addr = %listener.local_addr()?, functions = engine.functions.len(), chaos = ?self.chaos, "gateway listening");
        if open && internal_addr.is_none() {
            tracing::info!(url = %format!("http://{}/_zerofn/dashboard", listener.local_addr()?), "dashboard");
        }
        servers.push(tokio::spawn(gateway::serve(
            listener,
            routers.public,
            header_timeout,
            stopped_rx,
        )));
        stop_signal.await;
        tracing::info!("stopping: draining every replica");
        engine.shutdown().await;
        let _ = stopped_tx.send(true);
        for server in servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        for l in loops {
            l.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A function's `[[schedules]]` as jobs in the log, before any replica runs (it starts at zero,
/// so its own registration at start would come only after its first trigger woke it): the same
/// requests the runtime sends, so its re-registration changes nothing. Jobs of schedules the
/// function no longer declares are deleted.
async fn register_schedules(log: &log::Log, f: &zerofn::Manifest) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    for s in &f.schedules {
        let body = serde_json::to_vec(&s.job_request())?;
        let spec = jobs::parse_request(&body, now).map_err(|e| anyhow::anyhow!("{e}"))?;
        let due = jobs::first_due(&spec, now)
            .with_context(|| format!("schedule {} ({}) is never due", s.name, s.cron))?;
        log.put_job(&f.name, &s.job_name(), &spec, due).await?;
    }
    for name in log.job_names(&f.name).await? {
        if name.starts_with(zerofn::manifest::SCHEDULE_JOB_PREFIX)
            && f.schedule_for_job(&name).is_none()
        {
            log.delete_job(&f.name, &name).await?;
            tracing::info!(function = %f.name, job = %name, "a schedule no longer declared: its job deleted");
        }
    }
    Ok(())
}

/// Where a record landed, as the gateway answers it.
fn position(p: &log::Position) -> Value {
    json!({"topic": p.topic, "partition": p.partition, "offset": p.offset})
}

/// The gateway's backend in `zerofn dev`: the engine.
struct Local {
    engine: Arc<Engine>,
}

impl Backend for Local {
    fn append(&self, records: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Value>, Partial>> {
        Box::pin(async move {
            let records = records
                .into_iter()
                .map(|r| log::NewRecord {
                    topic: r.topic,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .traceparent
                        .map(|tp| BTreeMap::from([("traceparent".to_string(), tp)]))
                        .unwrap_or_default(),
                })
                .collect();
            let positions = self
                .engine
                .log
                .append(records)
                .await
                // SQLite: one transaction, all or nothing. Kafka: the stored prefix.
                .map_err(|e| match e {
                    log::Error::Kafka { reason, stored } => Partial {
                        stored: stored.iter().map(position).collect(),
                        reason,
                    },
                    e => Partial::none(e.to_string()),
                })?;
            Ok(positions.iter().map(position).collect())
        })
    }

    fn upstream<'a>(
        &'a self,
        name: &'a str,
        queued: &'a metrics::Gauge,
    ) -> BoxFuture<'a, Result<Upstream, Refusal>> {
        Box::pin(async move {
            let Some(f) = self.engine.functions.get(name) else {
                return Err(Refusal {
                    status: axum::http::StatusCode::NOT_FOUND,
                    code: "unknown_function",
                    message: format!("no function named {name:?}"),
                });
            };
            let timeout = f
                .manifest
                .http
                .as_ref()
                .map_or(Duration::from_secs(60), |h| h.timeout);
            let demand = f.demand();
            queued.increment(1.0);
            let got = f.replica_for_request(timeout).await;
            queued.decrement(1.0);
            match got {
                Ok(lease) => Ok(Upstream {
                    base: format!("http://{}", lease.replica.addr),
                    timeout,
                    _guard: Box::new((lease, demand)),
                }),
                Err(Unavailable::StartFailed(reason)) => Err(Refusal {
                    status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    code: "function_unavailable",
                    message: format!("function {name} could not start: {reason}"),
                }),
                Err(Unavailable::Timeout(t)) => Err(Refusal {
                    status: axum::http::StatusCode::GATEWAY_TIMEOUT,
                    code: "cold_start_timeout",
                    message: format!(
                        "function {name} had no ready replica within {t:?} ([http] timeout)"
                    ),
                }),
            }
        })
    }

    fn is_http_function(&self, name: &str) -> bool {
        self.engine
            .functions
            .get(name)
            .is_some_and(|f| f.manifest.http.is_some())
    }

    fn functions(&self) -> Vec<String> {
        self.engine.functions.keys().cloned().collect()
    }

    fn replays_async(&self) -> bool {
        true
    }

    fn served(&self, name: &str, what: &str, status: u16, took: Duration) {
        self.engine.activity.delivered(activity::Delivery {
            seq: 0,
            at: 0,
            function: name.to_string(),
            topic: "http".into(),
            id: None,
            event_type: Some(what.to_string()),
            subject: None,
            outcome: activity::http_outcome(status).into(),
            duration_ms: took.as_secs_f64() * 1000.0,
            trace_id: None,
        });
    }

    fn status(&self) -> Option<Value> {
        Some(self.engine.status())
    }
}

/// Hold the state dir for this engine: a second engine on it would share the log and the
/// stores with a different view of replicas and offsets. Released when the process ends,
/// however it ends (an OS file lock).
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("engine.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::{Seek, Write};
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another zerofn dev (pid {}) is running on --state-dir {}: stop it, or give this one another --state-dir",
                holder.trim(),
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}
