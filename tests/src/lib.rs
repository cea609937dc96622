//! zerofn's workspace test harness: the probe function (whose behaviour a test picks through
//! the task title), event fixtures, and [`FnProcess`], which runs a real function binary on
//! 127.0.0.1 and reads its JSON logs.
//!
//! Test rules: everything listens on 127.0.0.1 only; every wait is bounded; a test that starts
//! a process owns it and the process is killed when the handle drops.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};
use zerofn::{Context, Emit, Event, HandlerError, prelude::tracing};

pub mod report;

/// The probe's input: a `todo.task.created` (or `todo.task.deleted`) payload.
#[derive(Debug, Deserialize)]
pub struct Task {
    /// Task id (absent in a `todo.notification.sent` the probe also consumes).
    #[serde(default)]
    pub task_id: String,
    /// Owner.
    pub user_id: String,
    /// What the probe should do (see [`probe`]).
    #[serde(default)]
    pub title: String,
}

/// Every context the probe was called with (in-process tests), and a switch that makes
/// `broken` tasks fail permanently until the test "fixes the cause".
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<Mutex<Vec<Context>>>, Arc<std::sync::atomic::AtomicBool>);

impl Calls {
    /// Make `broken` tasks fail (true) or succeed (false).
    pub fn set_broken(&self, broken: bool) {
        self.1.store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many calls were for event `id`.
    pub fn count_of(&self, id: &str) -> usize {
        self.all().iter().filter(|c| c.id == id).count()
    }

    /// All calls so far.
    pub fn all(&self) -> Vec<Context> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// How many calls so far.
    pub fn count(&self) -> usize {
        self.0.lock().map(|c| c.len()).unwrap_or_default()
    }
}

/// The probe handler. By task title: `retry`, `permanent`, `panic`, `emit` (a valid
/// `todo.notification.sent`), `emit-invalid`, `emit-undeclared`, `slow:<ms>` (logs
/// "probe handler started", then sleeps), `effect` (a `probe_effects` row in the delivery's
/// transaction when the store has one, plus an emitted notification), `broken` (fails
/// permanently while [`Calls::set_broken`] is on, otherwise as `effect`), `record` (a
/// `probe_effects` row, nothing emitted), `record-slow:<ms>` (logs "probe handler started",
/// sleeps, then as `record`); anything else
/// succeeds with nothing to emit.
pub fn probe(calls: Calls) -> impl zerofn::Handler {
    zerofn::handler_fn(move |event: Event<Task>| {
        let calls = calls.clone();
        async move {
            if let Ok(mut c) = calls.0.lock() {
                c.push(event.ctx.clone());
            }
            tracing::info!(event_id = %event.ctx.id, "probe handler invoked");
            let broken = calls.1.load(std::sync::atomic::Ordering::SeqCst);
            if event.data.title == "broken" && broken {
                return Err(HandlerError::permanent(
                    "the downstream service rejected it",
                ));
            }
            if matches!(event.data.title.as_str(), "effect" | "broken") {
                if let Some(tx) = event.transaction() {
                    let mut conn = tx.conn().await?;
                    record_effect(&mut conn, &event.ctx.id, event.ctx.attempt).await?;
                }
                let user = event.data.user_id.clone();
                return Ok(vec![
                    Emit::new("todo.notification.sent", &notification(&user))?.partition_key(&user),
                ]);
            }
            if let Some(ms) = event.data.title.strip_prefix("record-slow:") {
                let ms: u64 = ms.parse().map_err(HandlerError::permanent)?;
                tracing::info!(event_id = %event.ctx.id, "probe handler started");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if event.data.title == "record" || event.data.title.starts_with("record-slow:") {
                if let Some(tx) = event.transaction() {
                    let mut conn = tx.conn().await?;
                    record_effect(&mut conn, &event.ctx.id, event.ctx.attempt).await?;
                }
                return Ok(vec![]);
            }
            let task = event.data;
            if let Some(ms) = task.title.strip_prefix("slow:") {
                let ms: u64 = ms.parse().map_err(HandlerError::permanent)?;
                tracing::info!(event_id = %event.ctx.id, "probe handler started");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return Ok(vec![]);
            }
            match task.title.as_str() {
                "retry" => Err(HandlerError::retryable("database unavailable")),
                "permanent" => Err(HandlerError::permanent("task belongs to a deleted user")),
                "panic" => panic!("probe was told to panic"),
                // A handler that kills its process (an OOM, an abort in native code).
                "abort" => std::process::abort(),
                "emit" => Ok(vec![
                    Emit::new("todo.notification.sent", &notification(&task.user_id))?
                        .partition_key(&task.user_id),
                ]),
                "emit-invalid" => Ok(vec![Emit::new(
                    "todo.notification.sent",
                    &json!({"user_id": task.user_id}),
                )?]),
                "emit-undeclared" => Ok(vec![Emit::new("todo.task.deleted", &json!({}))?]),
                _ => Ok(vec![]),
            }
        }
    })
}

async fn record_effect(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    attempt: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO probe_effects (event_id, attempt) VALUES ($1, $2)")
        .bind(id)
        .bind(i64::from(attempt))
        .execute(conn)
        .await
        .map(|_| ())
}

/// The probe's own table (`probe_effects`).
static PROBE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The manifest of the probe (`tests/function.toml`) with its migrations and HTTP routes.
pub const MANIFEST: zerofn::ManifestSource = zerofn::manifest!()
    .migrations(&PROBE_MIGRATIONS)
    .routes(probe_routes);

/// The ticker (`tests/ticker/function.toml`): a function with a schedule and nothing else.
pub const TICKER: zerofn::ManifestSource = zerofn::ManifestSource::new(
    include_str!("../ticker/function.toml"),
    "ticker",
    env!("CARGO_PKG_VERSION"),
)
.migrations(&PROBE_MIGRATIONS);

/// The ticker's handler: one `probe_effects` row per trigger (its event id, in the delivery's
/// transaction), after checking the trigger carries its schedule's name, instant and data.
pub fn ticker() -> impl zerofn::Handler {
    zerofn::handler_fn(|event: Event<Value>| async move {
        let (schedule, at) = (&event.data["schedule"], &event.data["scheduled_at"]);
        if schedule != "tick" || event.data["note"] != "from function.toml" {
            return Err(HandlerError::permanent(format!(
                "unexpected trigger {}",
                event.data
            )));
        }
        tracing::info!(id = %event.ctx.id, scheduled_at = %at, "tick");
        let tx = event
            .transaction()
            .ok_or_else(|| HandlerError::permanent("the ticker needs its SQL store"))?;
        let mut conn = tx.conn().await?;
        record_effect(&mut conn, &event.ctx.id, event.ctx.attempt).await?;
        Ok(Vec::<Emit>::new())
    })
}

/// The probe's HTTP routes (it is also an HTTP function): `GET /hello` names the replica
/// (`ZEROFN_REPLICA`) and echoes `traceparent`; `POST /echo` returns the body; `GET /slow/{ms}`
/// sleeps first; `POST /effect/{id}` records a `probe_effects` row (the async-invocation tests);
/// `POST /job/{name}` is a due job's callback (see [`probe_job`]).
fn probe_routes(db: Option<sqlx::AnyPool>) -> axum::Router {
    use axum::{
        extract::Path,
        routing::{get, post},
    };
    let replica = std::env::var("ZEROFN_REPLICA").unwrap_or_default();
    axum::Router::new()
        .route(
            "/hello",
            get(move |headers: axum::http::HeaderMap| async move {
                let tp = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                axum::Json(json!({"hello": "probe", "replica": replica, "traceparent": tp}))
            }),
        )
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route("/write/{id}", post(probe_write))
        .route(
            "/slow/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slept"
            }),
        )
        .route(
            "/job/{name}",
            post({
                let db = db.clone();
                move |Path(name): Path<String>, body: axum::body::Bytes| {
                    probe_job(db.clone(), name, body)
                }
            }),
        )
        .route(
            "/effect/{id}",
            post(move |Path(id): Path<String>| {
                let db = db.clone();
                async move {
                    let Some(db) = db else {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    };
                    match db.acquire().await {
                        Ok(mut conn) => match record_effect(&mut conn, &id, 1).await {
                            Ok(()) => axum::http::StatusCode::CREATED,
                            Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        },
                        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    }
                }
            }),
        )
}

/// A due job's callback (`POST /job/{name}`, its data as the body): a `probe_effects` row
/// `job:{name}:{body}`. A job named `flaky-…` fails its first callback with a 500.
async fn probe_job(
    db: Option<sqlx::AnyPool>,
    name: String,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    static FAILED_ONCE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    tracing::info!(job = %name, "probe job callback");
    if name.starts_with("flaky-")
        && let Ok(mut failed) = FAILED_ONCE.lock()
        && !failed.contains(&name)
    {
        failed.push(name);
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    let Some(db) = db else {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    };
    let effect = format!("job:{name}:{}", String::from_utf8_lossy(&body));
    match db.acquire().await {
        Ok(mut conn) => match record_effect(&mut conn, &effect, 1).await {
            Ok(()) => axum::http::StatusCode::OK,
            Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        },
        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `POST /write/{id}[?emit=invalid][&sleep=MS]`: a `probe_effects` row and a
/// `todo.notification.sent` event, committed together through `zerofn::Write` (an invalid
/// event rolls both back; `sleep` holds the write open first); 201 with the write's id (kept
/// for an `Idempotency-Key`).
async fn probe_write(
    mut write: zerofn::Write,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<axum::response::Response, zerofn::WriteError> {
    {
        let mut conn = write.conn().await?;
        record_effect(&mut conn, &id, 1)
            .await
            .map_err(zerofn::WriteError::internal)?;
    }
    let data = if q.get("emit").map(String::as_str) == Some("invalid") {
        json!({"user_id": "u-w"})
    } else {
        notification("u-w")
    };
    write.emit(Emit::new("todo.notification.sent", &data)?.partition_key("u-w"));
    if let Some(ms) = q.get("sleep").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let write_id = write.id().to_string();
    write
        .respond(
            axum::http::StatusCode::CREATED,
            &json!({"id": id, "write": write_id}),
        )
        .await
}

/// A pool on the SQL store at `url` as the runtime spells it (`sqlite:PATH` or `postgres://…`).
pub async fn store_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match url.strip_prefix("sqlite:") {
        Some(path) => format!("sqlite://{}", path.trim_start_matches("//")),
        None => url.to_string(),
    };
    sqlx::AnyPool::connect(&url).await.expect("store reachable")
}

/// How many `probe_effects` rows event `id` has in the SQL store at `url`.
pub async fn effect_rows(url: &str, id: &str) -> i64 {
    let pool = store_pool(url).await;
    let row = sqlx::query("SELECT COUNT(*) AS n FROM probe_effects WHERE event_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("probe_effects exists");
    pool.close().await;
    sqlx::Row::get(&row, "n")
}

/// `GET url` answered with JSON.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("GET answered")
        .json()
        .await
        .expect("a JSON body")
}

/// A valid `todo.notification.sent` payload for `user_id`.
pub fn notification(user_id: &str) -> Value {
    json!({
        "notification_id": "0193a7c2-a000-7000-8000-000000000001",
        "user_id": user_id, "channel": "in_app", "title": "t", "body": "b",
        "cause": {"event_id": "e", "event_type": "todo.task.created"},
        "sent_at": "2026-11-23T07:30:01Z"
    })
}

/// A valid `todo.task.created` payload whose title steers the probe.
pub fn task(title: &str) -> Value {
    json!({
        "task_id": "0193a7c2-8000-7000-8000-000000000001", "user_id": "u-7",
        "title": title, "priority": "high", "created_at": "2026-11-22T10:00:00Z"
    })
}

/// A structured CloudEvent as Dapr's sidecar delivers it (envelope extras included).
pub fn dapr_envelope(id: &str, ty: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "tasks", "type": ty,
        "datacontenttype": "application/json", "data": data,
        "topic": ty, "pubsubname": "kafka-pubsub",
        "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "", "time": "2026-11-23T10:00:00Z"
    })
}

/// A plain structured CloudEvent of type `todo.task.created`.
pub fn structured(id: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/tasks", "type": "todo.task.created",
           "subject": "task/1", "datacontenttype": "application/json", "data": data})
}

/// The `traceparent` header a sidecar sends for its delivery span.
pub const HOP_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";

/// An HTTP client with a bounded timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default()
}

/// A function binary running as a child process on 127.0.0.1.
#[derive(Debug)]
pub struct FnProcess {
    child: Child,
    /// A fresh `ZEROFN_DATA_DIR` (the SQLite store) unless the test chose one; removed on drop.
    data_dir: std::path::PathBuf,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The tasks reading stdout and stderr; they end at EOF, after the process exits.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl FnProcess {
    /// Start `binary` with `env` (plus `PORT` and `ZEROFN_BIND_ADDR=127.0.0.1`) and wait until
    /// `/healthz` answers.
    pub async fn start(binary: &str, env: &[(&str, &str)]) -> FnProcess {
        let mut process = Self::spawn(binary, env).await;
        process.wait_healthy(binary).await;
        process
    }

    async fn wait_healthy(&mut self, binary: &str) {
        let process = self;
        for _ in 0..200 {
            if let Ok(r) = client()
                .get(format!("{}/healthz", process.url()))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "{binary} exited with {status} during start-up; stderr: {:?}",
                    process.stderr_lines()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{binary} did not become healthy within 10 s; stdout: {:?}",
            process.log_lines()
        );
    }

    /// Start `binary` without waiting for it to become healthy (for start-up failures).
    pub async fn spawn(binary: &str, env: &[(&str, &str)]) -> FnProcess {
        Self::spawn_with_args(binary, &[], env).await
    }

    /// Start `binary` with `args` (`{port}` in an argument becomes the chosen port) and wait
    /// until `/healthz` answers on that port.
    pub async fn start_with_args(binary: &str, args: &[&str], env: &[(&str, &str)]) -> FnProcess {
        let mut process = Self::spawn_with_args(binary, args, env).await;
        process.wait_healthy(binary).await;
        process
    }

    /// [`FnProcess::spawn`] with arguments (`{port}` is replaced by the chosen port).
    pub async fn spawn_with_args(binary: &str, args: &[&str], env: &[(&str, &str)]) -> FnProcess {
        let port = free_port().await;
        let data_dir = std::env::temp_dir().join(format!("zerofn-test-{}", uuid::Uuid::new_v4()));
        let mut cmd = Command::new(binary);
        cmd.args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("ZEROFN_BIND_ADDR", "127.0.0.1")
            .env("ZEROFN_DATA_DIR", &data_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let (stdout, out_reader) = collect_lines(child.stdout.take());
        let (stderr, err_reader) = collect_lines(child.stderr.take());
        FnProcess {
            child,
            data_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process's `ZEROFN_DATA_DIR`.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Every stdout line parsed as JSON (non-JSON lines are returned as strings).
    pub fn log_lines(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .map(|l| {
                l.iter()
                    .map(|s| serde_json::from_str(s).unwrap_or_else(|_| json!(s)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Raw stdout lines.
    pub fn raw_stdout(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every stderr line.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Wait (at most `timeout`) for a log line whose `message` equals `message`.
    pub async fn wait_for_log(&self, message: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| l["message"] == message)
            {
                return line;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no log line {message:?} within {timeout:?}; got {:?}",
                    self.raw_stdout()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM (through `kill`, to keep `unsafe` out of the workspace).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Send SIGKILL: the process gets no chance to clean up.
    pub fn sigkill(&self) {
        self.signal("-KILL");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("process still running");
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Wait (at most `timeout`) for the process to exit and for its output to be read to the
    /// end; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let code = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => panic!("process did not exit within {timeout:?}"),
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        code
    }
}

impl Drop for FnProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A unique event id with a readable prefix.
pub fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

fn collect_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    let reader = tokio::spawn(async move {
        let Some(pipe) = pipe else { return };
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    (lines, reader)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Send raw bytes as one HTTP/1.1 request and return (status, body), for requests a
/// well-behaved client cannot make: truncated bodies, lying Content-Length, odd framing.
/// `half_close` shuts the write side after sending, which is how a body ends early; the
/// request should then say `connection: close` otherwise.
pub async fn raw_request(addr: SocketAddr, request: &[u8], half_close: bool) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    if half_close {
        stream.shutdown().await.expect("half-close");
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Assert that a JSON reply's `message` contains `expected`; `context` names the case.
#[track_caller]
pub fn assert_message(body: &Value, expected: &str, context: &str) {
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(expected),
        "{context}: message {message:?} lacks {expected:?} (reply {body})"
    );
}

/// One span an [`OtlpReceiver`] received.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    /// Span name.
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id (empty for a root span).
    pub parent_span_id: String,
    /// OTLP span kind (5 = consumer, 4 = producer, 1 = internal).
    pub kind: i32,
    /// Names of the span's events.
    pub events: Vec<String>,
    /// String attributes.
    pub attributes: std::collections::HashMap<String, String>,
}

/// The one span of `service` named `name` (fails the test, listing every span, if there is not exactly one).
#[track_caller]
pub fn one_span<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{service}/{name} in {:#?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// A real OTLP/gRPC trace receiver (the collector protocol) on 127.0.0.1.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Collector(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        let text = |kv: &opentelemetry_proto::tonic::common::v1::KeyValue| match kv
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Any::StringValue(s)) => Some(s.clone()),
            Some(Any::IntValue(i)) => Some(i.to_string()),
            Some(Any::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        };
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: span.kind,
                        events: span.events.iter().map(|e| e.name.clone()).collect(),
                        attributes: span
                            .attributes
                            .iter()
                            .filter_map(|kv| Some((kv.key.clone(), text(kv)?)))
                            .collect(),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(received);
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OtlpReceiver {
    /// Listen on an ephemeral port of 127.0.0.1.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
            Collector(spans.clone()),
        );
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        OtlpReceiver { addr, spans, task }
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `p`-th percentile (nearest rank) of `samples`, which it sorts: the benches' one rule.
pub fn percentile<T: Copy + PartialOrd>(samples: &mut [T], p: usize) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = (samples.len() * p).div_ceil(100).saturating_sub(1);
    samples[i.min(samples.len() - 1)]
}

/// A service URL from the environment; without it the test fails and says how to get one.
pub fn service(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suites through `make test`, which starts PostgreSQL and Redis on 127.0.0.1")
    })
}

pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("zerofn-store-{}", uuid::Uuid::new_v4()));
    format!("sqlite:{}/zerofn.db", dir.display())
}

/// A new, empty PostgreSQL database on the test server (`ZEROFN_TEST_POSTGRES`), so a test's
/// records, outbox and relay never meet another test's: functions are keyed by name, and
/// every suite's function is `probe`.
pub async fn fresh_postgres() -> String {
    let admin = service("ZEROFN_TEST_POSTGRES");
    let db = format!("zerofn_{}", uuid::Uuid::new_v4().simple());
    let pool = store_pool(&admin).await;
    // A name of our own making (a UUID), not input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&pool)
        .await
        .expect("CREATE DATABASE");
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').expect("a database URL");
    format!("{base}/{db}")
}

/// An empty Redis database of its own on the test server (`ZEROFN_TEST_REDIS`, started with
/// 1 024 databases): a counter in database 0 hands out databases 1..=1023 in turn, each
/// flushed before use, so a test's records and relay never meet another test's (as
/// [`fresh_postgres`] does for PostgreSQL).
pub async fn fresh_redis() -> String {
    let base = service("ZEROFN_TEST_REDIS");
    let base = base.trim_end_matches('/');
    let client = redis::Client::open(base).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is up");
    let n: u64 = redis::cmd("INCR")
        .arg("zerofn-tests:next-db")
        .query_async(&mut conn)
        .await
        .expect("INCR");
    let db = 1 + (n - 1) % 1023;
    let url = format!("{base}/{db}");
    let mut fresh = redis::Client::open(url.as_str())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is up");
    let () = redis::cmd("FLUSHDB")
        .query_async(&mut fresh)
        .await
        .expect("FLUSHDB");
    url
}

/// Leaves the claim of `key` (a record of `function`) with a holder that never lets go (an
/// hour's lease, far longer than leases are), on any store: every delivery of that event is
/// answered "in flight" until the transport's retries run out. The SQL stores need their
/// tables, so a replica must have started on `store` first.
pub async fn stick_claim(store: &str, function: &str, key: &str) {
    let now = chrono::Utc::now().timestamp_millis();
    let hour = 3_600_000_i64;
    if store.starts_with("redis") {
        let mut conn = redis::Client::open(store)
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is up");
        let () = redis::cmd("HSET")
            .arg(format!("zerofn:{function}:rec:{key}"))
            .arg(&["state", "in_flight", "owner", "stuck", "attempts", "0"][..])
            .query_async(&mut conn)
            .await
            .expect("HSET");
        let () = redis::cmd("SET")
            .arg(format!("zerofn:{function}:lease:{key}"))
            .arg("stuck")
            .arg("PX")
            .arg(hour)
            .query_async(&mut conn)
            .await
            .expect("SET");
        return;
    }
    let pool = store_pool(store).await;
    sqlx::query(
        "INSERT INTO zerofn_inbox (function, key, state, owner, lease_until, attempts, created_at, expires_at) \
         VALUES ($1, $2, 'in_flight', 'stuck', $3, 0, $4, $3)",
    )
    .bind(function)
    .bind(key)
    .bind(now + hour)
    .bind(now)
    .execute(&pool)
    .await
    .expect("the store has its tables");
    pool.close().await;
}

/// Every store the runtime supports, by name and URL, each fresh for the caller.
pub async fn stores() -> Vec<(&'static str, String)> {
    vec![
        ("sqlite", sqlite_url()),
        ("postgres", fresh_postgres().await),
        ("redis", fresh_redis().await),
    ]
}
