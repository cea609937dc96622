//! recurring: when a recurring task is completed, its next occurrence is created — exactly once,
//! however often the completion is delivered. It writes through `tasks`' own API (the gateway
//! locally, `RECURRING_TASKS_URL` otherwise) rather than owning a command event: `tasks` stays
//! the one writer of tasks and their events, and its `Idempotency-Key` (the completed task's id)
//! makes every repeat of the call answer the first one. A deleted task has no next occurrence.

use std::time::Duration;

use chrono::{
    DateTime, Datelike, LocalResult, Months, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Value, json};
use zerofn::prelude::*;

/// Where `tasks` answers (`{url}/tasks/{id}`, `POST {url}/tasks`). Unset: the gateway's path to
/// it, `$ZEROFN_GATEWAY_URL/fn/tasks`.
const ENV_TASKS_URL: &str = "RECURRING_TASKS_URL";

/// How long a call to `tasks` may take before the delivery is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct Completed {
    task_id: String,
    /// Present for a recurring task.
    recurrence: Option<Value>,
}

/// A recurrence as `tasks` keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct Rule {
    every: Every,
    interval: Option<u32>,
    until: Option<String>,
    /// The IANA zone whose wall clock the series keeps; none: UTC.
    time_zone: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Every {
    Day,
    Week,
    Month,
}

/// The occurrence after one due at `due`, on the wall clock of the rule's time zone (UTC when it
/// has none): days and weeks keep the local time of day across daylight saving (09:00 stays
/// 09:00); months keep the day of the month, clamped to the month's end (Jan 31 → Feb 28 or
/// 29), and a task due on the last day of its month stays on the last day (Feb 28 → Mar 31).
/// A local time that falls in a DST gap moves past it by the gap (02:30 → 03:30); one that
/// occurs twice is the first.
fn next_due(due: DateTime<Utc>, rule: &Rule) -> Option<DateTime<Utc>> {
    let zone: Tz = match rule.time_zone.as_deref() {
        None => Tz::UTC,
        Some(z) => z.parse().ok()?,
    };
    let local = due.with_timezone(&zone).naive_local();
    let n = rule.interval.unwrap_or(1).max(1);
    let next = match rule.every {
        Every::Day => local.checked_add_signed(chrono::Duration::days(i64::from(n)))?,
        Every::Week => local.checked_add_signed(chrono::Duration::weeks(i64::from(n)))?,
        Every::Month => {
            let next = local.checked_add_months(Months::new(n))?;
            if is_last_day(local) {
                last_day_of(next)?
            } else {
                next
            }
        }
    };
    on_the_wall_clock(zone, next)
}

/// The instant a local time names in `zone`: the first of two (a fall-back hour), or, for a
/// time a spring-forward gap skips, the time read with the offset before the gap (RFC 5545:
/// 02:30 becomes 03:30 when clocks jump from 02:00 to 03:00).
fn on_the_wall_clock(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => {
            let before = (1..=6).find_map(|half_hours| {
                let t = local.checked_sub_signed(chrono::Duration::minutes(30 * half_hours))?;
                zone.from_local_datetime(&t).earliest()
            })?;
            let offset = i64::from(before.offset().fix().local_minus_utc());
            Some(
                local
                    .checked_sub_signed(chrono::Duration::seconds(offset))?
                    .and_utc(),
            )
        }
    }
}

fn is_last_day(t: NaiveDateTime) -> bool {
    t.checked_add_signed(chrono::Duration::days(1))
        .is_some_and(|tomorrow| tomorrow.month() != t.month())
}

fn last_day_of(t: NaiveDateTime) -> Option<NaiveDateTime> {
    let mut d = t;
    while !is_last_day(d) {
        d = d.checked_add_signed(chrono::Duration::days(1))?;
    }
    Some(d)
}

/// The next occurrence, unless the series ends before it.
fn next_occurrence(due: DateTime<Utc>, rule: &Rule) -> Option<DateTime<Utc>> {
    let next = next_due(due, rule)?;
    match rule
        .until
        .as_deref()
        .and_then(|u| u.parse::<DateTime<Utc>>().ok())
    {
        Some(until) if next > until => None,
        _ => Some(next),
    }
}

#[derive(Clone, Debug)]
struct Recurring {
    tasks_url: Option<String>,
    http: reqwest::Client,
}

impl Recurring {
    fn from_env() -> Recurring {
        let tasks_url = std::env::var(ENV_TASKS_URL).ok().or_else(|| {
            std::env::var(zerofn::config::ENV_GATEWAY_URL)
                .ok()
                .map(|gw| format!("{}/fn/tasks", gw.trim_end_matches('/')))
        });
        Recurring {
            tasks_url,
            http: reqwest::Client::new(),
        }
    }

    async fn handle(&self, event: Event<Completed>) -> Result<(), HandlerError> {
        let c = &event.data;
        if c.recurrence.is_none() {
            return Ok(());
        }
        let Some(base) = &self.tasks_url else {
            return Err(HandlerError::retryable(format!(
                "{ENV_TASKS_URL} (or {}) is not set: nowhere to create the next occurrence",
                zerofn::config::ENV_GATEWAY_URL
            )));
        };
        let traceparent = event.ctx.traceparent.clone();
        let got = self
            .http
            .get(format!("{base}/tasks/{}", c.task_id))
            .header("traceparent", &traceparent)
            .timeout(CALL_TIMEOUT)
            .send()
            .await?;
        if got.status() == reqwest::StatusCode::NOT_FOUND {
            tracing::info!(task_id = %c.task_id, "the task was deleted: no next occurrence");
            return Ok(());
        }
        if !got.status().is_success() {
            return Err(HandlerError::retryable(format!(
                "tasks answered {} to the read",
                got.status()
            )));
        }
        let task: Value = got.json().await?;
        let (Some(due), Some(rule)) = (
            task["due_at"]
                .as_str()
                .and_then(|d| d.parse::<DateTime<Utc>>().ok()),
            serde_json::from_value::<Rule>(task["recurrence"].clone()).ok(),
        ) else {
            tracing::info!(task_id = %c.task_id, "no due date or recurrence any more: no next occurrence");
            return Ok(());
        };
        let Some(next) = next_occurrence(due, &rule) else {
            tracing::info!(task_id = %c.task_id, "the series ends: no next occurrence");
            return Ok(());
        };
        let mut body = json!({
            "user_id": task["user_id"], "title": task["title"], "description": task["description"],
            "priority": task["priority"], "tags": task["tags"], "recurrence": task["recurrence"],
            "due_at": next.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        if task["remind_before"].is_string() {
            body["remind_before"] = task["remind_before"].clone();
        }
        let created = self
            .http
            .post(format!("{base}/tasks"))
            // One next occurrence per completed task, however often this runs.
            .header("idempotency-key", format!("next-of-{}", c.task_id))
            .header("traceparent", &traceparent)
            .timeout(CALL_TIMEOUT)
            .json(&body)
            .send()
            .await?;
        let status = created.status();
        if status.is_success() {
            let t: Value = created.json().await.unwrap_or(Value::Null);
            tracing::info!(task_id = %c.task_id, next_task_id = %t["task_id"], due_at = %next, "next occurrence created");
            return Ok(());
        }
        let why = format!(
            "tasks answered {status}: {}",
            created.text().await.unwrap_or_default()
        );
        if status.is_client_error()
            && status != reqwest::StatusCode::CONFLICT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(HandlerError::permanent(why))
        } else {
            Err(HandlerError::retryable(why))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    let recurring = Recurring::from_env();
    zerofn::run(
        handler_fn(move |event| {
            let r = recurring.clone();
            async move { r.handle(event).await }
        }),
        zerofn::manifest!(),
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn rule(every: Every, interval: Option<u32>, until: Option<&str>) -> Rule {
        Rule {
            every,
            interval,
            until: until.map(str::to_string),
            time_zone: None,
        }
    }

    fn local(every: Every, zone: &str) -> Rule {
        Rule {
            time_zone: Some(zone.into()),
            ..rule(every, None, None)
        }
    }

    #[test]
    fn next_due_dates() {
        let iso = |t: Option<DateTime<Utc>>| t.unwrap().to_rfc3339_opts(SecondsFormat::Secs, true);
        let day = rule(Every::Day, None, None);
        assert_eq!(
            iso(next_due(at("2026-12-31T09:00:00Z"), &day)),
            "2027-01-01T09:00:00Z"
        );
        assert_eq!(
            iso(next_due(
                at("2026-12-01T09:00:00Z"),
                &rule(Every::Day, Some(3), None)
            )),
            "2026-12-04T09:00:00Z"
        );
        assert_eq!(
            iso(next_due(
                at("2026-12-01T09:00:00Z"),
                &rule(Every::Week, Some(2), None)
            )),
            "2026-12-15T09:00:00Z"
        );
        let month = rule(Every::Month, None, None);
        assert_eq!(
            iso(next_due(at("2027-01-31T09:00:00Z"), &month)),
            "2027-02-28T09:00:00Z",
            "clamped to February's end"
        );
        assert_eq!(
            iso(next_due(at("2028-01-31T09:00:00Z"), &month)),
            "2028-02-29T09:00:00Z",
            "a leap year"
        );
        assert_eq!(
            iso(next_due(at("2027-02-28T09:00:00Z"), &month)),
            "2027-03-31T09:00:00Z",
            "the last day stays the last day"
        );
        assert_eq!(
            iso(next_due(at("2027-01-15T09:00:00Z"), &month)),
            "2027-02-15T09:00:00Z"
        );
        assert_eq!(
            iso(next_due(
                at("2026-11-30T09:00:00Z"),
                &rule(Every::Month, Some(3), None)
            )),
            "2027-02-28T09:00:00Z"
        );
        // Without a time zone a daily task keeps its UTC time of day across any DST change.
        assert_eq!(
            iso(next_due(at("2026-10-24T07:00:00Z"), &day)),
            "2026-10-25T07:00:00Z"
        );
        let until = rule(Every::Week, None, Some("2026-12-10T00:00:00Z"));
        assert!(next_occurrence(at("2026-12-01T09:00:00Z"), &until).is_some());
        assert!(
            next_occurrence(at("2026-12-08T09:00:00Z"), &until).is_none(),
            "past until: the series ends"
        );
    }

    #[test]
    fn a_series_in_a_time_zone_keeps_its_wall_clock_across_daylight_saving() {
        let iso = |t: Option<DateTime<Utc>>| t.unwrap().to_rfc3339_opts(SecondsFormat::Secs, true);
        let berlin = |every| local(every, "Europe/Berlin");
        // 09:00 in Berlin: 08:00 UTC in winter, 07:00 UTC in summer (clocks go forward on
        // 2027-03-28 and back on 2027-10-31).
        assert_eq!(
            iso(next_due(at("2027-03-27T08:00:00Z"), &berlin(Every::Day))),
            "2027-03-28T07:00:00Z",
            "spring forward: still 09:00 local"
        );
        assert_eq!(
            iso(next_due(at("2027-10-30T07:00:00Z"), &berlin(Every::Day))),
            "2027-10-31T08:00:00Z",
            "fall back: still 09:00 local"
        );
        assert_eq!(
            iso(next_due(at("2027-03-22T08:00:00Z"), &berlin(Every::Week))),
            "2027-03-29T07:00:00Z",
            "a week across the change: 09:00 local"
        );
        assert_eq!(
            iso(next_due(at("2027-02-28T08:00:00Z"), &berlin(Every::Month))),
            "2027-03-31T07:00:00Z",
            "the last day stays the last day, at 09:00 local in summer time"
        );
        // 02:30 does not exist on 2027-03-28 in Berlin: 03:30 CEST, an hour later on the clock.
        assert_eq!(
            iso(next_due(at("2027-03-27T01:30:00Z"), &berlin(Every::Day))),
            "2027-03-28T01:30:00Z",
            "in the gap: past it by the gap"
        );
        // 02:30 occurs twice on 2027-10-31: the first (CEST, 00:30 UTC).
        assert_eq!(
            iso(next_due(at("2027-10-30T00:30:00Z"), &berlin(Every::Day))),
            "2027-10-31T00:30:00Z",
            "twice: the first"
        );
        // The southern hemisphere: New York's and Sydney's changes go opposite ways.
        assert_eq!(
            iso(next_due(
                at("2027-04-02T22:00:00Z"),
                &local(Every::Day, "Australia/Sydney")
            )),
            "2027-04-03T23:00:00Z",
            "09:00 in Sydney after its clocks went back"
        );
        assert_eq!(
            iso(next_due(
                at("2027-03-13T14:00:00Z"),
                &local(Every::Day, "America/New_York")
            )),
            "2027-03-14T13:00:00Z",
            "09:00 in New York after its clocks went forward"
        );
        assert_eq!(
            next_due(
                at("2027-03-13T14:00:00Z"),
                &local(Every::Day, "Mars/Olympus")
            ),
            None,
            "a zone tasks would never have accepted: no guess"
        );
    }

    type Calls = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

    /// A stand-in for tasks on 127.0.0.1: answers `task` to the read (404 when `None`) and 201 to
    /// the create; keeps every call (path, Idempotency-Key, body).
    async fn tasks(task: Option<Value>) -> (String, Calls) {
        use axum::{
            Json, Router,
            extract::Path,
            http::HeaderMap,
            routing::{get, post},
        };
        let calls: Calls = Arc::default();
        let (c1, c2) = (calls.clone(), calls.clone());
        let app = Router::new()
            .route(
                "/tasks/{id}",
                get(move |Path(id): Path<String>| {
                    let (calls, task) = (c1.clone(), task.clone());
                    async move {
                        calls
                            .lock()
                            .unwrap()
                            .push((format!("GET {id}"), None, Value::Null));
                        match task {
                            Some(t) => (axum::http::StatusCode::OK, Json(t)),
                            None => (
                                axum::http::StatusCode::NOT_FOUND,
                                Json(json!({"error": "not_found"})),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/tasks",
                post(move |headers: HeaderMap, Json(body): Json<Value>| {
                    let calls = c2.clone();
                    async move {
                        let key = headers
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_string());
                        calls.lock().unwrap().push(("POST".into(), key, body));
                        (
                            axum::http::StatusCode::CREATED,
                            Json(json!({"task_id": "next"})),
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn completed(recurring: bool) -> Event<Completed> {
        Event::test(Completed {
            task_id: "t-1".into(),
            recurrence: recurring.then(|| json!({"frequency": "monthly"})),
        })
    }

    #[tokio::test]
    async fn the_next_occurrence_is_created_through_tasks_under_the_completed_tasks_key() {
        let task = json!({"task_id": "t-1", "user_id": "u-1", "title": "Pay rent", "description": "", "priority": "high",
                          "tags": ["home"], "due_at": "2027-01-31T09:00:00.000Z", "recurrence": {"every": "month"},
                          "remind_before": "1d", "status": "completed"});
        let (url, calls) = tasks(Some(task)).await;
        let r = Recurring {
            tasks_url: Some(url),
            http: reqwest::Client::new(),
        };
        r.handle(completed(true)).await.unwrap();
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].0, "GET t-1");
        let (_, key, body) = &calls[1];
        assert_eq!(
            key.as_deref(),
            Some("next-of-t-1"),
            "every repeat answers the first create"
        );
        assert_eq!(body["due_at"], "2027-02-28T09:00:00.000Z");
        assert_eq!(body["title"], "Pay rent");
        assert_eq!(body["recurrence"], json!({"every": "month"}));
        assert_eq!(body["remind_before"], "1d");
    }

    #[tokio::test]
    async fn no_next_occurrence_for_a_deleted_or_plain_task() {
        let (url, calls) = tasks(None).await;
        let r = Recurring {
            tasks_url: Some(url),
            http: reqwest::Client::new(),
        };
        r.handle(completed(true)).await.unwrap();
        r.handle(completed(false)).await.unwrap();
        assert_eq!(calls.lock().unwrap().len(), 1, "one read (404), no create");
    }
}
