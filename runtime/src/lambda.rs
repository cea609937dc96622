//! AWS Lambda (feature `lambda`): the same HTTP function binary, run by the Lambda Runtime API
//! instead of a server. `zerofn::serve` switches here when `AWS_LAMBDA_RUNTIME_API` is set (as
//! Lambda sets it); the function's axum routes take the API Gateway / function URL requests
//! through `lambda_http`, whose request type an axum `Router` accepts as it is.
//!
//! What a Lambda has no use for is left out: there is no `$PORT` server, no probes and no drain
//! (Lambda freezes the process between invocations).

use crate::{
    Error, ManifestSource,
    config::{Config, Env},
};

/// Serve `manifest`'s routes to the Lambda Runtime API until the process is stopped.
pub(crate) async fn run(manifest: ManifestSource) -> Result<(), Error> {
    let config = Config::from_source(&Env)?;
    let parsed = manifest.parse()?;
    let tracing = crate::telemetry::init(&config, &parsed.name);
    let pool = match manifest.function_migrations() {
        // Only a function with tables opens the store (on Lambda: ZEROFN_STORE=postgres://…).
        Some(migrations) => crate::idempotency::open(&config.store, &parsed.name, Some(migrations))
            .await
            .map_err(|e| Error::Store {
                url: crate::idempotency::sql::redact(&config.store),
                reason: e.0,
            })?
            .pool(),
        None => None,
    };
    let router = manifest
        .own_routes(&parsed.name, pool)
        .map_err(|reason| {
            Error::from(crate::config::ConfigError::new(
                crate::config::ENV_STORE,
                &config.store,
                reason,
            ))
        })?
        .unwrap_or_default();
    tracing::info!(function = %parsed.name, "serving on AWS Lambda");
    let served = lambda_http::run(router)
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e.to_string())));
    tracing.shutdown();
    served
}
