//! Logs (JSON by default, one object per line), OpenTelemetry traces (OTLP/gRPC, configured by
//! the standard `OTEL_*` variables; feature `otel`) and W3C trace-context handling.

use std::fmt;

use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{Config, LogFormat};

#[cfg(feature = "otel")]
mod otel;
#[cfg(not(feature = "otel"))]
#[path = "no_otel.rs"]
mod otel;

pub(crate) use otel::{Tracing, set_parent, traceparent_of};

/// Install the global `tracing` subscriber: the log format of `config`, plus an OpenTelemetry
/// layer exporting to the OTLP endpoint when one is configured. A second call only returns
/// (tests build several apps in one process). Must run inside the Tokio runtime.
pub(crate) fn init(config: &Config, service: &str) -> Tracing {
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&config.log_filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let (tracing, otel) = otel::layer::<tracing_subscriber::Registry>(config, service);
    let otel = otel.map(|layer| layer.with_filter(filter()));
    // Log lines need events only (their trace ids come from the event's context), so the log
    // layer takes no spans: without an OTLP endpoint no layer wants spans at all, and every
    // span of the pipeline is a disabled no-op — tracing off costs nothing per event.
    let events_only = || tracing_subscriber::filter::filter_fn(|meta| meta.is_event());
    let logs = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .with_filter(events_only())
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .with_filter(events_only())
            .boxed(),
        LogFormat::Compact => tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .with_filter(events_only())
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .try_init()
        .is_ok()
    {
        tracing.installed();
    }
    tracing
}

/// A W3C `traceparent`: version 00, trace id, parent (span) id, flags.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Parse a `traceparent` header or extension value; `None` if it is malformed.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut ctx = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        decode_hex(trace, &mut ctx.trace_id)?;
        decode_hex(span, &mut ctx.span_id)?;
        let mut f = [0u8; 1];
        decode_hex(flags, &mut f)?;
        ctx.flags = f[0];
        let valid = ctx.trace_id != [0; 16] && ctx.span_id != [0; 8];
        valid.then_some(ctx)
    }

    /// A new trace, sampled.
    pub(crate) fn root() -> Self {
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        TraceContext {
            trace_id,
            span_id: random_span_id(),
            flags: 1,
        }
    }

    /// A span in the same trace whose parent is `self`.
    pub(crate) fn child(&self) -> Self {
        TraceContext {
            span_id: random_span_id(),
            ..*self
        }
    }

    /// Continue the first parseable context of `candidates`, or start a new trace.
    pub(crate) fn continue_from<'a>(candidates: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        candidates
            .into_iter()
            .flatten()
            .find_map(TraceContext::parse)
            .map_or_else(TraceContext::root, |parent| parent.child())
    }
}

fn random_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_and_print_round_trip() {
        assert_eq!(TraceContext::parse(TP).unwrap().to_string(), TP);
    }

    #[test]
    fn child_keeps_trace_and_flags_and_changes_span() {
        let child = TraceContext::parse(TP).unwrap().child().to_string();
        assert_eq!(&child[..36], &TP[..36]);
        assert_ne!(&child[36..52], &TP[36..52]);
        assert!(child.ends_with("-01"));
    }

    #[test]
    fn malformed_values_are_rejected_and_a_root_is_started() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let root = TraceContext::continue_from([Some("junk"), None]);
        assert!(TraceContext::parse(&root.to_string()).is_some());
        let cont = TraceContext::continue_from([Some("junk"), Some(TP)]).to_string();
        assert_eq!(&cont[3..35], &TP[3..35]);
    }
}
