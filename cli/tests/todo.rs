//! The todo app's reminders end to end through the real engine and gateway: a task event with a
//! reminder a few seconds ahead becomes one `todo.reminder.due` and one notification, fired by
//! the engine's Jobs API while `reminders` is at zero replicas; a reminder survives an engine
//! restart; a task completed first is never reminded. Every wait is bounded; counts are
//! asserted, not timings.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chrono::{SecondsFormat, Utc};
use engine::{Engine, manifest};
use serde_json::{Value, json};
use zerofn_tests::{client, fresh_id, store_pool};

fn todo() -> Vec<String> {
    ["reminders", "notify"]
        .iter()
        .map(|f| manifest(&format!("functions/{f}")))
        .collect()
}

/// Post a task event of `ty` through the gateway.
async fn post(engine: &Engine, ty: &str, data: Value) {
    let r = client()
        .post(engine.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .json(
            &json!({"specversion": "1.0", "id": fresh_id("e"), "source": "/tests/todo",
                      "type": ty, "data": data}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
}

/// A task due in `due_in`, reminded `remind_before` ahead.
fn task(user: &str, task_id: &str, due_in: chrono::Duration, remind_before: &str) -> Value {
    json!({"task_id": task_id, "user_id": user, "title": "Water the plants", "priority": "medium",
           "created_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
           "due_at": (Utc::now() + due_in).to_rfc3339_opts(SecondsFormat::Secs, true),
           "remind_before": remind_before})
}

/// The `todo.reminder.due` records in the engine's log for `task_id`.
async fn reminders_due(state: &Path, task_id: &str) -> usize {
    let pool = store_pool(&format!("sqlite:{}", state.join("log.db").display())).await;
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM records WHERE topic = 'todo.reminder.due'")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.iter()
        .filter(|v| serde_json::from_slice::<Value>(v).unwrap()["data"]["task_id"] == task_id)
        .count()
}

/// The user's reminder notifications (bounded wait for at least `n`).
async fn reminded(engine: &Engine, user: &str, n: usize, secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut found = Vec::new();
        if let Ok(r) = client()
            .get(engine.url(&format!("/fn/notify/notifications?user_id={user}")))
            .send()
            .await
            && r.status() == 200
        {
            let v: Value = r.json().await.unwrap();
            found = v["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["kind"] == "reminder")
                .cloned()
                .collect();
        }
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tokio::test]
async fn a_reminder_fires_once_on_time_with_reminders_at_zero() {
    let engine = Engine::start(&todo(), None, &[], &["--cooldown", "1s"]).await;
    let user = fresh_id("u");
    let id = task_id();
    // Reminded 4 s from now (due in 6 s, 2 s ahead).
    post(
        &engine,
        "todo.task.created",
        task(&user, &id, chrono::Duration::seconds(6), "2s"),
    )
    .await;
    engine
        .wait_for(
            "reminders",
            30,
            "the reminder scheduled, then back to zero",
            |s| s["processed"].as_u64() >= Some(1) && s["replicas"] == 0 && s["starting"] == 0,
        )
        .await;
    assert_eq!(reminders_due(&engine.state, &id).await, 0, "not due yet");
    let told = reminded(&engine, &user, 1, 30).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["title"], "Reminder: Water the plants");
    let s = engine.status("reminders").await;
    assert!(
        s["cold_starts"].as_u64() >= Some(2),
        "woken from zero by its job: {s}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reminders_due(&engine.state, &id).await,
        1,
        "one todo.reminder.due"
    );
    assert_eq!(
        reminded(&engine, &user, 2, 0).await.len(),
        1,
        "one notification"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_reminder_scheduled_before_an_engine_restart_fires_once_after_it() {
    let engine = Engine::start(&todo(), None, &[], &[]).await;
    let user = fresh_id("u");
    let id = task_id();
    post(
        &engine,
        "todo.task.created",
        task(&user, &id, chrono::Duration::seconds(5), "2s"),
    )
    .await;
    engine
        .wait_for("reminders", 30, "the reminder scheduled", |s| {
            s["processed"].as_u64() >= Some(1) && s["total_lag"] == 0
        })
        .await;
    let state = engine.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await; // due while the engine is down
    let engine = Engine::start(&todo(), Some(state.clone()), &[], &[]).await;
    let told = reminded(&engine, &user, 1, 30).await;
    assert_eq!(told.len(), 1, "{told:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reminders_due(&state, &id).await, 1, "once");
    engine.stop().await;
}

#[tokio::test]
async fn a_task_completed_before_its_reminder_is_not_reminded() {
    let engine = Engine::start(&todo(), None, &[], &[]).await;
    let user = fresh_id("u");
    let id = task_id();
    post(
        &engine,
        "todo.task.created",
        task(&user, &id, chrono::Duration::seconds(5), "2s"),
    )
    .await;
    post(
        &engine,
        "todo.task.completed",
        json!({"task_id": id, "user_id": user,
               "completed_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)}),
    )
    .await;
    engine
        .wait_for("reminders", 30, "both handled", |s| {
            s["processed"].as_u64() >= Some(2) && s["total_lag"] == 0
        })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await; // past the reminder's time
    assert_eq!(reminders_due(&engine.state, &id).await, 0, "cancelled");
    assert!(reminded(&engine, &user, 1, 0).await.is_empty());
    engine.stop().await;
}

#[tokio::test]
async fn a_completion_delivered_five_times_creates_one_next_occurrence() {
    let fns: Vec<String> = ["tasks", "recurring", "reminders", "notify"]
        .iter()
        .map(|f| manifest(&format!("functions/{f}")))
        .collect();
    let engine = Engine::start(&fns, None, &[], &[]).await;
    let user = fresh_id("u");
    let r = client()
        .post(engine.url("/fn/tasks/tasks"))
        .json(
            &json!({"user_id": user, "title": "Water the plants", "priority": "low",
                      "due_at": "2027-01-31T08:00:00Z", "recurrence": {"every": "month"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let task: Value = r.json().await.unwrap();
    let id = task["task_id"].as_str().unwrap().to_string();
    let done = client()
        .post(engine.url(&format!("/fn/tasks/tasks/{id}/complete")))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    // The same completion four more times, as redeliveries and replays would bring it.
    for _ in 0..4 {
        post(
            &engine,
            "todo.task.completed",
            json!({"task_id": id, "user_id": user, "completed_at": "2026-12-02T10:00:00Z",
                   "recurrence": {"frequency": "monthly"}}),
        )
        .await;
    }
    engine
        .wait_for("recurring", 60, "five completions handled", |s| {
            s["processed"].as_u64() >= Some(5) && s["total_lag"] == 0
        })
        .await;
    let list: Value = client()
        .get(engine.url(&format!("/fn/tasks/tasks?user_id={user}&sort=created_at")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        2,
        "the completed task and one next occurrence: {list}"
    );
    assert_eq!(tasks[0]["status"], "completed");
    assert_eq!(tasks[1]["status"], "open");
    assert_eq!(
        tasks[1]["due_at"], "2027-02-28T08:00:00.000Z",
        "January 31st's next month is February's end"
    );
    assert_eq!(tasks[1]["recurrence"], json!({"every": "month"}));
    engine.stop().await;
}
