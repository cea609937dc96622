//! Assembling a function process: config + manifest + contracts + handler → an HTTP app,
//! and serving it until shutdown.

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{
    future::Future,
    sync::{Arc, atomic::AtomicBool},
};

use tokio::net::TcpListener;

use crate::{
    Error,
    config::{Config, ConfigError, ENV_K_SINK, TransportKind},
    contract::Contracts,
    handler::Handler,
    idempotency,
    intake::Intake,
    manifest::{Manifest, ManifestSource},
    publish::{NoPublisher, Publisher},
    shutdown::Drain,
    transport::{self, AppState, dapr::DaprPublisher, knative::SinkPublisher},
};

/// A function ready to serve.
pub(crate) struct App {
    state: AppState,
}

impl App {
    /// `manifest` is `source` parsed (the caller needed it first, for the trace service name).
    pub(crate) async fn build<H: Handler>(
        config: Config,
        source: ManifestSource,
        manifest: Manifest,
        handler: H,
    ) -> Result<App, Error> {
        let manifest = Arc::new(manifest);
        let contracts = Contracts::embedded()?;
        check_contracts(&manifest, &contracts)?;
        let config = Arc::new(config);
        let client = transport::http_client(&config)?;
        // Dead-letter records are published too, so every Dapr function has a publisher; on
        // the HTTP transport a function that emits events must have a sink.
        let dapr = match (config.transport, &config.dapr_url) {
            (TransportKind::Dapr, Some(url)) => Some(Arc::new(DaprPublisher::new(
                client.clone(),
                url.clone(),
                config.dapr_api_token.clone(),
            ))),
            _ => None,
        };
        let publisher: Arc<dyn Publisher> = match (&dapr, config.transport, &config.sink) {
            (Some(dapr), _, _) => dapr.clone(),
            (None, TransportKind::Http, Some(sink)) => {
                Arc::new(SinkPublisher::new(client, sink.clone()))
            }
            _ if manifest.publishes.is_empty() => Arc::new(NoPublisher),
            _ => {
                return Err(ConfigError::new(
                    ENV_K_SINK,
                    "",
                    format!(
                        "function {} publishes {} but the http transport has no sink: set K_SINK \
                         to a CloudEvents endpoint, or run under Dapr (DAPR_HTTP_PORT)",
                        manifest.name,
                        manifest
                            .publishes
                            .iter()
                            .map(|p| p.ty.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .into());
            }
        };
        check_store(&config, &manifest)?;
        check_jobs(&config, &manifest)?;
        let store = idempotency::open(&config.store, &manifest.name, source.function_migrations())
            .await
            .map_err(|e| Error::Store {
                url: crate::idempotency::sql::redact(&config.store),
                reason: e.0,
            })?;
        let extra = source
            .own_routes(&manifest.name, store.pool())
            .map_err(|reason| {
                Error::from(ConfigError::new(
                    crate::config::ENV_STORE,
                    &config.store,
                    reason,
                ))
            })?;
        let intake = Intake::new(
            manifest.clone(),
            contracts,
            handler,
            publisher,
            store,
            config.clone(),
        );
        Ok(App {
            state: AppState {
                intake: Arc::new(intake),
                drain: Drain::default(),
                config,
                subscribed: Arc::new(AtomicBool::new(false)),
                extra,
                dapr,
            },
        })
    }

    pub(crate) fn router(&self) -> axum::Router {
        transport::router(self.state.clone())
    }

    /// Serve until `shutdown` resolves, then drain in-flight deliveries within the grace period.
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let state = self.state.clone();
        let manifest = state.intake.manifest();
        tracing::info!(
            function = %manifest.name,
            version = %manifest.version,
            transport = %state.config.transport,
            addr = %listener.local_addr().map_err(Error::Serve)?,
            "serving"
        );
        let purge = tokio::spawn(purge_expired(state.intake.store().clone()));
        let schedules = state.dapr.clone().map(|dapr| {
            tokio::spawn(transport::dapr::register_schedules(
                dapr,
                state.intake.manifest().schedules.clone(),
            ))
        });
        let relay = tokio::spawn(relay_outbox(
            state.intake.clone(),
            state.config.relay_interval,
        ));
        let drain = state.drain.clone();
        let grace = state.config.shutdown_grace;
        let intake = state.intake.clone();
        let parent = state.config.parent_pid;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let graceful = async move {
            // An orphaned replica (its engine is gone, so no answer can reach it) gives up on
            // its deliveries at once, releasing their claims for the next engine's replicas.
            let grace = tokio::select! {
                () = shutdown => grace,
                () = crate::shutdown::parent_gone(parent) => std::time::Duration::ZERO,
            };
            tracing::info!(in_flight = drain.in_flight(), grace = ?grace, "draining");
            let deadline = std::time::Instant::now() + grace;
            let mut result = drain.drain(grace).await;
            if let Err(in_flight) = result {
                // Give up on what is still running: each attempt stops, records itself as
                // failed and releases its claim, so another replica takes the event over at
                // once instead of waiting for a lease.
                tracing::warn!(
                    in_flight,
                    "drain timed out; releasing the claims still held"
                );
                intake.abandon();
                let _ = drain.drain(RELEASE_CLAIMS).await;
                result = Err(in_flight);
            }
            let _ = done_tx.send((result, deadline));
        };
        // hyper-util rather than `axum::serve`, for HTTP/1 half-close: a client that shuts its
        // write side after sending still gets its response.
        let router = self.router();
        let connections = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().half_close(true);
        tokio::pin!(graceful);
        let mut done_rx = done_rx;
        let mut begun = false;
        let drained = loop {
            tokio::select! {
                // The shutdown sequence: drain runs while the listener still answers (503 to new
                // deliveries, probes served); once drained, stop accepting.
                () = &mut graceful, if !begun => begun = true,
                drained = &mut done_rx => break drained.unwrap_or((Ok(()), std::time::Instant::now())),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let service = TowerToHyperService::new(router.clone());
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                        let conn = connections.watch(conn);
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        };
        let (drained, deadline) = drained;
        drop(listener);
        purge.abort();
        relay.abort();
        if let Some(schedules) = schedules {
            schedules.abort();
        }
        if drained.is_ok() {
            // Nothing is in flight: publish what a dead worker left unsent (once its right
            // lapses, within the grace), then close idle keep-alive connections.
            state.intake.flush_outbox(deadline).await;
            let _ = tokio::time::timeout(CLOSE_CONNECTIONS, connections.shutdown()).await;
        }
        // On a drain timeout the stuck deliveries' connections are not waited for: they were
        // never acknowledged, so the broker delivers them again.
        match drained {
            Err(in_flight) => Err(Error::DrainTimeout { grace, in_flight }),
            Ok(()) => {
                tracing::info!("drained; exiting");
                Ok(())
            }
        }
    }
}

/// How long a timed-out drain waits for abandoned attempts to release their claims.
const RELEASE_CLAIMS: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a drained server waits for idle keep-alive connections to close.
const CLOSE_CONNECTIONS: std::time::Duration = std::time::Duration::from_secs(5);

/// Publish outputs left unsent, every `interval`.
async fn relay_outbox(intake: Arc<Intake>, interval: std::time::Duration) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        intake.relay_once().await;
    }
}

/// Forget idempotency records past their TTL, hourly.
async fn purge_expired(store: Arc<dyn idempotency::Store>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        match store.purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency records removed"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired idempotency records"),
        }
    }
}

/// A function that declares `[store] sql = true` needs a SQL store. And in Kubernetes, an
/// event function's store must be shared by its replicas and outlive them:
/// an in-memory store or an SQLite file in the pod would forget what was applied on every
/// scale to zero, and each replica would keep its own, so a redelivery after a rebalance
/// would be applied twice. Refused (exit 64) unless allowed for a demo.
fn check_store(config: &Config, manifest: &Manifest) -> Result<(), Error> {
    let sql = config.store.starts_with("sqlite:") || config.store.starts_with("postgres");
    if manifest.needs_sql && !sql {
        return Err(ConfigError::new(
            crate::config::ENV_STORE,
            crate::idempotency::sql::redact(&config.store),
            format!(
                "function {} keeps its data in SQL (function.toml [store] sql = true): set \
                 ZEROFN_STORE to sqlite:<path> or postgres://…",
                manifest.name
            ),
        )
        .into());
    }
    let ephemeral = config.store == "memory" || config.store.starts_with("sqlite:");
    if config.in_kubernetes
        && ephemeral
        && !manifest.subscriptions.is_empty()
        && !config.allow_ephemeral_store
    {
        return Err(ConfigError::new(
            crate::config::ENV_STORE,
            &config.store,
            format!(
                "function {} consumes events in Kubernetes, where its store must be shared by every \
                 replica and survive scale to zero: set ZEROFN_STORE to postgres://… or redis://… \
                 (the platform chart provides one), or ZEROFN_ALLOW_EPHEMERAL_STORE=true for a demo \
                 that may apply events twice",
                manifest.name
            ),
        )
        .into());
    }
    Ok(())
}

/// Jobs and schedules go through the Dapr Jobs API: a function that has them needs the sidecar.
fn check_jobs(config: &Config, manifest: &Manifest) -> Result<(), Error> {
    let what = match (manifest.jobs.is_empty(), manifest.schedules.is_empty()) {
        (true, true) => return Ok(()),
        (false, _) => "schedules jobs (function.toml [[jobs]])",
        (true, false) => "has schedules (function.toml [[schedules]])",
    };
    if config.transport == crate::config::TransportKind::Http {
        return Err(ConfigError::new(
            crate::config::ENV_TRANSPORT,
            "http",
            format!(
                "function {} {what}, which go through the Dapr Jobs API: run it with a Dapr \
                 sidecar (DAPR_HTTP_PORT, or ZEROFN_TRANSPORT=dapr)",
                manifest.name
            ),
        )
        .into());
    }
    Ok(())
}

fn check_contracts(manifest: &Manifest, contracts: &Contracts) -> Result<(), Error> {
    let consumed = manifest.consumed_types().map(|t| (t, "consumes"));
    let published = manifest
        .publishes
        .iter()
        .map(|p| (p.ty.as_str(), "publishes"));
    let scheduled = manifest.jobs.iter().map(|t| (t.as_str(), "schedules"));
    let triggered = manifest
        .schedules
        .iter()
        .map(|s| (s.ty.as_str(), "is triggered by"));
    for (ty, role) in consumed.chain(published).chain(scheduled).chain(triggered) {
        if !contracts.knows(ty) {
            return Err(Error::Contract {
                ty: ty.to_string(),
                reason: format!(
                    "function {} {role} it, but contracts/events/{ty}/schema.json does not exist",
                    manifest.name
                ),
            });
        }
    }
    Ok(())
}
