//! The [`Handler`] trait and [`handler_fn`], which turns a plain `async fn` into one.

use std::{future::Future, marker::PhantomData};

use crate::{
    HandlerError,
    emit::{Emit, IntoEmits},
    event::{Event, EventData},
};

/// Business logic for one event. Implemented for you by [`handler_fn`].
///
/// The handler is polled on its delivery's own task, so it must not block its thread: blocking
/// I/O, `std::thread::sleep` or long CPU work belong in `tokio::task::spawn_blocking`. The
/// handler timeout, a lost lease and a drain stop an attempt only when the handler yields (at an
/// `.await`); a handler that blocks holds its delivery — and a worker thread — until it returns.
pub trait Handler: Send + Sync + 'static {
    /// The decoded `data` type.
    type Data: EventData;

    /// Handle one event; the returned events are published after it succeeds.
    fn call(
        &self,
        event: Event<Self::Data>,
    ) -> impl Future<Output = Result<Vec<Emit>, HandlerError>> + Send + 'static;
}

/// Wrap an `async fn(Event<T>) -> Result<R, HandlerError>` as a [`Handler`], where `R` is
/// `()`, [`Emit`], `Option<Emit>` or `Vec<Emit>`.
pub fn handler_fn<F, T, Fut, R>(f: F) -> HandlerFn<F, T>
where
    F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
    T: EventData,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    R: IntoEmits,
{
    HandlerFn {
        f,
        _data: PhantomData,
    }
}

/// A [`Handler`] made from a function by [`handler_fn`].
pub struct HandlerFn<F, T> {
    f: F,
    _data: PhantomData<fn(T)>,
}

impl<F, T> std::fmt::Debug for HandlerFn<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerFn")
            .field("data", &std::any::type_name::<T>())
            .finish()
    }
}

impl<F, T, Fut, R> Handler for HandlerFn<F, T>
where
    F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
    T: EventData,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    R: IntoEmits,
{
    type Data = T;

    fn call(
        &self,
        event: Event<T>,
    ) -> impl Future<Output = Result<Vec<Emit>, HandlerError>> + Send + 'static {
        let fut = (self.f)(event);
        async move { fut.await.map(IntoEmits::into_emits) }
    }
}
