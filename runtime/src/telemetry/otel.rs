//! OpenTelemetry (feature `otel`): the OTLP/gRPC trace exporter and W3C context on spans.

use std::collections::HashMap;

use opentelemetry::{
    propagation::TextMapPropagator, trace::TraceContextExt, trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

/// The trace exporter, flushed on shutdown.
pub(crate) struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// The subscriber with this exporter's layer is now the global one.
    pub(crate) fn installed(&self) {
        if self.provider.is_some() {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        }
    }

    /// Export what is buffered and stop.
    pub(crate) fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// The exporter and its `tracing` layer, when an OTLP endpoint is configured.
pub(crate) fn layer<S>(
    config: &Config,
    service: &str,
) -> (Tracing, Option<impl tracing_subscriber::Layer<S>>)
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let provider = config.otlp_endpoint.as_ref().and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(config.otel_service_name.clone().unwrap_or_else(|| service.to_string()))
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("zerofn: tracing stays local: cannot build the OTLP exporter for {endpoint}: {e}");
                None
            }
        }
    });
    let layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("zerofn")));
    (Tracing { provider }, layer)
}

/// Parent `span` on the W3C context in `traceparent` (and `tracestate`). A no-op without the
/// OpenTelemetry layer.
pub(crate) fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    let mut carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// The `traceparent` of `span`, when OpenTelemetry is recording it.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}
