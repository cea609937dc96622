//! The handler as the pipeline calls it: its data type erased, polled in the delivery's own
//! task with its panics caught, bounded by the handler timeout, and dropped (stopped) with the
//! attempt.

use serde_json::Value;
use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Instant,
};
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

/// A future whose panics are caught: `Err` with the panic's payload. The handler runs in the
/// delivery's task instead of a task of its own, so an event costs no spawn and no wake-up of
/// another worker thread; a panic still ends only that attempt. `F` is the erased handler's
/// boxed future (`Unpin`), so no second box.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let fut = Pin::new(&mut self.0);
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
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
        // Dropped with the attempt: a stopped attempt (lost lease, drain timeout) stops its
        // handler at its next await.
        let running_handler = CatchUnwind(self.handler.call(ctx, data, tx).instrument(span));
        let finished = tokio::time::timeout(timeout, running_handler).await;
        self.instruments.handler_duration(&ty, running.elapsed());
        match finished {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into());
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
