//! The intake's side of HTTP writes ([`crate::Write`]): an idempotency record claimed for the
//! write, the handler's transaction, and at commit the outbox rows in that transaction.

use super::Intake;
use crate::{
    Emit, Transaction,
    config::CrashPoint,
    event::Context,
    idempotency::{Claim, StoredResponse},
    outcome::{Failure, FailureKind},
    telemetry::TraceContext,
};

/// A write in progress.
pub(crate) struct Begun {
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) cause: Context,
    pub(crate) tx: Transaction,
    /// Renews the write's lease until it ends, so a long write is never taken over by a repeat.
    pub(crate) heartbeat: super::Heartbeat,
}

/// What a write's start found.
pub(crate) enum Started {
    /// A new write (or one whose earlier try never committed).
    Begun(Box<Begun>),
    /// The same `Idempotency-Key` was committed before: its first response.
    Replay(StoredResponse),
}

impl Intake {
    /// Claim a record for a write and open its transaction. With `idempotency` (the request's
    /// method and path, and its `Idempotency-Key`), a write committed before is not run again.
    pub(crate) async fn begin_write(
        &self,
        idempotency: Option<(&str, &str)>,
    ) -> Result<Started, Failure> {
        let id = uuid::Uuid::now_v7().to_string();
        let key = match idempotency {
            Some((request, k)) => {
                super::key::hashed(&format!("write-key:{request}\u{1f}{k}"), None)
            }
            None => super::key::hashed(&format!("write:{id}"), None),
        };
        let owner = uuid::Uuid::new_v4().to_string();
        let store_down = |e: crate::idempotency::StoreError| {
            Failure::new(FailureKind::StoreUnavailable, e.to_string())
        };
        let claim = self
            .store
            .claim(&key, &owner, self.config.lease, self.config.idempotency_ttl)
            .await
            .map_err(store_down)?;
        match claim {
            Claim::Acquired { .. } => {}
            Claim::Done { .. } | Claim::Dead { .. } => {
                let kept = self.store.response(&key).await.map_err(store_down)?;
                return Ok(Started::Replay(kept.unwrap_or(StoredResponse {
                    status: 204,
                    body: String::new(),
                })));
            }
            Claim::InFlight { .. } => {
                return Err(Failure::new(
                    FailureKind::InFlight,
                    "a request with this Idempotency-Key is being handled right now; retry later",
                ));
            }
        }
        // Claimed first (on SQLite the transaction below holds the write lock); released again
        // when no transaction can be had, so a retry of the same key is not answered 409.
        let begun = self.store.begin().await;
        if !matches!(begun, Ok(Some(_))) {
            self.abandon_write(&key, &owner).await;
        }
        let tx = begun.map_err(store_down)?.ok_or_else(|| {
            Failure::new(
                FailureKind::StoreUnavailable,
                format!(
                    "function {} writes through zerofn::Write, which needs a SQL store \
                     (ZEROFN_STORE=sqlite:… or postgres://…), not {}",
                    self.manifest.name,
                    crate::idempotency::sql::redact(&self.config.store)
                ),
            )
        })?;
        let cause = Context {
            id,
            source: format!("{}/http", self.source),
            ty: "zerofn.http.write".into(),
            subject: None,
            time: Some(chrono::Utc::now()),
            datacontenttype: None,
            extensions: Default::default(),
            traceparent: crate::telemetry::traceparent_of(&tracing::Span::current())
                .unwrap_or_else(|| TraceContext::root().to_string()),
            tracestate: None,
            attempt: 1,
            kafka: None,
        };
        let heartbeat = super::Heartbeat::start(
            self.store.clone(),
            key.clone(),
            owner.clone(),
            self.config.lease,
        );
        Ok(Started::Begun(Box::new(Begun {
            key,
            owner,
            cause,
            tx,
            heartbeat,
        })))
    }

    /// A write dropped without a commit: its record is released at once (a retry with the same
    /// `Idempotency-Key` runs again instead of waiting for the lease).
    pub(crate) async fn abandon_write(&self, key: &str, owner: &str) {
        if let Err(e) = self
            .store
            .fail(key, owner, "the request ended without committing its write")
            .await
        {
            tracing::debug!(error = %e, "could not release an uncommitted write");
        }
    }

    /// Commit the write's rows with its events in the outbox, then publish them.
    pub(crate) async fn commit_write(
        &self,
        key: &str,
        owner: &str,
        cause: &Context,
        emits: Vec<Emit>,
        tx: Transaction,
        response: Option<&StoredResponse>,
    ) -> Result<(), Failure> {
        let outputs = self.outputs_of(cause, emits)?;
        self.crash_point(CrashPoint::AfterHandler);
        if let Some(r) = response {
            self.store
                .save_response(&tx, key, r)
                .await
                .map_err(|e| Failure::new(FailureKind::StoreUnavailable, e.to_string()))?;
        }
        let committed = self
            .store
            .complete(key, owner, &outputs, Some(tx), self.config.idempotency_ttl)
            .await
            .map_err(|e| Failure::new(FailureKind::StoreUnavailable, e.to_string()))?;
        if !committed {
            return Err(Failure::new(
                FailureKind::StoreUnavailable,
                "the write's record was taken over before it committed; nothing was written",
            ));
        }
        self.crash_point(CrashPoint::AfterCommit);
        if let Err(f) = self.publish_or_release(key, owner, &outputs).await {
            tracing::warn!(reason = %f.message, "committed, but publishing failed; the outbox relay will publish");
        }
        Ok(())
    }
}
