//! The intake's side of HTTP writes ([`crate::Write`]): an idempotency record claimed for the
//! write, the handler's transaction, and at commit the outbox rows in that transaction.

use super::Intake;
use crate::{
    Emit, Transaction,
    config::CrashPoint,
    event::Context,
    idempotency::StoredOutput,
    outcome::{Failure, FailureKind},
    telemetry::TraceContext,
};

/// A write in progress.
pub(crate) struct Begun {
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) cause: Context,
    pub(crate) tx: Transaction,
}

impl Intake {
    /// Claim a record for a new write and open its transaction.
    pub(crate) async fn begin_write(&self) -> Result<Begun, Failure> {
        let id = uuid::Uuid::now_v7().to_string();
        let key = super::key::hashed(&format!("write:{id}"), None);
        let owner = uuid::Uuid::new_v4().to_string();
        let store_down = |e: crate::idempotency::StoreError| {
            Failure::new(FailureKind::StoreUnavailable, e.to_string())
        };
        self.store
            .claim(&key, &owner, self.config.lease, self.config.idempotency_ttl)
            .await
            .map_err(store_down)?;
        let tx = self
            .store
            .begin()
            .await
            .map_err(store_down)?
            .ok_or_else(|| {
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
        Ok(Begun {
            key,
            owner,
            cause,
            tx,
        })
    }

    /// Commit the write's rows with its events in the outbox, then publish them.
    pub(crate) async fn commit_write(
        &self,
        key: &str,
        owner: &str,
        cause: &Context,
        emits: Vec<Emit>,
        tx: Transaction,
    ) -> Result<(), Failure> {
        let outputs = emits
            .into_iter()
            .enumerate()
            .map(|(seq, e)| self.outgoing(cause, u32::try_from(seq).unwrap_or(u32::MAX), e))
            .collect::<Result<Vec<StoredOutput>, _>>()?;
        self.crash_point(CrashPoint::AfterHandler);
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
        if let Err(f) = self.publish_outputs(key, &outputs).await {
            let _ = self.store.release(key, owner).await;
            tracing::warn!(reason = %f.message, "committed, but publishing failed; the outbox relay will publish");
        }
        Ok(())
    }
}
