//! `zerofn gateway`: the gateway in a cluster. Events are published through the gateway's Dapr
//! sidecar (to the topic of their type, keyed by `partitionkey`/`subject`); `/fn/{name}` goes
//! to the function's Knative Service, whose activator holds requests while it scales from zero.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::gateway::{self, Backend, BoxFuture, Outgoing, Refusal, Upstream};

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
        let app = gateway::router(backend, self.max_body_bytes)?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", self.listen))?;
        tracing::info!(addr = %self.listen, "gateway listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    }
}

impl Backend for Cluster {
    fn append(&self, records: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Value>, String>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(records.len());
            for (i, r) in records.into_iter().enumerate() {
                let mut url = reqwest::Url::parse(&self.dapr).map_err(|e| e.to_string())?;
                url.path_segments_mut()
                    .map_err(|()| "bad Dapr URL".to_string())?
                    .extend(["v1.0", "publish", &self.pubsub, &r.topic]);
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
                        return Err(format!(
                            "event {i} (and those after it) not published: Dapr answered {}",
                            a.status()
                        ));
                    }
                    Err(e) => {
                        return Err(format!("event {i} (and those after it) not published: {e}"));
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

    fn status(&self) -> Option<Value> {
        None
    }
}
