//! The handler as the pipeline calls it: its data type erased, run in its own task (panics
//! caught), bounded by the handler timeout, and aborted when the attempt is dropped.

use serde_json::Value;
use std::{future::Future, pin::Pin, time::Instant};
use tracing::Instrument;

use super::Intake;
use crate::{
    Transaction,
    emit::Emit,
    event::{Context, Event, EventData},
    handler::Handler,
    outcome::{Failure, FailureKind},
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A [`Handler`] with its data type erased, so the pipeline is not generic.
pub(super) trait ErasedHandler: Send + Sync {
    fn call(
        &self,
        ctx: Context,
        data: Value,
        tx: Option<Transaction>,
    ) -> BoxFuture<Result<Vec<Emit>, Failure>>;
}

impl<H: Handler> ErasedHandler for H {
    fn call(
        &self,
        ctx: Context,
        data: Value,
        tx: Option<Transaction>,
    ) -> BoxFuture<Result<Vec<Emit>, Failure>> {
        let data = match H::Data::from_event(&ctx.ty, data) {
            Ok(d) => d,
            Err(e) => {
                let f = Failure::new(
                    FailureKind::UndecodableData,
                    format!("data does not decode into the handler's input type: {e}"),
                );
                return Box::pin(async move { Err(f) });
            }
        };
        let fut = Handler::call(self, Event { data, ctx, tx });
        Box::pin(async move {
            fut.await.map_err(|e| {
                let kind = if e.is_permanent() {
                    FailureKind::HandlerPermanent
                } else {
                    FailureKind::HandlerRetryable
                };
                Failure {
                    kind,
                    message: e.to_string(),
                    chain: e.messages(),
                }
            })
        })
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Intake {
    pub(super) async fn call_handler(
        &self,
        ctx: Context,
        data: Value,
        tx: Option<Transaction>,
        span: tracing::Span,
    ) -> Result<Vec<Emit>, Failure> {
        let timeout = self.config.handler_timeout;
        let (ty, running) = (ctx.ty.clone(), Instant::now());
        // Aborted when dropped: a stopped attempt (lost lease, drain timeout) stops its handler.
        let mut task = AbortOnDrop(tokio::spawn(
            self.handler.call(ctx, data, tx).instrument(span),
        ));
        let finished = tokio::time::timeout(timeout, &mut task.0).await;
        self.instruments.handler_duration(&ty, running.elapsed());
        match finished {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                let message = if join.is_panic() {
                    let panic = join.into_panic();
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(non-string panic payload)".into())
                } else {
                    "handler task was cancelled".into()
                };
                Err(Failure::new(
                    FailureKind::HandlerPanic,
                    format!("handler panicked: {message}"),
                ))
            }
            Err(_) => Err(Failure::new(
                FailureKind::HandlerTimeout,
                format!("handler did not finish within {timeout:?} (ZEROFN_HANDLER_TIMEOUT)"),
            )),
        }
    }
}
