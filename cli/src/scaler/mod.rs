//! `zerofn scaler`: a KEDA external push scaler for Kafka consumer-group lag.
//!
//! KEDA's built-in `kafka` trigger polls (every `pollingInterval`, 15–30 s), so a function at zero
//! notices its first event that late. This server implements KEDA's `externalscaler.proto` for
//! the `external-push` trigger: `StreamIsActive` watches the log end of each group's topic every
//! `--watch-every` (100 ms) and pushes `true` as soon as there is lag; `IsActive`, `GetMetricSpec`
//! and `GetMetrics` answer as KEDA's kafka scaler would for the same state (the same metadata
//! keys, and the arithmetic of [`crate::lag`], which the local engine's scaler uses too).

pub(crate) mod metadata;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use crate::kafka::Offsets;
use crate::lag;
use metadata::Trigger;
use zerofn::instruments::ScalerInstruments;

/// The code generated from `proto/externalscaler.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub(crate) mod proto {
    tonic::include_proto!("externalscaler");
}

use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
    external_scaler_server::{ExternalScaler, ExternalScalerServer},
};

/// `zerofn scaler` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Scaler {
    /// Where KEDA connects (gRPC over plaintext HTTP/2 inside the cluster).
    #[arg(long, env = "ZEROFN_SCALER_LISTEN", default_value = "0.0.0.0:9600")]
    listen: SocketAddr,
    /// `/healthz` and `/metrics` (the lag read, reads that failed, the activity pushed).
    #[arg(long, default_value = "0.0.0.0:9601")]
    internal_listen: SocketAddr,
    /// How often a stream looks at its topic's log end.
    #[arg(long, default_value = "100ms", value_parser = crate::dev::duration)]
    watch_every: Duration,
    /// A librdkafka setting for every broker connection, KEY=VALUE, repeatable (e.g.
    /// security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512, sasl.username=zerofn-keda,
    /// ssl.ca.location=/etc/kafka/ca.crt). The SASL password comes from
    /// ZEROFN_SCALER_SASL_PASSWORD, never from the command line.
    #[arg(long = "kafka-setting", value_name = "KEY=VALUE")]
    kafka_settings: Vec<String>,
}

/// The environment variable holding the SASL password.
const ENV_SASL_PASSWORD: &str = "ZEROFN_SCALER_SASL_PASSWORD";

impl Scaler {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let _telemetry =
            zerofn::edge::Telemetry::init("zerofn-scaler").map_err(|e| anyhow::anyhow!("{e}"))?;
        let settings = crate::kafka::with_password(
            crate::kafka::settings(&self.kafka_settings, ENV_SASL_PASSWORD)?,
            ENV_SASL_PASSWORD,
        );
        let stop_signal = zerofn::shutdown_signal(); // installed before anything is served
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", self.listen))?;
        let internal = tokio::net::TcpListener::bind(self.internal_listen)
            .await
            .with_context(|| format!("--internal-listen {}: cannot bind", self.internal_listen))?;
        let instruments = Arc::new(ScalerInstruments::default());
        let metrics = instruments.clone();
        let routes = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move { metrics.render() }
                }),
            );
        tracing::info!(addr = %internal.local_addr()?, "internal listener (/healthz, /metrics)");
        tokio::spawn(async move {
            let _ = axum::serve(internal, routes).await;
        });
        tracing::info!(addr = %listener.local_addr()?, watch_every = ?self.watch_every, "scaler listening");
        let service = Service {
            offsets: Arc::new(Offsets::new(settings)),
            watch_every: self.watch_every,
            instruments,
        };
        tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop_signal)
            .await
            .context("the scaler's server failed")?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[derive(Debug)]
struct Service {
    offsets: Arc<Offsets>,
    watch_every: Duration,
    instruments: Arc<ScalerInstruments>,
}

/// What a trigger's group is behind by now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Measure {
    /// Lag summed over the topic's partitions.
    total: u64,
    /// KEDA's metric: the total, capped by the partitions.
    metric: u64,
}

async fn measure(
    offsets: &Offsets,
    instruments: &ScalerInstruments,
    t: &Trigger,
) -> Result<Measure, Status> {
    let positions = match offsets
        .positions(&t.bootstrap_servers, &t.consumer_group, &t.topic)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            instruments.read(&t.consumer_group, &t.topic, None);
            return Err(Status::unavailable(e));
        }
    };
    let total = positions
        .iter()
        .map(|p| lag::partition_lag(p.end, p.committed, t.rules))
        .sum();
    let partitions =
        (!t.allow_idle_consumers).then(|| u32::try_from(positions.len()).unwrap_or(u32::MAX));
    instruments.read(&t.consumer_group, &t.topic, Some(total));
    Ok(Measure {
        total,
        metric: lag::capped(total, partitions, t.lag_threshold),
    })
}

fn trigger(r: &ScaledObjectRef) -> Result<Trigger, Status> {
    metadata::parse(&r.scaler_metadata).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The metric's name: `kafka-<topic>`, lower-case letters, digits and dashes (KEDA prefixes it
/// with the trigger's index).
fn metric_name(t: &Trigger) -> String {
    let topic: String = t
        .topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("kafka-{topic}")
}

#[tonic::async_trait]
impl ExternalScaler for Service {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let t = trigger(request.get_ref())?;
        let m = measure(&self.offsets, &self.instruments, &t).await?;
        Ok(Response::new(IsActiveResponse {
            result: lag::is_active(m.total, t.activation_lag_threshold),
        }))
    }

    type StreamIsActiveStream = ReceiverStream<Result<IsActiveResponse, Status>>;

    /// The state now, then every change, until KEDA hangs up. A failed read is logged and
    /// read again; the last state stands meanwhile.
    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let r = request.into_inner();
        let t = trigger(&r)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let offsets = self.offsets.clone();
        let instruments = self.instruments.clone();
        let every = self.watch_every;
        tokio::spawn(async move {
            let mut last: Option<bool> = None;
            loop {
                match measure(&offsets, &instruments, &t).await {
                    Ok(m) => {
                        let active = lag::is_active(m.total, t.activation_lag_threshold);
                        if last != Some(active) {
                            tracing::info!(scaled_object = %r.name, namespace = %r.namespace, group = %t.consumer_group, topic = %t.topic, lag = m.total, active, "activity");
                            instruments.active(&t.consumer_group, &t.topic, active);
                            if tx
                                .send(Ok(IsActiveResponse { result: active }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            last = Some(active);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(scaled_object = %r.name, group = %t.consumer_group, topic = %t.topic, error = %e.message(), "cannot read the lag; trying again");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let t = trigger(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: metric_name(&t),
                target_size: i64::try_from(t.lag_threshold).unwrap_or(i64::MAX),
                target_size_float: t.lag_threshold as f64,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let r = request.into_inner();
        let Some(object) = r.scaled_object_ref.as_ref() else {
            return Err(Status::invalid_argument("scaledObjectRef: required"));
        };
        let t = trigger(object)?;
        let m = measure(&self.offsets, &self.instruments, &t).await?;
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: if r.metric_name.is_empty() {
                    metric_name(&t)
                } else {
                    r.metric_name
                },
                metric_value: i64::try_from(m.metric).unwrap_or(i64::MAX),
                metric_value_float: m.metric as f64,
            }],
        }))
    }

    type StreamMetricSpecStream = ReceiverStream<Result<GetMetricSpecResponse, Status>>;

    /// The metric's target never changes here: KEDA falls back to `GetMetricSpec`.
    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        Err(Status::unimplemented(
            "the target (lagThreshold) is fixed per trigger: use GetMetricSpec",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn metric_names_are_kubernetes_safe() {
        let t = metadata::parse(
            &[
                ("bootstrapServers", "b"),
                ("consumerGroup", "g"),
                ("topic", "todo.Task_created"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
        .unwrap();
        assert_eq!(metric_name(&t), "kafka-todo-task-created");
    }
}
