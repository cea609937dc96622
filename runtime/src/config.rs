//! Every setting the runtime reads, as `ENV_*` constants, parsed once at start-up.
//!
//! Values are read through the [`Source`] trait: [`Env`] in production, a `HashMap` in tests
//! (no `std::env::set_var` anywhere). A bad value is a [`ConfigError`] naming the key, the
//! value and the reason; [`crate::run`] prints it and exits with status 64.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

/// Port of the function's HTTP server (Knative and Dapr both set or expect it). Default 8080.
pub const ENV_PORT: &str = "PORT";
/// Address the HTTP server binds to. Default `0.0.0.0` (probes come from the kubelet).
pub const ENV_BIND_ADDR: &str = "ZEROFN_BIND_ADDR";
/// `dapr` or `http`; overrides the choice made from `DAPR_HTTP_PORT`.
pub const ENV_TRANSPORT: &str = "ZEROFN_TRANSPORT";
/// Port of the Dapr sidecar's HTTP API; its presence selects the Dapr transport.
pub const ENV_DAPR_HTTP_PORT: &str = "DAPR_HTTP_PORT";
/// Host of the Dapr sidecar. Default `127.0.0.1` (the sidecar listens only inside the pod).
pub const ENV_DAPR_HOST: &str = "ZEROFN_DAPR_HOST";
/// Token the function sends to the sidecar in `dapr-api-token`.
pub const ENV_DAPR_API_TOKEN: &str = "DAPR_API_TOKEN";
/// Token the sidecar must present in `dapr-api-token`; checked in constant time when set.
pub const ENV_APP_API_TOKEN: &str = "APP_API_TOKEN";
/// Knative's sink: where the HTTP transport POSTs the events a handler emits.
pub const ENV_K_SINK: &str = "K_SINK";
/// Directory for embedded state (the SQLite idempotency store). Default `./.zerofn`.
pub const ENV_DATA_DIR: &str = "ZEROFN_DATA_DIR";
/// Largest accepted request body, in bytes. Default 2 MiB: above the Kafka topics'
/// `max.message.bytes` (1.5 MiB) plus Dapr's delivery envelope, which is above the gateway's
/// limit (1 MiB), so an event the gateway admitted always reaches its handler.
pub const ENV_MAX_BODY_BYTES: &str = "ZEROFN_MAX_BODY_BYTES";
/// How long in-flight deliveries may run after SIGTERM. Default `30s`.
pub const ENV_SHUTDOWN_GRACE: &str = "ZEROFN_SHUTDOWN_GRACE";
/// Longest a handler may run for one event before it counts as a retryable failure. Default `120s`.
pub const ENV_HANDLER_TIMEOUT: &str = "ZEROFN_HANDLER_TIMEOUT";
/// Timeout of one outbound publish call. Default `10s`.
pub const ENV_PUBLISH_TIMEOUT: &str = "ZEROFN_PUBLISH_TIMEOUT";
/// The idempotency store: `memory`, `sqlite:<path>`, `postgres://…` or `redis://…`.
/// Default: `sqlite:<ZEROFN_DATA_DIR>/zerofn.db`.
pub const ENV_STORE: &str = "ZEROFN_STORE";
/// How long a claimed event is reserved for its worker without a renewal. The worker renews it
/// every third of it while it works, so a dead worker's claim lapses within this time, whatever
/// the handler timeout. Default `6s`; at least `1s`.
pub const ENV_LEASE: &str = "ZEROFN_LEASE";
/// How long idempotency records are kept. Default `7d`.
pub const ENV_IDEMPOTENCY_TTL: &str = "ZEROFN_IDEMPOTENCY_TTL";

/// `ZEROFN_MAX_BODY_BYTES` when unset.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;
/// The lease when `ZEROFN_LEASE` is unset.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(6);
/// The shortest lease that can be renewed in time against a store over the network.
pub(crate) const MIN_LEASE: Duration = Duration::from_secs(1);
/// How often the outbox relay publishes outputs left unsent (a failed publish that no
/// redelivery retried). Default `30s`.
pub const ENV_RELAY_INTERVAL: &str = "ZEROFN_RELAY_INTERVAL";
/// Test hook: abort the process at `after_claim`, `after_handler` or `after_commit`.
pub const ENV_CRASH_AT: &str = "ZEROFN_CRASH_AT";
/// OTLP/gRPC endpoint for traces (standard OpenTelemetry variable). Unset: tracing stays
/// local (log lines only) and costs nothing per event.
pub const ENV_OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Traces-only override of the endpoint (standard OpenTelemetry variable).
pub const ENV_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Service name in traces (standard OpenTelemetry variable). Default: the function name.
pub const ENV_OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `json` (default, one object per line) or `pretty`.
pub const ENV_LOG_FORMAT: &str = "ZEROFN_LOG_FORMAT";
/// A `tracing` filter such as `info,zerofn=debug`. Falls back to `RUST_LOG`, then `info`.
pub const ENV_LOG: &str = "ZEROFN_LOG";
/// Fallback log filter, read when `ZEROFN_LOG` is unset.
pub const ENV_RUST_LOG: &str = "RUST_LOG";
/// `true` lets an event function run in Kubernetes on a store that is neither shared nor
/// durable (`memory`, or SQLite in the pod): a demo only. Without it such a function refuses to
/// start there, since a redelivery after a rebalance or a scale to zero would be applied twice.
pub const ENV_ALLOW_EPHEMERAL_STORE: &str = "ZEROFN_ALLOW_EPHEMERAL_STORE";
/// Set by Kubernetes in every pod (not a setting): the runtime is in a cluster.
pub const ENV_KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
/// The platform's gateway (`http://host:port`), for a function that calls another at
/// `{url}/fn/{name}/…`. The local engine sets it for its replicas; the runtime only passes it on.
pub const ENV_GATEWAY_URL: &str = "ZEROFN_GATEWAY_URL";
/// The process id of the engine that started this replica (`zerofn dev` sets it): when that
/// process is gone (even SIGKILLed), the replica drains and exits instead of living on.
pub const ENV_PARENT_PID: &str = "ZEROFN_PARENT_PID";

/// Every key above, for documentation and for tests that check the Helm values map to them.
pub const ALL_KEYS: &[&str] = &[
    ENV_PORT,
    ENV_BIND_ADDR,
    ENV_TRANSPORT,
    ENV_DAPR_HTTP_PORT,
    ENV_DAPR_HOST,
    ENV_DAPR_API_TOKEN,
    ENV_APP_API_TOKEN,
    ENV_K_SINK,
    ENV_DATA_DIR,
    ENV_MAX_BODY_BYTES,
    ENV_SHUTDOWN_GRACE,
    ENV_HANDLER_TIMEOUT,
    ENV_PUBLISH_TIMEOUT,
    ENV_STORE,
    ENV_LEASE,
    ENV_IDEMPOTENCY_TTL,
    ENV_RELAY_INTERVAL,
    ENV_CRASH_AT,
    ENV_OTEL_EXPORTER_OTLP_ENDPOINT,
    ENV_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    ENV_OTEL_SERVICE_NAME,
    ENV_LOG_FORMAT,
    ENV_LOG,
    ENV_RUST_LOG,
    ENV_PARENT_PID,
    ENV_GATEWAY_URL,
    ENV_ALLOW_EPHEMERAL_STORE,
];

/// Where configuration values come from.
pub trait Source {
    /// The value of `key`, if set. An empty value counts as unset.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl<S: std::hash::BuildHasher> Source for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).filter(|v| !v.is_empty()).cloned()
    }
}

/// A configuration value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub key: &'static str,
    /// Its value (empty when the problem is that it is missing).
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(
        key: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            key,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// How events reach the function and how it publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// The Dapr app contract: `/dapr/subscribe`, routes per topic, publish via the sidecar.
    Dapr,
    /// Plain CloudEvents over HTTP (Knative): `POST /`, publish to `K_SINK`.
    Http,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Dapr => "dapr",
            TransportKind::Http => "http",
        })
    }
}

/// Where the `ZEROFN_CRASH_AT` test hook aborts the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the event was claimed, before the handler ran.
    AfterClaim,
    /// After the handler's writes, before they were committed.
    AfterHandler,
    /// After the commit, before the outputs were published.
    AfterCommit,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable over several lines, coloured when on a terminal.
    Pretty,
    /// Human-readable, one line per event (what `make run` uses).
    Compact,
}

/// The parsed configuration of one function process.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Where the HTTP server listens.
    pub addr: SocketAddr,
    /// The transport in use.
    pub transport: TransportKind,
    /// Base URL of the Dapr sidecar's HTTP API (Dapr transport only).
    pub dapr_url: Option<String>,
    /// Token sent to the sidecar.
    pub dapr_api_token: Option<String>,
    /// Token expected from the sidecar.
    pub app_api_token: Option<String>,
    /// Knative sink URL.
    pub sink: Option<String>,
    /// Directory for embedded state.
    pub data_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long in-flight deliveries may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Longest a handler may run for one event.
    pub handler_timeout: Duration,
    /// Timeout of one outbound publish call.
    pub publish_timeout: Duration,
    /// Idempotency store URL (`memory`, `sqlite:…`, `postgres://…`, `redis://…`).
    pub store: String,
    /// Lease of a claimed event.
    pub lease: Duration,
    /// Lifetime of idempotency records.
    pub idempotency_ttl: Duration,
    /// How often the outbox relay runs.
    pub relay_interval: Duration,
    /// Test hook: where to abort the process.
    pub crash_at: Option<CrashPoint>,
    /// The engine process this replica belongs to (exit when it is gone).
    pub parent_pid: Option<u32>,
    /// Running in Kubernetes (`KUBERNETES_SERVICE_HOST` is set).
    pub in_kubernetes: bool,
    /// An ephemeral per-process store is allowed there (a demo).
    pub allow_ephemeral_store: bool,
    /// Where traces are exported (OTLP/gRPC); `None` keeps tracing local.
    pub otlp_endpoint: Option<String>,
    /// Service name in traces.
    pub otel_service_name: Option<String>,
    /// Log line format.
    pub log_format: LogFormat,
    /// `tracing` filter directives.
    pub log_filter: String,
}

impl Config {
    /// Read and check every setting; the first bad one is returned.
    pub fn from_source(src: &impl Source) -> Result<Config, ConfigError> {
        let port = match src.get(ENV_PORT) {
            Some(v) => parse_port(ENV_PORT, &v)?,
            None => 8080,
        };
        let ip = match src.get(ENV_BIND_ADDR) {
            Some(v) => v.parse::<IpAddr>().map_err(|e| {
                ConfigError::new(ENV_BIND_ADDR, &v, format!("not an IP address ({e})"))
            })?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let dapr_port = src
            .get(ENV_DAPR_HTTP_PORT)
            .map(|v| parse_port(ENV_DAPR_HTTP_PORT, &v))
            .transpose()?;
        let transport = match src.get(ENV_TRANSPORT).as_deref() {
            Some("dapr") => TransportKind::Dapr,
            Some("http") => TransportKind::Http,
            Some(other) => {
                return Err(ConfigError::new(
                    ENV_TRANSPORT,
                    other,
                    "expected `dapr` or `http`",
                ));
            }
            None if dapr_port.is_some() => TransportKind::Dapr,
            None => TransportKind::Http,
        };
        let dapr_url = (transport == TransportKind::Dapr).then(|| {
            let host = src.get(ENV_DAPR_HOST).unwrap_or_else(|| "127.0.0.1".into());
            format!("http://{host}:{}", dapr_port.unwrap_or(3500))
        });
        let sink = src
            .get(ENV_K_SINK)
            .map(|v| check_http_url(ENV_K_SINK, v))
            .transpose()?;
        let max_body_bytes = match src.get(ENV_MAX_BODY_BYTES) {
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1024 => n,
                Ok(_) => {
                    return Err(ConfigError::new(
                        ENV_MAX_BODY_BYTES,
                        v,
                        "must be at least 1024 bytes",
                    ));
                }
                Err(e) => {
                    return Err(ConfigError::new(
                        ENV_MAX_BODY_BYTES,
                        v,
                        format!("not a byte count ({e})"),
                    ));
                }
            },
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let log_format = match src.get(ENV_LOG_FORMAT).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some("compact") => LogFormat::Compact,
            Some(other) => {
                return Err(ConfigError::new(
                    ENV_LOG_FORMAT,
                    other,
                    "expected `json`, `pretty` or `compact`",
                ));
            }
        };
        let log_filter = src
            .get(ENV_LOG)
            .or_else(|| src.get(ENV_RUST_LOG))
            .unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            let key = if src.get(ENV_LOG).is_some() {
                ENV_LOG
            } else {
                ENV_RUST_LOG
            };
            return Err(ConfigError::new(key, log_filter, e.to_string()));
        }
        let data_dir = src
            .get(ENV_DATA_DIR)
            .map_or_else(|| PathBuf::from(".zerofn"), PathBuf::from);
        let store = match src.get(ENV_STORE) {
            None => format!("sqlite:{}", data_dir.join("zerofn.db").display()),
            Some(v)
                if v == "memory"
                    || [
                        "sqlite:",
                        "postgres://",
                        "postgresql://",
                        "redis://",
                        "rediss://",
                    ]
                    .iter()
                    .any(|p| v.starts_with(p)) =>
            {
                v
            }
            Some(v) => {
                return Err(ConfigError::new(
                    ENV_STORE,
                    v,
                    "expected memory, sqlite:<path>, postgres://… or redis://…",
                ));
            }
        };
        let handler_timeout = duration(src, ENV_HANDLER_TIMEOUT, Duration::from_secs(120))?;
        let lease = duration(src, ENV_LEASE, DEFAULT_LEASE)?;
        if lease < MIN_LEASE {
            return Err(ConfigError::new(
                ENV_LEASE,
                src.get(ENV_LEASE).unwrap_or_default(),
                format!(
                    "must be at least {MIN_LEASE:?}: the lease is renewed every third of it, and a \
                     renewal must reach the store before the lease lapses"
                ),
            ));
        }
        let crash_at = match src.get(ENV_CRASH_AT).as_deref() {
            None => None,
            Some("after_claim") => Some(CrashPoint::AfterClaim),
            Some("after_handler") => Some(CrashPoint::AfterHandler),
            Some("after_commit") => Some(CrashPoint::AfterCommit),
            Some(other) => {
                return Err(ConfigError::new(
                    ENV_CRASH_AT,
                    other,
                    "expected after_claim, after_handler or after_commit",
                ));
            }
        };
        Ok(Config {
            addr: SocketAddr::new(ip, port),
            transport,
            dapr_url,
            dapr_api_token: src.get(ENV_DAPR_API_TOKEN),
            app_api_token: src.get(ENV_APP_API_TOKEN),
            sink,
            data_dir,
            store,
            lease,
            idempotency_ttl: duration(src, ENV_IDEMPOTENCY_TTL, Duration::from_secs(7 * 86_400))?,
            relay_interval: match duration(src, ENV_RELAY_INTERVAL, Duration::from_secs(30))? {
                d if d.is_zero() => {
                    return Err(ConfigError::new(
                        ENV_RELAY_INTERVAL,
                        "0",
                        "must be longer than zero",
                    ));
                }
                d => d,
            },
            crash_at,
            in_kubernetes: src
                .get(ENV_KUBERNETES_SERVICE_HOST)
                .is_some_and(|h| !h.is_empty()),
            allow_ephemeral_store: match src.get(ENV_ALLOW_EPHEMERAL_STORE).as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(ConfigError::new(
                        ENV_ALLOW_EPHEMERAL_STORE,
                        other,
                        "expected `true` or `false`",
                    ));
                }
            },
            parent_pid: src
                .get(ENV_PARENT_PID)
                .map(|v| {
                    v.parse::<u32>().map_err(|e| {
                        ConfigError::new(ENV_PARENT_PID, &v, format!("not a process id ({e})"))
                    })
                })
                .transpose()?,
            max_body_bytes,
            shutdown_grace: duration(src, ENV_SHUTDOWN_GRACE, Duration::from_secs(30))?,
            handler_timeout,
            publish_timeout: duration(src, ENV_PUBLISH_TIMEOUT, Duration::from_secs(10))?,
            otlp_endpoint: match src.get(ENV_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) {
                Some(v) => Some(check_http_url(ENV_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, v)?),
                None => src
                    .get(ENV_OTEL_EXPORTER_OTLP_ENDPOINT)
                    .map(|v| check_http_url(ENV_OTEL_EXPORTER_OTLP_ENDPOINT, v))
                    .transpose()?,
            },
            otel_service_name: src.get(ENV_OTEL_SERVICE_NAME),
            log_format,
            log_filter,
        })
    }
}

fn parse_port(key: &'static str, v: &str) -> Result<u16, ConfigError> {
    v.parse::<u16>()
        .map_err(|e| ConfigError::new(key, v, format!("not a TCP port number 0-65535 ({e})")))
}

fn check_http_url(key: &'static str, v: String) -> Result<String, ConfigError> {
    match reqwest::Url::parse(&v) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(v),
        Ok(_) => Err(ConfigError::new(
            key,
            v,
            "must be an http:// or https:// URL",
        )),
        Err(e) => Err(ConfigError::new(key, v, format!("not a URL ({e})"))),
    }
}

fn duration(
    src: &impl Source,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match src.get(key) {
        Some(v) => parse_duration(&v).map_err(|reason| ConfigError::new(key, v, reason)),
        None => Ok(default),
    }
}

/// Parse `250ms`, `30s`, `5m`, `1h`, `7d` or a bare number of seconds (the format of every
/// duration setting, also used by the command line).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration such as 500ms, 30s, 5m or 1h".to_string())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        other => {
            return Err(format!(
                "unknown unit {other:?}: expected ms, s, m, h or d (e.g. 30s)"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_source(&map)
    }

    #[test]
    fn defaults_select_the_http_transport() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.transport, TransportKind::Http);
        assert_eq!(c.addr.port(), 8080);
        assert_eq!(c.max_body_bytes, 2 << 20);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.store, "sqlite:.zerofn/zerofn.db");
        assert_eq!(c.lease, Duration::from_secs(6));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(7 * 86_400));
        assert!(c.dapr_url.is_none());
    }

    #[test]
    fn dapr_port_selects_dapr_and_override_wins() {
        let c = cfg(&[(ENV_DAPR_HTTP_PORT, "3501")]).unwrap();
        assert_eq!(c.transport, TransportKind::Dapr);
        assert_eq!(c.dapr_url.as_deref(), Some("http://127.0.0.1:3501"));
        let c = cfg(&[(ENV_DAPR_HTTP_PORT, "3501"), (ENV_TRANSPORT, "http")]).unwrap();
        assert_eq!(c.transport, TransportKind::Http);
        let c = cfg(&[(ENV_TRANSPORT, "dapr")]).unwrap();
        assert_eq!(c.dapr_url.as_deref(), Some("http://127.0.0.1:3500"));
    }

    #[test]
    fn bad_values_name_key_value_and_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (ENV_PORT, "80a", "not a TCP port number"),
            (ENV_PORT, "70000", "not a TCP port number"),
            (ENV_TRANSPORT, "kafka", "expected `dapr` or `http`"),
            (ENV_MAX_BODY_BYTES, "12", "at least 1024"),
            (ENV_MAX_BODY_BYTES, "1MB", "not a byte count"),
            (ENV_SHUTDOWN_GRACE, "30 parsecs", "unknown unit \"parsecs\""),
            (ENV_SHUTDOWN_GRACE, "soon", "expected a duration"),
            (ENV_HANDLER_TIMEOUT, "5w", "unknown unit \"w\""),
            (ENV_STORE, "mysql://x", "expected memory, sqlite"),
            (ENV_CRASH_AT, "sometime", "expected after_claim"),
            (ENV_LEASE, "500ms", "renewed every third of it"),
            (ENV_PARENT_PID, "engine", "not a process id"),
            (
                ENV_ALLOW_EPHEMERAL_STORE,
                "yes",
                "expected `true` or `false`",
            ),
            (ENV_LEASE, "0s", "must be at least 1s"),
            (ENV_K_SINK, "broker.local", "not a URL"),
            (ENV_K_SINK, "ftp://x/", "http:// or https://"),
            (
                ENV_LOG_FORMAT,
                "xml",
                "expected `json`, `pretty` or `compact`",
            ),
            (ENV_BIND_ADDR, "localhost", "not an IP address"),
            (ENV_LOG, "info,[", "invalid"),
        ];
        for (key, value, reason) in cases {
            let err = cfg(&[(key, value)]).unwrap_err();
            assert_eq!(err.key, *key);
            assert_eq!(err.value, *value);
            assert!(
                err.reason.contains(reason),
                "{key}={value}: {:?} lacks {reason:?}",
                err.reason
            );
            let shown = err.to_string();
            assert!(shown.contains(key) && shown.contains(value), "{shown}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30 s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("").is_err());
    }
}
