//! Dapr's Jobs API, as the engine's sidecar implements it: what a schedule request means and
//! when a job is due next. Pure: parsing and time arithmetic only; the log keeps the jobs and the
//! engine fires them.
//!
//! The contract (dapr/dapr `pkg/api/http/jobs.go`, `pkg/channel/http/http_channel.go`, pinned in
//! `cli/tests/jobs.rs`): `POST /v1.0-alpha1/jobs/{name}` (or `/v1.0/jobs/{name}`) with
//! `{schedule?, dueTime?, repeats?, ttl?, data?, overwrite?}` answers 204 with no body; a body
//! with neither `schedule` nor `dueTime`, with a `name`, or with negative `repeats` is a 400.
//! `GET` answers the job, `DELETE` removes it (204). When due, the app gets
//! `POST /job/{name}` with the job's `data` as a JSON body.

use chrono::DateTime;
use serde_json::Value;
use zerofn::schedule::{Schedule, go_duration};

/// A job as scheduled: when it is due first and how it repeats.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct JobSpec {
    /// The `schedule` as given (kept for `GET`).
    pub(crate) schedule: Option<String>,
    /// The `dueTime` as given.
    pub(crate) due_time: Option<String>,
    /// Triggers left (none: unlimited, or one for a one-shot job).
    pub(crate) repeats: Option<u32>,
    /// No trigger after this instant (ms).
    pub(crate) expires_ms: Option<i64>,
    pub(crate) data: Value,
    pub(crate) overwrite: bool,
}

/// Read a schedule request's body, at `now_ms`; the error is Dapr's 400 message.
pub(crate) fn parse_request(body: &[u8], now_ms: i64) -> Result<JobSpec, String> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the job has no body: give a schedule or a dueTime".into());
    } else {
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?
    };
    let Some(o) = v.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    if o.contains_key("name") {
        return Err("the job's name goes in the URL, not in the body".into());
    }
    let text = |keys: &[&str]| -> Result<Option<String>, String> {
        for k in keys {
            match o.get(*k) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(other) => return Err(format!("{k} must be a string, got {other}")),
            }
        }
        Ok(None)
    };
    let schedule = text(&["schedule"])?;
    let due_time = text(&["dueTime", "due_time"])?;
    if schedule.is_none() && due_time.is_none() {
        return Err("a job needs a schedule or a dueTime".into());
    }
    if let Some(s) = &schedule {
        Schedule::parse(s)?;
    }
    if let Some(d) = &due_time {
        instant(d, now_ms)?;
    }
    let repeats = match o.get("repeats") {
        None | Some(Value::Null) => None,
        Some(r) => match r.as_i64() {
            Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => return Err(format!("repeats must be a positive number, got {r}")),
        },
    };
    let expires_ms = match text(&["ttl"])? {
        None => None,
        Some(t) => Some(instant(&t, now_ms)?),
    };
    let overwrite = o.get("overwrite").and_then(Value::as_bool).unwrap_or(false);
    Ok(JobSpec {
        schedule,
        due_time,
        repeats,
        expires_ms,
        data: o.get("data").cloned().unwrap_or(Value::Null),
        overwrite,
    })
}

/// When a job scheduled at `now_ms` is due first: its `dueTime`, else its schedule's first
/// time after now.
pub(crate) fn first_due(spec: &JobSpec, now_ms: i64) -> Option<i64> {
    match (&spec.due_time, &spec.schedule) {
        (Some(d), _) => instant(d, now_ms).ok(),
        (None, Some(s)) => Schedule::parse(s).ok()?.next_after(now_ms),
        (None, None) => None,
    }
}

/// After a trigger due at `due_ms` (fired at `now_ms`): when the job is due next, or `None`
/// when it is done (one-shot, repeats used up, past its ttl). Times missed while the engine
/// was down are not caught up one by one: the next is the first after `now_ms`.
pub(crate) fn next_due(
    spec: &JobSpec,
    repeats_left: Option<u32>,
    due_ms: i64,
    now_ms: i64,
) -> Option<i64> {
    let schedule = Schedule::parse(spec.schedule.as_deref()?).ok()?;
    if repeats_left.is_some_and(|n| n <= 1) {
        return None;
    }
    let next = schedule.next_after(due_ms.max(now_ms))?;
    match spec.expires_ms {
        Some(e) if next > e => None,
        _ => Some(next),
    }
}

/// An RFC 3339 time, or a duration from `now_ms` in Go's notation (`10s`, `1h30m`, `500ms`).
pub(crate) fn instant(v: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    let d = go_duration(v)
        .map_err(|_| format!("{v:?} is neither an RFC 3339 time nor a duration like 10s"))?;
    Ok(now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn requests_are_read_as_dapr_reads_them() {
        let now = at("2026-12-02T10:00:00Z");
        for bad in [
            "",
            "{}",
            "[{}]",
            r#"{"name": "x", "dueTime": "1s"}"#,
            r#"{"schedule": "@daily", "repeats": -1}"#,
            r#"{"schedule": "every day"}"#,
            r#"{"dueTime": "soon"}"#,
        ] {
            assert!(parse_request(bad.as_bytes(), now).is_err(), "{bad}");
        }
        let j = parse_request(br#"{"dueTime": "10s", "data": {"task": "t-1"}}"#, now).unwrap();
        assert_eq!(first_due(&j, now), Some(now + 10_000));
        assert_eq!(j.data["task"], "t-1");
        let j = parse_request(br#"{"schedule": "@every 2s", "due_time": "2026-12-02T10:00:05Z", "repeats": 3, "overwrite": true}"#, now).unwrap();
        assert_eq!(first_due(&j, now), Some(at("2026-12-02T10:00:05Z")));
        assert_eq!((j.repeats, j.overwrite), (Some(3), true));
    }

    #[test]
    fn repeating_jobs_stop_when_told() {
        let now = at("2026-12-02T10:00:00Z");
        let every = |body: &str| parse_request(body.as_bytes(), now).unwrap();
        let j = every(r#"{"schedule": "@every 1s", "repeats": 2}"#);
        assert_eq!(
            next_due(&j, Some(2), now + 1000, now + 1000),
            Some(now + 2000)
        );
        assert_eq!(
            next_due(&j, Some(1), now + 2000, now + 2000),
            None,
            "repeats used up"
        );
        let j = every(r#"{"schedule": "@every 1s", "ttl": "2500ms"}"#);
        assert_eq!(
            next_due(&j, None, now + 2000, now + 2000),
            None,
            "past its ttl"
        );
        let one_shot = every(r#"{"dueTime": "1s"}"#);
        assert_eq!(next_due(&one_shot, None, now + 1000, now + 1000), None);
        // Down for an hour: one trigger for what was missed, then on schedule from now.
        let j = every(r#"{"schedule": "@every 1m"}"#);
        assert_eq!(
            next_due(&j, None, now, now + 3_600_500),
            Some(now + 3_660_500)
        );
    }
}
