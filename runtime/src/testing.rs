//! Test helpers for function authors (feature `testing`): events without a broker, a router
//! to drive with `tower::ServiceExt::oneshot`, and a real server on 127.0.0.1.

use std::{collections::HashMap, net::SocketAddr};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    Error,
    app::App,
    config::Config,
    event::{Context, Event},
    handler::Handler,
    manifest::ManifestSource,
};

impl<T> Event<T> {
    /// An event carrying `data` with a placeholder context (type `test`, attempt 1), for
    /// calling a handler directly in a unit test.
    pub fn test(data: T) -> Event<T> {
        Event {
            data,
            ctx: Context::test("test"),
            tx: None,
        }
    }

    /// Replace the CloudEvent type (handlers that consume several types branch on it).
    pub fn with_type(mut self, ty: impl Into<String>) -> Event<T> {
        self.ctx.ty = ty.into();
        self
    }
}

impl Context {
    /// A placeholder context of type `ty`.
    pub fn test(ty: &str) -> Context {
        Context {
            id: uuid::Uuid::now_v7().to_string(),
            source: "/zerofn/test".into(),
            ty: ty.into(),
            subject: None,
            time: Some(chrono::Utc::now()),
            datacontenttype: Some("application/json".into()),
            extensions: Default::default(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
            attempt: 1,
            kafka: None,
        }
    }
}

/// `env` as a configuration; the store is `memory`, or a fresh SQLite file for a function that
/// declares `[store] sql = true`, unless `ZEROFN_STORE` says otherwise.
fn config(env: &[(&str, &str)], sql: bool) -> Result<Config, Error> {
    let mut map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry(crate::config::ENV_STORE.to_string())
        .or_insert_with(|| {
            if sql {
                temp_sqlite()
            } else {
                "memory".to_string()
            }
        });
    Ok(Config::from_source(&map)?)
}

/// A store URL for a new SQLite file in the temporary directory.
fn temp_sqlite() -> String {
    let dir = std::env::temp_dir().join(format!("zerofn-test-{}", uuid::Uuid::new_v4()));
    format!("sqlite:{}", dir.join("zerofn.db").display())
}

/// A temporary SQLite database with the runtime's tables and the function's migrations, to
/// run a handler that writes through its event's transaction ([`Event::conn`]) in a unit test.
pub struct TestDb {
    store: std::sync::Arc<dyn crate::idempotency::Store>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestDb")
    }
}

impl TestDb {
    /// A fresh database for the function `manifest` describes (with its migrations).
    pub async fn open(manifest: ManifestSource) -> Result<TestDb, Error> {
        let url = temp_sqlite();
        let name = manifest.parse()?.name;
        let store = crate::idempotency::open(&url, &name, manifest.function_migrations())
            .await
            .map_err(|e| Error::Store {
                url: url.clone(),
                reason: e.0,
            })?;
        Ok(TestDb { store })
    }

    /// Run `handler` on `event` in a transaction of this database, as the runtime does:
    /// committed when it succeeds, rolled back when it fails.
    pub async fn run<T, F, Fut, R>(
        &self,
        mut event: Event<T>,
        handler: F,
    ) -> Result<R, crate::HandlerError>
    where
        F: FnOnce(Event<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R, crate::HandlerError>>,
    {
        let tx = self
            .store
            .begin()
            .await
            .map_err(|e| crate::HandlerError::retryable(e.0))?
            .ok_or_else(|| crate::HandlerError::permanent("not a SQL store"))?;
        event.tx = Some(tx.clone());
        let result = handler(event).await;
        let Some(open) = tx.take().await else {
            return Err(crate::HandlerError::permanent(
                "the handler kept its transaction guard beyond its end",
            ));
        };
        let ended = if result.is_ok() {
            open.commit().await
        } else {
            open.rollback().await
        };
        ended.map_err(crate::HandlerError::retryable)?;
        result
    }

    /// A pool on the database, to look at what handlers wrote.
    pub fn pool(&self) -> sqlx::AnyPool {
        self.store.pool().expect("a SQL store")
    }
}

/// The function's whole HTTP app, configured from `env` instead of the process environment
/// (the store is `memory`, or a fresh SQLite file for `[store] sql = true`, unless
/// `ZEROFN_STORE` says otherwise).
pub async fn router<H: Handler>(
    manifest: ManifestSource,
    handler: H,
    env: &[(&str, &str)],
) -> Result<axum::Router, Error> {
    let parsed = manifest.parse()?;
    let cfg = config(env, parsed.needs_sql)?;
    Ok(App::build(cfg, manifest, parsed, handler).await?.router())
}

/// [`router`] for an HTTP function ([`crate::serve`]): its routes and the runtime's.
pub async fn http_router(
    manifest: ManifestSource,
    env: &[(&str, &str)],
) -> Result<axum::Router, Error> {
    router(manifest, crate::no_events(), env).await
}

/// One request to `app` in-process (`oneshot`): `method` `uri` with `body` as JSON and
/// `headers`; the status and the JSON answer (`null` when the body is empty or not JSON).
pub async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&serde_json::Value>,
    headers: &[(&str, &str)],
) -> (http::StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = body.map_or_else(String::new, serde_json::Value::to_string);
    let answer = match request.body(axum::body::Body::from(body)) {
        Ok(request) => app.clone().oneshot(request).await,
        Err(e) => panic!("{method} {uri}: not a request: {e}"),
    };
    let Ok(response) = answer;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A function served on an ephemeral port of 127.0.0.1.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl TestServer {
    /// Build the function from `env` and serve it.
    pub async fn start<H: Handler>(
        manifest: ManifestSource,
        handler: H,
        env: &[(&str, &str)],
    ) -> Result<TestServer, Error> {
        let parsed = manifest.parse()?;
        let cfg = config(env, parsed.needs_sql)?;
        let app = App::build(cfg, manifest, parsed, handler).await?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Serve)?;
        let addr = listener.local_addr().map_err(Error::Serve)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Trigger the shutdown sequence (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Trigger shutdown and wait for the server to drain and stop.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.begin_shutdown();
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(Error::Serve(std::io::Error::other(join))),
        }
    }
}

/// One request a [`Recorder`] received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path plus query string.
    pub path_and_query: String,
    /// All request headers.
    pub headers: http::HeaderMap,
    /// The request body.
    pub body: bytes::Bytes,
}

impl Recorded {
    /// A header's value as text (empty when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A real HTTP server on 127.0.0.1 that records every request and answers with a settable
/// status: a stand-in Dapr sidecar or Knative sink.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Start recording on an ephemeral port; answers 204 until told otherwise.
    pub async fn start() -> std::io::Result<Recorder> {
        use std::sync::{Arc, Mutex, atomic::AtomicU16};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(204));
        let (reqs, st) = (requests.clone(), status.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (reqs, st) = (reqs.clone(), st.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 16 << 20)
                    .await
                    .unwrap_or_default();
                if let Ok(mut r) = reqs.lock() {
                    r.push(Recorded {
                        method: parts.method.to_string(),
                        path_and_query: parts
                            .uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers: parts.headers,
                        body,
                    });
                }
                let code = st.load(std::sync::atomic::Ordering::SeqCst);
                http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Recorder {
            addr,
            requests,
            status,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port, e.g. for `DAPR_HTTP_PORT`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answer every following request with `status`.
    pub fn respond_with(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
