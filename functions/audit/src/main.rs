//! audit: every finance and todo event becomes one immutable row of a hash-chained audit log.

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use zerofn::prelude::*;

/// `prev_hash` of the first row.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// audit's own table.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One audit row before it takes its place in the chain.
#[derive(Debug, PartialEq)]
struct Entry {
    recorded_at: i64,
    actor: String,
    action: String,
    resource: String,
    event_id: String,
    event_source: String,
    correlation_id: String,
    data: String,
}

impl Entry {
    fn from_event(event: &Event<Value>) -> Entry {
        let ctx = &event.ctx;
        let entity = ctx.ty.split('.').nth(1).unwrap_or("event");
        let id = event
            .data
            .get(format!("{entity}_id"))
            .and_then(Value::as_str)
            .unwrap_or("-");
        Entry {
            recorded_at: chrono::Utc::now().timestamp_millis(),
            actor: event
                .data
                .get("user_id")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            action: ctx.ty.clone(),
            resource: format!("{entity}/{id}"),
            event_id: ctx.id.clone(),
            event_source: ctx.source.clone(),
            correlation_id: ctx
                .extension("correlationid")
                .unwrap_or(&ctx.id)
                .to_string(),
            // serde_json's maps are ordered, so this text is canonical.
            data: event.data.to_string(),
        }
    }

    /// sha256 over `seq`, every field and `prev`, each length-prefixed so no two rows can
    /// produce the same input by moving bytes between fields.
    fn hash(&self, seq: i64, prev: &str) -> String {
        let mut h = Sha256::new();
        let seq = seq.to_string();
        let recorded_at = self.recorded_at.to_string();
        for field in [
            seq.as_str(),
            &recorded_at,
            &self.actor,
            &self.action,
            &self.resource,
            &self.event_id,
            &self.event_source,
            &self.correlation_id,
            &self.data,
            prev,
        ] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

async fn handle(event: Event<Value>) -> Result<(), HandlerError> {
    let entry = Entry::from_event(&event);
    // `[store] sql = true`: the runtime always has a transaction for audit.
    let mut conn = event.conn().await?;
    let seq = append(&mut conn, &entry).await?;
    tracing::info!(seq, action = %entry.action, resource = %entry.resource, "audit row appended");
    Ok(())
}

/// Append `entry` after the last row. Two appends racing for one position collide on the
/// primary key; the loser's delivery is retried (retryable) and takes the next position.
async fn append(conn: &mut sqlx::AnyConnection, e: &Entry) -> Result<i64, sqlx::Error> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev) = match last {
        Some(row) => (
            row.try_get::<i64, _>("seq")? + 1,
            row.try_get::<String, _>("hash")?,
        ),
        None => (1, GENESIS.to_string()),
    };
    let hash = e.hash(seq, &prev);
    sqlx::query(
        "INSERT INTO audit_log (seq, recorded_at, actor, action, resource, event_id, event_source, correlation_id, data, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(seq)
    .bind(e.recorded_at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.resource)
    .bind(&e.event_id)
    .bind(&e.event_source)
    .bind(&e.correlation_id)
    .bind(&e.data)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(seq)
}

/// The result of walking the chain.
#[derive(Debug, PartialEq)]
enum Verdict {
    Intact { rows: i64 },
    Broken { seq: i64, reason: String },
}

async fn verify(pool: &sqlx::AnyPool) -> Result<Verdict, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, recorded_at, actor, action, resource, event_id, event_source, correlation_id, data, prev_hash, hash \
         FROM audit_log ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1;
    for row in &rows {
        let seq: i64 = row.try_get("seq")?;
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                reason: format!("row {expected_seq} is missing"),
            });
        }
        let entry = Entry {
            recorded_at: row.try_get("recorded_at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            event_id: row.try_get("event_id")?,
            event_source: row.try_get("event_source")?,
            correlation_id: row.try_get("correlation_id")?,
            data: row.try_get("data")?,
        };
        let prev: String = row.try_get("prev_hash")?;
        let hash: String = row.try_get("hash")?;
        if prev != expected_prev {
            return Ok(Verdict::Broken {
                seq,
                reason: format!("row {seq} does not follow row {}", seq - 1),
            });
        }
        if entry.hash(seq, &prev) != hash {
            return Ok(Verdict::Broken {
                seq,
                reason: format!("row {seq} was altered after it was written"),
            });
        }
        expected_prev = hash;
        expected_seq += 1;
    }
    Ok(Verdict::Intact {
        rows: expected_seq - 1,
    })
}

/// `GET /audit/verify`; `GET /audit/events?resource=task/{id}` (or `?task_id=`, which adds the
/// events that mention the task, such as its reminders), oldest first.
fn routes(pool: sqlx::AnyPool) -> Router {
    let for_events = pool.clone();
    Router::new()
        .route(
            "/audit/events",
            get(
                move |axum::extract::Query(q): axum::extract::Query<HistoryQuery>| {
                    let pool = for_events.clone();
                    async move { history(&pool, q).await }
                },
            ),
        )
        .route(
            "/audit/verify",
            get(move || {
                let pool = pool.clone();
                async move {
                    match verify(&pool).await {
                        Ok(Verdict::Intact { rows }) => {
                            Json(json!({"ok": true, "rows": rows})).into_response()
                        }
                        Ok(Verdict::Broken { seq, reason }) => (
                            StatusCode::CONFLICT,
                            Json(json!({"ok": false, "first_bad_seq": seq, "reason": reason})),
                        )
                            .into_response(),
                        Err(e) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"ok": false, "reason": e.to_string()})),
                        )
                            .into_response(),
                    }
                }
            }),
        )
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    resource: Option<String>,
    task_id: Option<String>,
}

/// A resource's recorded events, oldest first (at most 500).
async fn history(pool: &sqlx::AnyPool, q: HistoryQuery) -> axum::response::Response {
    let refuse = |message: &str| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "invalid_query", "message": message})),
        )
            .into_response()
    };
    let (sql, bind, mention) = match (&q.resource, &q.task_id) {
        (Some(r), None) if !r.is_empty() => (
            "SELECT seq, recorded_at, actor, action, resource, event_id, data FROM audit_log \
             WHERE resource = $1 ORDER BY seq LIMIT 500",
            r.clone(),
            None,
        ),
        (None, Some(t)) if !t.is_empty() && !t.contains(['"', '%', '_', '\\']) => (
            "SELECT seq, recorded_at, actor, action, resource, event_id, data FROM audit_log \
             WHERE resource = $1 OR data LIKE $2 ORDER BY seq LIMIT 500",
            format!("task/{t}"),
            Some(format!("%\"task_id\":\"{t}\"%")),
        ),
        _ => return refuse("give resource=ENTITY/ID or task_id=ID (one of them)"),
    };
    let mut query = sqlx::query(sql).bind(bind);
    if let Some(m) = mention {
        query = query.bind(m);
    }
    let rows = match query.fetch_all(pool).await {
        Ok(rows) => rows,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "store_unavailable", "message": e.to_string()})),
            )
                .into_response();
        }
    };
    let events: Vec<Value> = rows
        .iter()
        .map(|r| {
            let data: String = r.get("data");
            json!({
                "seq": r.get::<i64, _>("seq"),
                "recorded_at": r.get::<i64, _>("recorded_at"),
                "actor": r.get::<String, _>("actor"),
                "action": r.get::<String, _>("action"),
                "resource": r.get::<String, _>("resource"),
                "event_id": r.get::<String, _>("event_id"),
                "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
            })
        })
        .collect();
    Json(json!({"events": events})).into_response()
}

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::run(
        handler_fn(handle),
        zerofn::manifest!()
            .migrations(&MIGRATIONS)
            .sql_routes(routes),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerofn::testing::TestServer;
    use zerofn_tests::{client, fresh_id};

    fn example(ty: &str) -> Value {
        let dir = format!(
            "{}/../../contracts/events/{ty}/valid",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let first = files.remove(0);
        serde_json::from_str(&std::fs::read_to_string(first).unwrap()).unwrap()
    }

    #[test]
    fn resource_actor_and_hash() {
        let mut event = Event::test(example("todo.task.created")).with_type("todo.task.created");
        event.ctx.id = "e-1".into();
        let entry = Entry::from_event(&event);
        assert_eq!(entry.resource, "task/0193a7c2-8000-7000-8000-000000000001");
        assert_eq!(entry.actor, "u-7");
        assert_eq!(entry.correlation_id, "e-1");
        let h = entry.hash(1, GENESIS);
        assert_eq!(h.len(), 64);
        assert_ne!(
            h,
            entry.hash(2, GENESIS),
            "the position is part of the hash"
        );
        let moved = Entry {
            actor: "u-".into(),
            action: format!("7{}", entry.action),
            ..entry
        };
        assert_ne!(
            moved.hash(1, GENESIS),
            h,
            "moving bytes between fields changes the hash"
        );
    }

    async fn deliver(server: &TestServer, ty: &str, id: &str) -> u16 {
        client()
            .post(server.url())
            .header("content-type", "application/cloudevents+json")
            .json(
                &json!({"specversion": "1.0", "id": id, "source": "/seed", "type": ty,
                          "datacontenttype": "application/json", "data": example(ty)}),
            )
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn verify_over_http(server: &TestServer) -> (u16, Value) {
        let r = client()
            .get(format!("{}/audit/verify", server.url()))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_tasks_history_is_read_back_in_order() {
        let dir = std::env::temp_dir().join(fresh_id("audit"));
        let store = format!("sqlite:{}/zerofn.db", dir.display());
        let manifest = zerofn::manifest!()
            .migrations(&MIGRATIONS)
            .sql_routes(routes);
        let server = TestServer::start(manifest, handler_fn(handle), &[("ZEROFN_STORE", &store)])
            .await
            .unwrap();
        for (ty, id) in [
            ("todo.task.created", "h-1"),
            ("finance.transaction.created", "h-2"),
            ("todo.reminder.due", "h-3"),
        ] {
            assert_eq!(deliver(&server, ty, id).await, 202, "{ty}");
        }
        let get = |q: &'static str| {
            let url = format!("{}/audit/events?{q}", server.url());
            async move {
                let r = client().get(url).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let task = "0193a7c2-8000-7000-8000-000000000001";
        let (s, v) = get("resource=task/0193a7c2-8000-7000-8000-000000000001").await;
        assert_eq!(s, 200);
        let actions = |v: &Value| -> Vec<String> {
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["action"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(actions(&v), vec!["todo.task.created"]);
        assert_eq!(v["events"][0]["data"]["task_id"], task);
        let (_, v) = get("task_id=0193a7c2-8000-7000-8000-000000000001").await;
        assert_eq!(
            actions(&v),
            vec!["todo.task.created", "todo.reminder.due"],
            "its reminder too, in order"
        );
        assert_eq!(get("").await.0, 422);
        assert_eq!(get("task_id=%25").await.0, 422, "no wildcard");
    }

    #[tokio::test]
    async fn every_event_type_is_appended_once_and_tampering_is_detected() {
        let dir = std::env::temp_dir().join(fresh_id("audit"));
        let store = format!("sqlite:{}/zerofn.db", dir.display());
        let manifest = zerofn::manifest!()
            .migrations(&MIGRATIONS)
            .sql_routes(routes);
        let server = TestServer::start(manifest, handler_fn(handle), &[("ZEROFN_STORE", &store)])
            .await
            .unwrap();
        let types = zerofn::contract::Contracts::embedded()
            .unwrap()
            .types()
            .filter(|t| !t.starts_with("zerofn.")) // the runtime's own, not the products'
            .map(str::to_string)
            .collect::<Vec<_>>();
        assert_eq!(
            types.len(),
            14,
            "every contract, finance.budget.created included"
        );
        for ty in &types {
            assert_eq!(
                deliver(&server, ty, &format!("evt-{ty}")).await,
                202,
                "{ty}"
            );
        }
        // A redelivery appends nothing.
        assert_eq!(
            deliver(&server, &types[0], &format!("evt-{}", types[0])).await,
            202
        );
        assert_eq!(
            verify_over_http(&server).await,
            (200, json!({"ok": true, "rows": 14}))
        );

        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}/zerofn.db", dir.display()))
            .await
            .unwrap();
        let original: String = sqlx::query("SELECT data FROM audit_log WHERE seq = 5")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("data");
        sqlx::query("UPDATE audit_log SET data = '{\"amount_minor\":1}' WHERE seq = 5")
            .execute(&pool)
            .await
            .unwrap();
        let (status, body) = verify_over_http(&server).await;
        assert_eq!(status, 409);
        assert_eq!(body["first_bad_seq"], 5);
        assert_eq!(body["reason"], "row 5 was altered after it was written");

        sqlx::query("UPDATE audit_log SET data = $1 WHERE seq = 5")
            .bind(&original)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(verify_over_http(&server).await.0, 200, "restored");
        sqlx::query("DELETE FROM audit_log WHERE seq = 9")
            .execute(&pool)
            .await
            .unwrap();
        let (status, body) = verify_over_http(&server).await;
        assert_eq!((status, body["first_bad_seq"].clone()), (409, json!(9)));
        assert_eq!(body["reason"], "row 9 is missing");
        pool.close().await;
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
