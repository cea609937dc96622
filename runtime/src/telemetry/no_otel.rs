//! Without the `otel` feature: traces stay local; trace ids still propagate through the W3C
//! fallback in the pipeline.

use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

/// Nothing to flush.
pub(crate) struct Tracing;

impl Tracing {
    pub(crate) fn installed(&self) {}

    pub(crate) fn shutdown(&self) {}
}

/// No layer; say so if an endpoint was configured.
#[allow(clippy::extra_unused_type_parameters)] // the same signature as the `otel` version
pub(crate) fn layer<S>(
    config: &Config,
    _service: &str,
) -> (Tracing, Option<tracing_subscriber::layer::Identity>)
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    if let Some(endpoint) = &config.otlp_endpoint {
        eprintln!(
            "zerofn: built without the `otel` feature: traces are not exported to {endpoint}"
        );
    }
    (Tracing, None)
}

pub(crate) fn set_parent(_span: &tracing::Span, _traceparent: &str, _tracestate: Option<&str>) {}

pub(crate) fn traceparent_of(_span: &tracing::Span) -> Option<String> {
    None
}
