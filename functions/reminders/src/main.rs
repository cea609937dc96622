//! reminders: a task with `due_at` and `remind_before` gets a one-shot job at
//! `due_at − remind_before` (through the Dapr Jobs API: the function may sleep at zero until
//! then), announced by `todo.reminder.scheduled`. An update reschedules it, a completion or a
//! deletion cancels it. When the job fires, `todo.reminder.due` goes out — unless the task was
//! completed, deleted or moved meanwhile.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{AnyConnection, Row};
use zerofn::{Typed, prelude::*};

#[derive(Debug, Deserialize)]
struct Created {
    task_id: String,
    user_id: String,
    title: String,
    due_at: Option<DateTime<Utc>>,
    remind_before: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Updated {
    task_id: String,
    changes: Map<String, Value>,
}

/// A completion or a deletion.
#[derive(Debug, Deserialize)]
struct Ended {
    task_id: String,
    user_id: String,
}

/// `todo.reminder.due`: what the job carries, and what goes out when it fires.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
struct Due {
    reminder_id: String,
    task_id: String,
    user_id: String,
    task_title: String,
    remind_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_at: Option<DateTime<Utc>>,
    channel: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Input {
    #[serde(rename = "todo.task.created")]
    Created(Created),
    #[serde(rename = "todo.task.updated")]
    Updated(Updated),
    #[serde(rename = "todo.task.completed")]
    Completed(Ended),
    #[serde(rename = "todo.task.deleted")]
    Deleted(Ended),
    /// The job, back at its time.
    #[serde(rename = "todo.reminder.due")]
    Due(Due),
}

/// A task's reminder as last set.
#[derive(Clone, Debug, PartialEq)]
struct Task {
    task_id: String,
    user_id: String,
    title: String,
    due_at: Option<DateTime<Utc>>,
    remind_before: Option<String>,
    open: bool,
}

impl Task {
    fn remind_at(&self) -> Option<DateTime<Utc>> {
        remind_at(self.due_at?, self.remind_before.as_deref()?)
    }
}

async fn handle(event: Event<Typed<Input>>) -> Result<Vec<Emit>, HandlerError> {
    let mut guard = event.conn().await?;
    let conn: &mut AnyConnection = &mut guard;
    match &*event.data {
        Input::Created(c) => {
            let task = Task {
                task_id: c.task_id.clone(),
                user_id: c.user_id.clone(),
                title: c.title.clone(),
                due_at: c.due_at,
                remind_before: c.remind_before.clone(),
                open: true,
            };
            if load(conn, &task.task_id).await?.is_some() {
                return Ok(vec![]); // seen (a replay under another event id)
            }
            save(conn, &task).await?;
            plan(None, &task)
        }
        Input::Updated(u) => {
            let Some(before) = load(conn, &u.task_id).await? else {
                return Err(HandlerError::retryable(format!(
                    "task {} not seen yet: waiting for its todo.task.created",
                    u.task_id
                )));
            };
            let after = apply(&before, &u.changes)?;
            save(conn, &after).await?;
            plan(Some(&before), &after)
        }
        Input::Completed(Ended { task_id, user_id })
        | Input::Deleted(Ended { task_id, user_id }) => {
            let Some(before) = load(conn, task_id).await? else {
                // Ended before its creation arrived (another topic): a closed row, so the
                // creation, when it comes, schedules nothing.
                let closed = Task {
                    task_id: task_id.clone(),
                    user_id: user_id.clone(),
                    title: String::new(),
                    due_at: None,
                    remind_before: None,
                    open: false,
                };
                save(conn, &closed).await?;
                return Ok(vec![]);
            };
            let after = Task {
                open: false,
                ..before.clone()
            };
            save(conn, &after).await?;
            plan(Some(&before), &after)
        }
        Input::Due(due) => {
            let task = load(conn, &due.task_id).await?;
            if !still_due(task.as_ref(), due) {
                tracing::info!(task_id = %due.task_id, "reminder skipped: the task was completed, deleted or moved");
                return Ok(vec![]);
            }
            tracing::info!(task_id = %due.task_id, remind_at = %due.remind_at, "reminder due");
            Ok(vec![
                Emit::new("todo.reminder.due", due)?
                    .partition_key(&due.user_id)
                    .subject(&due.task_id),
            ])
        }
    }
}

/// What a change of a task's reminder asks for: nothing when it did not move; else a cancel of
/// the old job, or the new one (which replaces the old: same name) and its announcement.
fn plan(before: Option<&Task>, after: &Task) -> Result<Vec<Emit>, HandlerError> {
    let was = before.filter(|b| b.open).and_then(Task::remind_at);
    let now = if after.open { after.remind_at() } else { None };
    if was == now {
        return Ok(vec![]);
    }
    let name = job_name(&after.task_id);
    let Some(at) = now else {
        return Ok(vec![Emit::cancel(name)]);
    };
    let due = Due {
        reminder_id: reminder_id(&after.task_id, at),
        task_id: after.task_id.clone(),
        user_id: after.user_id.clone(),
        task_title: after.title.clone(),
        remind_at: at,
        due_at: after.due_at,
        channel: "in_app".into(),
    };
    let scheduled = serde_json::json!({
        "reminder_id": due.reminder_id, "task_id": due.task_id, "user_id": due.user_id,
        "remind_at": at.to_rfc3339_opts(SecondsFormat::Secs, true), "channel": due.channel,
    });
    Ok(vec![
        Emit::new("todo.reminder.scheduled", &scheduled)?
            .partition_key(&after.user_id)
            .subject(&after.task_id),
        Emit::at(name, at, "todo.reminder.due", &due)?,
    ])
}

/// Whether a fired reminder still stands: the task open, and its reminder still at that time.
fn still_due(task: Option<&Task>, due: &Due) -> bool {
    task.is_some_and(|t| t.open && t.remind_at() == Some(due.remind_at))
}

/// `due_at − remind_before` (`30s`, `15m`, `2h`, `1d`).
fn remind_at(due_at: DateTime<Utc>, remind_before: &str) -> Option<DateTime<Utc>> {
    let (n, unit) = remind_before.split_at(remind_before.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let before = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return None,
    };
    due_at.checked_sub_signed(before)
}

/// One job per task: rescheduling replaces it.
fn job_name(task_id: &str) -> String {
    format!("reminder-{task_id}")
}

/// The same task and time: the same reminder id, however often it is scheduled.
fn reminder_id(task_id: &str, at: DateTime<Utc>) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("reminder:{task_id}:{}", at.timestamp_millis()).as_bytes(),
    )
    .to_string()
}

/// `before` with an update's changes (a `null` clears `due_at` or `remind_before`).
fn apply(before: &Task, changes: &Map<String, Value>) -> Result<Task, HandlerError> {
    let mut t = before.clone();
    if let Some(title) = changes.get("title").and_then(Value::as_str) {
        t.title = title.to_string();
    }
    if let Some(due) = changes.get("due_at") {
        t.due_at = match due {
            Value::Null => None,
            v => Some(serde_json::from_value(v.clone()).map_err(HandlerError::permanent)?),
        };
    }
    if let Some(r) = changes.get("remind_before") {
        t.remind_before = r.as_str().map(str::to_string);
    }
    Ok(t)
}

async fn load(conn: &mut AnyConnection, task_id: &str) -> Result<Option<Task>, HandlerError> {
    let row = sqlx::query(
        "SELECT task_id, user_id, title, due_at, remind_before, state FROM reminders WHERE task_id = $1",
    )
    .bind(task_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let due_at: Option<String> = r.try_get("due_at")?;
    Ok(Some(Task {
        task_id: r.try_get("task_id")?,
        user_id: r.try_get("user_id")?,
        title: r.try_get("title")?,
        due_at: due_at.and_then(|d| d.parse().ok()),
        remind_before: r.try_get("remind_before")?,
        open: r.try_get::<String, _>("state")? == "open",
    }))
}

async fn save(conn: &mut AnyConnection, t: &Task) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO reminders (task_id, user_id, title, due_at, remind_before, remind_at, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (task_id) DO UPDATE SET title = excluded.title, \
         due_at = excluded.due_at, remind_before = excluded.remind_before, remind_at = excluded.remind_at, \
         state = excluded.state",
    )
    .bind(&t.task_id)
    .bind(&t.user_id)
    .bind(&t.title)
    .bind(t.due_at.map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true)))
    .bind(&t.remind_before)
    .bind(t.remind_at().map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true)))
    .bind(if t.open { "open" } else { "closed" })
    .execute(&mut *conn)
    .await?;
    Ok(())
}

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const MANIFEST: zerofn::ManifestSource = zerofn::manifest!().migrations(&MIGRATIONS);

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::run(handler_fn(handle), MANIFEST).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use zerofn::{EventData, contract::Contracts, testing};

    const T: &str = "0193a7c2-8000-7000-8000-000000000001";

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// What one delivery emits: ("type" or "job NAME at TIME" or "cancel NAME", data).
    async fn deliver(db: &testing::TestDb, ty: &str, data: Value) -> Vec<(String, Value)> {
        let input = Typed::<Input>::from_event(ty, data).unwrap();
        let emits = db
            .run(Event::test(input).with_type(ty), handle)
            .await
            .unwrap();
        let contracts = Contracts::embedded().unwrap();
        emits
            .iter()
            .map(|e| {
                if let Some(name) = e.cancelled() {
                    return (format!("cancel {name}"), Value::Null);
                }
                assert_eq!(
                    contracts.validate(e.ty(), e.data()),
                    Some(Ok(())),
                    "{:?}",
                    e.data()
                );
                let what = match e.scheduled() {
                    Some((name, due)) => format!(
                        "job {name} at {}",
                        due.to_rfc3339_opts(SecondsFormat::Secs, true)
                    ),
                    None => e.ty().to_string(),
                };
                (what, e.data().clone())
            })
            .collect()
    }

    fn kinds(emitted: &[(String, Value)]) -> Vec<&str> {
        emitted.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn created(due_at: Option<&str>, remind_before: Option<&str>) -> Value {
        let mut t = json!({"task_id": T, "user_id": "u-1", "title": "Pay rent", "priority": "high",
                           "created_at": "2026-11-20T10:00:00Z"});
        if let Some(d) = due_at {
            t["due_at"] = json!(d);
        }
        if let Some(r) = remind_before {
            t["remind_before"] = json!(r);
        }
        t
    }

    #[test]
    fn remind_before_is_subtracted() {
        let due = at("2026-11-23T12:00:00Z");
        assert_eq!(remind_at(due, "30s"), Some(at("2026-11-23T11:59:30Z")));
        assert_eq!(remind_at(due, "15m"), Some(at("2026-11-23T11:45:00Z")));
        assert_eq!(remind_at(due, "2h"), Some(at("2026-11-23T10:00:00Z")));
        assert_eq!(remind_at(due, "1d"), Some(at("2026-11-22T12:00:00Z")));
        for bad in ["", "m", "0m", "15", "15w", "-1h"] {
            assert_eq!(remind_at(due, bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_task_with_a_reminder_gets_a_job_and_an_announcement() {
        let db = testing::TestDb::open(MANIFEST).await.unwrap();
        let out = deliver(
            &db,
            "todo.task.created",
            created(Some("2026-11-23T12:00:00Z"), Some("30m")),
        )
        .await;
        assert_eq!(
            kinds(&out),
            vec![
                "todo.reminder.scheduled",
                &format!("job reminder-{T} at 2026-11-23T11:30:00Z")
            ]
        );
        assert_eq!(out[0].1["remind_at"], "2026-11-23T11:30:00Z");
        assert_eq!(out[1].1["task_title"], "Pay rent");
        assert_eq!(out[0].1["reminder_id"], out[1].1["reminder_id"]);
        // The same task again (a replay): nothing new.
        assert!(
            deliver(
                &db,
                "todo.task.created",
                created(Some("2026-11-23T12:00:00Z"), Some("30m"))
            )
            .await
            .is_empty()
        );
        // Without a due date or a remind_before: no reminder.
        let mut other = created(Some("2026-11-23T12:00:00Z"), None);
        other["task_id"] = json!("0193a7c2-8000-7000-8000-000000000002");
        assert!(deliver(&db, "todo.task.created", other).await.is_empty());
    }

    #[tokio::test]
    async fn an_update_reschedules_and_an_end_cancels() {
        let db = testing::TestDb::open(MANIFEST).await.unwrap();
        deliver(
            &db,
            "todo.task.created",
            created(Some("2026-11-23T12:00:00Z"), Some("30m")),
        )
        .await;
        let update = |changes: Value| json!({"task_id": T, "user_id": "u-1", "changes": changes, "updated_at": "2026-11-21T10:00:00Z"});
        let moved = deliver(
            &db,
            "todo.task.updated",
            update(json!({"due_at": "2026-11-24T12:00:00Z"})),
        )
        .await;
        assert_eq!(
            kinds(&moved),
            vec![
                "todo.reminder.scheduled",
                &format!("job reminder-{T} at 2026-11-24T11:30:00Z")
            ],
            "the same job name: it replaces the old one"
        );
        assert!(
            deliver(
                &db,
                "todo.task.updated",
                update(json!({"title": "Pay the rent"}))
            )
            .await
            .is_empty(),
            "the time did not move"
        );
        let cleared = deliver(
            &db,
            "todo.task.updated",
            update(json!({"remind_before": null})),
        )
        .await;
        assert_eq!(
            kinds(&cleared),
            vec![format!("cancel reminder-{T}").as_str()]
        );
        deliver(
            &db,
            "todo.task.updated",
            update(json!({"remind_before": "1h"})),
        )
        .await;
        let done = deliver(
            &db,
            "todo.task.completed",
            json!({"task_id": T, "user_id": "u-1", "completed_at": "2026-11-22T09:00:00Z"}),
        )
        .await;
        assert_eq!(kinds(&done), vec![format!("cancel reminder-{T}").as_str()]);
        let again = deliver(
            &db,
            "todo.task.deleted",
            json!({"task_id": T, "user_id": "u-1", "deleted_at": "2026-11-22T10:00:00Z"}),
        )
        .await;
        assert!(again.is_empty(), "already ended");
    }

    #[tokio::test]
    async fn a_completion_that_arrives_before_the_creation_wins() {
        let db = testing::TestDb::open(MANIFEST).await.unwrap();
        let done = deliver(
            &db,
            "todo.task.completed",
            json!({"task_id": T, "user_id": "u-1", "completed_at": "2026-11-22T09:00:00Z"}),
        )
        .await;
        assert!(done.is_empty());
        let late = deliver(
            &db,
            "todo.task.created",
            created(Some("2026-11-23T12:00:00Z"), Some("30m")),
        )
        .await;
        assert!(
            late.is_empty(),
            "no reminder for a task already completed: {late:?}"
        );
    }

    #[tokio::test]
    async fn a_fired_reminder_goes_out_only_while_it_stands() {
        let db = testing::TestDb::open(MANIFEST).await.unwrap();
        let out = deliver(
            &db,
            "todo.task.created",
            created(Some("2026-11-23T12:00:00Z"), Some("30m")),
        )
        .await;
        let job = out[1].1.clone();
        let fired = deliver(&db, "todo.reminder.due", job.clone()).await;
        assert_eq!(kinds(&fired), vec!["todo.reminder.due"]);
        assert_eq!(fired[0].1, job, "the reminder as scheduled");
        // Moved meanwhile: the old job's firing is stale.
        let update = json!({"task_id": T, "user_id": "u-1", "changes": {"due_at": "2026-11-25T12:00:00Z"}, "updated_at": "2026-11-21T10:00:00Z"});
        deliver(&db, "todo.task.updated", update).await;
        assert!(
            deliver(&db, "todo.reminder.due", job.clone())
                .await
                .is_empty(),
            "moved"
        );
        // Completed meanwhile: nothing.
        deliver(
            &db,
            "todo.task.completed",
            json!({"task_id": T, "user_id": "u-1", "completed_at": "2026-11-22T09:00:00Z"}),
        )
        .await;
        let mut current = job;
        current["remind_at"] = json!("2026-11-25T11:30:00Z");
        assert!(
            deliver(&db, "todo.reminder.due", current).await.is_empty(),
            "completed"
        );
    }
}
