//! Event intake: from a decoded CloudEvent to an [`Outcome`]. The fixed pipeline is
//! claim (idempotency, a short lease renewed by a heartbeat) → type check → contract → typed
//! decode → handler (panics caught, time-bounded, in a transaction with SQL stores) → contract
//! check of emitted events → complete (record + outbox, one commit) → publish → mark sent.
//! Failures are retried until `delivery.max_attempts`, then — and at once for permanent
//! failures — dead-lettered ([`policy`] decides). Transports turn the outcome into their reply.
//!
//! One concept a module: [`key`] (idempotency keys), [`policy`] (the decisions), [`lease`]
//! (the heartbeat), [`handler`] (calling the handler), [`outbox`] (emitted events and the
//! relay), [`dead_letters`] (records), [`observe`] (the log line).

mod dead_letters;
mod handler;
mod key;
mod lease;
mod observe;
mod outbox;
mod policy;
#[cfg(test)]
mod tests;
mod write;

pub(crate) use lease::Heartbeat;
pub(crate) use write::Started;

use serde_json::Value;
use std::{sync::Arc, time::Instant};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    codec::Decoded,
    config::{Config, CrashPoint},
    contract::Contracts,
    dead_letter::Original,
    event::{Context, KafkaCoordinates},
    handler::Handler,
    idempotency::{Claim, Store, StoreError, StoredOutput},
    instruments::Instruments,
    manifest::{KeyStrategy, Manifest},
    outcome::{Failure, FailureKind, Outcome},
    publish::Publisher,
    telemetry::TraceContext,
};
use handler::ErasedHandler;
use policy::Next;

/// Facts the transport knows about a delivery besides the event itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeliveryMeta {
    /// The HTTP `traceparent` of this hop.
    pub(crate) hop_traceparent: Option<String>,
    pub(crate) kafka: Option<KafkaCoordinates>,
    /// The pub/sub component and topic the event came from (Dapr).
    pub(crate) source_topic: Option<(String, String)>,
    /// The message as it arrived, for the dead-letter record.
    pub(crate) original: Option<Original>,
}

/// The pipeline shared by every transport.
pub(crate) struct Intake {
    manifest: Arc<Manifest>,
    /// Every type any subscription accepts (the HTTP transport's single route takes them all).
    consumed: Vec<String>,
    contracts: Contracts,
    handler: Arc<dyn ErasedHandler>,
    publisher: Arc<dyn Publisher>,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    source: String,
    instruments: Instruments,
    /// Set once the process gives up on its in-flight deliveries (drain timeout).
    abandon: watch::Sender<bool>,
}

impl Intake {
    pub(crate) fn new<H: Handler>(
        manifest: Arc<Manifest>,
        contracts: Contracts,
        handler: H,
        publisher: Arc<dyn Publisher>,
        store: Arc<dyn Store>,
        config: Arc<Config>,
    ) -> Self {
        let consumed: Vec<String> = manifest.consumed_types().map(str::to_string).collect();
        Intake {
            source: format!("/zerofn/{}", manifest.name),
            instruments: Instruments::new(&manifest.name, &consumed, Instant::now()),
            consumed,
            manifest,
            contracts,
            handler: Arc::new(handler),
            publisher,
            store,
            config,
            abandon: watch::channel(false).0,
        }
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub(crate) fn consumed_types(&self) -> &[String] {
        &self.consumed
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    /// Stop every attempt still running (the drain timed out): each aborts its handler, rolls
    /// its transaction back, records the attempt as failed and releases its claim, so the next
    /// delivery of the event takes over at once instead of waiting for a lease.
    pub(crate) fn abandon(&self) {
        self.abandon.send_replace(true);
    }

    /// Run one event through the pipeline, in one consumer span, and log one line about it.
    pub(crate) async fn process(
        &self,
        input: Result<Decoded, Failure>,
        accepted: &[String],
        meta: DeliveryMeta,
    ) -> Outcome {
        let span = observe::delivery_span(&self.manifest.name, &input, &meta);
        let body = async {
            let started = Instant::now();
            let in_flight = self.instruments.in_flight();
            in_flight.increment(1.0);
            self.instruments
                .received(input.as_ref().ok().map(|d| d.ctx.ty.as_str()));
            if let Some(cold) = self.instruments.cold_start() {
                tracing::info!(
                    cold_start_seconds = cold.as_secs_f64(),
                    "cold start: first event since the process started"
                );
            }
            let (outcome, ctx) = match input {
                // The same bytes may arrive whole next time: retried, never dead-lettered.
                Err(f) if f.kind.is_retryable() => (Outcome::Retry(f), None),
                Err(f) => (self.dead_letter(None, "", "", f, &meta, false).await, None),
                Ok(decoded) => {
                    let mut ctx = decoded.ctx;
                    let current = tracing::Span::current();
                    current.record("cloudevents.event_id", ctx.id.as_str());
                    current.record("messaging.message.id", ctx.id.as_str());
                    current.record("cloudevents.event_type", ctx.ty.as_str());
                    current.record("cloudevents.event_source", ctx.source.as_str());
                    ctx.kafka = meta.kafka.clone();
                    ctx.traceparent =
                        crate::telemetry::traceparent_of(&current).unwrap_or_else(|| {
                            TraceContext::continue_from([
                                meta.hop_traceparent.as_deref(),
                                decoded.trace_ext.as_deref(),
                            ])
                            .to_string()
                        });
                    let outcome = self.claimed(&mut ctx, decoded.data, accepted, &meta).await;
                    (outcome, Some(ctx))
                }
            };
            tracing::Span::current().record("zerofn.outcome", outcome.label());
            observe::log_outcome(&self.manifest.name, &outcome, ctx.as_ref(), started);
            self.instruments
                .handled(ctx.as_ref().map(|c| c.ty.as_str()), outcome.label());
            if let (
                Outcome::Success,
                Some(Context {
                    ty, time: Some(t), ..
                }),
            ) = (&outcome, ctx.as_ref())
            {
                self.instruments.latency(ty, *t);
            }
            in_flight.decrement(1.0);
            outcome
        };
        body.instrument(span).await
    }

    /// The idempotency key of an event. A `replayof` extension counts only when it names a
    /// dead letter of this function recorded for this very event (same key); a forged one is
    /// ignored, so a replay can never re-apply an applied event.
    async fn key(&self, ctx: &Context, data: &Value) -> String {
        let identity = key::identity(&self.manifest.idempotency_key, ctx, data);
        let plain = key::hashed(&identity, None);
        let Some(replay_of) = ctx.extension("replayof") else {
            return plain;
        };
        let genuine = match self.store.dead_letter_by_id(replay_of).await {
            Ok(Some(d)) => {
                d.function == self.manifest.name
                    && (d.key == plain
                        // Kafka coordinates change with every publish; an event that could
                        // not be decoded had no key.
                        || matches!(self.manifest.idempotency_key, KeyStrategy::Kafka)
                        || (d.key.is_empty()
                            && d.event_id.as_ref().is_none_or(|id| *id == ctx.id)))
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up the dead letter named by replayof; treating the event as no replay");
                false
            }
        };
        if genuine {
            key::hashed(&identity, Some(replay_of))
        } else {
            tracing::warn!(
                replayof = replay_of,
                "replayof names no dead letter of this event in this function: ignored"
            );
            plain
        }
    }

    /// Claim `key`; when another delivery holds it, wait once for its lease (a dead holder's
    /// lapses within one lease) and claim again.
    async fn claim(&self, key: &str, owner: &str) -> Result<Claim, Failure> {
        let claiming = Instant::now();
        let mut waited = false;
        let claimed = loop {
            let claimed = self
                .store
                .claim(key, owner, self.config.lease, self.config.idempotency_ttl)
                .instrument(tracing::info_span!(
                    "zerofn.claim",
                    otel.name = "idempotency claim"
                ))
                .await;
            match claimed {
                Ok(Claim::InFlight { lease_left }) if !waited => {
                    match policy::wait_for_lease(lease_left, self.config.lease) {
                        Some(wait) => {
                            waited = true;
                            tokio::time::sleep(wait).await;
                        }
                        None => break Ok(Claim::InFlight { lease_left }),
                    }
                }
                other => break other,
            }
        };
        self.instruments.store_op("claim", claiming.elapsed());
        claimed.map_err(|e| Failure::new(FailureKind::StoreUnavailable, e.to_string()))
    }

    /// The state machine of one delivery, from its claim to its outcome.
    async fn claimed(
        &self,
        ctx: &mut Context,
        data: Value,
        accepted: &[String],
        meta: &DeliveryMeta,
    ) -> Outcome {
        let key = self.key(ctx, &data).await;
        let owner = uuid::Uuid::new_v4().to_string();
        let claim = match self.claim(&key, &owner).await {
            Ok(c) => c,
            Err(f) => return Outcome::Retry(f),
        };
        let idempotency = match &claim {
            Claim::Acquired { .. } => "first",
            Claim::InFlight { .. } => "in_flight",
            Claim::Done { .. } | Claim::Dead { .. } => "duplicate",
        };
        tracing::Span::current().record("zerofn.idempotency", idempotency);
        let attempt = match claim {
            Claim::InFlight { .. } => {
                return Outcome::Retry(Failure::new(
                    FailureKind::InFlight,
                    "another delivery of this event is being handled right now",
                ));
            }
            Claim::Dead { .. } => return Outcome::Duplicate,
            Claim::Done { unsent } => {
                // Handled before. Outputs its worker could not publish are published here when
                // the publish right came with the claim; if that fails, the relay's job.
                if !unsent.is_empty()
                    && let Err(f) = self.publish_or_release(&key, &owner, &unsent).await
                {
                    tracing::warn!(reason = %f.message, "a duplicate could not publish outputs left unsent; the outbox relay will");
                }
                return Outcome::Duplicate;
            }
            Claim::Acquired { attempt } => attempt,
        };
        ctx.attempt = attempt;
        tracing::Span::current().record("zerofn.attempt", attempt);
        let max_attempts = self.manifest.delivery.max_attempts;
        if !policy::may_run(attempt, max_attempts) {
            ctx.attempt = attempt - 1; // attempts made; this one never runs
            let failure = Failure::new(
                FailureKind::WorkerLost,
                format!(
                    "{} attempts failed or ended without an outcome (the worker died: crash, OOM, \
                     kill), delivery.max_attempts = {max_attempts}: not run again",
                    attempt - 1
                ),
            );
            return self
                .dead_letter(Some(ctx), &key, &owner, failure, meta, true)
                .await;
        }
        self.crash_point(CrashPoint::AfterClaim);
        let mut heartbeat = Heartbeat::deferred(
            self.store.clone(),
            key.clone(),
            owner.clone(),
            self.config.lease,
        );
        let mut abandoned = self.abandon.subscribe();
        let attempted = tokio::select! {
            biased;
            r = self.attempt(ctx, data, accepted, &key, &owner) => r,
            () = heartbeat.lost() => Err(Failure::new(
                FailureKind::InFlight,
                "the lease was lost: another delivery took this event over; this attempt stopped without committing",
            )),
            _ = abandoned.wait_for(|a| *a) => Err(Failure::new(
                FailureKind::Draining,
                "the replica stopped (drain timeout) before the attempt finished; its claim was released",
            )),
        };
        let failure = match attempted {
            Ok(outputs) => {
                self.crash_point(CrashPoint::AfterCommit);
                // The heartbeat keeps the publish right while publishing.
                let published = heartbeat
                    .keep(self.publish_or_release(&key, &owner, &outputs))
                    .await;
                drop(heartbeat);
                // The record is done: a redelivery or the relay publishes what is unsent.
                return published.map_or_else(Outcome::Retry, |()| Outcome::Success);
            }
            Err(f) => f,
        };
        drop(heartbeat);
        let failed = if policy::counts_as_attempt(failure.kind) {
            self.store
                .fail(&key, &owner, &failure.message)
                .await
                .ok()
                .map(|a| a.failed)
        } else {
            None
        };
        match policy::after_failure(failure.kind, failed, max_attempts) {
            Next::Retry => Outcome::Retry(failure),
            Next::DeadLetter { exhausted } => {
                self.dead_letter(Some(ctx), &key, &owner, failure, meta, exhausted)
                    .await
            }
        }
    }

    /// One attempt: checks, handler, completion. Returns the outputs to publish.
    async fn attempt(
        &self,
        ctx: &Context,
        data: Value,
        accepted: &[String],
        key: &str,
        owner: &str,
    ) -> Result<Vec<StoredOutput>, Failure> {
        if !accepted.contains(&ctx.ty) {
            return Err(Failure::new(
                FailureKind::UnknownType,
                format!(
                    "event type {:?} is not consumed here: function {} accepts {}",
                    ctx.ty,
                    self.manifest.name,
                    accepted.join(", ")
                ),
            ));
        }
        match self.contracts.validate(&ctx.ty, &data) {
            Some(Ok(())) => {}
            Some(Err(v)) => {
                return Err(Failure::new(
                    FailureKind::SchemaViolation,
                    format!("data violates the contract of {}: {v}", ctx.ty),
                ));
            }
            None => {
                return Err(Failure::new(
                    FailureKind::UnknownType,
                    format!("event type {:?} has no contract", ctx.ty),
                ));
            }
        }
        let store_down = |e: StoreError| Failure::new(FailureKind::StoreUnavailable, e.to_string());
        let tx = self.store.begin().await.map_err(store_down)?;
        // The handler runs in its own span; what it emits carries that span's context.
        let handler_span =
            tracing::info_span!("zerofn.handler", otel.name = format!("handle {}", ctx.ty));
        let mut handled = ctx.clone();
        if let Some(tp) = crate::telemetry::traceparent_of(&handler_span) {
            handled.traceparent = tp;
        }
        let emits = self
            .call_handler(handled.clone(), data, tx.clone(), handler_span)
            .await?;
        let outputs = self.outputs_of(&handled, emits)?;
        self.crash_point(CrashPoint::AfterHandler);
        let completing = Instant::now();
        let completed = self
            .store
            .complete(key, owner, &outputs, tx, self.config.idempotency_ttl)
            .instrument(tracing::info_span!(
                "zerofn.complete",
                otel.name = "idempotency complete"
            ))
            .await;
        self.instruments.store_op("complete", completing.elapsed());
        if !completed.map_err(store_down)? {
            return Err(Failure::new(
                FailureKind::InFlight,
                "another delivery took this event over (the lease lapsed); this attempt's effects were rolled back",
            ));
        }
        Ok(outputs)
    }

    fn crash_point(&self, point: CrashPoint) {
        if self.config.crash_at == Some(point) {
            tracing::error!(?point, "ZEROFN_CRASH_AT: aborting the process");
            std::process::abort();
        }
    }
}
