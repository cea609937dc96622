//! tasks: the todo app's system of record. Tasks are rows; every write emits its event
//! (`todo.task.created` / `.updated` / `.completed` / `.deleted`) through the outbox in the
//! write's own transaction. An `Idempotency-Key` makes a retried write answer the first response.
//!
//! - `POST /tasks` `{user_id, title, description?, priority?: low|medium|high, tags?: [..], due_at?,
//!   recurrence?: {every: day|week|month, interval?, until?, time_zone?}, remind_before?: "15m"}`
//!   → 201 (`time_zone`, IANA, keeps the series on its local wall clock across DST).
//! - `GET /tasks/{id}`, `PATCH /tasks/{id}` (a `null` clears `due_at`, `recurrence`,
//!   `remind_before`), `DELETE /tasks/{id}` → 204, `POST /tasks/{id}/complete` (409 when done).
//! - `GET /tasks?user_id=…` with `q` (title and description), `status`, `priority`, `tag` (several:
//!   all of them), `due_before`, `due_after`, `overdue=true`, `sort=due_at|priority|created_at|title`,
//!   `order=asc|desc`, `limit` and a `cursor` that stays right while tasks are added.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::Row;
use zerofn::{Emit, Fields, Write, WriteError, invalid};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const MANIFEST: zerofn::ManifestSource = zerofn::manifest!()
    .migrations(&MIGRATIONS)
    .sql_routes(routes);

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::serve(MANIFEST).await
}

fn routes(pool: sqlx::AnyPool) -> Router {
    Router::new()
        .route("/tasks", get(list).post(create))
        .route("/tasks/{id}", get(read).patch(update).delete(remove))
        .route("/tasks/{id}/complete", post(complete))
        .with_state(pool)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    fn parse(v: &str, field: &str) -> Result<Priority, WriteError> {
        match v {
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            other => Err(invalid(
                field,
                format!("{other:?} is not one of low, medium, high"),
            )),
        }
    }

    fn rank(self) -> i64 {
        self as i64
    }

    fn of_rank(r: i64) -> Priority {
        match r {
            0 => Priority::Low,
            2 => Priority::High,
            _ => Priority::Medium,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Every {
    Day,
    Week,
    Month,
}

/// How a task repeats: a completion creates the next occurrence (see `functions/recurring`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Recurrence {
    every: Every,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    /// The IANA time zone whose wall clock the series keeps (`Europe/Berlin`: 09:00 stays
    /// 09:00 across daylight saving); none keeps the UTC time of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
}

impl Recurrence {
    /// As the contracts spell it: `{frequency: daily|weekly|monthly, interval?, until?,
    /// time_zone?}`.
    fn contract(&self) -> Value {
        let mut v = json!({"frequency": match self.every {
            Every::Day => "daily",
            Every::Week => "weekly",
            Every::Month => "monthly",
        }});
        if let Some(i) = self.interval {
            v["interval"] = json!(i);
        }
        if let Some(u) = &self.until {
            v["until"] = json!(u);
        }
        if let Some(z) = &self.time_zone {
            v["time_zone"] = json!(z);
        }
        v
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Task {
    task_id: String,
    user_id: String,
    title: String,
    description: String,
    priority: Priority,
    tags: Vec<String>,
    due_at: Option<String>,
    recurrence: Option<Recurrence>,
    remind_before: Option<String>,
    status: String,
    created_at: String,
    completed_at: Option<String>,
    version: i64,
}

impl Task {
    /// `todo.task.created`.
    fn created(&self) -> Value {
        let mut v = json!({
            "task_id": self.task_id, "user_id": self.user_id, "title": self.title,
            "priority": self.priority, "created_at": self.created_at,
        });
        if !self.description.is_empty() {
            v["description"] = json!(self.description);
        }
        if !self.tags.is_empty() {
            v["tags"] = json!(self.tags);
        }
        if let Some(d) = &self.due_at {
            v["due_at"] = json!(d);
        }
        if let Some(r) = &self.recurrence {
            v["recurrence"] = r.contract();
        }
        if let Some(r) = &self.remind_before {
            v["remind_before"] = json!(r);
        }
        v
    }

    /// The rule a task must keep whole: a recurrence and a reminder need a due date, and a
    /// recurrence ends after it.
    fn check(&self) -> Result<(), WriteError> {
        if self.due_at.is_none() {
            if self.recurrence.is_some() {
                return Err(invalid(
                    "recurrence",
                    "needs a due_at: it repeats from the due date",
                ));
            }
            if self.remind_before.is_some() {
                return Err(invalid(
                    "remind_before",
                    "needs a due_at: it is counted back from it",
                ));
            }
        }
        if let (
            Some(due),
            Some(Recurrence {
                until: Some(until), ..
            }),
        ) = (&self.due_at, &self.recurrence)
            && until <= due
        {
            return Err(invalid(
                "recurrence.until",
                format!("{until} is not after due_at {due}"),
            ));
        }
        Ok(())
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Task, sqlx::Error> {
        let tags: String = r.try_get("tags")?;
        let recurrence: Option<String> = r.try_get("recurrence")?;
        Ok(Task {
            task_id: r.try_get("task_id")?,
            user_id: r.try_get("user_id")?,
            title: r.try_get("title")?,
            description: r.try_get("description")?,
            priority: Priority::of_rank(r.try_get("priority")?),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            due_at: r.try_get("due_at")?,
            recurrence: recurrence.and_then(|r| serde_json::from_str(&r).ok()),
            remind_before: r.try_get("remind_before")?,
            status: r.try_get("status")?,
            created_at: r.try_get("created_at")?,
            completed_at: r.try_get("completed_at")?,
            version: r.try_get("version")?,
        })
    }
}

const COLUMNS: &str = "task_id, user_id, title, description, priority, tags, due_at, recurrence, \
    remind_before, status, created_at, completed_at, version";

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------------------------
// Writes

async fn create(mut write: Write, body: Bytes) -> Result<Response, WriteError> {
    let mut f = Fields::parse(&body)?;
    let user_id = user_id(&f.required_str("user_id")?)?;
    let title = title(&f.required_str("title")?)?;
    let description = description(f.optional_str("description")?.unwrap_or_default())?;
    let priority = match f.optional_str("priority")? {
        Some(p) => Priority::parse(&p, "priority")?,
        None => Priority::Medium,
    };
    let tags = tags(f.take("tags"))?;
    let due_at = f
        .optional_str("due_at")?
        .map(|d| time(&d, "due_at"))
        .transpose()?;
    let recurrence = recurrence(f.take("recurrence"))?;
    let remind_before = f
        .optional_str("remind_before")?
        .map(remind_before)
        .transpose()?;
    f.no_other_fields()?;
    let task = Task {
        task_id: uuid::Uuid::now_v7().to_string(),
        user_id,
        title,
        description,
        priority,
        tags,
        due_at,
        recurrence,
        remind_before,
        status: "open".into(),
        created_at: now(),
        completed_at: None,
        version: 1,
    };
    task.check()?;
    {
        let mut conn = write.conn().await?;
        store(&mut conn, &task, true)
            .await
            .map_err(WriteError::internal)?;
    }
    write.emit(
        Emit::new("todo.task.created", &task.created())?
            .partition_key(&task.user_id)
            .subject(&task.task_id),
    );
    write.respond(StatusCode::CREATED, &task).await
}

async fn update(
    mut write: Write,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, WriteError> {
    let mut f = Fields::parse(&body)?;
    let mut changes = Map::new();
    let before = {
        let mut conn = write.conn().await?;
        find(&mut conn, &id).await?
    };
    let mut after = before.clone();
    if let Some(t) = f.optional_str("title")? {
        after.title = title(&t)?;
    }
    if let Some(d) = f.optional_str("description")? {
        after.description = description(d)?;
    }
    if let Some(p) = f.optional_str("priority")? {
        after.priority = Priority::parse(&p, "priority")?;
    }
    if let Some(t) = f.take("tags") {
        after.tags = tags(Some(t))?;
    }
    if let Some(d) = f.take("due_at") {
        after.due_at = match d {
            Value::Null => None,
            Value::String(s) => Some(time(&s, "due_at")?),
            other => {
                return Err(invalid(
                    "due_at",
                    format!("must be an RFC 3339 time or null, got {other}"),
                ));
            }
        };
    }
    if let Some(r) = f.take("recurrence") {
        after.recurrence = recurrence(Some(r))?;
    }
    if let Some(r) = f.take("remind_before") {
        after.remind_before = match r {
            Value::Null => None,
            Value::String(s) => Some(remind_before(s)?),
            other => {
                return Err(invalid(
                    "remind_before",
                    format!("must be like 15m or null, got {other}"),
                ));
            }
        };
    }
    f.no_other_fields()?;
    after.check()?;
    let mut changed = |key: &str, differs: bool, value: Value| {
        if differs {
            changes.insert(key.into(), value);
        }
    };
    changed("title", after.title != before.title, json!(after.title));
    changed(
        "description",
        after.description != before.description,
        json!(after.description),
    );
    changed(
        "priority",
        after.priority != before.priority,
        json!(after.priority),
    );
    changed("tags", after.tags != before.tags, json!(after.tags));
    changed("due_at", after.due_at != before.due_at, json!(after.due_at));
    changed(
        "recurrence",
        after.recurrence != before.recurrence,
        after
            .recurrence
            .as_ref()
            .map_or(Value::Null, Recurrence::contract),
    );
    changed(
        "remind_before",
        after.remind_before != before.remind_before,
        json!(after.remind_before),
    );
    if changes.is_empty() {
        return Ok(Json(before).into_response());
    }
    after.version += 1;
    {
        let mut conn = write.conn().await?;
        store(&mut conn, &after, false)
            .await
            .map_err(WriteError::internal)?;
    }
    let event = json!({"task_id": after.task_id, "user_id": after.user_id, "changes": changes, "updated_at": now()});
    write.emit(
        Emit::new("todo.task.updated", &event)?
            .partition_key(&after.user_id)
            .subject(&after.task_id),
    );
    write.respond(StatusCode::OK, &after).await
}

async fn complete(mut write: Write, Path(id): Path<String>) -> Result<Response, WriteError> {
    let mut task = {
        let mut conn = write.conn().await?;
        find(&mut conn, &id).await?
    };
    if task.status == "completed" {
        return Err(WriteError {
            status: StatusCode::CONFLICT,
            code: "already_completed",
            message: format!(
                "task {id} was completed at {}",
                task.completed_at.unwrap_or_default()
            ),
        });
    }
    task.status = "completed".into();
    task.completed_at = Some(now());
    task.version += 1;
    {
        let mut conn = write.conn().await?;
        store(&mut conn, &task, false)
            .await
            .map_err(WriteError::internal)?;
    }
    let mut event = json!({"task_id": task.task_id, "user_id": task.user_id, "title": task.title,
                           "completed_at": task.completed_at});
    if let Some(r) = &task.recurrence {
        event["recurrence"] = r.contract();
    }
    write.emit(
        Emit::new("todo.task.completed", &event)?
            .partition_key(&task.user_id)
            .subject(&task.task_id),
    );
    write.respond(StatusCode::OK, &task).await
}

async fn remove(mut write: Write, Path(id): Path<String>) -> Result<Response, WriteError> {
    let task = {
        let mut conn = write.conn().await?;
        let task = find(&mut conn, &id).await?;
        for sql in [
            "DELETE FROM task_tags WHERE task_id = $1",
            "DELETE FROM tasks WHERE task_id = $1",
        ] {
            sqlx::query(sql)
                .bind(&id)
                .execute(&mut **conn)
                .await
                .map_err(WriteError::internal)?;
        }
        task
    };
    let event = json!({"task_id": task.task_id, "user_id": task.user_id, "deleted_at": now()});
    write.emit(
        Emit::new("todo.task.deleted", &event)?
            .partition_key(&task.user_id)
            .subject(&task.task_id),
    );
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn find(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Task, WriteError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tasks WHERE task_id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(WriteError::internal)?;
    match row {
        Some(r) => Task::from_row(&r).map_err(WriteError::internal),
        None => Err(WriteError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no task {id}"),
        }),
    }
}

/// Insert (`new`) or replace a task and its tags.
async fn store(conn: &mut sqlx::AnyConnection, t: &Task, new: bool) -> Result<(), sqlx::Error> {
    let sql = if new {
        "INSERT INTO tasks (task_id, user_id, title, description, search, priority, tags, due_at, recurrence, \
         remind_before, status, created_at, completed_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    } else {
        "UPDATE tasks SET user_id = $2, title = $3, description = $4, search = $5, priority = $6, tags = $7, \
         due_at = $8, recurrence = $9, remind_before = $10, status = $11, created_at = $12, completed_at = $13, \
         version = $14 WHERE task_id = $1"
    };
    sqlx::query(sql)
        .bind(&t.task_id)
        .bind(&t.user_id)
        .bind(&t.title)
        .bind(&t.description)
        .bind(format!("{} {}", t.title, t.description).to_lowercase())
        .bind(t.priority.rank())
        .bind(serde_json::to_string(&t.tags).unwrap_or_else(|_| "[]".into()))
        .bind(&t.due_at)
        .bind(
            t.recurrence
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
        )
        .bind(&t.remind_before)
        .bind(&t.status)
        .bind(&t.created_at)
        .bind(&t.completed_at)
        .bind(t.version)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM task_tags WHERE task_id = $1")
        .bind(&t.task_id)
        .execute(&mut *conn)
        .await?;
    for tag in &t.tags {
        sqlx::query("INSERT INTO task_tags (task_id, user_id, tag) VALUES ($1, $2, $3)")
            .bind(&t.task_id)
            .bind(&t.user_id)
            .bind(tag)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn read(State(pool): State<sqlx::AnyPool>, Path(id): Path<String>) -> Response {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return WriteError::internal(e).into_response(),
    };
    match find(&mut conn, &id).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A list query, checked.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    user_id: String,
    q: Option<String>,
    status: Option<String>,
    priority: Option<Priority>,
    tags: Vec<String>,
    due_before: Option<String>,
    due_after: Option<String>,
    overdue: bool,
    sort: Sort,
    descending: bool,
    limit: i64,
    after: Option<(Value, String)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Sort {
    #[default]
    DueAt,
    Priority,
    CreatedAt,
    Title,
}

impl Sort {
    /// The column expression it orders by (tasks without a due date last).
    fn key(self) -> &'static str {
        match self {
            Sort::DueAt => "COALESCE(due_at, '~')",
            Sort::Priority => "priority",
            Sort::CreatedAt => "created_at",
            Sort::Title => "LOWER(title)",
        }
    }
}

impl ListQuery {
    fn parse(raw: &str) -> Result<ListQuery, WriteError> {
        let mut q = ListQuery {
            limit: 50,
            ..ListQuery::default()
        };
        let mut user = None;
        for (k, v) in zerofn::query_pairs(raw) {
            match k.as_str() {
                "user_id" => user = Some(user_id(&v)?),
                "q" => q.q = Some(v.to_lowercase()).filter(|s| !s.trim().is_empty()),
                "status" => match v.as_str() {
                    "open" | "completed" => q.status = Some(v),
                    other => {
                        return Err(invalid(
                            "status",
                            format!("{other:?} is not open or completed"),
                        ));
                    }
                },
                "priority" => q.priority = Some(Priority::parse(&v, "priority")?),
                "tag" => q.tags.push(v),
                "due_before" => q.due_before = Some(bound(&v, "due_before")?),
                "due_after" => q.due_after = Some(bound(&v, "due_after")?),
                "overdue" => q.overdue = v == "true",
                "sort" => {
                    q.sort = match v.as_str() {
                        "due_at" => Sort::DueAt,
                        "priority" => Sort::Priority,
                        "created_at" => Sort::CreatedAt,
                        "title" => Sort::Title,
                        other => {
                            return Err(invalid(
                                "sort",
                                format!("{other:?} is not due_at, priority, created_at or title"),
                            ));
                        }
                    }
                }
                "order" => {
                    q.descending = match v.as_str() {
                        "asc" => false,
                        "desc" => true,
                        other => {
                            return Err(invalid("order", format!("{other:?} is not asc or desc")));
                        }
                    }
                }
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=200).contains(n))
                        .ok_or_else(|| invalid("limit", "must be between 1 and 200"))?;
                }
                "cursor" => q.after = Some(decode_cursor(&v)?),
                other => return Err(invalid(other, "is not a filter of this list")),
            }
        }
        q.user_id = user.ok_or_else(|| invalid("user_id", "is required: whose tasks to list"))?;
        Ok(q)
    }
}

async fn list(State(pool): State<sqlx::AnyPool>, RawQuery(raw): RawQuery) -> Response {
    let q = match ListQuery::parse(raw.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    match page(&pool, &q).await {
        Ok((tasks, next)) => Json(json!({"tasks": tasks, "next_cursor": next})).into_response(),
        Err(e) => WriteError::internal(e).into_response(),
    }
}

/// One page of tasks and the cursor of the next (keyset: the sort key and the task id, so a
/// task added meanwhile neither repeats nor shifts a page).
async fn page(
    pool: &sqlx::AnyPool,
    q: &ListQuery,
) -> Result<(Vec<Task>, Option<String>), sqlx::Error> {
    let mut sql = format!("SELECT {COLUMNS} FROM tasks WHERE user_id = $1");
    let mut binds: Vec<Value> = vec![json!(q.user_id)];
    let arg = |v: Value, binds: &mut Vec<Value>| {
        binds.push(v);
        format!("${}", binds.len())
    };
    if let Some(text) = &q.q {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        sql += &format!(
            " AND search LIKE {} ESCAPE '\\'",
            arg(json!(format!("%{escaped}%")), &mut binds)
        );
    }
    if let Some(s) = &q.status {
        sql += &format!(" AND status = {}", arg(json!(s), &mut binds));
    }
    if let Some(p) = q.priority {
        sql += &format!(" AND priority = {}", arg(json!(p.rank()), &mut binds));
    }
    for tag in &q.tags {
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM task_tags g WHERE g.task_id = tasks.task_id AND g.tag = {})",
            arg(json!(tag), &mut binds)
        );
    }
    if let Some(b) = &q.due_before {
        sql += &format!(" AND due_at < {}", arg(json!(b), &mut binds));
    }
    if let Some(a) = &q.due_after {
        sql += &format!(" AND due_at >= {}", arg(json!(a), &mut binds));
    }
    if q.overdue {
        sql += &format!(
            " AND status = 'open' AND due_at < {}",
            arg(json!(now()), &mut binds)
        );
    }
    let key = q.sort.key();
    let (cmp, dir) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((k, id)) = &q.after {
        let k = arg(k.clone(), &mut binds);
        let id = arg(json!(id), &mut binds);
        sql += &format!(" AND ({key} {cmp} {k} OR ({key} = {k} AND task_id {cmp} {id}))");
    }
    sql += &format!(" ORDER BY {key} {dir}, task_id {dir} LIMIT {}", q.limit + 1);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in &binds {
        query = match b {
            Value::Number(n) => query.bind(n.as_i64().unwrap_or_default()),
            other => query.bind(other.as_str().unwrap_or_default().to_string()),
        };
    }
    let rows = query.fetch_all(pool).await?;
    let mut tasks = rows
        .iter()
        .map(Task::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = tasks.len() > usize::try_from(q.limit).unwrap_or(usize::MAX);
    tasks.truncate(usize::try_from(q.limit).unwrap_or(usize::MAX));
    let next = more
        .then(|| tasks.last().map(|t| encode_cursor(q.sort, t)))
        .flatten();
    Ok((tasks, next))
}

fn encode_cursor(sort: Sort, t: &Task) -> String {
    let key = match sort {
        Sort::DueAt => json!(t.due_at.clone().unwrap_or_else(|| "~".into())),
        Sort::Priority => json!(t.priority.rank()),
        Sort::CreatedAt => json!(t.created_at),
        Sort::Title => json!(t.title.to_lowercase()),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([key, t.task_id]).to_string())
}

fn decode_cursor(c: &str) -> Result<(Value, String), WriteError> {
    let bad = || invalid("cursor", "is not a cursor this list gave");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    match serde_json::from_slice::<Value>(&bytes).map_err(|_| bad())? {
        Value::Array(mut a) if a.len() == 2 => {
            let id = a
                .pop()
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(bad)?;
            Ok((a.remove(0), id))
        }
        _ => Err(bad()),
    }
}

// ---------------------------------------------------------------------------------------------
// Input

fn user_id(u: &str) -> Result<String, WriteError> {
    let ok = (1..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(u.to_string())
    } else {
        Err(invalid(
            "user_id",
            format!("{u:?} must be 1 to 64 of A-Z a-z 0-9 . _ : -"),
        ))
    }
}

fn title(t: &str) -> Result<String, WriteError> {
    match t.trim() {
        "" => Err(invalid("title", "must not be empty")),
        t if t.chars().count() > 200 => Err(invalid("title", "must be at most 200 characters")),
        t => Ok(t.to_string()),
    }
}

fn description(d: String) -> Result<String, WriteError> {
    if d.chars().count() <= 4000 {
        Ok(d)
    } else {
        Err(invalid("description", "must be at most 4000 characters"))
    }
}

fn tags(v: Option<Value>) -> Result<Vec<String>, WriteError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(vec![]);
    };
    let Value::Array(items) = v else {
        return Err(invalid("tags", "must be an array of strings"));
    };
    let mut tags = Vec::new();
    for item in items {
        let Some(tag) = item.as_str().map(str::trim).map(str::to_lowercase) else {
            return Err(invalid("tags", format!("must be strings, got {item}")));
        };
        if !(1..=32).contains(&tag.chars().count()) {
            return Err(invalid(
                "tags",
                format!("{tag:?} must be 1 to 32 characters"),
            ));
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > 20 {
        return Err(invalid("tags", "at most 20"));
    }
    Ok(tags)
}

/// An RFC 3339 time, normalized to UTC with milliseconds (so times sort as text).
fn time(v: &str, field: &str) -> Result<String, WriteError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        })
        .map_err(|e| invalid(field, format!("{v:?} is not an RFC 3339 time: {e}")))
}

/// A list bound: a date (midnight UTC) or an RFC 3339 time.
fn bound(v: &str, field: &str) -> Result<String, WriteError> {
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default());
    }
    time(v, field)
}

fn recurrence(v: Option<Value>) -> Result<Option<Recurrence>, WriteError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Object(mut o) = v else {
        return Err(invalid(
            "recurrence",
            "must be an object like {\"every\": \"week\"}",
        ));
    };
    let every = match o.remove("every").as_ref().and_then(Value::as_str) {
        Some("day") => Every::Day,
        Some("week") => Every::Week,
        Some("month") => Every::Month,
        Some(other) => {
            return Err(invalid(
                "recurrence.every",
                format!("{other:?} is not day, week or month"),
            ));
        }
        None => {
            return Err(invalid(
                "recurrence.every",
                "is required: day, week or month",
            ));
        }
    };
    let interval = match o.remove("interval") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=365).contains(n))
                .ok_or_else(|| {
                    invalid("recurrence.interval", format!("must be 1 to 365, got {n}"))
                })?,
        ),
    };
    let until = match o.remove("until") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(time(&u, "recurrence.until")?),
        Some(other) => {
            return Err(invalid(
                "recurrence.until",
                format!("must be an RFC 3339 time, got {other}"),
            ));
        }
    };
    let time_zone = match o.remove("time_zone") {
        None | Some(Value::Null) => None,
        Some(Value::String(z)) if z.parse::<chrono_tz::Tz>().is_ok() => Some(z),
        Some(other) => {
            return Err(invalid(
                "recurrence.time_zone",
                format!("must be an IANA time zone such as \"Europe/Berlin\", got {other}"),
            ));
        }
    };
    if let Some(k) = o.keys().next() {
        return Err(invalid(
            &format!("recurrence.{k}"),
            "is not a field of a recurrence",
        ));
    }
    Ok(Some(Recurrence {
        every,
        interval,
        until,
        time_zone,
    }))
}

fn remind_before(r: String) -> Result<String, WriteError> {
    let (n, unit) = r.split_at(r.len().saturating_sub(1));
    let ok = n.parse::<u32>().is_ok_and(|n| n > 0)
        && !n.starts_with('0')
        && matches!(unit, "s" | "m" | "h" | "d");
    if ok {
        Ok(r)
    } else {
        Err(invalid(
            "remind_before",
            format!("{r:?} is not like 30s, 15m, 2h or 1d"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use zerofn::testing;

    struct Rig {
        app: Router,
        sidecar: testing::Recorder,
    }

    async fn rig() -> Rig {
        rig_on(None).await
    }

    /// On a temporary SQLite database, or on `store`.
    async fn rig_on(store: Option<&str>) -> Rig {
        let sidecar = testing::Recorder::start().await.unwrap();
        let port = sidecar.port().to_string();
        let mut env = vec![("DAPR_HTTP_PORT", port.as_str())];
        env.extend(store.map(|s| ("ZEROFN_STORE", s)));
        let app = testing::http_router(MANIFEST, &env).await.unwrap();
        Rig { app, sidecar }
    }

    /// The query cases on both stores the migrations are written for: SQLite, and PostgreSQL
    /// (its LIKE, ESCAPE, collation and NULL ordering differ).
    async fn on_both_stores<F, Fut>(cases: F)
    where
        F: Fn(Rig) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        cases(rig().await).await;
        let pg = zerofn_tests::fresh_postgres().await;
        cases(rig_on(Some(&pg)).await).await;
    }

    impl Rig {
        async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
            testing::call(&self.app, method, uri, body.as_ref(), &[]).await
        }

        async fn create(&self, body: Value) -> Value {
            let (s, t) = self.call("POST", "/tasks", Some(body)).await;
            assert_eq!(s, StatusCode::CREATED, "{t}");
            t
        }

        fn events(&self, ty: &str) -> Vec<Value> {
            self.sidecar
                .requests()
                .iter()
                .map(|r| r.json())
                .filter(|e| e["type"] == ty)
                .collect()
        }

        async fn ids(&self, query: &str) -> Vec<String> {
            let (s, v) = self
                .call("GET", &format!("/tasks?user_id=u-1&{query}"), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{query}: {v}");
            v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["title"].as_str().unwrap().to_string())
                .collect()
        }
    }

    fn task(title: &str) -> Value {
        json!({"user_id": "u-1", "title": title})
    }

    #[tokio::test]
    async fn a_task_is_stored_and_emitted_together() {
        let r = rig().await;
        let t = r
            .create(json!({"user_id": "u-1", "title": "Pay rent", "priority": "high", "tags": ["Home", "money"],
                           "due_at": "2026-12-01T09:00:00+01:00", "recurrence": {"every": "month", "time_zone": "Europe/Berlin"},
                           "remind_before": "1d"}))
            .await;
        assert_eq!(t["due_at"], "2026-12-01T08:00:00.000Z", "normalized to UTC");
        assert_eq!(t["tags"], json!(["home", "money"]));
        assert_eq!(
            t["recurrence"],
            json!({"every": "month", "time_zone": "Europe/Berlin"})
        );
        let created = r.events("todo.task.created");
        assert_eq!(created.len(), 1);
        assert_eq!(
            created[0]["data"]["recurrence"],
            json!({"frequency": "monthly", "time_zone": "Europe/Berlin"})
        );
        assert_eq!(created[0]["data"]["priority"], "high");
        let (s, got) = r
            .call(
                "GET",
                &format!("/tasks/{}", t["task_id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!((s, got), (StatusCode::OK, t));
    }

    #[tokio::test]
    async fn bad_input_is_a_422_naming_the_field() {
        let r = rig().await;
        let cases = [
            (
                json!({"user_id": "u-1", "title": "x", "priority": "urgent"}),
                "priority: \"urgent\" is not one of low, medium, high",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "recurrence": {"every": "day"}}),
                "recurrence: needs a due_at",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "remind_before": "15m"}),
                "remind_before: needs a due_at",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "due_at": "2026-12-01T00:00:00Z",
                    "recurrence": {"every": "week", "until": "2026-11-01T00:00:00Z"}}),
                "recurrence.until: 2026-11-01T00:00:00.000Z is not after due_at",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "due_at": "2026-12-01T00:00:00Z", "recurrence": {"every": "year"}}),
                "recurrence.every: \"year\" is not day, week or month",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "due_at": "2026-12-01T00:00:00Z",
                    "recurrence": {"every": "day", "time_zone": "Berlin"}}),
                "recurrence.time_zone: must be an IANA time zone",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "due_at": "2026-12-01T00:00:00Z", "remind_before": "soon"}),
                "remind_before: \"soon\" is not like 30s",
            ),
            (
                json!({"user_id": "u-1", "title": " "}),
                "title: must not be empty",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "tags": "home"}),
                "tags: must be an array of strings",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "due_at": "tomorrow"}),
                "due_at: \"tomorrow\" is not an RFC 3339 time",
            ),
            (
                json!({"user_id": "u-1", "title": "x", "colour": "red"}),
                "colour: is not a field of this request",
            ),
        ];
        for (body, message) in cases {
            let (s, e) = r.call("POST", "/tasks", Some(body)).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
            assert!(
                e["message"].as_str().unwrap().starts_with(message),
                "{e} starts with {message}"
            );
        }
        for (query, message) in [
            ("sort=size", "sort:"),
            ("priority=urgent", "priority:"),
            ("limit=0", "limit:"),
            ("cursor=zzz", "cursor:"),
            ("status=done", "status:"),
            ("colour=red", "colour:"),
        ] {
            let (s, e) = r
                .call("GET", &format!("/tasks?user_id=u-1&{query}"), None)
                .await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {e}");
            assert!(e["message"].as_str().unwrap().starts_with(message), "{e}");
        }
        assert_eq!(
            r.call("GET", "/tasks", None).await.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_id required"
        );
        assert!(r.sidecar.requests().is_empty(), "nothing emitted");
    }

    #[tokio::test]
    async fn updates_emit_what_changed_and_keep_the_task_whole() {
        let r = rig().await;
        let t = r
            .create(json!({"user_id": "u-1", "title": "Gym", "due_at": "2026-12-01T07:00:00Z", "recurrence": {"every": "week"}}))
            .await;
        let path = format!("/tasks/{}", t["task_id"].as_str().unwrap());
        let (s, after) = r
            .call(
                "PATCH",
                &path,
                Some(json!({"priority": "high", "title": "Gym", "remind_before": "30m"})),
            )
            .await;
        assert_eq!(
            (s, after["version"].as_i64()),
            (StatusCode::OK, Some(2)),
            "{after}"
        );
        let updates = r.events("todo.task.updated");
        assert_eq!(
            updates[0]["data"]["changes"],
            json!({"priority": "high", "remind_before": "30m"}),
            "only what changed"
        );
        let (s, e) = r.call("PATCH", &path, Some(json!({"due_at": null}))).await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a recurrence without a due date: {e}"
        );
        let (s, cleared) = r
            .call(
                "PATCH",
                &path,
                Some(json!({"due_at": null, "recurrence": null, "remind_before": null})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{cleared}");
        assert_eq!(
            r.events("todo.task.updated")[1]["data"]["changes"],
            json!({"due_at": null, "recurrence": null, "remind_before": null})
        );
        let (s, same) = r.call("PATCH", &path, Some(json!({"title": "Gym"}))).await;
        assert_eq!(
            (s, same["version"].as_i64()),
            (StatusCode::OK, Some(3)),
            "nothing changed, nothing written"
        );
        assert_eq!(r.events("todo.task.updated").len(), 2);
        assert_eq!(
            r.call("PATCH", "/tasks/nope", Some(json!({"title": "x"})))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_task_completes_once_and_a_deleted_one_is_gone() {
        let r = rig().await;
        let t = r
            .create(json!({"user_id": "u-1", "title": "Plants", "due_at": "2026-12-01T07:00:00Z", "recurrence": {"every": "day", "interval": 2}}))
            .await;
        let id = t["task_id"].as_str().unwrap();
        let (s, done) = r.call("POST", &format!("/tasks/{id}/complete"), None).await;
        assert_eq!(
            (s, done["status"].as_str()),
            (StatusCode::OK, Some("completed"))
        );
        let completed = r.events("todo.task.completed");
        assert_eq!(completed.len(), 1);
        assert_eq!(
            completed[0]["data"]["recurrence"],
            json!({"frequency": "daily", "interval": 2})
        );
        let (s, e) = r.call("POST", &format!("/tasks/{id}/complete"), None).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (StatusCode::CONFLICT, Some("already_completed"))
        );
        assert_eq!(r.events("todo.task.completed").len(), 1, "completed once");
        assert_eq!(
            r.call("DELETE", &format!("/tasks/{id}"), None).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(r.events("todo.task.deleted").len(), 1);
        assert_eq!(
            r.call("GET", &format!("/tasks/{id}"), None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            r.call("DELETE", &format!("/tasks/{id}"), None).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn search_filters_and_sorts() {
        on_both_stores(search_cases).await;
    }

    async fn search_cases(r: Rig) {
        r.create(json!({"user_id": "u-1", "title": "Buy milk", "priority": "low", "tags": ["shop"], "due_at": "2026-11-01T09:00:00Z"})).await;
        r.create(json!({"user_id": "u-1", "title": "Call mum", "description": "about the 100% cotton scarf", "priority": "high",
                        "tags": ["family", "phone"], "due_at": "2026-11-03T09:00:00Z"})).await;
        r.create(json!({"user_id": "u-1", "title": "Apply for visa", "priority": "high", "tags": ["family"], "due_at": "2030-01-01T09:00:00Z"})).await;
        let done = r.create(json!({"user_id": "u-1", "title": "Book dentist", "priority": "medium", "tags": ["phone"]})).await;
        r.call(
            "POST",
            &format!("/tasks/{}/complete", done["task_id"].as_str().unwrap()),
            None,
        )
        .await;
        r.create(json!({"user_id": "u-2", "title": "Buy milk"}))
            .await;
        assert_eq!(
            r.ids("").await,
            vec!["Buy milk", "Call mum", "Apply for visa", "Book dentist"],
            "by due date, undated last"
        );
        assert_eq!(
            r.ids("q=MILK").await,
            vec!["Buy milk"],
            "case-insensitive, one user only"
        );
        assert_eq!(
            r.ids("q=cotton").await,
            vec!["Call mum"],
            "the description too"
        );
        assert_eq!(
            r.ids("q=100%25").await,
            vec!["Call mum"],
            "% is a character, not a wildcard"
        );
        assert_eq!(r.ids("status=completed").await, vec!["Book dentist"]);
        assert_eq!(
            r.ids("priority=high").await,
            vec!["Call mum", "Apply for visa"]
        );
        assert_eq!(
            r.ids("tag=family&tag=phone").await,
            vec!["Call mum"],
            "several tags: all of them"
        );
        assert_eq!(r.ids("tag=phone").await, vec!["Call mum", "Book dentist"]);
        assert_eq!(r.ids("due_before=2026-11-02").await, vec!["Buy milk"]);
        assert_eq!(
            r.ids("due_after=2026-11-02&due_before=2027-01-01").await,
            vec!["Call mum"]
        );
        assert_eq!(r.ids("overdue=true").await, vec!["Buy milk", "Call mum"]);
        assert_eq!(
            r.ids("sort=title").await,
            vec!["Apply for visa", "Book dentist", "Buy milk", "Call mum"]
        );
        assert_eq!(
            r.ids("sort=title&order=desc").await,
            vec!["Call mum", "Buy milk", "Book dentist", "Apply for visa"]
        );
        assert_eq!(
            r.ids("sort=priority&order=desc&status=open").await[2],
            "Buy milk",
            "low last"
        );
    }

    #[tokio::test]
    async fn pages_stay_right_while_tasks_are_added() {
        on_both_stores(paging_cases).await;
    }

    async fn paging_cases(r: Rig) {
        for i in 0..7 {
            r.create(task(&format!("task {i:02}"))).await;
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0.. {
            let uri = match &cursor {
                Some(c) => format!("/tasks?user_id=u-1&sort=title&limit=3&cursor={c}"),
                None => "/tasks?user_id=u-1&sort=title&limit=3".to_string(),
            };
            let (s, v) = r.call("GET", &uri, None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            seen.extend(
                v["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["title"].as_str().unwrap().to_string()),
            );
            if page == 0 {
                // Added while the user pages: one before the cursor, one after it.
                r.create(task("task 00a")).await;
                r.create(task("task 99")).await;
            }
            cursor = v["next_cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        let expected: Vec<String> = (0..7)
            .map(|i| format!("task {i:02}"))
            .chain(["task 99".to_string()])
            .collect();
        assert_eq!(
            seen, expected,
            "no repeats, nothing skipped; the one added before the cursor is not on a later page"
        );
    }

    #[tokio::test]
    async fn a_retried_post_answers_the_first_response() {
        let r = rig().await;
        let post = || {
            http::Request::post("/tasks")
                .header("idempotency-key", "k-1")
                .body(axum::body::Body::from(task("Once").to_string()))
                .unwrap()
        };
        let first = r
            .app
            .clone()
            .oneshot(post())
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let second = r
            .app
            .clone()
            .oneshot(post())
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(first, second);
        assert_eq!(r.events("todo.task.created").len(), 1);
    }
}
