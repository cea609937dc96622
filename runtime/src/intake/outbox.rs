//! The transactional outbox: events a handler emits become stored outputs (checked against the
//! manifest and their contracts, ids derived from the cause), committed with the idempotency
//! record, then published in order and marked sent; the relay publishes what a failed publish
//! left behind.

use std::collections::BTreeSet;
use tracing::Instrument;

use super::Intake;
use crate::{
    emit::{Emit, EmitJob},
    event::Context,
    idempotency::{JobOutput, StoredOutput, now_ms},
    outcome::{Failure, FailureKind},
};

impl Intake {
    /// Turn an [`Emit`] into the CloudEvent to publish, checking it against the manifest and
    /// its contract first: an emitted event that breaks its contract is a handler bug.
    fn outgoing(&self, cause: &Context, seq: u32, e: Emit) -> Result<StoredOutput, Failure> {
        let bug = |msg: String| Failure::new(FailureKind::HandlerPermanent, msg);
        // Derived from the cause, so a re-run after a crash emits the same ids.
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}#{}#{seq}", cause.source, cause.id).as_bytes(),
        )
        .to_string();
        if let Some(EmitJob::Cancel { name } | EmitJob::At { name, .. }) = &e.job
            && name.starts_with(crate::manifest::SCHEDULE_JOB_PREFIX)
        {
            return Err(bug(format!(
                "the handler named a job {name:?}: names that begin with {:?} belong to the \
                 schedules declared in function.toml",
                crate::manifest::SCHEDULE_JOB_PREFIX
            )));
        }
        let (pubsub, topic, job) = match &e.job {
            Some(EmitJob::Cancel { name }) => {
                return Ok(StoredOutput {
                    seq,
                    event_id: id,
                    event_type: "zerofn.job.cancel".into(),
                    pubsub: String::new(),
                    topic: String::new(),
                    body: String::new(),
                    traceparent: cause.traceparent.clone(),
                    partition_key: None,
                    job: Some(JobOutput {
                        name: name.clone(),
                        due: None,
                    }),
                });
            }
            Some(EmitJob::At { name, due }) => {
                if !self.manifest.jobs.contains(&e.ty) {
                    return Err(bug(format!(
                        "the handler scheduled {:?}, which function.toml does not declare under [[jobs]]",
                        e.ty
                    )));
                }
                let job = JobOutput {
                    name: name.clone(),
                    due: Some(due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                };
                (String::new(), String::new(), Some(job))
            }
            None => {
                let target = self.manifest.publish_for(&e.ty).ok_or_else(|| {
                    bug(format!(
                        "the handler emitted {:?}, which function.toml does not declare under [[publishes]]",
                        e.ty
                    ))
                })?;
                (target.pubsub.clone(), target.topic.clone(), None)
            }
        };
        if let Some(Err(v)) = self.contracts.validate(&e.ty, &e.data) {
            return Err(bug(format!(
                "the handler emitted {} with data that violates its contract: {v}",
                e.ty
            )));
        }
        let mut builder = <cloudevents::EventBuilderV10 as cloudevents::EventBuilder>::new()
            .id(id.clone())
            .source(self.source.clone())
            .ty(e.ty.clone())
            .time(chrono::Utc::now())
            .data("application/json", e.data)
            .extension("traceparent", cause.traceparent.clone())
            .extension("causationid", cause.id.clone())
            .extension(
                "correlationid",
                cause
                    .extension("correlationid")
                    .unwrap_or(&cause.id)
                    .to_string(),
            );
        if let Some(subject) = &e.subject {
            builder = builder.subject(subject.clone());
        }
        if let Some(key) = &e.partition_key {
            builder = builder.extension("partitionkey", key.clone());
        }
        // A handler's own extensions may not override the ones the runtime sets.
        let mut reserved = BTreeSet::from([
            "traceparent",
            "causationid",
            "correlationid",
            "partitionkey",
        ]);
        for (name, value) in &e.extensions {
            if reserved.insert(name.as_str()) {
                builder = builder.extension(name, value.clone());
            }
        }
        let event = cloudevents::EventBuilder::build(builder).map_err(|err| {
            bug(format!(
                "the emitted {} is not a valid CloudEvent: {err}",
                e.ty
            ))
        })?;
        let body = serde_json::to_string(&event)
            .map_err(|err| bug(format!("the emitted {} cannot be serialised: {err}", e.ty)))?;
        Ok(StoredOutput {
            seq,
            event_id: id,
            event_type: e.ty,
            pubsub,
            topic,
            body,
            traceparent: cause.traceparent.clone(),
            partition_key: e.partition_key,
            job,
        })
    }

    /// The stored outputs of what a handler (or an HTTP write) caused by `cause` emitted, in
    /// order: checked against the manifest and the contracts, ids derived from the cause.
    pub(super) fn outputs_of(
        &self,
        cause: &Context,
        emits: Vec<Emit>,
    ) -> Result<Vec<StoredOutput>, Failure> {
        emits
            .into_iter()
            .enumerate()
            .map(|(seq, e)| self.outgoing(cause, u32::try_from(seq).unwrap_or(u32::MAX), e))
            .collect()
    }

    /// Publish `outputs` of `key` with the publish right `owner` holds; when a publish fails,
    /// give the right up at once, so the next delivery (or the relay) publishes the rest
    /// instead of waiting for the lease.
    pub(super) async fn publish_or_release(
        &self,
        key: &str,
        owner: &str,
        outputs: &[StoredOutput],
    ) -> Result<(), Failure> {
        let published = self.publish_outputs(key, outputs).await;
        if published.is_err()
            && let Err(e) = self.store.release(key, owner).await
        {
            tracing::warn!(error = %e, "could not release the publish right; the relay waits for the lease");
        }
        published
    }

    /// Publish outbox entries in order, marking each sent.
    async fn publish_outputs(&self, key: &str, outputs: &[StoredOutput]) -> Result<(), Failure> {
        for o in outputs {
            let publish_span = tracing::info_span!(
                "zerofn.publish",
                otel.name = format!("{} publish", o.topic),
                otel.kind = "producer",
                messaging.destination.name = %o.topic,
                messaging.message.id = %o.event_id,
            );
            self.publisher
                .publish(o)
                .instrument(publish_span)
                .await
                .map_err(|reason| {
                    self.instruments.publish_failed(&o.topic);
                    Failure::new(
                        FailureKind::PublishFailed,
                        format!(
                            "publishing {} ({}) failed: {reason}",
                            o.event_type, o.event_id
                        ),
                    )
                })?;
            if let Err(e) = self.store.mark_sent(key, o.seq).await {
                // Published but not marked: a redelivery publishes it again with the same id.
                tracing::warn!(error = %e, event_id = %o.event_id, "could not mark an output as sent");
            }
        }
        Ok(())
    }

    /// The outbox relay, one round: publish the outputs of completed events that are still
    /// unsent (their publish failed and no redelivery came), taking the publish right first so
    /// a live worker is never raced and no record is created or revived. Returns how many
    /// outputs were published.
    pub(crate) async fn relay_once(&self) -> usize {
        // A second's slack: an event just completed is its own worker's to publish.
        self.relay_round(now_ms() - 1000).await.published
    }

    /// Before a replica exits: relay until no output is left unsent, a publish fails (the
    /// broker is down; the next replica's relay retries), or `deadline`. A dead worker's
    /// publish right lapses within a lease, shorter than the shutdown grace, so a replica
    /// scaled to zero does not leave behind outputs it could have published: nothing else
    /// would wake the function to publish them.
    pub(crate) async fn flush_outbox(&self, deadline: std::time::Instant) {
        loop {
            let round = self.relay_round(now_ms()).await;
            if round.failed {
                tracing::warn!(
                    "exiting with outputs unsent (a publish failed); the next replica's relay publishes them"
                );
                return;
            }
            match self.store.has_unsent().await {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not list unsent outputs before exiting");
                    return;
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "exiting with outputs unsent (their publish right is still held); the next replica's relay publishes them"
                );
                return;
            }
            tokio::time::sleep(FLUSH_POLL.min(deadline - now)).await;
        }
    }

    /// One relay round over keys completed before `before_ms`.
    async fn relay_round(&self, before_ms: i64) -> Relayed {
        let mut round = Relayed::default();
        let keys = match self.store.keys_with_unsent(before_ms, 100).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay could not list unsent outputs");
                round.failed = true;
                return round;
            }
        };
        for key in keys {
            let owner = uuid::Uuid::new_v4().to_string();
            match self
                .store
                .take_unsent(&key, &owner, self.config.lease)
                .await
            {
                Ok(unsent) if unsent.is_empty() => {}
                // On a failure the relay keeps the right until its lease ends: that key waits a
                // lease (a back-off) while the next rounds reach the others.
                Ok(unsent) => match self.publish_outputs(&key, &unsent).await {
                    Ok(()) => {
                        round.published += unsent.len();
                        tracing::info!(
                            outputs = unsent.len(),
                            "outbox relay published outputs left unsent"
                        );
                    }
                    Err(f) => {
                        round.failed = true;
                        tracing::warn!(reason = %f.message, "outbox relay could not publish; will try again after a lease");
                    }
                },
                Err(e) => {
                    round.failed = true;
                    tracing::warn!(error = %e, "outbox relay could not take a record");
                }
            }
        }
        round
    }
}

/// What one relay round did.
#[derive(Default)]
struct Relayed {
    published: usize,
    /// A list, a take or a publish failed.
    failed: bool,
}

/// How often [`Intake::flush_outbox`] looks again for a publish right to lapse.
const FLUSH_POLL: std::time::Duration = std::time::Duration::from_millis(200);
