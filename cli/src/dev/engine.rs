//! The engine: every function's replicas, their scaling (KEDA's arithmetic, woken the moment a
//! record lands) and their lifecycle — start with probes, stop with SIGTERM and a drain — plus
//! the counters `zerofn status` shows.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use zerofn::Manifest;

use base64::Engine as _;

use super::{
    activity::Activity,
    log::{Log, NewRecord},
    replica::{Replica, Spec},
    scaler::{Inputs, Params, Scaler},
};

/// Fault injection (`--chaos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Chaos {
    /// SIGKILL a random replica every `--chaos-interval` on average (each pause drawn
    /// between half and one and a half of it).
    KillReplica,
    /// Delay every delivery by 200 ms.
    Slow,
    /// Fail every second publish with a 500 (the function's outbox relay retries it).
    DropPublish,
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) state_dir: PathBuf,
    /// The store of every replica (`--store`); each function's SQLite file when `None`.
    pub(crate) store: Option<String>,
    pub(crate) start_timeout: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) chaos: Vec<Chaos>,
    pub(crate) chaos_interval: Duration,
    /// The gateway's URL, given to replicas (`ZEROFN_GATEWAY_URL`) so a function can call another.
    pub(crate) gateway_url: String,
}

/// A function the engine runs.
#[derive(Debug)]
pub(crate) struct FunctionSpec {
    pub(crate) manifest: Manifest,
    pub(crate) binary: PathBuf,
}

/// Counters for `zerofn status`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) processed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) cold_starts: AtomicU64,
    pub(crate) last_cold_start_ms: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) requests: AtomicU64,
}

#[derive(Debug, Default)]
struct FnState {
    replicas: Vec<Arc<Replica>>,
    starting: u32,
    next_id: u64,
    desired: u32,
    /// Why `desired` is what it is (`zerofn status`).
    reason: String,
    scaler: Scaler,
    /// Consecutive start failures (crash-loop back-off) and the last reason.
    failures: u32,
    last_failure: Option<(Instant, String)>,
}

/// One function: its manifest, binary, replicas and counters.
#[derive(Debug)]
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) manifest: Manifest,
    binary: PathBuf,
    pub(crate) sidecar_port: u16,
    /// Subscribed topics, plus `async.{name}` for an HTTP function.
    pub(crate) topics: Vec<String>,
    /// Index of each topic's partition 0 among all the function's partitions (for assignment).
    first_partition: BTreeMap<String, usize>,
    st: Mutex<FnState>,
    wake: Notify,
    /// Bumped whenever the replica set changes or a start fails.
    changed: watch::Sender<u64>,
    pub(crate) stats: Stats,
    /// HTTP requests queued at the gateway or in flight.
    demand: AtomicU64,
    /// Start failures so far (a waiting request compares before and after).
    failed_starts: AtomicU64,
}

/// The topic HTTP requests wait on when invoked asynchronously.
pub(crate) fn async_topic(function: &str) -> String {
    format!("async.{function}")
}

/// The engine's topic of `function`'s due jobs: each record is a `POST /job/{name}` to replay
/// against a replica, so a due job wakes its function from zero like any lag.
pub(crate) fn jobs_topic(function: &str) -> String {
    format!("jobs.{function}")
}

/// Whether records of `topic` are HTTP requests replayed against `function`'s replicas (its
/// asynchronous invocations and its due jobs) rather than events for a subscription.
pub(crate) fn is_replayed(function: &str, topic: &str) -> bool {
    topic == async_topic(function) || topic == jobs_topic(function)
}

/// Under the state dir: one pidfile per running replica.
pub(crate) const PID_DIR: &str = "replicas";

/// Work being sent to a replica; the replica is not stopped while one exists.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) replica: Arc<Replica>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request at the gateway counts as demand until dropped.
#[derive(Debug)]
pub(crate) struct Demand(Arc<Function>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.demand.fetch_sub(1, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// Why the gateway could not get a replica.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// The function could not start (the reason).
    StartFailed(String),
    /// No replica became ready in time.
    Timeout(Duration),
}

impl Function {
    /// `log` already has every topic of the function (their partition counts are fixed).
    pub(crate) fn new(spec: FunctionSpec, sidecar_port: u16, log: &Log) -> Function {
        let name = spec.manifest.name.clone();
        let mut topics: Vec<String> = spec
            .manifest
            .subscriptions
            .iter()
            .map(|s| s.topic.clone())
            .collect();
        if spec.manifest.http.is_some() {
            topics.push(async_topic(&name));
        }
        topics.push(jobs_topic(&name));
        // An event function records what is dead-lettered raw (as under Dapr, where it
        // subscribes to its own dead-letter topic).
        if spec.manifest.dead_letter_pubsub().is_some() {
            topics.push(spec.manifest.delivery.dead_letter_topic.clone());
        }
        topics.dedup();
        let counts = log.topics();
        let mut first_partition = BTreeMap::new();
        let mut next = 0usize;
        for t in &topics {
            first_partition.insert(t.clone(), next);
            next += counts.get(t).copied().unwrap_or(1) as usize;
        }
        Function {
            first_partition,
            name,
            manifest: spec.manifest,
            binary: spec.binary,
            sidecar_port,
            topics,
            st: Mutex::default(),
            wake: Notify::new(),
            changed: watch::channel(0).0,
            stats: Stats::default(),
            demand: AtomicU64::new(0),
            failed_starts: AtomicU64::new(0),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FnState> {
        self.st
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wakes when replicas come, go or fail to start.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wake the scaler now (a record landed, a request arrived).
    pub(crate) fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Pub/sub component names this function may publish to.
    pub(crate) fn pubsubs(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .manifest
            .subscriptions
            .iter()
            .map(|s| s.pubsub.clone())
            .chain(self.manifest.publishes.iter().map(|p| p.pubsub.clone()))
            .chain(["kafka-pubsub".to_string()])
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The sidecar published to `topic`.
    pub(crate) fn published(&self, topic: &str) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        if topic == self.manifest.delivery.dead_letter_topic {
            self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The replica that owns partition `partition` of `topic`: partitions of all the
    /// function's topics, in order, dealt round-robin over the serving replicas (rebalanced
    /// whenever the set changes; one delivery per partition at a time, so order holds).
    pub(crate) fn pick_partition(&self, topic: &str, partition: u32) -> Option<Lease> {
        let index = self.first_partition.get(topic)? + partition as usize;
        let st = self.st();
        let serving: Vec<&Arc<Replica>> = st.replicas.iter().filter(|r| r.serving()).collect();
        if serving.is_empty() {
            return None;
        }
        let replica = serving[index % serving.len()].clone();
        replica.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(Lease { replica })
    }

    /// The serving replica with the fewest requests in flight.
    fn pick_least_loaded(&self) -> Option<Lease> {
        let st = self.st();
        let replica = st
            .replicas
            .iter()
            .filter(|r| r.serving())
            .min_by_key(|r| r.in_flight.load(Ordering::SeqCst))?
            .clone();
        replica.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(Lease { replica })
    }

    /// Count a gateway request as demand (it scales the function from zero).
    pub(crate) fn demand(self: &Arc<Self>) -> Demand {
        self.demand.fetch_add(1, Ordering::SeqCst);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Demand(self.clone())
    }

    /// A replica for an HTTP request, holding the caller while the first one starts (like
    /// Knative's activator): fails only if a start fails or `timeout` passes.
    pub(crate) async fn replica_for_request(
        &self,
        timeout: Duration,
    ) -> Result<Lease, Unavailable> {
        let deadline = tokio::time::Instant::now() + timeout;
        let failures_before = self.failed_starts.load(Ordering::SeqCst);
        let mut changed = self.watch();
        loop {
            if let Some(lease) = self.pick_least_loaded() {
                return Ok(lease);
            }
            if self.failed_starts.load(Ordering::SeqCst) > failures_before {
                let st = self.st();
                if st.starting == 0 && st.replicas.is_empty() {
                    let reason = st
                        .last_failure
                        .as_ref()
                        .map(|(_, r)| r.clone())
                        .unwrap_or_default();
                    return Err(Unavailable::StartFailed(reason));
                }
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(deadline) => return Err(Unavailable::Timeout(timeout)),
            }
        }
    }

    /// What `zerofn status` shows.
    pub(crate) fn status(&self, log: &Log) -> Value {
        let lags = log.lags(&self.name, &self.topics);
        let mut by_topic: BTreeMap<String, i64> = BTreeMap::new();
        for (t, _, l) in &lags {
            *by_topic.entry(t.clone()).or_default() += l;
        }
        let st = self.st();
        json!({
            "name": self.name,
            "kind": match (self.manifest.http.is_some(), self.manifest.subscriptions.is_empty()) {
                (true, true) => "http",
                (true, false) => "http+events",
                (false, true) if !self.manifest.schedules.is_empty() => "scheduled",
                _ => "events",
            },
            "replicas": st.replicas.iter().filter(|r| r.serving()).count(),
            "pids": st.replicas.iter().filter(|r| r.serving()).filter_map(|r| r.pid()).collect::<Vec<_>>(),
            "starting": st.starting,
            "desired": st.desired,
            "reason": st.reason,
            "lag": by_topic,
            "total_lag": lags.iter().map(|l| l.2).sum::<i64>(),
            "processed": self.stats.processed.load(Ordering::Relaxed),
            "retries": self.stats.retries.load(Ordering::Relaxed),
            "dead_letters": self.stats.dead_letters.load(Ordering::Relaxed),
            "published": self.stats.published.load(Ordering::Relaxed),
            "requests": self.stats.requests.load(Ordering::Relaxed),
            "cold_starts": self.stats.cold_starts.load(Ordering::Relaxed),
            "last_cold_start_ms": match self.stats.cold_starts.load(Ordering::Relaxed) {
                0 => Value::Null,
                _ => self.stats.last_cold_start_ms.load(Ordering::Relaxed).into(),
            },
            "last_start_error": st.last_failure.as_ref().map(|(_, r)| r.clone()),
        })
    }
}

/// The engine: the log, the functions and their loops.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) log: Arc<Log>,
    pub(crate) functions: BTreeMap<String, Arc<Function>>,
    pub(crate) opts: Options,
    pub(crate) client: reqwest::Client,
    /// Deliveries, scaling decisions and replica counts, for the dashboard.
    pub(crate) activity: Activity,
    stop: watch::Sender<bool>,
}

impl Engine {
    pub(crate) fn new(
        log: Arc<Log>,
        functions: BTreeMap<String, Arc<Function>>,
        opts: Options,
    ) -> Arc<Engine> {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Arc::new(Engine {
            log,
            functions,
            opts,
            client,
            activity: Activity::default(),
            stop: watch::channel(false).0,
        })
    }

    /// Resolves when the engine is stopping.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Run one function's scaler until the engine stops.
    pub(crate) async fn scale_loop(self: Arc<Self>, f: Arc<Function>) {
        let mut stop = self.stopping();
        let mut appended = self.log.watch();
        let s = &f.manifest.scaling;
        let params = Params {
            min: s.min,
            max: s.max,
            lag_threshold: s.lag_threshold,
            activation_lag_threshold: s.activation_lag_threshold,
            cooldown: s.cooldown,
        };
        let partitions: u32 = f
            .manifest
            .subscriptions
            .iter()
            .map(|sub| self.log.topics().get(&sub.topic).copied().unwrap_or(1))
            .sum();
        let mut backlog = BacklogWatch::default();
        loop {
            let lags = self.log.lags(&f.name, &f.topics);
            let total: i64 = lags.iter().map(|l| l.2).sum();
            let total = u64::try_from(total).unwrap_or(0);
            let jobs_topic = jobs_topic(&f.name);
            let jobs_due: i64 = lags.iter().filter(|l| l.0 == jobs_topic).map(|l| l.2).sum();
            let jobs_due = u64::try_from(jobs_due).unwrap_or(0);
            let (idle, serving) = {
                let st = f.st();
                let serving = st.replicas.iter().filter(|r| r.serving()).count() as u32;
                (total == 0 && st.starting == 0 && serving == 0, serving)
            };
            self.activity.replicas(&f.name, serving);
            // At zero, outputs a dead replica left unsent count as work: only a replica's
            // relay (or its flush on the way out) publishes them.
            let unsent = idle && backlog.pending(&self.store_of(&f), &f.name).await;
            let inputs = {
                let st = f.st();
                Inputs {
                    total_lag: total + u64::from(unsent),
                    partitions: (partitions > 0).then_some(partitions),
                    http: f
                        .manifest
                        .http
                        .as_ref()
                        .map(|h| (f.demand.load(Ordering::SeqCst), h.concurrency)),
                    current: st.replicas.iter().filter(|r| r.serving()).count() as u32
                        + st.starting,
                }
            };
            let desired = f.st().scaler.desired(params, &inputs, Instant::now());
            f.st().reason = super::scaler::reason(
                desired,
                params.min,
                total.saturating_sub(jobs_due),
                jobs_due,
                inputs.http.map_or(0, |h| h.0),
                unsent,
            );
            self.apply(&f, desired, inputs.current);
            tokio::select! {
                () = f.wake.notified() => {}
                _ = appended.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn apply(self: &Arc<Self>, f: &Arc<Function>, desired: u32, current: u32) {
        if self.is_stopping() {
            return;
        }
        let mut st = f.st();
        if st.desired != desired {
            tracing::info!(function = %f.name, from = current, to = desired, reason = %st.reason, "scaling");
            self.activity
                .decided(&f.name, st.desired, desired, &st.reason);
            st.desired = desired;
        }
        if desired > current {
            if let Some((at, _)) = &st.last_failure {
                let backoff = Duration::from_secs(1)
                    * 2u32.saturating_pow(st.failures.saturating_sub(1).min(5));
                if at.elapsed() < backoff {
                    return;
                }
            }
            for _ in current..desired {
                st.starting += 1;
                st.next_id += 1;
                let id = st.next_id;
                tokio::spawn(self.clone().start_replica(f.clone(), id));
            }
        } else if desired < current {
            let mut serving: Vec<Arc<Replica>> = st
                .replicas
                .iter()
                .filter(|r| r.serving())
                .cloned()
                .collect();
            serving.sort_by_key(|r| std::cmp::Reverse(r.id));
            for r in serving.into_iter().take((current - desired) as usize) {
                r.retiring.store(true, Ordering::SeqCst);
                tokio::spawn(self.clone().retire(f.clone(), r));
            }
            drop(st);
            f.bump();
        }
    }

    /// Where `f`'s replicas keep their data (`ZEROFN_DATA_DIR`).
    fn data_dir(&self, f: &Function) -> PathBuf {
        self.opts.state_dir.join("functions").join(&f.name)
    }

    /// The store `f`'s replicas use: `--store`, else the function's SQLite file.
    fn store_of(&self, f: &Function) -> String {
        self.opts
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir(f).join("zerofn.db").display()))
    }

    async fn start_replica(self: Arc<Self>, f: Arc<Function>, id: u64) {
        let began = Instant::now();
        let data_dir = self.data_dir(&f);
        let pid_dir = self.opts.state_dir.join(PID_DIR);
        let store = self.store_of(&f);
        let spec = Spec {
            store: &store,
            gateway_url: &self.opts.gateway_url,
            pid_dir: &pid_dir,
            function: &f.name,
            binary: &f.binary,
            id,
            sidecar_port: f.sidecar_port,
            data_dir: &data_dir,
            start_timeout: self.opts.start_timeout,
        };
        let result = Replica::start(spec, &self.client).await;
        let mut st = f.st();
        st.starting -= 1;
        match result {
            Ok(replica) => {
                let replica = Arc::new(replica);
                let ms = began.elapsed().as_millis() as u64;
                // A cold start: the first replica ready while none was serving.
                if !st.replicas.iter().any(|r| r.serving()) {
                    f.stats.cold_starts.fetch_add(1, Ordering::Relaxed);
                    f.stats.last_cold_start_ms.store(ms, Ordering::Relaxed);
                    tracing::info!(function = %f.name, replica = id, cold_start_ms = ms, "cold start: replica ready");
                } else {
                    tracing::info!(function = %f.name, replica = id, start_ms = ms, "replica ready");
                }
                st.failures = 0;
                st.last_failure = None;
                st.replicas.push(replica.clone());
                drop(st);
                tokio::spawn(self.clone().supervise(f.clone(), replica));
            }
            Err(e) => {
                tracing::error!(function = %f.name, replica = id, reason = %e, "replica did not start");
                st.failures += 1;
                st.last_failure = Some((Instant::now(), e.0));
                drop(st);
                f.failed_starts.fetch_add(1, Ordering::SeqCst);
            }
        }
        f.bump();
        f.nudge();
    }

    /// Wait for a replica's process to exit and take it out of the set.
    async fn supervise(self: Arc<Self>, f: Arc<Function>, replica: Arc<Replica>) {
        let status = match replica.take_child() {
            Some(mut child) => child.wait().await.ok(),
            None => None,
        };
        let expected = !replica.serving();
        f.st().replicas.retain(|r| r.id != replica.id);
        crate::dev::replica::forget(&self.opts.state_dir.join(PID_DIR), replica.pid());
        replica.exited.send_replace(true);
        if expected {
            tracing::info!(function = %f.name, replica = replica.id, status = ?status, "replica stopped");
        } else {
            tracing::warn!(function = %f.name, replica = replica.id, status = ?status, "replica exited unexpectedly; its partitions move to the others");
        }
        f.bump();
        f.nudge();
    }

    /// Scale-down: out of rotation, wait for the work sent to it, SIGTERM (the runtime drains),
    /// SIGKILL only after the grace period.
    async fn retire(self: Arc<Self>, f: Arc<Function>, replica: Arc<Replica>) {
        let deadline = Instant::now() + self.opts.stop_grace;
        while replica.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(function = %f.name, replica = replica.id, "stopping replica (SIGTERM)");
        replica.sigterm();
        let mut exited = replica.exited.subscribe();
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        if tokio::time::timeout(left, exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            tracing::warn!(function = %f.name, replica = replica.id, "drain outlasted the grace period: SIGKILL");
            replica.sigkill();
        }
    }

    /// Fire due jobs: each becomes one record on its function's jobs topic, appended in the
    /// same transaction that moves the job to its next due time (or removes it), so a trigger
    /// is fired at most once per due time, and a job due while the engine was down fires at
    /// start.
    pub(crate) async fn jobs_loop(self: Arc<Self>) {
        let mut stop = self.stopping();
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            match self.log.due_jobs(now).await {
                Ok(due) => {
                    for job in due {
                        self.fire(&job, now).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the due jobs"),
            }
            // Sleep until the soonest job (at most a second: a job scheduled meanwhile wakes
            // the loop at once).
            let wait = match self.log.next_job_due().await {
                Ok(Some(due)) => Duration::from_millis(
                    u64::try_from(due - chrono::Utc::now().timestamp_millis()).unwrap_or(0),
                )
                .min(Duration::from_secs(1)),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.log.jobs_changed().notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn fire(&self, job: &crate::dev::log::Job, now: i64) {
        if !self.functions.contains_key(&job.function) {
            return; // a job of a function this engine does not run waits for one that does
        }
        let next = super::jobs::next_due(&job.spec, job.repeats_left, job.due, now);
        let body = match &job.spec.data {
            Value::Null => Vec::new(),
            data => serde_json::to_vec(data).unwrap_or_default(),
        };
        let request = json!({
            "specversion": "1.0",
            "id": format!("job:{}/{}@{}", job.function, job.name, job.due),
            "source": "/zerofn/jobs",
            "type": "zerofn.job.due",
            "data": {
                "method": "POST",
                "path": format!("/job/{}", job.name),
                "headers": {"content-type": "application/json"},
                "body_base64": base64::engine::general_purpose::STANDARD.encode(&body),
            },
        });
        let record = NewRecord {
            topic: jobs_topic(&job.function),
            key: Some(job.name.clone()),
            value: serde_json::to_vec(&request).unwrap_or_default(),
            headers: BTreeMap::new(),
        };
        match self.log.fire_job(job, next, record).await {
            Ok(true) => {
                tracing::info!(function = %job.function, job = %job.name, due_ms = job.due, late_ms = now - job.due, "job due");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(function = %job.function, job = %job.name, error = %e, "cannot fire a job")
            }
        }
    }

    /// Chaos `kill-replica`: SIGKILL a random replica at random pauses averaging the interval.
    /// A fixed period would phase-lock with the runtime's lease (6 s, a multiple of 1 s): the
    /// delivery that takes a killed event over would be struck by a kill at the same point of
    /// its handling again and again, which real crashes never do.
    pub(crate) async fn chaos_loop(self: Arc<Self>) {
        let mut stop = self.stopping();
        loop {
            let pause = chaos_pause(self.opts.chaos_interval, random_u64());
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            let all: Vec<(Arc<Function>, Arc<Replica>)> = self
                .functions
                .values()
                .flat_map(|f| {
                    f.st()
                        .replicas
                        .iter()
                        .filter(|r| r.serving())
                        .map(|r| (f.clone(), r.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            if all.is_empty() {
                continue;
            }
            let (f, r) = &all[usize::try_from(random_u64() % all.len() as u64).unwrap_or(0)];
            tracing::warn!(function = %f.name, replica = r.id, "chaos: SIGKILL");
            r.sigkill();
        }
    }

    /// Stop: consumers finish the delivery they are in, then every replica drains.
    pub(crate) async fn shutdown(self: &Arc<Self>) {
        self.stop.send_replace(true);
        let mut retiring = Vec::new();
        for f in self.functions.values() {
            let replicas: Vec<Arc<Replica>> = f.st().replicas.clone();
            for r in replicas {
                r.retiring.store(true, Ordering::SeqCst);
                retiring.push(tokio::spawn(self.clone().retire(f.clone(), r)));
            }
            f.bump();
        }
        for r in retiring {
            let _ = r.await;
        }
    }

    /// Every function's status.
    pub(crate) fn status(&self) -> Value {
        json!({
            "functions": self.functions.values().map(|f| f.status(&self.log)).collect::<Vec<_>>(),
            "topics": self.log.topics(),
            "log": if self.log.on_kafka() { "kafka" } else { "sqlite" },
            "retention_dropped_unread": self.log.dropped_unread(),
        })
    }
}

/// A function's outbox backlog, looked at every [`BACKLOG_POLL`] while the function is at zero.
#[derive(Default)]
struct BacklogWatch {
    backlog: Option<zerofn::backlog::Backlog>,
    checked: Option<Instant>,
    pending: bool,
}

/// How often a function at zero is checked for outputs left unsent.
const BACKLOG_POLL: Duration = Duration::from_secs(2);

impl BacklogWatch {
    async fn pending(&mut self, store: &str, function: &str) -> bool {
        if self.checked.is_some_and(|at| at.elapsed() < BACKLOG_POLL) {
            return self.pending;
        }
        self.checked = Some(Instant::now());
        // A SQLite file no replica has created yet holds nothing: do not create it here.
        if let Some(path) = store.strip_prefix("sqlite:")
            && !std::path::Path::new(path).exists()
        {
            self.pending = false;
            return false;
        }
        if self.backlog.is_none() {
            match zerofn::backlog::Backlog::open(store, function).await {
                Ok(b) => self.backlog = Some(b),
                Err(e) => {
                    tracing::debug!(function, error = %e, "cannot look at the outbox backlog");
                    return false;
                }
            }
        }
        self.pending = match &self.backlog {
            Some(b) => b.pending().await.unwrap_or_else(|e| {
                tracing::debug!(function, error = %e, "cannot look at the outbox backlog");
                false
            }),
            None => false,
        };
        if self.pending {
            tracing::info!(
                function,
                "outputs left unsent at zero: waking a replica to publish them"
            );
        }
        self.pending
    }
}

/// A pause of `interval × [0.5, 1.5)`, `r` a uniformly random number.
fn chaos_pause(interval: Duration, r: u64) -> Duration {
    let nanos = interval.as_nanos();
    let drawn = nanos / 2 + ((nanos * u128::from(r)) >> 64);
    Duration::from_nanos(u64::try_from(drawn).unwrap_or(u64::MAX))
}

/// 64 random bits (from the OS, through a v4 UUID).
fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_pauses_spread_around_the_interval() {
        let second = Duration::from_secs(1);
        assert_eq!(chaos_pause(second, 0), Duration::from_millis(500));
        assert_eq!(chaos_pause(second, 1 << 63), Duration::from_millis(1000));
        let longest = chaos_pause(second, u64::MAX);
        assert!(longest < Duration::from_millis(1500) && longest > Duration::from_millis(1499));
        // Drawn pauses differ (a fixed period phase-locks with the lease).
        let drawn: std::collections::HashSet<Duration> =
            (0..16).map(|_| chaos_pause(second, random_u64())).collect();
        assert!(drawn.len() > 1, "{drawn:?}");
    }
}
