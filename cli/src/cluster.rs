//! `zerofn gateway`: the gateway in a cluster. Events are published through the gateway's Dapr
//! sidecar (to the topic of their type, keyed by `partitionkey`/`subject`); `/fn/{name}` goes
//! to the function's Knative Service, whose activator holds requests while it scales from zero.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::gateway::{self, Backend, BoxFuture, Outgoing, Partial, Refusal, Upstream};

/// Run the API gateway against a cluster.
#[derive(Debug, Args)]
pub(crate) struct Gateway {
    /// Listen address.
    #[arg(long, env = "ZEROFN_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The sidecar's HTTP port (events are published through Dapr).
    #[arg(long, env = "DAPR_HTTP_PORT", default_value_t = 3500)]
    dapr_http_port: u16,
    /// The pub/sub component events go to.
    #[arg(long, env = "ZEROFN_PUBSUB", default_value = "kafka-pubsub")]
    pubsub: String,
    /// An HTTP function and its URL, `name=http://name.ns.svc.cluster.local`. Repeatable.
    #[arg(long = "function", value_name = "NAME=URL")]
    functions: Vec<String>,
    /// Longest a proxied request may take.
    #[arg(long, default_value = "300s", value_parser = zerofn::config::parse_duration)]
    timeout: Duration,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// The gateway's configuration: credentials, policies, limits (see the README). Required,
    /// with an `[auth]` section, unless `--insecure-open`.
    #[arg(long, env = "ZEROFN_GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Serve without authentication: anyone who reaches the gateway may post any event and
    /// call any function. For a private test cluster only.
    #[arg(long, env = "ZEROFN_GATEWAY_INSECURE_OPEN")]
    insecure_open: bool,
    /// Where `/metrics` and `/healthz` are served for the cluster (Prometheus, probes); the
    /// public listener never serves `/metrics`.
    #[arg(
        long,
        env = "ZEROFN_GATEWAY_INTERNAL_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    internal_listen: SocketAddr,
}

/// Why an open gateway does not start.
fn refuse_open(file: &str, reason: &str) -> gateway::config::ConfigError {
    gateway::config::ConfigError {
        file: file.to_string(),
        key: "[auth]".into(),
        value: "(none)".into(),
        reason: format!(
            "{reason}: a gateway without credentials lets anyone post any event and call any function; \
             add [[auth.api_keys]] or [auth.jwt], or pass --insecure-open (ZEROFN_GATEWAY_INSECURE_OPEN=true) \
             for a private test cluster"
        ),
    }
}

struct Cluster {
    client: reqwest::Client,
    dapr: String,
    pubsub: String,
    token: Option<String>,
    routes: BTreeMap<String, String>,
    timeout: Duration,
}

impl Gateway {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let _telemetry =
            zerofn::edge::Telemetry::init("zerofn-gateway").map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut routes = BTreeMap::new();
        for f in &self.functions {
            let Some((name, url)) = f.split_once('=') else {
                bail!("--function {f:?}: expected NAME=URL");
            };
            reqwest::Url::parse(url)
                .with_context(|| format!("--function {f:?}: {url:?} is not a URL"))?;
            routes.insert(name.to_string(), url.trim_end_matches('/').to_string());
        }
        let backend: Arc<dyn Backend> = Arc::new(Cluster {
            client: reqwest::Client::new(),
            dapr: format!("http://127.0.0.1:{}", self.dapr_http_port),
            pubsub: self.pubsub.clone(),
            token: std::env::var("DAPR_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            routes,
            timeout: self.timeout,
        });
        let (guard, limits) = match &self.config {
            None if self.insecure_open => {
                tracing::warn!("--insecure-open: the gateway accepts every caller");
                (None, gateway::config::Limits::default())
            }
            None => return Err(refuse_open("(no --config)", "no configuration file").into()),
            Some(path) => {
                let (guard, limits) = gateway::Guard::load(path).await?;
                if guard.is_open() && !self.insecure_open {
                    let file = path.display().to_string();
                    return Err(refuse_open(&file, "the file has no [auth] section").into());
                }
                (Some(guard), limits)
            }
        };
        let header_timeout = limits.header_timeout;
        let routers = gateway::router(
            backend,
            gateway::Options {
                max_body: self.max_body_bytes,
                guard,
                limits,
                internal_on_public: false,
            },
        )?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", self.listen))?;
        let internal = tokio::net::TcpListener::bind(self.internal_listen)
            .await
            .with_context(|| format!("--internal-listen {}: cannot bind", self.internal_listen))?;
        tracing::info!(addr = %self.listen, internal = %self.internal_listen, "gateway listening");
        let stop_signal = zerofn::shutdown_signal(); // installed before anything is served
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let internal = tokio::spawn(gateway::serve(
            internal,
            routers.internal,
            header_timeout,
            stop_rx.clone(),
        ));
        let public = tokio::spawn(gateway::serve(
            listener,
            routers.public,
            header_timeout,
            stop_rx,
        ));
        // PID 1 in its image: SIGTERM stops accepting, the requests in flight finish, exit 0.
        stop_signal.await;
        tracing::info!("stopping: finishing the requests in flight");
        let _ = stop_tx.send(true);
        public.await??;
        internal.abort();
        Ok(())
    }
}

impl Backend for Cluster {
    fn append(&self, records: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Value>, Partial>> {
        // One publish per event, in order (Dapr's publish is per event; its bulk publish is
        // not atomic either): stop at the first failure and say which were stored.
        Box::pin(async move {
            let mut out = Vec::with_capacity(records.len());
            for (i, r) in records.into_iter().enumerate() {
                let stop = |out: Vec<Value>, reason: String| Partial {
                    stored: out,
                    reason,
                };
                let mut url = match reqwest::Url::parse(&self.dapr) {
                    Ok(u) => u,
                    Err(e) => return Err(stop(out, e.to_string())),
                };
                let Ok(mut segments) = url.path_segments_mut() else {
                    return Err(stop(out, "bad Dapr URL".into()));
                };
                segments.extend(["v1.0", "publish", &self.pubsub, &r.topic]);
                drop(segments);
                if let Some(k) = &r.key {
                    url.query_pairs_mut()
                        .append_pair("metadata.partitionKey", k);
                }
                let mut req = self
                    .client
                    .post(url)
                    .header("content-type", "application/cloudevents+json")
                    .body(r.value);
                if let Some(tp) = &r.traceparent {
                    req = req.header("traceparent", tp);
                }
                if let Some(t) = &self.token {
                    req = req.header("dapr-api-token", t);
                }
                match req.send().await {
                    Ok(a) if a.status().is_success() => out.push(json!({"topic": r.topic})),
                    Ok(a) => {
                        let status = a.status();
                        return Err(stop(
                            out,
                            format!(
                                "event {i} (and those after it) not published: Dapr answered {status}"
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(stop(
                            out,
                            format!("event {i} (and those after it) not published: {e}"),
                        ));
                    }
                }
            }
            Ok(out)
        })
    }

    fn upstream<'a>(
        &'a self,
        name: &'a str,
        _queued: &'a metrics::Gauge,
    ) -> BoxFuture<'a, Result<Upstream, Refusal>> {
        Box::pin(async move {
            match self.routes.get(name) {
                Some(base) => Ok(Upstream {
                    base: base.clone(),
                    timeout: self.timeout,
                    _guard: Box::new(()),
                }),
                None => Err(Refusal {
                    status: axum::http::StatusCode::NOT_FOUND,
                    code: "unknown_function",
                    message: format!("no route for function {name:?} (--function NAME=URL)"),
                }),
            }
        })
    }

    fn is_http_function(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    fn functions(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }

    fn replays_async(&self) -> bool {
        false
    }

    fn status(&self) -> Option<Value> {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;
    use zerofn::testing::Recorder;

    fn gateway(dapr: &Recorder) -> axum::Router {
        let backend: Arc<dyn Backend> = Arc::new(Cluster {
            client: reqwest::Client::new(),
            dapr: dapr.url(),
            pubsub: "kafka-pubsub".into(),
            token: Some("sidecar-token".into()),
            routes: BTreeMap::from([("categorize".to_string(), "http://127.0.0.1:9".to_string())]),
            timeout: Duration::from_secs(5),
        });
        gateway::router(backend, open()).unwrap().public
    }

    fn open() -> gateway::Options {
        gateway::Options {
            max_body: 1 << 20,
            guard: None,
            limits: gateway::config::Limits::default(),
            internal_on_public: false,
        }
    }

    #[tokio::test]
    async fn events_are_published_through_dapr_keyed_and_traced() {
        let dapr = Recorder::start().await.unwrap();
        let event = json!({
            "specversion": "1.0", "id": "e-1", "source": "/s", "type": "todo.reminder.due", "subject": "u-7",
            "data": serde_json::from_str::<Value>(include_str!("../../contracts/events/todo.reminder.due/valid/rent.json")).unwrap(),
        });
        let response = gateway(&dapr)
            .oneshot(
                Request::post("/events")
                    .header("content-type", "application/cloudevents+json")
                    .header(
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    )
                    .body(Body::from(event.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let published = dapr.requests();
        assert_eq!(published.len(), 1);
        let p = &published[0];
        assert_eq!(
            p.path_and_query,
            "/v1.0/publish/kafka-pubsub/todo.reminder.due?metadata.partitionKey=u-7"
        );
        assert_eq!(p.header("content-type"), "application/cloudevents+json");
        assert_eq!(p.header("dapr-api-token"), "sidecar-token");
        assert!(
            p.header("traceparent")
                .starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "the caller's trace continues"
        );
        assert_eq!(p.json()["id"], "e-1");
        assert_eq!(p.json()["traceparent"], p.header("traceparent"));
    }

    #[tokio::test]
    async fn a_refused_publish_is_a_503_and_async_is_refused_where_nothing_replays_it() {
        let dapr = Recorder::start().await.unwrap();
        dapr.respond_with(500);
        let event = json!({"specversion": "1.0", "id": "e-2", "source": "/s", "type": "todo.reminder.due",
            "data": serde_json::from_str::<Value>(include_str!("../../contracts/events/todo.reminder.due/valid/rent.json")).unwrap()});
        let response = gateway(&dapr)
            .oneshot(
                Request::post("/events")
                    .header("content-type", "application/cloudevents+json")
                    .body(Body::from(event.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            503,
            "the caller retries; nothing is claimed as stored"
        );
        let response = gateway(&dapr)
            .oneshot(
                Request::post("/async/categorize/categorize")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 501);
        let response = gateway(&dapr)
            .oneshot(Request::get("/fn/unknown/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }

    #[tokio::test]
    async fn a_batch_that_fails_midway_says_which_events_were_stored() {
        // A sidecar that takes the first publish and refuses the rest.
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let sidecar = axum::Router::new().fallback(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    axum::http::StatusCode::NO_CONTENT
                } else {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, sidecar).await });
        let backend: Arc<dyn Backend> = Arc::new(Cluster {
            client: reqwest::Client::new(),
            dapr: format!("http://{addr}"),
            pubsub: "kafka-pubsub".into(),
            token: None,
            routes: BTreeMap::new(),
            timeout: Duration::from_secs(5),
        });
        let data: Value = serde_json::from_str(include_str!(
            "../../contracts/events/todo.reminder.due/valid/rent.json"
        ))
        .unwrap();
        let batch: Vec<Value> = (1..=3)
            .map(|i| json!({"specversion": "1.0", "id": format!("b-{i}"), "source": "/s", "type": "todo.reminder.due", "data": data}))
            .collect();
        let response = gateway::router(backend, open())
            .unwrap()
            .public
            .oneshot(
                Request::post("/events")
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(Body::from(Value::Array(batch).to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 207);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let ids = |k: &str| -> Vec<String> {
            body[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids("accepted"), vec!["b-1"], "{body}");
        assert_eq!(ids("failed"), vec!["b-2", "b-3"], "{body}");
        assert_eq!(body["failed"][0]["error"], "not_stored");
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "stopped at the first failure"
        );
    }
}
