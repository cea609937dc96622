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

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde_json::Value;

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

/// A parsed `schedule`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Schedule {
    Every(Duration),
    Cron(Box<Cron>),
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
        parse_schedule(s)?;
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
        (None, Some(s)) => next_after(&parse_schedule(s).ok()?, now_ms),
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
    let schedule = parse_schedule(spec.schedule.as_deref()?).ok()?;
    if repeats_left.is_some_and(|n| n <= 1) {
        return None;
    }
    let next = next_after(&schedule, due_ms.max(now_ms))?;
    match spec.expires_ms {
        Some(e) if next > e => None,
        _ => Some(next),
    }
}

/// The first instant of `schedule` strictly after `after_ms`.
pub(crate) fn next_after(schedule: &Schedule, after_ms: i64) -> Option<i64> {
    match schedule {
        Schedule::Every(d) => {
            Some(after_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
        Schedule::Cron(c) => c.next_after(after_ms),
    }
}

/// `@every <duration>`, `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`,
/// `@hourly`, or a cron expression of six fields (second minute hour day-of-month month
/// day-of-week; UTC).
pub(crate) fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let s = s.trim();
    if let Some(d) = s.strip_prefix("@every ") {
        let d = go_duration(d.trim())?;
        if d.is_zero() {
            return Err(format!(
                "schedule {s:?}: @every needs a duration above zero"
            ));
        }
        return Ok(Schedule::Every(d));
    }
    let cron = match s {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        other => other,
    };
    Cron::parse(cron)
        .map(|c| Schedule::Cron(Box::new(c)))
        .map_err(|e| format!("schedule {s:?}: {e}"))
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

/// Go's `time.ParseDuration` for the units a schedule uses: `h`, `m`, `s`, `ms`, `us`, `ns`,
/// with decimals (`1.5s`) and several parts (`1h30m`).
fn go_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("{v:?} is not a duration like 10s, 1h30m or 500ms");
    if v.is_empty() {
        return Err(bad());
    }
    let mut rest = v;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A six-field cron expression: each field a set of allowed values.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cron {
    seconds: Vec<bool>,
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Day-of-month and day-of-week both restricted: either may match (Vixie cron).
    either_day: bool,
}

impl Cron {
    fn parse(s: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [sec, min, hour, dom, month, dow] = fields[..] else {
            return Err(format!(
                "a cron schedule has six fields (second minute hour day month weekday), got {}",
                fields.len()
            ));
        };
        let weekdays = field(&dow.replace('7', "0"), 0, 6, "day of week")?;
        Ok(Cron {
            seconds: field(sec, 0, 59, "second")?,
            minutes: field(min, 0, 59, "minute")?,
            hours: field(hour, 0, 23, "hour")?,
            days: field(dom, 1, 31, "day of month")?,
            months: field(month, 1, 12, "month")?,
            weekdays,
            either_day: !dom.starts_with('*') && !dow.starts_with('*'),
        })
    }

    fn day_matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.days[t.day() as usize];
        let dow = self.weekdays[t.weekday().num_days_from_sunday() as usize];
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first matching second strictly after `after_ms` (within eight years).
    fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = after_ms.div_euclid(1000) + 1;
        let mut t = Utc.timestamp_opt(start, 0).single()?;
        let limit = t + chrono::Duration::days(8 * 366);
        while t < limit {
            if !self.months[t.month() as usize] {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
            } else if !self.day_matches(t) {
                t = (t + chrono::Duration::days(1))
                    .date_naive()
                    .and_hms_opt(0, 0, 0)?
                    .and_utc();
            } else if !self.hours[t.hour() as usize] {
                t = t.with_minute(0)?.with_second(0)? + chrono::Duration::hours(1);
            } else if !self.minutes[t.minute() as usize] {
                t = t.with_second(0)? + chrono::Duration::minutes(1);
            } else if !self.seconds[t.second() as usize] {
                t += chrono::Duration::seconds(1);
            } else {
                return Some(t.timestamp_millis());
            }
        }
        None
    }
}

/// One cron field (`*`, `*/n`, `a`, `a-b`, `a-b/n`, lists of those) as allowed values
/// `0..=max` (indexes below `min` stay false).
fn field(s: &str, min: u32, max: u32, what: &str) -> Result<Vec<bool>, String> {
    let mut allowed = vec![false; max as usize + 1];
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (
                r,
                st.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{what}: bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, what)?, number(b, what)?)
        } else {
            let n = number(range, what)?;
            (n, if part.contains('/') { max } else { n })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what}: {part:?} is outside {min}-{max}"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            allowed[v as usize] = true;
        }
    }
    Ok(allowed)
}

fn number(s: &str, what: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("{what}: {s:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn iso(ms: i64) -> String {
        DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339()
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
    fn durations_as_go_writes_them() {
        assert_eq!(go_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "10", "s", "10x", "1d"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn cron_fields_and_shortcuts() {
        let after = |s: &str, t: &str| iso(next_after(&parse_schedule(s).unwrap(), at(t)).unwrap());
        assert_eq!(
            after("*/5 * * * * *", "2026-12-02T10:00:03Z"),
            "2026-12-02T10:00:05+00:00"
        );
        assert_eq!(
            after("0 30 9 * * *", "2026-12-02T10:00:00Z"),
            "2026-12-03T09:30:00+00:00"
        );
        assert_eq!(
            after("@hourly", "2026-12-02T10:00:00Z"),
            "2026-12-02T11:00:00+00:00"
        );
        assert_eq!(
            after("@daily", "2026-12-31T23:59:59Z"),
            "2027-01-01T00:00:00+00:00"
        );
        assert_eq!(
            after("0 0 0 31 * *", "2027-01-31T00:00:00Z"),
            "2027-03-31T00:00:00+00:00",
            "months without a 31st"
        );
        assert_eq!(
            after("0 0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00",
            "a leap day"
        );
        assert_eq!(
            after("@weekly", "2026-12-02T10:00:00Z"),
            "2026-12-06T00:00:00+00:00",
            "Sunday"
        );
        assert_eq!(
            after("0 0 12 * * 1-5", "2026-12-05T13:00:00Z"),
            "2026-12-07T12:00:00+00:00",
            "weekdays"
        );
        assert_eq!(
            after("0 0 0 1 * 1", "2026-12-02T00:00:00Z"),
            "2026-12-07T00:00:00+00:00",
            "the 1st or a Monday"
        );
        for bad in [
            "* * * * *",
            "60 * * * * *",
            "* * * 0 * *",
            "*/0 * * * * *",
            "a * * * * *",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }
}
