//! Every metric the runtime exports — names, help texts and the calls that record them — in
//! one place. Each app has its own Prometheus registry (no global recorder), served on
//! `GET /metrics` in the Prometheus text format.
//!
//! Labels never carry input verbatim: `type` is one of the function's accepted types or
//! `other`, so a flood of junk cannot blow up the series count.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Events that reached the pipeline (decoded or not), by type.
pub const EVENTS_RECEIVED: &str = "zerofn_events_received_total";
/// Events by type and outcome: success, duplicate, retry, dead_letter, drop.
pub const EVENTS_HANDLED: &str = "zerofn_events_handled_total";
/// Handler run time, by type.
pub const HANDLER_DURATION: &str = "zerofn_handler_duration_seconds";
/// From the event's `time` to handled, by type.
pub const EVENT_LATENCY: &str = "zerofn_event_latency_seconds";
/// Deliveries being processed right now.
pub const IN_FLIGHT: &str = "zerofn_deliveries_in_flight";
/// Idempotency store operations, by operation (claim, complete).
pub const STORE_DURATION: &str = "zerofn_store_operation_duration_seconds";
/// Failed publishes of emitted events and dead letters, by topic.
pub const PUBLISH_FAILURES: &str = "zerofn_publish_failures_total";
/// Dead-letter records written, by error kind.
pub const DEAD_LETTERS: &str = "zerofn_dead_letters_total";
/// Cold starts: processes that handled their first event.
pub const COLD_STARTS: &str = "zerofn_cold_starts_total";
/// From process start to the first event handled.
pub const COLD_START_DURATION: &str = "zerofn_cold_start_duration_seconds";

/// Gateway requests, by function, route (`fn`, `events`, `async`) and status code.
pub const GATEWAY_REQUESTS: &str = "zerofn_gateway_requests_total";
/// Gateway request duration (a cold start included), by function and route.
pub const GATEWAY_DURATION: &str = "zerofn_gateway_request_duration_seconds";
/// Requests held at the gateway until a replica is ready (scale from zero), by function.
pub const GATEWAY_QUEUED: &str = "zerofn_gateway_queued_requests";
/// Events the gateway accepted and appended, by CloudEvent type.
pub const GATEWAY_EVENTS: &str = "zerofn_gateway_events_total";
/// Requests the gateway refused or dead-lettered, by reason code.
pub const GATEWAY_REJECTED: &str = "zerofn_gateway_rejected_total";

/// Every gateway metric: name, help text, unit.
pub const GATEWAY: &[(&str, &str, Unit)] = &[
    (
        GATEWAY_REQUESTS,
        "Gateway requests by function, route (fn, events, async) and status code",
        Unit::Count,
    ),
    (
        GATEWAY_DURATION,
        "Gateway request duration including any cold start, by function and route",
        Unit::Seconds,
    ),
    (
        GATEWAY_QUEUED,
        "Requests held at the gateway until a replica is ready, by function",
        Unit::Count,
    ),
    (
        GATEWAY_EVENTS,
        "Events accepted and appended by the gateway, by CloudEvent type",
        Unit::Count,
    ),
    (
        GATEWAY_REJECTED,
        "Requests the gateway refused, by reason code",
        Unit::Count,
    ),
];

/// `zerofn scaler`: the lag it last read, by consumer group and topic.
pub const SCALER_LAG: &str = "zerofn_scaler_lag";
/// `zerofn scaler`: reads of a group's position, by consumer group, topic and outcome.
pub const SCALER_READS: &str = "zerofn_scaler_reads_total";
/// `zerofn scaler`: whether it last told KEDA the trigger is active (1) or not (0).
pub const SCALER_ACTIVE: &str = "zerofn_scaler_active";

/// Every `zerofn scaler` metric: name, help text, unit.
pub const SCALER: &[(&str, &str, Unit)] = &[
    (
        SCALER_LAG,
        "Consumer-group lag last read by the push scaler, by consumer group and topic",
        Unit::Count,
    ),
    (
        SCALER_READS,
        "Reads of a group's position (ok or error), by consumer group and topic",
        Unit::Count,
    ),
    (
        SCALER_ACTIVE,
        "Activity last pushed to KEDA (1 active, 0 not), by consumer group and topic",
        Unit::Count,
    ),
];

/// Every function metric: name, help text, unit.
pub const ALL: &[(&str, &str, Unit)] = &[
    (
        EVENTS_RECEIVED,
        "Events that reached the pipeline, by CloudEvent type",
        Unit::Count,
    ),
    (
        EVENTS_HANDLED,
        "Events by type and outcome (success, duplicate, retry, dead_letter, drop)",
        Unit::Count,
    ),
    (
        HANDLER_DURATION,
        "Time the handler ran for one event",
        Unit::Seconds,
    ),
    (
        EVENT_LATENCY,
        "Time from the event's time attribute to handled",
        Unit::Seconds,
    ),
    (IN_FLIGHT, "Deliveries being processed now", Unit::Count),
    (
        STORE_DURATION,
        "Idempotency store operations (claim, complete)",
        Unit::Seconds,
    ),
    (
        PUBLISH_FAILURES,
        "Failed publishes of emitted events and dead letters, by topic",
        Unit::Count,
    ),
    (
        DEAD_LETTERS,
        "Dead-letter records written, by error kind",
        Unit::Count,
    ),
    (
        COLD_STARTS,
        "Processes that handled their first event",
        Unit::Count,
    ),
    (
        COLD_START_DURATION,
        "Time from process start to the first event handled",
        Unit::Seconds,
    ),
];

const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static METADATA: Metadata<'static> =
    Metadata::new("zerofn", metrics::Level::INFO, Some(module_path!()));

/// One app's metrics.
pub(crate) struct Instruments {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    function: String,
    accepted: Vec<String>,
    started: Instant,
    cold: AtomicBool,
}

/// A recorder with every metric of `all` described; `gauges` are described as gauges.
fn recorder(
    all: &[(&'static str, &'static str, Unit)],
    gauges: &[&str],
) -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = PrometheusBuilder::new().set_buckets(BUCKETS).map_or_else(
        |_| PrometheusBuilder::new().build_recorder(),
        PrometheusBuilder::build_recorder,
    );
    for (name, help, unit) in all {
        let key = metrics::KeyName::from(*name);
        match *unit {
            Unit::Seconds => recorder.describe_histogram(key, Some(*unit), (*help).into()),
            _ if gauges.contains(name) => recorder.describe_gauge(key, Some(*unit), (*help).into()),
            _ => recorder.describe_counter(key, Some(*unit), (*help).into()),
        }
    }
    let handle = recorder.handle();
    (recorder, handle)
}

/// The gateway's metrics, in its own registry. The `function` label is one of the known
/// functions or `other`.
pub struct GatewayInstruments {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    functions: Vec<String>,
}

impl std::fmt::Debug for GatewayInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayInstruments")
            .field("functions", &self.functions)
            .finish()
    }
}

impl GatewayInstruments {
    /// Metrics for a gateway in front of `functions`.
    pub fn new(functions: &[String]) -> GatewayInstruments {
        let (recorder, handle) = recorder(GATEWAY, &[GATEWAY_QUEUED]);
        GatewayInstruments {
            recorder,
            handle,
            functions: functions.to_vec(),
        }
    }

    fn function<'a>(&self, name: &'a str) -> &'a str {
        if name.is_empty() || self.functions.iter().any(|f| f == name) {
            name
        } else {
            "other"
        }
    }

    fn key(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    /// One request finished.
    pub fn request(&self, function: &str, route: &str, status: u16, d: Duration) {
        let function = self.function(function);
        self.recorder
            .register_counter(
                &self.key(
                    GATEWAY_REQUESTS,
                    &[
                        ("function", function),
                        ("route", route),
                        ("status", &status.to_string()),
                    ],
                ),
                &METADATA,
            )
            .increment(1);
        self.recorder
            .register_histogram(
                &self.key(
                    GATEWAY_DURATION,
                    &[("function", function), ("route", route)],
                ),
                &METADATA,
            )
            .record(d.as_secs_f64());
    }

    /// The gauge of requests waiting for a replica of `function`.
    pub fn queued(&self, function: &str) -> Gauge {
        self.recorder.register_gauge(
            &self.key(GATEWAY_QUEUED, &[("function", self.function(function))]),
            &METADATA,
        )
    }

    /// `n` events of type `ty` were appended (`ty` has a contract: the set is bounded).
    pub fn events(&self, ty: &str, n: u64) {
        self.recorder
            .register_counter(&self.key(GATEWAY_EVENTS, &[("type", ty)]), &METADATA)
            .increment(n);
    }

    /// A request was refused for `code`.
    pub fn rejected(&self, code: &str) {
        self.recorder
            .register_counter(&self.key(GATEWAY_REJECTED, &[("code", code)]), &METADATA)
            .increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// `zerofn scaler`'s metrics, in its own registry.
pub struct ScalerInstruments {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for ScalerInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalerInstruments").finish_non_exhaustive()
    }
}

impl Default for ScalerInstruments {
    fn default() -> Self {
        let (recorder, handle) = recorder(SCALER, &[SCALER_LAG, SCALER_ACTIVE]);
        ScalerInstruments { recorder, handle }
    }
}

impl ScalerInstruments {
    fn key(name: &'static str, group: &str, topic: &str) -> Key {
        Key::from_parts(
            name,
            vec![
                Label::new("consumer_group", group.to_string()),
                Label::new("topic", topic.to_string()),
            ],
        )
    }

    /// A read of `group`'s position on `topic`: its lag, or `None` when it failed.
    pub fn read(&self, group: &str, topic: &str, lag: Option<u64>) {
        let mut key = Self::key(SCALER_READS, group, topic);
        key = Key::from_parts(
            SCALER_READS,
            key.labels()
                .cloned()
                .chain([Label::new(
                    "outcome",
                    if lag.is_some() { "ok" } else { "error" },
                )])
                .collect::<Vec<_>>(),
        );
        self.recorder.register_counter(&key, &METADATA).increment(1);
        if let Some(lag) = lag {
            self.recorder
                .register_gauge(&Self::key(SCALER_LAG, group, topic), &METADATA)
                .set(lag as f64);
        }
    }

    /// The activity pushed to KEDA for `group` on `topic`.
    pub fn active(&self, group: &str, topic: &str, active: bool) {
        self.recorder
            .register_gauge(&Self::key(SCALER_ACTIVE, group, topic), &METADATA)
            .set(if active { 1.0 } else { 0.0 });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

impl Instruments {
    pub(crate) fn new(function: &str, accepted: &[String], started: Instant) -> Instruments {
        let (recorder, handle) = recorder(ALL, &[IN_FLIGHT]);
        Instruments {
            recorder,
            handle,
            function: function.to_string(),
            accepted: accepted.to_vec(),
            started,
            cold: AtomicBool::new(true),
        }
    }

    fn key(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let mut all = vec![Label::new("function", self.function.clone())];
        all.extend(labels.iter().map(|(k, v)| Label::new(*k, v.to_string())));
        Key::from_parts(name, all)
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&self.key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&self.key(name, labels), &METADATA)
    }

    /// The `type` label: an accepted type, or `other`.
    fn ty<'a>(&self, ty: Option<&'a str>) -> &'a str {
        match ty {
            Some(t) if self.accepted.iter().any(|a| a == t) => t,
            _ => "other",
        }
    }

    pub(crate) fn received(&self, ty: Option<&str>) {
        self.counter(EVENTS_RECEIVED, &[("type", self.ty(ty))])
            .increment(1);
    }
    pub(crate) fn handled(&self, ty: Option<&str>, outcome: &str) {
        self.counter(
            EVENTS_HANDLED,
            &[("type", self.ty(ty)), ("outcome", outcome)],
        )
        .increment(1);
    }

    /// For the process's first event: how long since it started (and record the cold start).
    pub(crate) fn cold_start(&self) -> Option<Duration> {
        if !self.cold.swap(false, Ordering::SeqCst) {
            return None;
        }
        let elapsed = self.started.elapsed();
        self.counter(COLD_STARTS, &[]).increment(1);
        self.histogram(COLD_START_DURATION, &[])
            .record(elapsed.as_secs_f64());
        Some(elapsed)
    }

    pub(crate) fn handler_duration(&self, ty: &str, d: Duration) {
        self.histogram(HANDLER_DURATION, &[("type", self.ty(Some(ty)))])
            .record(d.as_secs_f64());
    }

    pub(crate) fn latency(&self, ty: &str, since: chrono::DateTime<chrono::Utc>) {
        let secs = (chrono::Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0;
        self.histogram(EVENT_LATENCY, &[("type", self.ty(Some(ty)))])
            .record(secs);
    }

    pub(crate) fn in_flight(&self) -> Gauge {
        self.recorder
            .register_gauge(&self.key(IN_FLIGHT, &[]), &METADATA)
    }

    pub(crate) fn store_op(&self, operation: &str, d: Duration) {
        self.histogram(STORE_DURATION, &[("operation", operation)])
            .record(d.as_secs_f64());
    }

    pub(crate) fn publish_failed(&self, topic: &str) {
        self.counter(PUBLISH_FAILURES, &[("topic", topic)])
            .increment(1);
    }

    pub(crate) fn dead_lettered(&self, kind: &str) {
        self.counter(DEAD_LETTERS, &[("kind", kind)]).increment(1);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}
