//! Scheduled triggers, the runtime's half: a handler schedules an event for itself with
//! `Emit::at` (a `[[jobs]]` type) or removes it with `Emit::cancel`; the runtime sends the
//! Dapr Jobs API calls from its outbox once the outcome commits, and the due job's callback
//! (`POST /job/{name}`, the scheduled CloudEvent as its body) reaches the handler with the same
//! idempotency and trace as any event. The sidecar is a recorder on 127.0.0.1; the contract is
//! pinned from dapr/dapr (`pkg/api/http/jobs.go`, `pkg/channel/http/http_channel.go`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Value, json};
use zerofn::{
    Emit, Event, HandlerError, ManifestSource, Typed, handler_fn,
    testing::{Recorder, TestServer},
};
use zerofn_tests::{client, fresh_id, sqlite_url, task};

const TOML: &str = r#"
[function]
name = "reminders"

[[subscriptions]]
topic = "todo.task.created"

[[jobs]]
type = "todo.reminder.due"
"#;

const MANIFEST: ManifestSource = ManifestSource::new(TOML, "reminders", "0.1.0");

#[derive(Debug, Deserialize)]
struct TaskCreated {
    task_id: String,
    user_id: String,
    title: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Input {
    #[serde(rename = "todo.task.created")]
    Created(TaskCreated),
    #[serde(rename = "todo.reminder.due")]
    Due(Value),
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// `remind` schedules the reminder a minute ahead as job `remind-{task}`; `forget` cancels it;
/// a due reminder is recorded with its trace id.
fn handler(seen: Seen) -> impl zerofn::Handler {
    handler_fn(move |event: Event<Typed<Input>>| {
        let seen = seen.clone();
        async move {
            match &*event.data {
                Input::Created(t) if t.title == "remind" => {
                    let mut reminder: Value = serde_json::from_str(include_str!(
                        "../../contracts/events/todo.reminder.due/valid/rent.json"
                    ))
                    .unwrap();
                    reminder["task_id"] = json!(t.task_id);
                    reminder["user_id"] = json!(t.user_id);
                    let at = chrono::Utc::now() + chrono::Duration::minutes(1);
                    Ok(vec![Emit::at(
                        format!("remind-{}", t.task_id),
                        at,
                        "todo.reminder.due",
                        &reminder,
                    )?])
                }
                Input::Created(t) if t.title == "forget" => {
                    Ok(vec![Emit::cancel(format!("remind-{}", t.task_id))])
                }
                // A name only declared schedules may have.
                Input::Created(t) if t.title == "squat" => {
                    Ok(vec![Emit::cancel("schedule-weekly")])
                }
                Input::Created(_) => Ok(vec![]),
                Input::Due(r) => {
                    let trace = event
                        .ctx
                        .traceparent
                        .split('-')
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    seen.lock()
                        .unwrap()
                        .push((r["task_id"].as_str().unwrap_or_default().to_string(), trace));
                    Ok::<_, HandlerError>(vec![])
                }
            }
        }
    })
}

async fn deliver(server: &TestServer, id: &str, title: &str, traceparent: &str) -> Value {
    let mut t = task(title);
    t["task_id"] = json!("0193a7c2-8000-7000-8000-0000000000aa");
    let envelope = json!({
        "specversion": "1.0", "id": id, "source": "/tasks", "type": "todo.task.created",
        "datacontenttype": "application/json", "data": t, "traceparent": traceparent,
        "topic": "todo.task.created", "pubsubname": "kafka-pubsub",
    });
    client()
        .post(format!("{}/events/todo.task.created", server.url()))
        .header("content-type", "application/cloudevents+json")
        .json(&envelope)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_handler_schedules_a_job_that_comes_back_to_it_once_in_its_trace() {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let store = sqlite_url();
    let seen: Seen = Arc::default();
    let server = TestServer::start(
        MANIFEST,
        handler(seen.clone()),
        &[("DAPR_HTTP_PORT", &port), ("ZEROFN_STORE", &store)],
    )
    .await
    .unwrap();
    const TRACE: &str = "7af92f3577b34da6a3ce929d0e0e4739";
    let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
    assert_eq!(
        deliver(&server, &fresh_id("t"), "remind", &tp).await["status"],
        "SUCCESS"
    );
    let calls = sidecar.requests();
    assert_eq!(calls.len(), 1, "one Jobs API call");
    let call = &calls[0];
    assert_eq!(
        call.path_and_query,
        "/v1.0-alpha1/jobs/remind-0193a7c2-8000-7000-8000-0000000000aa"
    );
    let body = call.json();
    assert_eq!(body["overwrite"], true);
    let due: chrono::DateTime<chrono::Utc> = body["dueTime"].as_str().unwrap().parse().unwrap();
    assert!(due > chrono::Utc::now(), "due in the future: {due}");
    let scheduled = body["data"].clone();
    assert_eq!(scheduled["type"], "todo.reminder.due");
    assert_eq!(
        scheduled["data"]["task_id"],
        "0193a7c2-8000-7000-8000-0000000000aa"
    );

    // Dapr calls back with the job's data: the scheduled event reaches the handler, once.
    let job_url = format!(
        "{}/job/remind-0193a7c2-8000-7000-8000-0000000000aa",
        server.url()
    );
    for _ in 0..3 {
        let r = client()
            .post(&job_url)
            .json(&scheduled)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            "0193a7c2-8000-7000-8000-0000000000aa".to_string(),
            TRACE.to_string()
        )],
        "handled once (two duplicates), in the trace of the event that scheduled it"
    );

    // A cancel is a DELETE of the same job.
    deliver(&server, &fresh_id("t"), "forget", &tp).await;
    let calls = sidecar.requests();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].method, "DELETE");
    assert_eq!(
        calls[1].path_and_query,
        "/v1.0-alpha1/jobs/remind-0193a7c2-8000-7000-8000-0000000000aa"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_job_type_not_declared_or_without_a_sidecar_is_refused() {
    let undeclared: ManifestSource = ManifestSource::new(
        "[function]\nname = \"reminders\"\n[[subscriptions]]\ntopic = \"todo.task.created\"\n",
        "reminders",
        "0.1.0",
    );
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let server = TestServer::start(
        undeclared,
        handler(Arc::default()),
        &[("DAPR_HTTP_PORT", &port)],
    )
    .await
    .unwrap();
    let answer = deliver(
        &server,
        &fresh_id("t"),
        "remind",
        "00-5bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01",
    )
    .await;
    assert_eq!(answer["status"], "SUCCESS", "dead-lettered: {answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("does not declare under [[jobs]]"),
        "{answer}"
    );
    // A handler may not take a name of the declared schedules' (`schedule-…`): dead-lettered,
    // and nothing reaches the sidecar.
    let answer = deliver(
        &server,
        &fresh_id("t"),
        "squat",
        "00-5bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01",
    )
    .await;
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("belong to the schedules declared in function.toml"),
        "{answer}"
    );
    assert!(
        sidecar
            .requests()
            .iter()
            .all(|r| !r.path_and_query.contains("schedule-")),
        "no Jobs API call for it"
    );
    server.shutdown().await.unwrap();
    // On the HTTP transport there is no Jobs API: refused at start, naming the setting.
    let err = TestServer::start(
        MANIFEST,
        handler(Arc::default()),
        &[("ZEROFN_TRANSPORT", "http")],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ZEROFN_TRANSPORT") && err.contains("[[jobs]]"),
        "{err}"
    );
}

const SCHEDULED: ManifestSource = ManifestSource::new(
    r#"
[function]
name = "digest"

[[schedules]]
name = "weekly"
cron = "0 0 8 * * 1"          # Mondays 08:00 UTC
data = { window = "7d" }
"#,
    "digest",
    "0.1.0",
);

#[tokio::test]
async fn a_declared_schedule_is_registered_at_start_and_each_trigger_is_one_event() {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let store = sqlite_url();
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |event: Event<Value>| {
            let seen = seen.clone();
            async move {
                assert_eq!(event.ctx.ty, "zerofn.schedule.due");
                seen.lock()
                    .unwrap()
                    .push((event.ctx.id.clone(), event.data.clone()));
                Ok::<_, HandlerError>(Vec::<Emit>::new())
            }
        })
    };
    let server = TestServer::start(
        SCHEDULED,
        handler,
        &[("DAPR_HTTP_PORT", &port), ("ZEROFN_STORE", &store)],
    )
    .await
    .unwrap();
    // Registered with the sidecar's Jobs API at start (in the background: the sidecar may
    // come up after the app).
    let mut calls = sidecar.requests();
    for _ in 0..50 {
        if !calls.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        calls = sidecar.requests();
    }
    assert_eq!(calls.len(), 1, "one registration");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path_and_query, "/v1.0-alpha1/jobs/schedule-weekly");
    assert_eq!(
        calls[0].json(),
        json!({"schedule": "0 0 8 * * 1", "data": {"schedule": "weekly"}, "overwrite": true})
    );

    // The job fires: three deliveries of one trigger (a retry, a second replica) are one
    // event, named after the Monday 08:00 it belongs to.
    let job_url = format!("{}/job/schedule-weekly", server.url());
    for _ in 0..3 {
        let r = client()
            .post(&job_url)
            .json(&json!({"schedule": "weekly"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let handled = seen.lock().unwrap().clone();
    assert_eq!(handled.len(), 1, "one trigger, handled once: {handled:?}");
    let (id, data) = &handled[0];
    let at = data["scheduled_at"].as_str().unwrap();
    assert_eq!(id, &format!("schedule-weekly@{at}"));
    let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
    assert!(at <= chrono::Utc::now() && chrono::Utc::now() - at < chrono::Duration::days(7));
    assert_eq!(
        at.format("%a %H:%M:%S").to_string(),
        "Mon 08:00:00",
        "the cron instant, not the delivery time"
    );
    assert_eq!(data["schedule"], "weekly");
    assert_eq!(data["window"], "7d", "the schedule's own data");

    // A schedule function.toml no longer declares: acknowledged, and its job deleted.
    let r = client()
        .post(format!("{}/job/schedule-retired", server.url()))
        .json(&json!({"schedule": "retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut calls = sidecar.requests();
    for _ in 0..50 {
        if calls.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        calls = sidecar.requests();
    }
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        (calls[1].method.as_str(), calls[1].path_and_query.as_str()),
        ("DELETE", "/v1.0-alpha1/jobs/schedule-retired")
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing handled for it");
    server.shutdown().await.unwrap();
}
