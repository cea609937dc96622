//! notify: budget, insight and reminder events become an in-app notification plus a
//! `finance.alert.sent` / `todo.notification.sent` event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zerofn::{Typed, prelude::*};

/// What `finance.budget.warning` and `finance.budget.exceeded` share.
#[derive(Debug, Deserialize)]
struct Budget {
    user_id: String,
    category: String,
    period: String,
    currency: String,
    limit_minor: i64,
    spent_minor: i64,
}

impl Budget {
    /// `(412.50 of 400.00 EUR)`
    fn usage(&self) -> String {
        format!(
            "({} of {} {})",
            money(self.spent_minor, &self.currency),
            money(self.limit_minor, &self.currency),
            self.currency
        )
    }
}

#[derive(Debug, Deserialize)]
struct BudgetWarning {
    #[serde(flatten)]
    budget: Budget,
    percent_used: f64,
}

#[derive(Debug, Deserialize)]
struct BudgetExceeded {
    #[serde(flatten)]
    budget: Budget,
    over_by_minor: i64,
}

#[derive(Debug, Deserialize)]
struct InsightGenerated {
    user_id: String,
    title: String,
    body: String,
}

#[derive(Debug, Deserialize)]
struct ReminderDue {
    task_id: String,
    user_id: String,
    task_title: String,
    due_at: Option<DateTime<Utc>>,
    channel: String,
}

#[derive(Debug, Deserialize)]
struct TaskCompleted {
    task_id: String,
    user_id: String,
    title: Option<String>,
}

/// The event types notify consumes; the CloudEvent type picks the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Notice {
    #[serde(rename = "finance.budget.warning")]
    BudgetWarning(BudgetWarning),
    #[serde(rename = "finance.budget.exceeded")]
    BudgetExceeded(BudgetExceeded),
    #[serde(rename = "finance.insight.generated")]
    Insight(InsightGenerated),
    #[serde(rename = "todo.reminder.due")]
    ReminderDue(ReminderDue),
    #[serde(rename = "todo.task.completed")]
    TaskCompleted(TaskCompleted),
}

/// A stored in-app notification.
#[derive(Clone, Debug, PartialEq)]
struct Notification {
    id: uuid::Uuid,
    user_id: String,
    channel: String,
    kind: String,
    title: String,
    body: String,
    cause_event_id: String,
}

/// notify's own table.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Serialize)]
struct Cause<'a> {
    event_id: &'a str,
    event_type: &'a str,
}

#[derive(Serialize)]
struct AlertSent<'a> {
    alert_id: uuid::Uuid,
    user_id: &'a str,
    channel: &'a str,
    kind: &'a str,
    title: &'a str,
    body: &'a str,
    cause: Cause<'a>,
    sent_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct NotificationSent<'a> {
    notification_id: uuid::Uuid,
    user_id: &'a str,
    channel: &'a str,
    title: &'a str,
    body: &'a str,
    task_id: &'a str,
    cause: Cause<'a>,
    sent_at: DateTime<Utc>,
}

async fn handle(event: Event<Typed<Notice>>) -> Result<Emit, HandlerError> {
    let ctx = &event.ctx;
    // Same event (source + id) → same notification id, however often it is delivered.
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{}#{}", ctx.source, ctx.id).as_bytes(),
    );
    let cause = Cause {
        event_id: &ctx.id,
        event_type: &ctx.ty,
    };
    let (kind, user_id, title, body) = match &*event.data {
        Notice::BudgetWarning(BudgetWarning {
            budget: b,
            percent_used,
        }) => {
            if b.spent_minor * 100 < b.limit_minor * 80 {
                return Err(HandlerError::permanent(format!(
                    "budget warning below 80 %: spent {} of {}",
                    b.spent_minor, b.limit_minor
                )));
            }
            let body = format!(
                "You have used {percent_used:.0} % of your {} budget for {} {}.",
                b.category,
                b.period,
                b.usage()
            );
            let title = format!("{} budget at {percent_used:.0} %", b.category);
            ("budget_warning", &b.user_id, title, body)
        }
        Notice::BudgetExceeded(BudgetExceeded {
            budget: b,
            over_by_minor,
        }) => {
            if b.spent_minor <= b.limit_minor {
                return Err(HandlerError::permanent(format!(
                    "budget exceeded without spending over the limit: spent {} of {}",
                    b.spent_minor, b.limit_minor
                )));
            }
            let body = format!(
                "You are {} {} over your {} budget for {} {}.",
                money(*over_by_minor, &b.currency),
                b.currency,
                b.category,
                b.period,
                b.usage()
            );
            let title = format!("{} budget exceeded", b.category);
            ("budget_exceeded", &b.user_id, title, body)
        }
        Notice::Insight(i) => ("insight", &i.user_id, i.title.clone(), i.body.clone()),
        Notice::ReminderDue(r) => {
            let body = match r.due_at {
                Some(due) => format!("Due {}", due.format("%Y-%m-%d %H:%M UTC")),
                None => "It is time.".to_string(),
            };
            let title = format!("Reminder: {}", r.task_title);
            let todo = Todo {
                kind: "reminder",
                user_id: &r.user_id,
                task_id: &r.task_id,
                channel: &r.channel,
                title,
                body,
            };
            return todo_notification(&event, id, cause, todo).await;
        }
        Notice::TaskCompleted(c) => {
            let (title, body) = match &c.title {
                Some(t) => (format!("Done: {t}"), format!("You completed \"{t}\".")),
                None => ("Task done".to_string(), "You completed a task.".to_string()),
            };
            let todo = Todo {
                kind: "task_completed",
                user_id: &c.user_id,
                task_id: &c.task_id,
                channel: "in_app",
                title,
                body,
            };
            return todo_notification(&event, id, cause, todo).await;
        }
    };
    let n = Notification {
        id,
        user_id: user_id.clone(),
        channel: "in_app".into(),
        kind: kind.into(),
        title: title.clone(),
        body: body.clone(),
        cause_event_id: ctx.id.clone(),
    };
    store(&event, n).await?;
    let alert = AlertSent {
        alert_id: id,
        user_id,
        channel: "in_app",
        kind,
        title: &title,
        body: &body,
        cause,
        sent_at: Utc::now(),
    };
    tracing::info!(notification_id = %id, user_id = %user_id, kind, "finance alert stored");
    Ok(Emit::new("finance.alert.sent", &alert)?.partition_key(user_id))
}

/// A notification about a task.
struct Todo<'a> {
    kind: &'static str,
    user_id: &'a str,
    task_id: &'a str,
    channel: &'a str,
    title: String,
    body: String,
}

/// Store a task's notification and say so with `todo.notification.sent`.
async fn todo_notification(
    event: &Event<Typed<Notice>>,
    id: uuid::Uuid,
    cause: Cause<'_>,
    t: Todo<'_>,
) -> Result<Emit, HandlerError> {
    let title: String = t.title.chars().take(120).collect();
    let n = Notification {
        id,
        user_id: t.user_id.to_string(),
        channel: t.channel.to_string(),
        kind: t.kind.into(),
        title: title.clone(),
        body: t.body.clone(),
        cause_event_id: event.ctx.id.clone(),
    };
    store(event, n).await?;
    let sent = NotificationSent {
        notification_id: id,
        user_id: t.user_id,
        channel: t.channel,
        title: &title,
        body: &t.body,
        task_id: t.task_id,
        cause,
        sent_at: Utc::now(),
    };
    tracing::info!(notification_id = %id, user_id = %t.user_id, kind = t.kind, "task notification stored");
    Ok(Emit::new("todo.notification.sent", &sent)?.partition_key(t.user_id))
}

/// Keep the notification in the delivery's transaction: it commits exactly once, with the
/// idempotency record and the emitted event (`[store] sql = true`).
async fn store<T>(event: &Event<T>, n: Notification) -> Result<(), HandlerError> {
    let mut conn = event.conn().await?;
    insert(&mut conn, &n).await?;
    Ok(())
}

async fn insert(conn: &mut sqlx::AnyConnection, n: &Notification) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (id, user_id, channel, kind, title, body, cause_event_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(n.id.to_string())
    .bind(&n.user_id)
    .bind(&n.channel)
    .bind(&n.kind)
    .bind(&n.title)
    .bind(&n.body)
    .bind(&n.cause_event_id)
    .bind(Utc::now().timestamp_millis())
    .execute(conn)
    .await
    .map(|_| ())
}

/// Format minor units with the currency's decimals (0 for JPY/KRW, 2 otherwise).
fn money(minor: i64, currency: &str) -> String {
    let decimals = if matches!(currency, "JPY" | "KRW" | "ISK") {
        0
    } else {
        2
    };
    if decimals == 0 {
        return minor.to_string();
    }
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::run(handler_fn(handle), MANIFEST).await
}

/// The manifest with notify's table and its read routes.
const MANIFEST: zerofn::ManifestSource = zerofn::manifest!()
    .migrations(&MIGRATIONS)
    .sql_routes(routes);

/// What the user reads: `GET /notifications?user_id=…[&unread=true][&limit=50]`, newest
/// first, each with its `read` flag; `POST /notifications/{id}/read` marks one read.
fn routes(pool: sqlx::AnyPool) -> axum::Router {
    use axum::{
        Json,
        extract::{Path, Query, State},
        http::StatusCode,
        response::{IntoResponse, Response},
        routing::{get, post},
    };
    use serde_json::json;

    #[derive(Deserialize)]
    struct List {
        user_id: Option<String>,
        #[serde(default)]
        unread: bool,
        limit: Option<i64>,
    }

    fn refuse(status: StatusCode, error: &str, message: &str) -> Response {
        (status, Json(json!({"error": error, "message": message}))).into_response()
    }

    async fn list(State(pool): State<sqlx::AnyPool>, Query(q): Query<List>) -> Response {
        let Some(user) = q.user_id.filter(|u| !u.is_empty()) else {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "user_id is required: whose notifications to list",
            );
        };
        let limit = q.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "limit must be between 1 and 500",
            );
        }
        let sql = if q.unread {
            "SELECT id, kind, title, body, channel, cause_event_id, created_at, read_at FROM notifications \
             WHERE user_id = $1 AND read_at IS NULL ORDER BY created_at DESC, id DESC LIMIT $2"
        } else {
            "SELECT id, kind, title, body, channel, cause_event_id, created_at, read_at FROM notifications \
             WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        };
        let rows = match sqlx::query(sql)
            .bind(&user)
            .bind(limit)
            .fetch_all(&pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    &e.to_string(),
                );
            }
        };
        let at = |ms: Option<i64>| {
            ms.and_then(DateTime::<Utc>::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                use sqlx::Row;
                let read_at: Option<i64> = r.get("read_at");
                json!({
                    "id": r.get::<String, _>("id"),
                    "kind": r.get::<String, _>("kind"),
                    "title": r.get::<String, _>("title"),
                    "body": r.get::<String, _>("body"),
                    "channel": r.get::<String, _>("channel"),
                    "cause_event_id": r.get::<String, _>("cause_event_id"),
                    "created_at": at(Some(r.get("created_at"))),
                    "read": read_at.is_some(),
                    "read_at": at(read_at),
                })
            })
            .collect();
        Json(json!({"user_id": user, "notifications": items})).into_response()
    }

    async fn mark_read(State(pool): State<sqlx::AnyPool>, Path(id): Path<String>) -> Response {
        let marked =
            sqlx::query("UPDATE notifications SET read_at = COALESCE(read_at, $2) WHERE id = $1")
                .bind(&id)
                .bind(Utc::now().timestamp_millis())
                .execute(&pool)
                .await;
        match marked {
            Ok(r) if r.rows_affected() == 1 => StatusCode::NO_CONTENT.into_response(),
            Ok(_) => refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no notification {id}"),
            ),
            Err(e) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &e.to_string(),
            ),
        }
    }

    axum::Router::new()
        .route("/notifications", get(list))
        .route("/notifications/{id}/read", post(mark_read))
        .with_state(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tower::ServiceExt;
    use zerofn::{EventData, contract::Contracts, testing};

    fn example(ty: &str, name: &str) -> Value {
        let path = format!(
            "{}/../../contracts/events/{ty}/valid/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    async fn db() -> testing::TestDb {
        testing::TestDb::open(MANIFEST).await.unwrap()
    }

    async fn run(ty: &str, data: Value) -> Result<Emit, HandlerError> {
        run_in(&db().await, ty, data).await
    }

    async fn run_in(db: &testing::TestDb, ty: &str, data: Value) -> Result<Emit, HandlerError> {
        let notice = Typed::<Notice>::from_event(ty, data).unwrap();
        db.run(Event::test(notice).with_type(ty), handle).await
    }

    async fn rows_with_id(db: &testing::TestDb, id: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool())
            .await
            .unwrap()
    }

    fn assert_valid(emit: &Emit) {
        let contracts = Contracts::embedded().unwrap();
        assert_eq!(
            contracts.validate(emit.ty(), emit.data()),
            Some(Ok(())),
            "{:?}",
            emit.data()
        );
    }

    #[tokio::test]
    async fn budget_exceeded_becomes_a_finance_alert() {
        let db = db().await;
        let emit = run_in(
            &db,
            "finance.budget.exceeded",
            example("finance.budget.exceeded", "groceries-over"),
        )
        .await
        .unwrap();
        assert_eq!(emit.ty(), "finance.alert.sent");
        assert_eq!(emit.data()["kind"], "budget_exceeded");
        assert_eq!(
            emit.data()["body"],
            "You are 12.50 EUR over your groceries budget for 2026-11 (412.50 of 400.00 EUR)."
        );
        assert_valid(&emit);
        let id = emit.data()["alert_id"].as_str().unwrap().to_string();
        assert_eq!(rows_with_id(&db, &id).await, 1, "notification {id} stored");
    }

    #[tokio::test]
    async fn warning_and_insight_become_alerts() {
        let w = run(
            "finance.budget.warning",
            example("finance.budget.warning", "dining-82"),
        )
        .await
        .unwrap();
        assert_eq!(w.data()["kind"], "budget_warning");
        assert_eq!(w.data()["title"], "dining budget at 82 %");
        assert_valid(&w);
        let i = run(
            "finance.insight.generated",
            example("finance.insight.generated", "spike"),
        )
        .await
        .unwrap();
        assert_eq!(i.data()["kind"], "insight");
        assert_eq!(i.data()["title"], "Dining is up 40 % this month");
        assert_valid(&i);
    }

    #[tokio::test]
    async fn reminder_becomes_a_todo_notification_on_its_channel() {
        let emit = run("todo.reminder.due", example("todo.reminder.due", "rent"))
            .await
            .unwrap();
        assert_eq!(emit.ty(), "todo.notification.sent");
        assert_eq!(emit.data()["title"], "Reminder: Pay rent");
        assert_eq!(emit.data()["body"], "Due 2026-11-23 12:00 UTC");
        assert_eq!(emit.data()["channel"], "in_app");
        assert_valid(&emit);
    }

    #[tokio::test]
    async fn the_user_reads_notifications_newest_first_and_marks_them_read() {
        let sidecar = testing::Recorder::start().await.unwrap();
        let port = sidecar.port().to_string();
        let server =
            testing::TestServer::start(MANIFEST, handler_fn(handle), &[("DAPR_HTTP_PORT", &port)])
                .await
                .unwrap();
        for (id, ty, example_name) in [
            ("n-1", "finance.budget.warning", "dining-82"),
            ("n-2", "finance.budget.exceeded", "groceries-over"),
        ] {
            let mut data = example(ty, example_name);
            data["user_id"] = json!("reader-1");
            let envelope = json!({
                "specversion": "1.0", "id": id, "source": "budgets", "type": ty,
                "datacontenttype": "application/json", "topic": ty, "pubsubname": "kafka-pubsub",
                "data": data,
            });
            let reply = reqwest_post(&format!("{}/events/{ty}", server.url()), &envelope).await;
            assert_eq!(reply, json!({"status": "SUCCESS"}));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let get = |q: &str| {
            let url = format!("{}/notifications{q}", server.url());
            async move {
                let r = reqwest::get(url).await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let (status, all) = get("?user_id=reader-1").await;
        assert_eq!(status, 200);
        let list = all["notifications"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{all}");
        assert_eq!(list[0]["kind"], "budget_exceeded", "newest first");
        assert_eq!(list[1]["kind"], "budget_warning");
        assert!(list.iter().all(|n| n["read"] == false));
        let first = list[0]["id"].as_str().unwrap().to_string();
        let client = reqwest::Client::new();
        let marked = client
            .post(format!("{}/notifications/{first}/read", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(marked.status(), 204);
        let (_, unread) = get("?user_id=reader-1&unread=true").await;
        let unread = unread["notifications"].as_array().unwrap();
        assert_eq!(unread.len(), 1);
        assert_eq!(unread[0]["kind"], "budget_warning");
        let (_, all) = get("?user_id=reader-1").await;
        assert_eq!(all["notifications"][0]["read"], true);
        // Nobody else's, and precise refusals.
        let (_, other) = get("?user_id=someone-else").await;
        assert_eq!(other["notifications"], json!([]));
        let (status, body) = get("").await;
        assert_eq!(status, 422);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("user_id is required")
        );
        let missing = client
            .post(format!("{}/notifications/nope/read", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn it_refuses_to_start_without_a_sql_store() {
        for store in ["memory", "redis://127.0.0.1:9"] {
            let err = testing::router(
                MANIFEST,
                handler_fn(handle),
                &[("ZEROFN_STORE", store), ("DAPR_HTTP_PORT", "9")],
            )
            .await
            .unwrap_err();
            assert!(err.is_usage(), "{store}: exit 64");
            assert!(
                err.to_string()
                    .contains("function notify keeps its data in SQL"),
                "{store}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn same_event_gives_same_notification_id() {
        let data = example("finance.budget.exceeded", "groceries-over");
        let notice =
            || Typed::<Notice>::from_event("finance.budget.exceeded", data.clone()).unwrap();
        let first = Event::test(notice()).with_type("finance.budget.exceeded");
        let mut again = Event::test(notice()).with_type("finance.budget.exceeded");
        again.ctx = first.ctx.clone();
        let db = db().await;
        let a = db.run(first, handle).await.unwrap();
        let b = db.run(again, handle).await.unwrap();
        assert_eq!(a.data()["alert_id"], b.data()["alert_id"]);
        let id = a.data()["alert_id"].as_str().unwrap().to_string();
        assert_eq!(rows_with_id(&db, &id).await, 1);
    }

    #[tokio::test]
    async fn contradictory_budget_numbers_are_permanent() {
        let mut x = example("finance.budget.exceeded", "groceries-over");
        x["spent_minor"] = json!(100);
        let err = run("finance.budget.exceeded", x).await.unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.to_string().contains("without spending over the limit"),
            "{err}"
        );
        let mut w = example("finance.budget.warning", "dining-82");
        w["spent_minor"] = json!(1000);
        assert!(
            run("finance.budget.warning", w)
                .await
                .unwrap_err()
                .is_permanent()
        );
    }

    #[test]
    fn money_formatting() {
        assert_eq!(money(1250, "EUR"), "12.50");
        assert_eq!(money(-5, "USD"), "-0.05");
        assert_eq!(money(1200, "JPY"), "1200");
    }

    #[tokio::test]
    async fn a_completed_task_becomes_a_todo_notification() {
        let db = db().await;
        let emit = run_in(
            &db,
            "todo.task.completed",
            json!({"task_id": "0193a7c2-8000-7000-8000-000000000001", "user_id": "u-7",
                   "title": "Pay rent", "completed_at": "2026-11-23T09:00:00Z"}),
        )
        .await
        .unwrap();
        assert_eq!(emit.ty(), "todo.notification.sent");
        assert_eq!(emit.data()["title"], "Done: Pay rent");
        assert_eq!(
            emit.data()["task_id"],
            "0193a7c2-8000-7000-8000-000000000001"
        );
        assert_valid(&emit);
        let id = emit.data()["notification_id"].as_str().unwrap().to_string();
        assert_eq!(rows_with_id(&db, &id).await, 1, "stored");
    }

    #[tokio::test]
    async fn dapr_subscribe_matches_golden() {
        let app = testing::router(MANIFEST, handler_fn(handle), &[("DAPR_HTTP_PORT", "3500")])
            .await
            .unwrap();
        let request = http::Request::get("/dapr/subscribe")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let got: Value = serde_json::from_slice(&body).unwrap();
        let golden_path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/subscribe.golden.json"
        );
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
        assert_eq!(
            got,
            golden,
            "GET /dapr/subscribe changed:\n{}",
            serde_json::to_string_pretty(&got).unwrap()
        );
    }

    #[tokio::test]
    async fn a_dapr_delivery_publishes_the_alert_through_the_sidecar() {
        let sidecar = testing::Recorder::start().await.unwrap();
        let port = sidecar.port().to_string();
        let server = testing::TestServer::start(
            MANIFEST,
            handler_fn(handle),
            &[
                ("DAPR_HTTP_PORT", &port),
                ("DAPR_API_TOKEN", "sidecar-secret"),
            ],
        )
        .await
        .unwrap();
        let envelope = json!({
            "specversion": "1.0", "id": "b-1", "source": "budgets", "type": "finance.budget.exceeded",
            "datacontenttype": "application/json", "topic": "finance.budget.exceeded", "pubsubname": "kafka-pubsub",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "data": example("finance.budget.exceeded", "groceries-over"),
        });
        let reply = reqwest_post(
            &format!("{}/events/finance.budget.exceeded", server.url()),
            &envelope,
        )
        .await;
        assert_eq!(reply, json!({"status": "SUCCESS"}));
        let published = sidecar.requests();
        assert_eq!(published.len(), 1);
        let p = &published[0];
        assert_eq!(
            p.path_and_query,
            "/v1.0/publish/kafka-pubsub/finance.alert.sent?metadata.partitionKey=u-42"
        );
        assert_eq!(p.header("dapr-api-token"), "sidecar-secret");
        assert_eq!(p.json()["type"], "finance.alert.sent");
        assert_eq!(p.json()["causationid"], "b-1");
        assert!(
            p.header("traceparent")
                .starts_with("00-0af7651916cd43dd8448eb211c80319c-")
        );
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn redeliveries_store_one_notification_row_in_sqlite() {
        let dir = std::env::temp_dir().join(zerofn_tests::fresh_id("notify"));
        let store = format!("sqlite:{}/zerofn.db", dir.display());
        let sidecar = testing::Recorder::start().await.unwrap();
        let port = sidecar.port().to_string();
        let server = testing::TestServer::start(
            MANIFEST,
            handler_fn(handle),
            &[("DAPR_HTTP_PORT", &port), ("ZEROFN_STORE", &store)],
        )
        .await
        .unwrap();
        let envelope = json!({
            "specversion": "1.0", "id": "b-sql-1", "source": "budgets", "type": "finance.budget.exceeded",
            "datacontenttype": "application/json",
            "data": example("finance.budget.exceeded", "groceries-over"),
        });
        let url = format!("{}/events/finance.budget.exceeded", server.url());
        for _ in 0..3 {
            let reply = reqwest_post(&url, &envelope).await;
            assert_eq!(reply["status"], "SUCCESS");
        }
        server.shutdown().await.unwrap();

        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}/zerofn.db", dir.display()))
            .await
            .unwrap();
        let rows = sqlx::query("SELECT user_id, kind, title FROM notifications")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "one notification for three deliveries");
        let kind: String = sqlx::Row::get(&rows[0], "kind");
        assert_eq!(kind, "budget_exceeded");
        pool.close().await;
        assert_eq!(sidecar.requests().len(), 1, "one alert published");
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn reqwest_post(url: &str, body: &Value) -> Value {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/cloudevents+json")
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}
