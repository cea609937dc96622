//! # zerofn: the runtime every zerofn function links
//!
//! A function is a plain `async fn` from a typed [`Event`] to the events it emits. The runtime
//! brings the rest: CloudEvents intake over Dapr or plain HTTP (Knative), contract validation
//! of `data`, retry and drop semantics each transport understands, publishing, health probes,
//! structured logs and a graceful drain on SIGTERM.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use zerofn::prelude::*;
//!
//! #[derive(Deserialize)]
//! struct BudgetExceeded { user_id: String, category: String, over_by_minor: i64 }
//!
//! #[derive(Serialize)]
//! struct AlertSent { user_id: String, title: String }
//!
//! async fn handle(event: Event<BudgetExceeded>) -> Result<Vec<Emit>, HandlerError> {
//!     let b = event.data;
//!     if b.over_by_minor <= 0 {
//!         // Never retried: dropped (and dead-lettered) with this reason.
//!         return Err(HandlerError::permanent("exceeded budget with nothing over"));
//!     }
//!     let alert = AlertSent { user_id: b.user_id, title: format!("{} budget exceeded", b.category) };
//!     Ok(vec![Emit::new("finance.alert.sent", &alert)?])
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), zerofn::Error> {
//!     zerofn::run(handler_fn(handle), zerofn::manifest!()).await
//! }
//! ```
//!
//! `zerofn::manifest!()` embeds the function's `function.toml` (subscriptions, publishes,
//! scaling, delivery policy) at build time. Everything else comes from the environment: see
//! [`config`] for every `ENV_*` key.
//!
//! | transport | chosen when | events arrive on | emitted events go to |
//! |---|---|---|---|
//! | Dapr | `DAPR_HTTP_PORT` is set (or `ZEROFN_TRANSPORT=dapr`) | each subscription's route, listed by `GET /dapr/subscribe` | `POST /v1.0/publish/{pubsub}/{topic}` on the sidecar |
//! | HTTP (Knative) | otherwise (or `ZEROFN_TRANSPORT=http`) | `POST /`, binary, structured or batch mode | `POST $K_SINK` |

#![deny(missing_docs)]

mod app;
pub mod backlog;
mod codec;
pub mod config;
pub mod contract;
pub mod dead_letter;
pub mod dlq;
pub mod edge;
mod emit;
mod error;
mod event;
mod fields;
mod handler;
mod idempotency;
pub mod instruments;
mod intake;
#[cfg(feature = "lambda")]
mod lambda;
pub mod manifest;
mod outcome;
mod publish;
pub mod schedule;
mod shutdown;
mod telemetry;
mod transport;
mod write;

#[cfg(feature = "testing")]
pub mod testing;

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

pub use emit::{Emit, IntoEmits};
pub use error::{BoxError, Error, ErrorKind, HandlerError, ResultExt};
pub use event::{Context, Event, EventData, KafkaCoordinates, Typed};
pub use fields::{Fields, invalid, query_pairs};
pub use handler::{Handler, HandlerFn, handler_fn};
pub use idempotency::{Transaction, TransactionGuard};
pub use manifest::{Manifest, ManifestSource, Routes, SqlRoutes};
pub use shutdown::signal as shutdown_signal;
pub use write::{IDEMPOTENCY_KEY, Write, WriteError, WriteRejection};

/// What a handler module needs: `use zerofn::prelude::*;`.
pub mod prelude {
    pub use crate::{Emit, Event, HandlerError, ResultExt, handler_fn};
    pub use tracing;
}

/// Run a function until SIGTERM: read the configuration from the environment, check the
/// manifest against the contracts, serve, and drain in-flight deliveries on shutdown.
///
/// Configuration, manifest and contract errors are printed (key, value, reason) and the
/// process exits with status 64 (`EX_USAGE`).
pub async fn run<H: Handler>(handler: H, manifest: ManifestSource) -> Result<(), Error> {
    let config = match config::Config::from_source(&config::Env) {
        Ok(c) => c,
        Err(e) => usage_exit(e.into()),
    };
    let parsed = match manifest.parse() {
        Ok(m) => m,
        Err(e) => usage_exit(e.into()),
    };
    let tracing = telemetry::init(&config, &parsed.name);
    let stop = shutdown::signal(); // installed before anything is served
    let addr = config.addr;
    let app = match app::App::build(config, manifest, parsed, handler).await {
        Ok(app) => app,
        Err(e) if e.is_usage() => usage_exit(e),
        Err(e) => return Err(e),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let served = app.serve(listener, stop).await;
    tracing.shutdown();
    served
}

/// Run an HTTP-triggered function: its own routes ([`ManifestSource::routes`]) with the
/// runtime's probes, `/metrics`, request spans, SQL store and drain, and no event intake.
/// Its `function.toml` has an `[http]` section and may have no subscriptions.
///
/// ```no_run
/// use axum::{Json, Router, routing::post};
///
/// fn routes(_db: Option<sqlx::AnyPool>) -> Router {
///     Router::new().route("/echo", post(|Json(v): Json<serde_json::Value>| async { Json(v) }))
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), zerofn::Error> {
///     zerofn::serve(zerofn::manifest!().routes(routes)).await
/// }
/// ```
///
/// Built with feature `lambda`, the same binary runs on AWS Lambda: when
/// `AWS_LAMBDA_RUNTIME_API` is set, the routes serve Lambda invocations (API Gateway, function
/// URLs) through `lambda_http` instead of a server on `$PORT`.
pub async fn serve(manifest: ManifestSource) -> Result<(), Error> {
    #[cfg(feature = "lambda")]
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return lambda::run(manifest).await;
    }
    run(no_events(), manifest).await
}

/// The handler of an HTTP function ([`serve`]): it has no subscriptions, so an event is refused.
pub(crate) fn no_events() -> impl Handler {
    handler_fn(|event: Event<serde_json::Value>| async move {
        Err::<(), _>(HandlerError::permanent(format!(
            "event {} ({}): this HTTP function has no subscriptions",
            event.ctx.id, event.ctx.ty
        )))
    })
}

fn usage_exit(e: Error) -> ! {
    tracing::error!(error = %e, "cannot start");
    eprintln!("zerofn: {e}");
    std::process::exit(64)
}
