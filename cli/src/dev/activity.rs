//! What the engine has been doing, for the dashboard: recent deliveries (type, subject,
//! function, outcome, duration, trace id), scaling decisions and why, each function's replica
//! count over time, and handler latencies. Bounded rings; every entry carries a sequence number
//! so a stream sends each one once.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Deliveries kept for the stream of recent events.
const EVENTS_KEPT: usize = 500;
/// Scaling decisions kept.
const DECISIONS_KEPT: usize = 200;
/// How far back the replica chart reaches.
const HISTORY: Duration = Duration::from_secs(600);
/// Latency samples kept per function (the percentiles are over these).
const LATENCIES_KEPT: usize = 1000;
/// The window events/s is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One delivery attempt's result for one event.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Delivery {
    pub(crate) seq: u64,
    /// Unix milliseconds.
    pub(crate) at: i64,
    pub(crate) function: String,
    pub(crate) topic: String,
    pub(crate) id: Option<String>,
    #[serde(rename = "type")]
    pub(crate) event_type: Option<String>,
    pub(crate) subject: Option<String>,
    /// `applied`, `duplicate`, `dead_letter` (the runtime recorded it), `dropped` (the engine
    /// copied it to the dead-letter topic), `retry`; for a request to an HTTP function (`type`
    /// is its method and path), [`http_outcome`].
    pub(crate) outcome: String,
    pub(crate) duration_ms: f64,
    pub(crate) trace_id: Option<String>,
}

/// A change of a function's desired replicas.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Decision {
    pub(crate) seq: u64,
    pub(crate) at: i64,
    pub(crate) function: String,
    pub(crate) from: u32,
    pub(crate) to: u32,
    /// The scaler's reason (`lag`, `job due`, `http`, `unsent`, `min`, `cooldown`, `idle`).
    pub(crate) reason: String,
}

/// The CloudEvent attributes a delivery is shown by, from a record's bytes (none for a record
/// that is not a JSON CloudEvent).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) trace_id: Option<String>,
}

/// The attributes read from a record: a typed read that skips everything else (the data is not
/// built into a tree: this runs for every delivery).
#[derive(serde::Deserialize)]
struct Attributes {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    subject: Option<String>,
    traceparent: Option<String>,
}

/// Read what is shown of an event from its bytes.
pub(crate) fn shown(bytes: &[u8]) -> Shown {
    let Ok(a) = serde_json::from_slice::<Attributes>(bytes) else {
        return Shown::default();
    };
    Shown {
        trace_id: a.traceparent.as_deref().and_then(trace_id),
        id: a.id,
        event_type: a.event_type,
        subject: a.subject,
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub(crate) fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_string())
}

/// The dashboard's word for an HTTP function's answer: `ok` (below 400), `refused` (4xx) or
/// `failed` (5xx).
pub(crate) fn http_outcome(status: u16) -> &'static str {
    match status {
        0..400 => "ok",
        400..500 => "refused",
        _ => "failed",
    }
}

/// The `q` quantile (0..=1) of `sorted` by the nearest-rank method; `None` when empty.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Events per second over `window` ending at `now`, from the times events finished.
pub(crate) fn rate(times: impl Iterator<Item = Instant>, now: Instant, window: Duration) -> f64 {
    let n = times
        .filter(|t| now.saturating_duration_since(*t) <= window)
        .count();
    n as f64 / window.as_secs_f64()
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    events: VecDeque<Delivery>,
    decisions: VecDeque<Decision>,
    /// Per function: (unix ms, replicas serving) at each change.
    replicas: BTreeMap<String, VecDeque<(i64, u32)>>,
    /// Per function: (finished, milliseconds) of applied deliveries and answered requests.
    latencies: BTreeMap<String, VecDeque<(Instant, f64)>>,
}

/// The engine's activity, shared by the delivery loops, the scaler and the dashboard.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    inner: Mutex<Inner>,
}

/// Per-function figures derived from the activity.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Figures {
    pub(crate) events_per_second: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    /// (unix ms, replicas) over the last ten minutes.
    pub(crate) history: Vec<(i64, u32)>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Activity {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Note one event's attempt (`seq` and `at` are filled in here).
    pub(crate) fn delivered(&self, mut d: Delivery) {
        let mut inner = self.inner();
        inner.seq += 1;
        d.seq = inner.seq;
        d.at = now_ms();
        if matches!(d.outcome.as_str(), "applied" | "ok") {
            let l = inner.latencies.entry(d.function.clone()).or_default();
            l.push_back((Instant::now(), d.duration_ms));
            if l.len() > LATENCIES_KEPT {
                l.pop_front();
            }
        }
        inner.events.push_back(d);
        if inner.events.len() > EVENTS_KEPT {
            inner.events.pop_front();
        }
    }

    /// Note a change of `function`'s desired replicas and why.
    pub(crate) fn decided(&self, function: &str, from: u32, to: u32, reason: &str) {
        let mut inner = self.inner();
        inner.seq += 1;
        let d = Decision {
            seq: inner.seq,
            at: now_ms(),
            function: function.to_string(),
            from,
            to,
            reason: reason.to_string(),
        };
        inner.decisions.push_back(d);
        if inner.decisions.len() > DECISIONS_KEPT {
            inner.decisions.pop_front();
        }
    }

    /// Note how many replicas of `function` serve now (kept only when it changed).
    pub(crate) fn replicas(&self, function: &str, serving: u32) {
        let mut inner = self.inner();
        let h = inner.replicas.entry(function.to_string()).or_default();
        if h.back().is_none_or(|(_, n)| *n != serving) {
            let now = now_ms();
            h.push_back((now, serving));
            let horizon = now - HISTORY.as_millis() as i64;
            // Keep the last point before the horizon: the chart starts from it.
            while h.len() > 1 && h.get(1).is_some_and(|(t, _)| *t < horizon) {
                h.pop_front();
            }
        }
    }

    /// Deliveries and decisions after sequence number `after`, and the latest number.
    pub(crate) fn since(&self, after: u64) -> (Vec<Delivery>, Vec<Decision>, u64) {
        let inner = self.inner();
        (
            inner
                .events
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect(),
            inner
                .decisions
                .iter()
                .filter(|d| d.seq > after)
                .cloned()
                .collect(),
            inner.seq,
        )
    }

    /// The figures of `function` now.
    pub(crate) fn figures(&self, function: &str) -> Figures {
        let inner = self.inner();
        let now = Instant::now();
        let mut figures = Figures::default();
        if let Some(l) = inner.latencies.get(function) {
            figures.events_per_second = rate(l.iter().map(|(t, _)| *t), now, RATE_WINDOW);
            let mut sorted: Vec<f64> = l.iter().map(|(_, ms)| *ms).collect();
            sorted.sort_by(f64::total_cmp);
            figures.p50_ms = quantile(&sorted, 0.5);
            figures.p95_ms = quantile(&sorted, 0.95);
        }
        figures.history = inner
            .replicas
            .get(function)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        figures
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_http_answer_is_ok_refused_or_failed() {
        assert_eq!(http_outcome(200), "ok");
        assert_eq!(http_outcome(304), "ok");
        assert_eq!(http_outcome(404), "refused");
        assert_eq!(http_outcome(503), "failed");
    }

    #[test]
    fn the_nearest_rank_quantile() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.95), Some(7.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
    }

    #[test]
    fn the_rate_counts_only_the_window() {
        let now = Instant::now();
        let times = [
            now - Duration::from_secs(11),
            now - Duration::from_secs(9),
            now - Duration::from_secs(1),
            now,
        ];
        assert!((rate(times.into_iter(), now, Duration::from_secs(10)) - 0.3).abs() < 1e-9);
        assert_eq!(rate(std::iter::empty(), now, Duration::from_secs(10)), 0.0);
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }

    #[test]
    fn an_event_is_shown_by_its_attributes_and_anything_else_by_nothing() {
        let s = shown(br#"{"specversion":"1.0","id":"e-1","type":"todo.task.created","source":"/t","subject":"u-7","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#);
        assert_eq!(s.id.as_deref(), Some("e-1"));
        assert_eq!(s.event_type.as_deref(), Some("todo.task.created"));
        assert_eq!(s.subject.as_deref(), Some("u-7"));
        assert_eq!(
            s.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(shown(b"\xff not json"), Shown::default());
    }

    fn delivery(function: &str, outcome: &str, ms: f64) -> Delivery {
        Delivery {
            seq: 0,
            at: 0,
            function: function.into(),
            topic: "t".into(),
            id: None,
            event_type: None,
            subject: None,
            outcome: outcome.into(),
            duration_ms: ms,
            trace_id: None,
        }
    }

    #[test]
    fn a_stream_gets_each_entry_once_in_order_and_the_rings_are_bounded() {
        let a = Activity::default();
        a.delivered(delivery("f", "applied", 3.0));
        a.decided("f", 0, 1, "lag");
        let (events, decisions, last) = a.since(0);
        assert_eq!((events.len(), decisions.len(), last), (1, 1, 2));
        assert!(events[0].seq < decisions[0].seq);
        let (events, decisions, again) = a.since(last);
        assert!(events.is_empty() && decisions.is_empty());
        assert_eq!(again, last);
        for _ in 0..EVENTS_KEPT + 10 {
            a.delivered(delivery("f", "retry", 1.0));
        }
        assert_eq!(a.since(0).0.len(), EVENTS_KEPT);
    }

    #[test]
    fn figures_count_applied_deliveries_and_replica_changes_only() {
        let a = Activity::default();
        for ms in [10.0, 20.0, 30.0, 40.0] {
            a.delivered(delivery("f", "applied", ms));
        }
        a.delivered(delivery("f", "retry", 1000.0));
        a.delivered(delivery("g", "applied", 5.0));
        a.delivered(delivery("h", "ok", 7.0));
        assert_eq!(
            a.figures("h").p50_ms,
            Some(7.0),
            "an HTTP function's answers count"
        );
        let f = a.figures("f");
        assert_eq!((f.p50_ms, f.p95_ms), (Some(20.0), Some(40.0)));
        assert!((f.events_per_second - 0.4).abs() < 1e-9);
        for n in [0, 0, 2, 2, 0] {
            a.replicas("f", n);
        }
        let counts: Vec<u32> = a.figures("f").history.iter().map(|p| p.1).collect();
        assert_eq!(counts, vec![0, 2, 0]);
        assert_eq!(a.figures("none"), Figures::default());
    }
}
