//! When a scheduled job is due: Dapr's schedule notation (`@every 10s`, `@daily`, six-field
//! cron with seconds) and its arithmetic, for the engine's Jobs API and for the runtime, which
//! names each trigger of a declared schedule after the cron instant it belongs to. Pure: no
//! clock is read here; every function takes the instant it reasons about (Unix ms, UTC).

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};

/// A parsed `schedule`.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `@every <duration>`: a period counted from when the job was scheduled.
    Every(Duration),
    /// A cron expression (or a shortcut such as `@daily`).
    Cron(Box<Cron>),
}

impl Schedule {
    /// `@every <duration>`, `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`,
    /// `@hourly`, or a cron expression of six fields (second minute hour day-of-month month
    /// day-of-week; UTC). The error names the schedule and what is wrong with it.
    pub fn parse(s: &str) -> Result<Schedule, String> {
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

    /// The first instant of the schedule strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every(d) => {
                Some(after_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            }
            Schedule::Cron(c) => c.next_after(after_ms),
        }
    }
}

/// Go's `time.ParseDuration` (Dapr's notation for `dueTime`, `ttl` and `@every`) for the units a schedule uses: `h`, `m`, `s`, `ms`, `us`, `ns`,
/// with decimals (`1.5s`) and several parts (`1h30m`).
pub fn go_duration(v: &str) -> Result<Duration, String> {
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
pub struct Cron {
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
    /// Parse six fields: second minute hour day-of-month month day-of-week (UTC; `7` is
    /// Sunday too; `*`, `?`, `a`, `a-b`, `*/n`, `a-b/n` and lists of those).
    pub fn parse(s: &str) -> Result<Cron, String> {
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
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
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

    /// The last matching second at or before `at_ms` (within eight years): the cron instant a
    /// trigger delivered at `at_ms` belongs to.
    pub fn latest_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let mut t = Utc.timestamp_opt(at_ms.div_euclid(1000), 0).single()?;
        let limit = t - chrono::Duration::days(8 * 366);
        let second = chrono::Duration::seconds(1);
        while t > limit {
            if !self.months[t.month() as usize] {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                    .single()?
                    - second;
            } else if !self.day_matches(t) {
                t = t.date_naive().and_hms_opt(0, 0, 0)?.and_utc() - second;
            } else if !self.hours[t.hour() as usize] {
                t = t.with_minute(0)?.with_second(0)? - second;
            } else if !self.minutes[t.minute() as usize] {
                t = t.with_second(0)? - second;
            } else if !self.seconds[t.second() as usize] {
                t -= second;
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
    fn cron_fields_and_shortcuts() {
        let after = |s: &str, t: &str| iso(Schedule::parse(s).unwrap().next_after(at(t)).unwrap());
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
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_trigger_belongs_to_the_latest_cron_instant_at_or_before_it() {
        let cron = |s: &str| match Schedule::parse(s).unwrap() {
            Schedule::Cron(c) => c,
            Schedule::Every(_) => unreachable!(),
        };
        let before = |s: &str, t: &str| iso(cron(s).latest_at_or_before(at(t)).unwrap());
        assert_eq!(
            before("*/5 * * * * *", "2026-12-02T10:00:07.900Z"),
            "2026-12-02T10:00:05+00:00",
            "late by 2.9 s: still the :05 trigger"
        );
        assert_eq!(
            before("*/5 * * * * *", "2026-12-02T10:00:05Z"),
            "2026-12-02T10:00:05+00:00",
            "on time: its own instant"
        );
        assert_eq!(
            before("0 30 9 * * *", "2026-12-02T09:29:59Z"),
            "2026-12-01T09:30:00+00:00"
        );
        assert_eq!(
            before("@monthly", "2027-03-15T00:00:00Z"),
            "2027-03-01T00:00:00+00:00"
        );
        assert_eq!(
            before("0 0 0 31 * *", "2027-03-30T00:00:00Z"),
            "2027-01-31T00:00:00+00:00",
            "back over a month without a 31st"
        );
        assert_eq!(
            before("0 0 12 * * 1-5", "2026-12-06T13:00:00Z"),
            "2026-12-04T12:00:00+00:00",
            "Sunday belongs to Friday noon"
        );
        // The two directions agree: the instant before the one after any time is at or
        // before it, and the one after the one before is past it.
        let c = cron("7 */3 * * * *");
        let mut t = at("2026-12-02T10:00:00Z");
        for _ in 0..500 {
            let prev = c.latest_at_or_before(t).unwrap();
            assert!(prev <= t && c.next_after(prev).unwrap() > t);
            t += 17_321;
        }
    }
}
