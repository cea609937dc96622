//! `function.toml`: a function's triggers, the events it publishes, its scaling and its
//! delivery policy. Embedded into the binary at build time by [`crate::manifest!`].

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::parse_duration;

/// Embed the calling crate's `function.toml` (next to its `Cargo.toml`) with its package
/// name and version. Pass the result to [`crate::run`].
#[macro_export]
macro_rules! manifest {
    () => {
        $crate::ManifestSource::new(
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/function.toml")),
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        )
    };
}

/// The unparsed text of a `function.toml` plus the crate it belongs to, and the function's
/// own database migrations, if it has tables.
#[derive(Clone, Copy, Debug)]
pub struct ManifestSource {
    text: &'static str,
    crate_name: &'static str,
    crate_version: &'static str,
    migrations: Option<&'static sqlx::migrate::Migrator>,
    routes: Option<OwnRoutes>,
}

/// Builds a function's own HTTP routes (e.g. a read endpoint) from the SQL store's pool, when
/// the store is SQL. They are served next to the runtime's on `$PORT`.
pub type Routes = fn(Option<sqlx::AnyPool>) -> axum::Router;

/// Builds the own routes of a function that declares `[store] sql = true` from its SQL pool,
/// which it always has.
pub type SqlRoutes = fn(sqlx::AnyPool) -> axum::Router;

#[derive(Clone, Copy, Debug)]
enum OwnRoutes {
    Any(Routes),
    Sql(SqlRoutes),
}

impl ManifestSource {
    /// Wrap a manifest's text; normally called through [`crate::manifest!`].
    pub const fn new(
        text: &'static str,
        crate_name: &'static str,
        crate_version: &'static str,
    ) -> Self {
        Self {
            text,
            crate_name,
            crate_version,
            migrations: None,
            routes: None,
        }
    }

    /// The function's own HTTP routes (reads, verification endpoints). Their paths must not
    /// collide with the runtime's (`/`, `/healthz`, `/readyz`, `/dapr/subscribe`, the
    /// subscription routes).
    pub const fn routes(mut self, routes: Routes) -> Self {
        self.routes = Some(OwnRoutes::Any(routes));
        self
    }

    /// The own routes of a function with `[store] sql = true`, built from its SQL pool (no
    /// `Option` to check: the runtime refuses to start such a function without SQL).
    pub const fn sql_routes(mut self, routes: SqlRoutes) -> Self {
        self.routes = Some(OwnRoutes::Sql(routes));
        self
    }

    /// The function's own routes on the store's `pool`, if it has any; an error that says what
    /// to declare when SQL routes meet a store without SQL.
    pub(crate) fn own_routes(
        &self,
        name: &str,
        pool: Option<sqlx::AnyPool>,
    ) -> Result<Option<axum::Router>, String> {
        match (self.routes, pool) {
            (None, _) => Ok(None),
            (Some(OwnRoutes::Any(f)), pool) => Ok(Some(f(pool))),
            (Some(OwnRoutes::Sql(f)), Some(pool)) => Ok(Some(f(pool))),
            (Some(OwnRoutes::Sql(_)), None) => Err(format!(
                "function {name} serves SQL routes (ManifestSource::sql_routes) but its store has no \
                 SQL: declare [store] sql = true in function.toml and set ZEROFN_STORE to sqlite:… or \
                 postgres://…"
            )),
        }
    }

    /// The function's own migrations (`static M: Migrator = sqlx::migrate!();`), run on the SQL
    /// store after the runtime's, with their own history table. Write portable SQL: the same
    /// files run on SQLite and PostgreSQL.
    pub const fn migrations(mut self, migrations: &'static sqlx::migrate::Migrator) -> Self {
        self.migrations = Some(migrations);
        self
    }

    pub(crate) fn function_migrations(&self) -> Option<&'static sqlx::migrate::Migrator> {
        self.migrations
    }

    /// Parse and check the manifest.
    pub fn parse(&self) -> Result<Manifest, ManifestError> {
        Manifest::parse(self.text, self.crate_name, self.crate_version)
    }
}

/// A `function.toml` that cannot be used: the key, its value and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid function.toml: {key} = {value}: {reason}")]
pub struct ManifestError {
    /// Dotted path of the offending key (`scaling.max`), or `(file)` for syntax errors.
    pub key: String,
    /// The value as written (empty when missing).
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl ManifestError {
    fn new(key: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    function: RawFunction,
    #[serde(default)]
    subscriptions: Vec<RawSubscription>,
    #[serde(default)]
    publishes: Vec<RawPublish>,
    #[serde(default)]
    jobs: Vec<RawJob>,
    #[serde(default)]
    schedules: Vec<RawSchedule>,
    #[serde(default)]
    scaling: RawScaling,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    idempotency: RawIdempotency,
    http: Option<RawHttp>,
    #[serde(default)]
    store: RawStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    sql: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_concurrency")]
    concurrency: u32,
    #[serde(default = "default_http_timeout")]
    timeout: String,
}

fn default_concurrency() -> u32 {
    10
}
fn default_http_timeout() -> String {
    "60s".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "default_pubsub")]
    pubsub: String,
}

/// The pub/sub component a subscription uses unless it names another (and the one the gateway
/// publishes to).
pub const DEFAULT_PUBSUB: &str = "kafka-pubsub";

fn default_pubsub() -> String {
    DEFAULT_PUBSUB.into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    topic: String,
    pubsub: Option<String>,
    route: Option<String>,
    types: Option<Vec<String>>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    bulk: Option<RawBulk>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBulk {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_bulk_messages")]
    max_messages: u32,
    #[serde(default = "default_bulk_await_ms")]
    max_await_ms: u32,
}

fn yes() -> bool {
    true
}
fn default_bulk_messages() -> u32 {
    100
}
fn default_bulk_await_ms() -> u32 {
    1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    #[serde(rename = "type")]
    ty: String,
    topic: Option<String>,
    pubsub: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    cron: String,
    #[serde(rename = "type", default = "default_schedule_type")]
    ty: String,
    #[serde(default)]
    data: toml::Table,
}

fn default_schedule_type() -> String {
    SCHEDULE_EVENT_TYPE.into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScaling {
    #[serde(default)]
    min: u32,
    #[serde(default = "default_max")]
    max: u32,
    #[serde(default = "default_lag_threshold")]
    lag_threshold: u64,
    #[serde(default)]
    activation_lag_threshold: u64,
    #[serde(default = "default_cooldown")]
    cooldown: String,
    #[serde(default)]
    push: bool,
}

impl Default for RawScaling {
    fn default() -> Self {
        Self {
            min: 0,
            max: default_max(),
            lag_threshold: default_lag_threshold(),
            activation_lag_threshold: 0,
            cooldown: default_cooldown(),
            push: false,
        }
    }
}

fn default_max() -> u32 {
    4
}
fn default_lag_threshold() -> u64 {
    100
}
fn default_cooldown() -> String {
    "120s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    dead_letter_topic: Option<String>,
    #[serde(default = "default_backoff_initial")]
    backoff_initial: String,
    #[serde(default = "default_backoff_max")]
    backoff_max: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            dead_letter_topic: None,
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_backoff_initial() -> String {
    "1s".into()
}
fn default_backoff_max() -> String {
    "60s".into()
}

/// A parsed, checked `function.toml`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Manifest {
    /// The function's name: its Dapr app id, consumer group and Kubernetes name.
    pub name: String,
    /// The crate version, used in published events and dead-letter records.
    pub version: String,
    /// One line about what the function does.
    pub description: String,
    /// The topics the function consumes.
    pub subscriptions: Vec<Subscription>,
    /// The event types the function may emit and where they go.
    pub publishes: Vec<Publish>,
    /// The event types the function schedules for itself as jobs (`[[jobs]]`): delivered back
    /// to it at their due time (`Emit::at`), through the Dapr Jobs API.
    pub jobs: Vec<String>,
    /// Periodic triggers (`[[schedules]]`): cron schedules registered with the Dapr Jobs API
    /// at start, each trigger delivered to the handler as an event.
    pub schedules: Vec<DeclaredSchedule>,
    /// The default pub/sub component (`[function] pubsub`).
    pub pubsub: String,
    /// Scaling bounds and the KEDA lag arithmetic's parameters.
    pub scaling: Scaling,
    /// Retry and dead-letter policy.
    pub delivery: Delivery,
    /// How an event's idempotency key is formed.
    pub idempotency_key: KeyStrategy,
    /// `[store] sql = true`: the function keeps its own data in SQL (the delivery's
    /// transaction, `zerofn::Write`), so it refuses to start on a store without SQL, and
    /// `zerofn::testing` gives it a temporary SQLite database.
    pub needs_sql: bool,
    /// Present when the function serves HTTP requests routed by the gateway
    /// (`/fn/{name}/...`): its own routes ([`ManifestSource::routes`]).
    pub http: Option<Http>,
}

/// HTTP trigger settings (`[http]` in `function.toml`; Knative's concurrency scaling).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http {
    /// Target concurrent requests per replica: replicas = ceil(in flight and queued / this).
    pub concurrency: u32,
    /// Longest a request may take, including a cold start (504 after).
    pub timeout: Duration,
}

/// The event type of a schedule's triggers unless `[[schedules]] type` names another.
pub const SCHEDULE_EVENT_TYPE: &str = "zerofn.schedule.due";

/// The prefix of the Dapr job that carries a declared schedule: `schedule-<name>`.
pub const SCHEDULE_JOB_PREFIX: &str = "schedule-";

/// A periodic trigger declared under `[[schedules]]` in `function.toml`.
///
/// Each trigger is delivered to the handler as an event of type [`DeclaredSchedule::ty`]
/// whose id names the cron instant it belongs to, so a trigger delivered twice (a retry, a
/// second replica) is applied once, and consecutive triggers are different events.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeclaredSchedule {
    /// The schedule's name (`[a-z0-9-]`, unique in the function).
    pub name: String,
    /// The cron expression as written: six fields with seconds, or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly` (UTC).
    pub cron: String,
    /// The event type the handler receives (default `zerofn.schedule.due`).
    pub ty: String,
    /// Extra fields of every trigger's `data`, next to `schedule` and `scheduled_at`.
    pub data: serde_json::Map<String, serde_json::Value>,
    parsed: crate::schedule::Cron,
}

impl DeclaredSchedule {
    /// The name of the Dapr job that carries it.
    pub fn job_name(&self) -> String {
        format!("{SCHEDULE_JOB_PREFIX}{}", self.name)
    }

    /// The body of the Jobs API request that registers it (`POST /v1.0-alpha1/jobs/{name}`):
    /// the runtime sends it at start and the local engine writes the same, so registering an
    /// unchanged schedule again changes nothing.
    pub fn job_request(&self) -> serde_json::Value {
        serde_json::json!({
            "schedule": self.cron,
            "data": {"schedule": self.name},
            "overwrite": true,
        })
    }

    /// The cron instant (Unix ms) a trigger delivered at `at_ms` belongs to: the latest at or
    /// before it. A delivery retried past the next instant counts as that one.
    pub fn instant(&self, at_ms: i64) -> Option<i64> {
        self.parsed.latest_at_or_before(at_ms)
    }
}

/// How the idempotency key of an event is formed (`[idempotency] key` in `function.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStrategy {
    /// `source_id` (default): the CloudEvent `source` + `id`.
    SourceId,
    /// `kafka`: topic/partition/offset as Dapr forwards them (stable even when Dapr's
    /// envelope id is not); falls back to `source` + `id` where there are none.
    Kafka,
    /// `data:<JSON pointer>`: a business key in `data`, e.g. `data:/transaction_id`.
    Data(String),
}

/// One consumed topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscription {
    /// Dapr pub/sub component name.
    pub pubsub: String,
    /// Topic name.
    pub topic: String,
    /// HTTP path Dapr delivers to.
    pub route: String,
    /// CloudEvent types accepted on this topic.
    pub types: Vec<String>,
    /// Subscription metadata passed to Dapr (e.g. `rawPayload`).
    pub metadata: BTreeMap<String, String>,
    /// Bulk delivery, when enabled.
    pub bulk: Option<Bulk>,
}

/// Dapr bulk-subscribe settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bulk {
    /// Most events in one bulk delivery.
    pub max_messages: u32,
    /// Longest Dapr waits to fill a bulk delivery, in milliseconds.
    pub max_await_ms: u32,
}

/// One emitted event type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publish {
    /// CloudEvent type.
    pub ty: String,
    /// Topic it is published to (default: the type).
    pub topic: String,
    /// Dapr pub/sub component name.
    pub pubsub: String,
}

/// Scaling parameters (KEDA's kafka scaler semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scaling {
    /// Replicas when idle (0 = scale to zero).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Target lag per replica.
    pub lag_threshold: u64,
    /// Activate from zero when total lag exceeds this.
    pub activation_lag_threshold: u64,
    /// Idle time before scaling to zero.
    pub cooldown: Duration,
    /// In a cluster, wake through `zerofn scaler` (KEDA's `external-push` trigger: within a
    /// second of an event) instead of KEDA's polling `kafka` trigger.
    pub push: bool,
}

/// Retry and dead-letter policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Attempts before a retryable failure is dead-lettered.
    pub max_attempts: u32,
    /// Topic that receives dead-letter records.
    pub dead_letter_topic: String,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

/// Where the function receives its own dead-letter topic (Dapr's raw dead letters and the
/// runtime's forwarded records), to keep every dead letter in its store.
pub const DEAD_LETTER_ROUTE: &str = "/_zerofn/dead-letters";

/// Routes the runtime serves itself; a subscription may not claim them.
const RESERVED_ROUTES: &[&str] = &[
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/dapr/subscribe",
    DEAD_LETTER_ROUTE,
];

impl Manifest {
    /// Parse `text` as the manifest of crate `crate_name` at `crate_version`.
    pub fn parse(text: &str, crate_name: &str, crate_version: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("(file, bytes {}..{})", s.start, s.end))
                .unwrap_or_else(|| "(file)".into());
            ManifestError::new(key, "", e.message().to_string())
        })?;
        let name = raw.function.name.unwrap_or_else(|| crate_name.to_string());
        if !is_dns_label(&name) {
            return Err(ManifestError::new(
                "function.name",
                &name,
                "must be a DNS label: lower-case letters, digits and '-', starting with a letter, at most 63 characters",
            ));
        }
        let pubsub = raw.function.pubsub;
        let mut subscriptions = Vec::new();
        for (i, s) in raw.subscriptions.into_iter().enumerate() {
            let key = |k: &str| format!("subscriptions[{i}].{k}");
            if s.topic.trim().is_empty() {
                return Err(ManifestError::new(key("topic"), "", "must not be empty"));
            }
            let route = s.route.unwrap_or_else(|| format!("/events/{}", s.topic));
            if !route.starts_with('/') || route.contains(char::is_whitespace) {
                return Err(ManifestError::new(
                    key("route"),
                    &route,
                    "must start with '/' and contain no spaces",
                ));
            }
            if RESERVED_ROUTES.contains(&route.as_str()) {
                return Err(ManifestError::new(
                    key("route"),
                    &route,
                    "is served by the runtime itself",
                ));
            }
            let types = s.types.unwrap_or_else(|| vec![s.topic.clone()]);
            if types.is_empty() {
                return Err(ManifestError::new(
                    key("types"),
                    "[]",
                    "must list at least one event type",
                ));
            }
            let bulk = match s.bulk {
                Some(b) if b.enabled => {
                    if b.max_messages == 0 {
                        return Err(ManifestError::new(
                            key("bulk.max_messages"),
                            0,
                            "must be at least 1",
                        ));
                    }
                    Some(Bulk {
                        max_messages: b.max_messages,
                        max_await_ms: b.max_await_ms,
                    })
                }
                _ => None,
            };
            subscriptions.push(Subscription {
                pubsub: s.pubsub.unwrap_or_else(|| pubsub.clone()),
                topic: s.topic,
                route,
                types,
                metadata: s.metadata,
                bulk,
            });
        }
        for (i, a) in subscriptions.iter().enumerate() {
            if subscriptions[..i].iter().any(|b| b.route == a.route) {
                return Err(ManifestError::new(
                    format!("subscriptions[{i}].route"),
                    &a.route,
                    "is used by an earlier subscription",
                ));
            }
        }
        let mut publishes: Vec<Publish> = Vec::new();
        for (i, p) in raw.publishes.into_iter().enumerate() {
            if publishes.iter().any(|q| q.ty == p.ty) {
                return Err(ManifestError::new(
                    format!("publishes[{i}].type"),
                    &p.ty,
                    "is declared twice",
                ));
            }
            publishes.push(Publish {
                topic: p.topic.unwrap_or_else(|| p.ty.clone()),
                pubsub: p.pubsub.unwrap_or_else(|| pubsub.clone()),
                ty: p.ty,
            });
        }
        let mut jobs: Vec<String> = Vec::new();
        for (i, j) in raw.jobs.into_iter().enumerate() {
            if jobs.contains(&j.ty) {
                return Err(ManifestError::new(
                    format!("jobs[{i}].type"),
                    &j.ty,
                    "is declared twice",
                ));
            }
            jobs.push(j.ty);
        }
        let schedules = parse_schedules(raw.schedules)?;
        let s = raw.scaling;
        if s.max == 0 {
            return Err(ManifestError::new(
                "scaling.max",
                s.max,
                "must be at least 1",
            ));
        }
        if s.min > s.max {
            return Err(ManifestError::new(
                "scaling.min",
                s.min,
                format!("must not exceed scaling.max ({})", s.max),
            ));
        }
        if s.lag_threshold == 0 {
            return Err(ManifestError::new(
                "scaling.lag_threshold",
                0,
                "must be greater than 0",
            ));
        }
        let scaling = Scaling {
            min: s.min,
            max: s.max,
            lag_threshold: s.lag_threshold,
            activation_lag_threshold: s.activation_lag_threshold,
            cooldown: manifest_duration("scaling.cooldown", &s.cooldown)?,
            push: s.push,
        };
        let d = raw.delivery;
        if d.max_attempts == 0 {
            return Err(ManifestError::new(
                "delivery.max_attempts",
                0,
                "must be at least 1",
            ));
        }
        let delivery = Delivery {
            max_attempts: d.max_attempts,
            dead_letter_topic: d
                .dead_letter_topic
                .unwrap_or_else(|| format!("deadletter.{name}")),
            backoff_initial: manifest_duration("delivery.backoff_initial", &d.backoff_initial)?,
            backoff_max: manifest_duration("delivery.backoff_max", &d.backoff_max)?,
        };
        let idempotency_key = match raw.idempotency.key.as_deref() {
            None | Some("source_id") => KeyStrategy::SourceId,
            Some("kafka") => KeyStrategy::Kafka,
            Some(k) if k.starts_with("data:/") => KeyStrategy::Data(k["data:".len()..].to_string()),
            Some(other) => {
                return Err(ManifestError::new(
                    "idempotency.key",
                    other,
                    "expected source_id, kafka or data:<JSON pointer> (e.g. data:/transaction_id)",
                ));
            }
        };
        let http = match raw.http {
            None => None,
            Some(h) if h.concurrency == 0 => {
                return Err(ManifestError::new(
                    "http.concurrency",
                    0,
                    "must be at least 1",
                ));
            }
            Some(h) => Some(Http {
                concurrency: h.concurrency,
                timeout: manifest_duration("http.timeout", &h.timeout)?,
            }),
        };
        if subscriptions.is_empty() && http.is_none() && schedules.is_empty() {
            return Err(ManifestError::new(
                "subscriptions",
                "[]",
                "a function needs at least one [[subscriptions]] entry, an [http] section or a \
                 [[schedules]] entry",
            ));
        }
        Ok(Manifest {
            http,
            idempotency_key,
            needs_sql: raw.store.sql,
            name,
            version: crate_version.to_string(),
            description: raw.function.description,
            subscriptions,
            publishes,
            jobs,
            schedules,
            pubsub,
            scaling,
            delivery,
        })
    }

    /// Every event type the function accepts, over all subscriptions.
    pub fn consumed_types(&self) -> impl Iterator<Item = &str> {
        self.subscriptions
            .iter()
            .flat_map(|s| s.types.iter().map(String::as_str))
    }

    /// Where events of type `ty` are published, if the function declares it.
    pub fn publish_for(&self, ty: &str) -> Option<&Publish> {
        self.publishes.iter().find(|p| p.ty == ty)
    }

    /// The body of `GET /dapr/subscribe`: Dapr's programmatic subscription list. An event
    /// function also subscribes to its own dead-letter topic (without a dead-letter topic of
    /// its own), so what Dapr dead-letters raw is recorded in the function's store too.
    pub fn dapr_subscriptions(&self) -> Vec<DaprSubscription> {
        let own = self.subscriptions.iter().map(|s| DaprSubscription {
            pubsubname: s.pubsub.clone(),
            topic: s.topic.clone(),
            routes: DaprRoutes {
                default: s.route.clone(),
            },
            dead_letter_topic: Some(self.delivery.dead_letter_topic.clone()),
            metadata: s.metadata.clone(),
            bulk_subscribe: s.bulk.map(|b| DaprBulkSubscribe {
                enabled: true,
                max_messages_count: b.max_messages,
                max_await_duration_ms: b.max_await_ms,
            }),
        });
        let dead_letters = self.dead_letter_pubsub().map(|pubsub| DaprSubscription {
            pubsubname: pubsub.to_string(),
            topic: self.delivery.dead_letter_topic.clone(),
            routes: DaprRoutes {
                default: DEAD_LETTER_ROUTE.to_string(),
            },
            dead_letter_topic: None,
            metadata: BTreeMap::new(),
            bulk_subscribe: None,
        });
        own.chain(dead_letters).collect()
    }

    /// The pub/sub component of the function's dead-letter topic: its first subscription's, or
    /// the default one for a function with schedules only (`None` for an HTTP function, which
    /// has no deliveries to dead-letter).
    pub fn dead_letter_pubsub(&self) -> Option<&str> {
        match self.subscriptions.first() {
            Some(s) => Some(s.pubsub.as_str()),
            None if !self.schedules.is_empty() => Some(self.pubsub.as_str()),
            None => None,
        }
    }

    /// The schedule whose Dapr job is `job_name`, if it is one of this function's.
    pub fn schedule_for_job(&self, job_name: &str) -> Option<&DeclaredSchedule> {
        let name = job_name.strip_prefix(SCHEDULE_JOB_PREFIX)?;
        self.schedules.iter().find(|s| s.name == name)
    }
}

/// One entry of Dapr's `GET /dapr/subscribe` answer (keys are case-sensitive).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaprSubscription {
    /// Pub/sub component.
    pub pubsubname: String,
    /// Topic.
    pub topic: String,
    /// Where events are delivered.
    pub routes: DaprRoutes,
    /// Where Dapr sends what it drops (none for the dead-letter topic's own subscription).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Subscription metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Bulk delivery settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_subscribe: Option<DaprBulkSubscribe>,
}

/// Dapr's `routes` object: every event of the topic goes to `default`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DaprRoutes {
    /// Path of the route.
    pub default: String,
}

/// Dapr's `bulkSubscribe` object.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaprBulkSubscribe {
    /// Always true when present.
    pub enabled: bool,
    /// Most events per delivery.
    pub max_messages_count: u32,
    /// Longest wait to fill a delivery.
    pub max_await_duration_ms: u32,
}

/// `[[schedules]]`: names unique and plain, crons that parse (not `@every`: a period has no
/// instants to name its triggers by), `data` a table without the reserved keys.
fn parse_schedules(raw: Vec<RawSchedule>) -> Result<Vec<DeclaredSchedule>, ManifestError> {
    let mut out: Vec<DeclaredSchedule> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let plain = !r.name.is_empty()
            && r.name.len() <= 63
            && r.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !plain {
            return Err(ManifestError::new(
                format!("schedules[{i}].name"),
                &r.name,
                "must be 1-63 characters of a-z, 0-9 and -",
            ));
        }
        if out.iter().any(|s| s.name == r.name) {
            return Err(ManifestError::new(
                format!("schedules[{i}].name"),
                &r.name,
                "is declared twice",
            ));
        }
        let parsed = match crate::schedule::Schedule::parse(&r.cron) {
            Ok(crate::schedule::Schedule::Cron(c)) => *c,
            Ok(crate::schedule::Schedule::Every(_)) => {
                return Err(ManifestError::new(
                    format!("schedules[{i}].cron"),
                    &r.cron,
                    "@every is for jobs scheduled at run time; a declared schedule is a cron \
                     expression (six fields with seconds, e.g. \"0 */5 * * * *\") or @hourly, \
                     @daily, @weekly, @monthly, @yearly",
                ));
            }
            Err(why) => {
                return Err(ManifestError::new(
                    format!("schedules[{i}].cron"),
                    &r.cron,
                    why,
                ));
            }
        };
        if r.ty.trim().is_empty() {
            return Err(ManifestError::new(
                format!("schedules[{i}].type"),
                &r.ty,
                "must name an event type",
            ));
        }
        let data = match serde_json::to_value(&r.data) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(ManifestError::new(
                    format!("schedules[{i}].data"),
                    "(table)",
                    "must be a table of JSON-compatible values",
                ));
            }
        };
        if let Some(k) = ["schedule", "scheduled_at"]
            .into_iter()
            .find(|k| data.contains_key(*k))
        {
            return Err(ManifestError::new(
                format!("schedules[{i}].data.{k}"),
                &data[k],
                "is set by the runtime on every trigger",
            ));
        }
        out.push(DeclaredSchedule {
            name: r.name,
            cron: r.cron,
            ty: r.ty,
            data,
            parsed,
        });
    }
    Ok(out)
}

fn manifest_duration(key: &str, v: &str) -> Result<Duration, ManifestError> {
    parse_duration(v).map_err(|reason| ManifestError::new(key, v, reason))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
        [function]
        name = "notify"
        description = "d"
        [[subscriptions]]
        topic = "finance.budget.exceeded"
        [[subscriptions]]
        topic = "todo.reminder.due"
        route = "/reminders"
        bulk = { max_messages = 10 }
        [[publishes]]
        type = "finance.alert.sent"
        [scaling]
        max = 3
        lag_threshold = 50
        cooldown = "2m"
        [delivery]
        max_attempts = 4
    "#;

    #[test]
    fn defaults_are_filled_in() {
        let m = Manifest::parse(FULL, "notify", "1.2.3").unwrap();
        assert_eq!(m.version, "1.2.3");
        assert_eq!(m.subscriptions[0].route, "/events/finance.budget.exceeded");
        assert_eq!(m.subscriptions[0].types, vec!["finance.budget.exceeded"]);
        assert_eq!(m.subscriptions[0].pubsub, "kafka-pubsub");
        assert_eq!(m.subscriptions[1].bulk.map(|b| b.max_messages), Some(10));
        assert_eq!(m.publishes[0].topic, "finance.alert.sent");
        assert_eq!(m.scaling.cooldown, Duration::from_secs(120));
        assert_eq!(m.delivery.dead_letter_topic, "deadletter.notify");
        assert_eq!(m.delivery.max_attempts, 4);
    }

    #[test]
    fn reference_manifest_parses() {
        let m = crate::manifest!().parse().unwrap();
        assert_eq!(m.name, "demo");
        assert_eq!(m.delivery.dead_letter_topic, "deadletter.demo");
        assert_eq!(m.publishes[0].ty, "finance.alert.sent");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[function]\nname = \"Bad_Name\"",
                "function.name",
                "DNS label",
            ),
            (
                "[function]\n[scaling]\nmax = 0",
                "scaling.max",
                "at least 1",
            ),
            (
                "[function]\n[scaling]\nmin = 5\nmax = 2",
                "scaling.min",
                "must not exceed",
            ),
            (
                "[function]\n[scaling]\ncooldown = \"soon\"",
                "scaling.cooldown",
                "duration",
            ),
            (
                "[function]\n[[subscriptions]]\ntopic = \"t\"\nroute = \"/healthz\"",
                "subscriptions[0].route",
                "runtime itself",
            ),
            (
                "[function]\n[[subscriptions]]\ntopic = \"a\"\nroute = \"/x\"\n[[subscriptions]]\ntopic = \"b\"\nroute = \"/x\"",
                "subscriptions[1].route",
                "earlier",
            ),
            (
                "[function]\n[delivery]\nmax_attempts = 0",
                "delivery.max_attempts",
                "at least 1",
            ),
            (
                "[function]\ncolour = \"blue\"",
                "(file",
                "unknown field `colour`",
            ),
        ];
        for (text, key, reason) in cases {
            let err = Manifest::parse(text, "f", "0.1.0").unwrap_err();
            assert!(err.key.starts_with(key), "{text}: key {:?}", err.key);
            assert!(
                err.reason.contains(reason),
                "{text}: reason {:?}",
                err.reason
            );
        }
    }

    #[test]
    fn schedules_are_checked_key_by_key() {
        let with = |body: &str| {
            Manifest::parse(
                &format!("[function]\nname = \"digest\"\n[[schedules]]\n{body}"),
                "digest",
                "0.1.0",
            )
        };
        let m =
            with("name = \"weekly\"\ncron = \"0 0 8 * * 1\"\ndata = { window = \"7d\" }").unwrap();
        let s = &m.schedules[0];
        assert_eq!(
            (s.ty.as_str(), s.job_name()),
            (SCHEDULE_EVENT_TYPE, "schedule-weekly".into())
        );
        assert_eq!(s.data["window"], "7d");
        assert_eq!(
            m.dead_letter_pubsub(),
            Some("kafka-pubsub"),
            "its triggers can be dead-lettered"
        );
        assert_eq!(m.schedule_for_job("schedule-weekly"), Some(s));
        assert_eq!(m.schedule_for_job("weekly"), None);
        // Monday 2026-12-07 08:00:00 UTC; a delivery on Wednesday belongs to it.
        let wednesday = chrono::DateTime::parse_from_rfc3339("2026-12-09T12:00:00Z").unwrap();
        assert_eq!(
            s.instant(wednesday.timestamp_millis()),
            Some(1_796_630_400_000)
        );
        for (body, key, why) in [
            (
                "name = \"Weekly Digest\"\ncron = \"@daily\"",
                "schedules[0].name",
                "a-z, 0-9",
            ),
            (
                "name = \"w\"\ncron = \"@every 1m\"",
                "schedules[0].cron",
                "@every is for jobs",
            ),
            (
                "name = \"w\"\ncron = \"0 0 8 * *\"",
                "schedules[0].cron",
                "six fields",
            ),
            (
                "name = \"w\"\ncron = \"@daily\"\ntype = \" \"",
                "schedules[0].type",
                "event type",
            ),
            (
                "name = \"w\"\ncron = \"@daily\"\ndata = { scheduled_at = 1 }",
                "schedules[0].data.scheduled_at",
                "set by the runtime",
            ),
            (
                "name = \"w\"\ncron = \"@daily\"\n[[schedules]]\nname = \"w\"\ncron = \"@hourly\"",
                "schedules[1].name",
                "twice",
            ),
        ] {
            let e = with(body).unwrap_err();
            assert_eq!(e.key, key, "{body}: {e}");
            assert!(e.reason.contains(why), "{body}: {e}");
        }
    }
}
