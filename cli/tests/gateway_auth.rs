//! The gateway with a configuration file, through the real `zerofn dev`: credentials (API keys
//! by their SHA-256; JWTs signed HS256 with a secret from the environment and RS256 with a key
//! from a JWKS served on 127.0.0.1), policies per credential, the subject rule, rate limits,
//! the batch cap, the event route closed, `/metrics` only on the internal listener, and the
//! configuration errors that stop a gateway at start (exit 64).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::{path::PathBuf, time::Duration};

use engine::{Engine, ZEROFN, manifest, sibling};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use zerofn_tests::{client, fresh_id, store_pool};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const CATEGORIZE_KEY: &str = "zk_test_categorize_only";
const POSTER_KEY: &str = "zk_test_todo_poster";

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn probe_fn() -> String {
    format!("{}={}", manifest("tests/function.toml"), sibling("probe"))
}

fn categorize_fn() -> String {
    format!(
        "{}={}",
        manifest("functions/categorize/function.toml"),
        sibling("categorize")
    )
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(name)
}

/// Write `text` as a configuration file of its own.
fn config_file(text: &str) -> String {
    let dir = std::env::temp_dir().join(fresh_id("gateway-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A configuration file with one API key, `key-k`, allowed to call `probe`, and these `[limits]`.
fn probe_key_config(limits: &str) -> String {
    config_file(&format!(
        "[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{}\"\nfunctions = [\"probe\"]\n\n[limits]\n{limits}\n",
        sha("key-k")
    ))
}

/// A JWKS on 127.0.0.1 (the RS256 key's public half), as an identity provider serves it.
async fn jwks_server() -> String {
    let jwks = std::fs::read_to_string(testdata("test-only-jwks.json")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { ([("content-type", "application/json")], jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A JWKS URL whose answer the test switches: `None` is a 503 (the issuer down), `Some(kids)`
/// serves the test JWKS with those keys only.
async fn switchable_jwks_server() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Option<Vec<&'static str>>>>,
) {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(testdata("test-only-jwks.json")).unwrap())
            .unwrap();
    let serving = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<&'static str>>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let state = serving.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let kids = state.lock().unwrap().clone();
            let all = all.clone();
            async move {
                match kids {
                    None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new()),
                    Some(kids) => {
                        let keys: Vec<Value> = all["keys"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
                            .cloned()
                            .collect();
                        (
                            axum::http::StatusCode::OK,
                            json!({ "keys": keys }).to_string(),
                        )
                    }
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, serving)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-2026".into());
    let pem = std::fs::read(testdata("test-only-rs256.pem")).unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn es256(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-es-2026".into());
    let pem = std::fs::read(testdata("test-only-es256.pem")).unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"iss": "https://id.test/", "aud": "zerofn", "sub": sub, "exp": now() + exp_in, "iat": now()})
}

/// `zerofn dev` with `fns` behind a gateway configured by the file `config`, its internal
/// listener on a free port.
async fn guarded(fns: &[String], config: &str, env: &[(&str, &str)]) -> Engine {
    Engine::start(
        fns,
        None,
        env,
        &[
            "--gateway-config",
            config,
            "--internal-listen",
            "127.0.0.1:0",
        ],
    )
    .await
}

/// The internal listener's address, from the engine's log.
fn internal_url(engine: &Engine, path: &str) -> String {
    let addr = engine
        .process
        .log_lines()
        .into_iter()
        .find(|l| {
            l["message"] == "internal listener (/metrics, /_zerofn/status, /_zerofn/dashboard)"
        })
        .and_then(|l| l["addr"].as_str().map(str::to_string))
        .expect("the engine logged its internal listener");
    format!("http://{addr}{path}")
}

/// `zerofn_gateway_rejected_total` by `code`, from the internal listener's /metrics.
#[derive(Debug)]
struct Rejected(String);

impl Rejected {
    fn count(&self, code: &str) -> f64 {
        self.0
            .lines()
            .find(|l| {
                l.starts_with("zerofn_gateway_rejected_total")
                    && l.contains(&format!("code=\"{code}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    }
}

async fn rejected(engine: &Engine) -> Rejected {
    Rejected(
        client()
            .get(internal_url(engine, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
}

async fn call(
    engine: &Engine,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = client().request(method.parse().unwrap(), engine.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

fn transaction(subject: &str) -> Value {
    json!({
        "specversion": "1.0", "id": fresh_id("tx"), "source": "/bank", "type": "finance.transaction.created",
        "subject": subject, "datacontenttype": "application/json",
        "data": serde_json::from_str::<Value>(include_str!("../../contracts/events/finance.transaction.created/valid/groceries.json")).unwrap(),
    })
}

async fn post_event(engine: &Engine, token: Option<&str>, event: &Value) -> reqwest::Response {
    let mut r = client()
        .post(engine.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .json(event);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn credentials_and_policies_guard_every_public_route() {
    let jwks = jwks_server().await;
    let config = config_file(&format!(
        r#"
[[auth.api_keys]]
name = "categorizer"
sha256 = "{}"
functions = ["categorize"]

[[auth.api_keys]]
name = "todo-poster"
sha256 = "{}"
events = ["todo.*"]

[auth.jwt]
issuer = "https://id.test/"
audience = "zerofn"
hs256_secret_env = "TEST_GATEWAY_JWT_SECRET"
jwks_url = "{jwks}"
leeway = "5s"
functions = ["probe"]
events = ["finance.transaction.*"]
subject_claim = "sub"

[limits]
max_batch = 3
"#,
        sha(CATEGORIZE_KEY),
        sha(POSTER_KEY)
    ));
    let engine = guarded(
        &[categorize_fn(), probe_fn()],
        &config,
        &[("TEST_GATEWAY_JWT_SECRET", SECRET)],
    )
    .await;
    let categorize = json!({"description": "ACME SUPERMARKET 0042", "amount_minor": -1250});

    // No credential, a wrong one, a malformed header: 401 with the challenge.
    let r = call(
        &engine,
        "POST",
        "/fn/categorize/categorize",
        None,
        Some(categorize.clone()),
    )
    .await;
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="zerofn""#);
    assert_eq!(error_of(r).await.0, 401);
    let r = call(
        &engine,
        "POST",
        "/fn/categorize/categorize",
        Some("zk_wrong"),
        Some(categorize.clone()),
    )
    .await;
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(
        error_of(r).await,
        (
            401,
            "unauthenticated".into(),
            "the credential is not accepted: unknown API key".into()
        )
    );
    let r = client()
        .get(engine.url("/fn/categorize/categorize"))
        .header("authorization", format!("Basic {CATEGORIZE_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401, "not a bearer credential");

    // The categorize key: categorize only.
    let r = call(
        &engine,
        "POST",
        "/fn/categorize/categorize",
        Some(CATEGORIZE_KEY),
        Some(categorize.clone()),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (s, code, message) = error_of(
        call(
            &engine,
            "GET",
            "/fn/probe/hello",
            Some(CATEGORIZE_KEY),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s, code.as_str()), (403, "forbidden"));
    assert!(message.contains("\"probe\""), "{message}");
    let (s, _, message) =
        error_of(post_event(&engine, Some(CATEGORIZE_KEY), &transaction("u-1")).await).await;
    assert_eq!(s, 403);
    assert!(message.contains("finance.transaction.created"), "{message}");
    let (s, _, _) = error_of(
        call(
            &engine,
            "POST",
            "/async/probe/effect/x",
            Some(CATEGORIZE_KEY),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(s, 403, "/async/ is a function route too");

    // An HTTP function's event route is not reachable: /fn/{name} and /fn/{name}/.
    for path in ["/fn/categorize", "/fn/categorize/"] {
        let (s, _, message) =
            error_of(call(&engine, "POST", path, Some(CATEGORIZE_KEY), Some(json!({}))).await)
                .await;
        assert_eq!(s, 404, "{path}");
        assert!(message.contains("event route"), "{message}");
    }

    // JWTs: HS256, the subject rule, expiry, audience; RS256 from the JWKS.
    let alice = hs256(&claims("u-1", 300));
    let r = post_event(&engine, Some(&alice), &transaction("u-1")).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let (s, _, message) =
        error_of(post_event(&engine, Some(&alice), &transaction("u-2")).await).await;
    assert_eq!(s, 403);
    assert!(message.contains("only its own"), "{message}");
    let expired = hs256(&claims("u-1", -60));
    let (s, _, message) =
        error_of(post_event(&engine, Some(&expired), &transaction("u-1")).await).await;
    assert_eq!(s, 401);
    assert!(message.contains("expired"), "{message}");
    let mut other_audience = claims("u-1", 300);
    other_audience["aud"] = json!("someone-else");
    let (s, _, message) =
        error_of(post_event(&engine, Some(&hs256(&other_audience)), &transaction("u-1")).await)
            .await;
    assert_eq!(s, 401);
    assert!(message.contains("audience"), "{message}");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("u-1", 300),
        &EncodingKey::from_secret(b"not-the-gateway-secret-but-32-bytes-long"),
    )
    .unwrap();
    assert_eq!(
        error_of(post_event(&engine, Some(&forged), &transaction("u-1")).await)
            .await
            .0,
        401
    );
    let bob = rs256(&claims("u-2", 300));
    let r = post_event(&engine, Some(&bob), &transaction("u-2")).await;
    assert_eq!(
        r.status(),
        202,
        "RS256 from the JWKS URL: {:?}",
        r.text().await
    );
    let r = call(&engine, "GET", "/fn/probe/hello", Some(&bob), None).await;
    assert_eq!(r.status(), 200, "the JWT policy allows probe");
    let carol = es256(&claims("u-3", 300));
    let r = post_event(&engine, Some(&carol), &transaction("u-3")).await;
    assert_eq!(
        r.status(),
        202,
        "ES256 from the JWKS URL: {:?}",
        r.text().await
    );
    let mut unknown_kid = Header::new(Algorithm::ES256);
    unknown_kid.kid = Some("rotated-away".into());
    let pem = std::fs::read(testdata("test-only-es256.pem")).unwrap();
    let stale = jsonwebtoken::encode(
        &unknown_kid,
        &claims("u-3", 300),
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    let (s, _, message) =
        error_of(post_event(&engine, Some(&stale), &transaction("u-3")).await).await;
    assert_eq!(s, 401);
    assert!(message.contains("rotated-away"), "{message}");
    let (s, _, _) = error_of(
        call(
            &engine,
            "POST",
            "/fn/categorize/categorize",
            Some(&bob),
            Some(categorize),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);

    // The poster key: todo events; a batch over the cap is refused whole.
    let task = |title: &str| {
        json!({"specversion": "1.0", "id": fresh_id("t"), "source": "/tasks", "type": "todo.task.created",
               "datacontenttype": "application/json",
               "data": {"task_id": "0193a7c2-8000-7000-8000-000000000001", "user_id": "u-1", "title": title,
                        "priority": "low", "created_at": "2026-12-02T10:00:00Z"},
               "replayof": "0193a7c2-0000-7000-8000-000000000000"})
    };
    let r = client()
        .post(engine.url("/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .bearer_auth(POSTER_KEY)
        .json(&json!([task("a"), task("b"), task("c"), task("d")]))
        .send()
        .await
        .unwrap();
    let (s, code, message) = error_of(r).await;
    assert_eq!((s, code.as_str()), (413, "batch_too_large"));
    assert!(message.contains("limits.max_batch"), "{message}");
    let forged_replay = task("forged");
    let r = post_event(&engine, Some(POSTER_KEY), &forged_replay).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    // What was stored has no replayof: a client cannot make its event a dead letter's replay.
    let log = store_pool(&format!("sqlite:{}", engine.state.join("log.db").display())).await;
    let values: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM records WHERE topic = 'todo.task.created'")
            .fetch_all(&log)
            .await
            .unwrap();
    let stored: Vec<Value> = values
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .collect();
    let ours = stored
        .iter()
        .find(|e| e["id"] == forged_replay["id"])
        .expect("stored");
    assert!(ours.get("replayof").is_none(), "{ours}");
    log.close().await;

    // /metrics and the status only on the internal listener; refusals counted by reason.
    assert_eq!(
        call(&engine, "GET", "/metrics", Some(CATEGORIZE_KEY), None)
            .await
            .status(),
        404
    );
    assert_eq!(
        call(&engine, "GET", "/_zerofn/status", None, None)
            .await
            .status(),
        404
    );
    // The dashboard (which can replay dead letters) likewise: internal only.
    for path in ["/_zerofn/dashboard", "/_zerofn/dashboard/stream"] {
        assert_eq!(
            call(&engine, "GET", path, None, None).await.status(),
            404,
            "{path}"
        );
    }
    let board = client()
        .get(internal_url(&engine, "/_zerofn/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(board.status(), 200);
    let count = rejected(&engine).await;
    assert!(count.count("unauthenticated") >= 6.0, "{count:?}");
    assert!(count.count("forbidden") >= 5.0, "{count:?}");
    let status = client()
        .get(internal_url(&engine, "/_zerofn/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    // And no credential in the log.
    let raw = engine.process.raw_stdout().join("\n");
    for secret in [CATEGORIZE_KEY, POSTER_KEY, SECRET, alice.as_str()] {
        assert!(!raw.contains(secret), "a credential was logged");
    }
    engine.stop().await;
}

#[tokio::test]
async fn the_rate_limits_answer_429_with_retry_after_then_let_through() {
    let config = config_file(&format!(
        r#"
[[auth.api_keys]]
name = "a"
sha256 = "{}"
functions = ["probe"]

[[auth.api_keys]]
name = "b"
sha256 = "{}"
functions = ["probe"]

[limits]
per_credential = {{ per_second = 0.5, burst = 2 }}
per_address = {{ per_second = 0.5, burst = 6 }}
"#,
        sha("key-a"),
        sha("key-b")
    ));
    let engine = guarded(&[probe_fn()], &config, &[]).await;
    let hello = |key: Option<&'static str>| {
        let engine = &engine;
        async move { call(engine, "GET", "/fn/probe/hello", key, None).await }
    };
    assert_eq!(hello(Some("key-a")).await.status(), 200);
    assert_eq!(hello(Some("key-a")).await.status(), 200);
    let r = hello(Some("key-a")).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, code, message) = error_of(r).await;
    assert_eq!((s, code.as_str()), (429, "rate_limited"));
    assert!(message.contains("credential"), "{message}");
    assert!((1..=2).contains(&retry), "one token per 2 s: {retry}");
    assert_eq!(
        hello(Some("key-b")).await.status(),
        200,
        "another key has its own bucket"
    );
    assert_eq!(hello(None).await.status(), 401);
    assert_eq!(hello(Some("key-b")).await.status(), 200);
    // Seven requests from 127.0.0.1 against a burst of six: the address's limit, before any
    // credential is looked at.
    let r = hello(Some("key-b")).await;
    assert!(r.headers().contains_key("retry-after"));
    let (s, _, message) = error_of(r).await;
    assert_eq!(s, 429);
    assert!(message.contains("address"), "{message}");
    // After the window, allowed again.
    tokio::time::sleep(Duration::from_secs(retry.max(2) + 1)).await;
    assert_eq!(hello(Some("key-a")).await.status(), 200);
    engine.stop().await;
}

#[tokio::test]
async fn a_gateway_without_credentials_or_with_a_bad_file_does_not_start() {
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(ZEROFN)
            .args(&args)
            .env_remove("ZEROFN_GATEWAY_CONFIG")
            .env_remove("ZEROFN_GATEWAY_INSECURE_OPEN")
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let gateway = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--function",
            "x=http://127.0.0.1:9",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (code, err) = run(gateway(&[])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("[auth]") && err.contains("--insecure-open"),
        "{err}"
    );
    let open_file = config_file("[limits]\nmax_batch = 10\n");
    let (code, err) = run(gateway(&["--config", &open_file])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("no [auth] section"), "{err}");
    let bad = config_file("[[auth.api_keys]]\nname = \"k\"\nsha256 = \"not-a-hash\"\n");
    let (code, err) = run(gateway(&["--config", &bad])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("auth.api_keys[0].sha256 = not-a-hash") && err.contains(&bad),
        "{err}"
    );
    let missing_secret = config_file(
        "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret_env = \"ZEROFN_TEST_UNSET_SECRET\"\n",
    );
    let (code, err) = run(vec![
        "dev".into(),
        "--fn".into(),
        probe_fn(),
        "--gateway-config".into(),
        missing_secret,
    ])
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("ZEROFN_TEST_UNSET_SECRET") && err.contains("not set"),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_an_oversized_answer_is_refused() {
    let config = probe_key_config(
        r#"header_timeout = "1s"
body_timeout = "1s"
max_response_bytes = 2048"#,
    );
    let engine = guarded(&[probe_fn()], &config, &[]).await;
    // Headers trickled one byte every 300 ms: cut off, never answered.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = engine
        .process
        .url()
        .trim_start_matches("http://")
        .to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for b in b"X-Slow: ".iter().chain(b"a".repeat(40).iter()) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(
        cut || matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the connection was closed"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("200 OK"),
        "a trickling client was served: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "cut off, not waited out"
    );
    // The gateway keeps serving others meanwhile.
    assert_eq!(
        call(&engine, "GET", "/fn/probe/hello", Some("key-k"), None)
            .await
            .status(),
        200
    );

    // A body promised at 100 bytes of which 10 arrive: 408 once limits.body_timeout has passed.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(
            b"POST /fn/probe/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-k\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("limits.body_timeout"),
        "a stalled body: {answer}"
    );

    // The probe echoes what it is sent: a 1 KiB answer passes, a 4 KiB one is refused.
    let echo = |n: usize| {
        let engine = &engine;
        async move {
            client()
                .post(engine.url("/fn/probe/echo"))
                .bearer_auth("key-k")
                .body("x".repeat(n))
                .send()
                .await
                .unwrap()
        }
    };
    let small = echo(1024).await;
    assert_eq!(small.status(), 200);
    assert_eq!(small.text().await.unwrap().len(), 1024);
    let (s, code, message) = error_of(echo(4096).await).await;
    assert_eq!((s, code.as_str()), (502, "upstream_failed"));
    assert!(message.contains("limits.max_response_bytes"), "{message}");
    engine.stop().await;
}

/// The issuer's JWKS over its life: down when the gateway starts (the gateway starts anyway and
/// refuses RS256/ES256 tokens, naming the missing key), up later (read on the next refresh), and
/// rotated (a token naming a key the cache lacks makes the gateway look again at once).
#[tokio::test]
async fn the_jwks_is_read_when_the_issuer_comes_up_and_again_when_it_rotates() {
    let (jwks, serving) = switchable_jwks_server().await;
    let config = |refresh: &str| {
        config_file(&format!(
            r#"
[auth.jwt]
issuer = "https://id.test/"
audience = "zerofn"
jwks_url = "{jwks}"
jwks_refresh = "{refresh}"
events = ["finance.transaction.*"]
"#
        ))
    };
    // Down at start, then up: read again after jwks_refresh (10 s, the least allowed).
    let engine = guarded(&[probe_fn()], &config("10s"), &[]).await;
    let bob = rs256(&claims("u-2", 300));
    let (status, _, message) =
        error_of(post_event(&engine, Some(&bob), &transaction("u-2")).await).await;
    assert_eq!(status, 401, "no keys while the issuer is down");
    assert!(message.contains("test-2026"), "{message}");
    *serving.lock().unwrap() = Some(vec!["test-2026"]);
    let mut accepted = false;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if post_event(&engine, Some(&bob), &transaction("u-2"))
            .await
            .status()
            == 202
        {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the JWKS was read once the issuer answered");
    engine.stop().await;

    // Rotation with the default 5-minute refresh: the ES key appears after the gateway read the
    // JWKS; the first token naming it makes the gateway read it again, at once.
    *serving.lock().unwrap() = Some(vec!["test-2026"]);
    let engine = guarded(&[probe_fn()], &config("5m"), &[]).await;
    assert_eq!(
        post_event(&engine, Some(&bob), &transaction("u-2"))
            .await
            .status(),
        202
    );
    *serving.lock().unwrap() = Some(vec!["test-2026", "test-es-2026"]);
    let carol = es256(&claims("u-3", 300));
    let r = post_event(&engine, Some(&carol), &transaction("u-3")).await;
    assert_eq!(r.status(), 202, "a rotated-in key: {:?}", r.text().await);
    // The old key rotated out is still cached until the refresh: no reload per token.
    *serving.lock().unwrap() = Some(vec!["test-es-2026"]);
    assert_eq!(
        post_event(&engine, Some(&bob), &transaction("u-2"))
            .await
            .status(),
        202
    );
    engine.stop().await;
}

/// A function that takes 2 s to start holds at most `limits.max_held` requests for it; the
/// rest are refused at once with 503 and `Retry-After`, and the held ones are served.
#[tokio::test]
async fn a_flood_at_a_cold_function_holds_max_held_and_refuses_the_rest() {
    let config = probe_key_config(r#"max_held = 3"#);
    let engine = guarded(&[probe_fn()], &config, &[("PROBE_START_DELAY_MS", "2000")]).await;
    let clients: Vec<reqwest::Client> = (0..10).map(|_| client()).collect();
    let sends: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let request = c.get(engine.url("/fn/probe/hello")).bearer_auth("key-k");
            tokio::spawn(request.send())
        })
        .collect();
    let mut served = 0;
    let mut refused = 0;
    for send in sends {
        let a = send.await.unwrap().unwrap();
        match a.status().as_u16() {
            200 => served += 1,
            503 => {
                assert_eq!(a.headers()["retry-after"], "1");
                let (_, code, message) = error_of(a).await;
                assert_eq!(code, "too_many_held");
                assert!(message.contains("limits.max_held"), "{message}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", a.text().await.unwrap()),
        }
    }
    assert_eq!((served, refused), (3, 7), "held 3, refused the rest");
    engine.stop().await;
}

/// A Dapr sidecar that takes a second per publish: how many publishes it has begun, and the
/// ids of those it took.
async fn slow_sidecar() -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let begun: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let published: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, started) = (published.clone(), begun.clone());
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (seen, started) = (seen.clone(), started.clone());
        async move {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            seen.lock()
                .unwrap()
                .push(v["id"].as_str().unwrap_or_default().to_string());
            axum::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, begun, published)
}

#[tokio::test]
async fn sigterm_under_load_finishes_every_accepted_request_and_exits_0() {
    let (dapr_port, begun, published) = slow_sidecar().await;
    let dapr_port = dapr_port.to_string();
    let mut gateway = zerofn_tests::FnProcess::start_with_args(
        ZEROFN,
        &[
            "gateway",
            "--listen",
            "127.0.0.1:{port}",
            "--internal-listen",
            "127.0.0.1:0",
            "--insecure-open",
            "--dapr-http-port",
            &dapr_port,
        ],
        &[],
    )
    .await;
    let url = format!("{}/events", gateway.url());
    let http = client();
    let sent: Vec<_> = (0..40)
        .map(|_| {
            let (http, url, event) = (http.clone(), url.clone(), transaction("u-1"));
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .header("content-type", "application/cloudevents+json")
                    .json(&event)
                    .send()
                    .await;
                (
                    event["id"].as_str().unwrap().to_string(),
                    r.map(|r| r.status().as_u16()),
                )
            })
        })
        .collect();
    // SIGTERM once all forty are in flight (each waiting on its publish).
    for _ in 0..200 {
        if begun.load(std::sync::atomic::Ordering::SeqCst) == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        begun.load(std::sync::atomic::Ordering::SeqCst),
        40,
        "all in flight"
    );
    gateway.sigterm();
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    for s in sent {
        let (id, status) = s.await.unwrap();
        match status {
            Ok(202) => accepted.push(id),
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} requests in flight at SIGTERM failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "exit 0"
    );
    let published = published.lock().unwrap().clone();
    assert_eq!(accepted.len(), 40, "every request in flight finished");
    for id in &accepted {
        assert!(
            published.contains(id),
            "{id} was answered 202 but never published"
        );
    }
    // Stopped: nothing is accepted any more.
    assert!(client().post(&url).send().await.is_err());
}

#[tokio::test]
async fn a_bad_input_corpus_gets_precise_4xx_and_the_gateway_keeps_serving() {
    let config = config_file(&format!(
        r#"
[[auth.api_keys]]
name = "poster"
sha256 = "{}"
events = ["*"]
functions = ["probe"]

[limits]
max_batch = 100
dead_letters = {{ per_second = 0.1, burst = 5 }}
dead_letter_bytes = 1024
"#,
        sha("key-p")
    ));
    let engine = guarded(&[probe_fn()], &config, &[]).await;
    let post = |ct: &'static str, body: Vec<u8>| {
        let engine = &engine;
        async move {
            client()
                .post(engine.url("/events"))
                .bearer_auth("key-p")
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let event = |i: usize| {
        json!({"specversion": "1.0", "id": format!("b-{i}"), "source": "/s", "type": "todo.task.created",
               "data": {"task_id": "0193a7c2-8000-7000-8000-000000000001", "user_id": "u-1", "title": "t",
                        "priority": "low", "created_at": "2026-12-02T10:00:00Z"}})
    };
    let thousands = serde_json::to_vec(&(0..3000).map(event).collect::<Vec<_>>()).unwrap();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let cases: Vec<(&str, &'static str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            "application/cloudevents+json",
            b"{\"specversion\": ".to_vec(),
            400,
            "malformed_event",
        ),
        (
            "a JSON array in structured mode",
            "application/cloudevents+json",
            b"[]".to_vec(),
            400,
            "malformed_event",
        ),
        (
            "nested 5000 deep",
            "application/cloudevents-batch+json",
            deep,
            400,
            "malformed_event",
        ),
        (
            "invalid UTF-8",
            "application/cloudevents+json",
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
            "malformed_event",
        ),
        (
            "plain text",
            "text/plain",
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "XML",
            "application/xml",
            b"<event/>".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "an empty body",
            "application/cloudevents+json",
            Vec::new(),
            400,
            "malformed_event",
        ),
        (
            "3000 events in one batch",
            "application/cloudevents-batch+json",
            thousands,
            413,
            "batch_too_large",
        ),
    ];
    for (what, ct, body, status, code) in cases {
        let (s, c, message) = error_of(post(ct, body).await).await;
        assert_eq!((s, c.as_str()), (status, code), "{what}: {message}");
        assert!(!message.is_empty(), "{what}: a message says why");
    }
    // Headers: a 64 KiB header and a header value that is not UTF-8.
    let r = client()
        .get(engine.url("/fn/probe/hello"))
        .bearer_auth("key-p")
        .header("x-huge", "h".repeat(64 << 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431, "huge headers");
    let r = client()
        .post(engine.url("/events"))
        .bearer_auth("key-p")
        .header("content-type", "application/cloudevents+json")
        .header(
            "ce-id",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // Binary mode with a body that is not JSON under a JSON content type.
    let r = client()
        .post(engine.url("/events"))
        .bearer_auth("key-p")
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-source", "/s")
        .header("ce-type", "todo.task.created")
        .body("not json")
        .send()
        .await
        .unwrap();
    let (s, code, message) = error_of(r).await;
    assert_eq!((s, code.as_str()), (422, "undecodable_data"), "{message}");
    // The dead-letter topic got at most the burst of five, each cut to 1 KiB of its original.
    let log = store_pool(&format!("sqlite:{}", engine.state.join("log.db").display())).await;
    let recorded: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM records WHERE topic = 'deadletter.gateway'")
            .fetch_all(&log)
            .await
            .unwrap();
    log.close().await;
    assert!(
        (1..=6).contains(&recorded.len()),
        "bounded: {} recorded",
        recorded.len()
    );
    for r in &recorded {
        assert!(
            r.len() < 8 << 10,
            "a record of a cut original, {} bytes",
            r.len()
        );
    }
    // What was refused past the bound is counted, not recorded.
    let count = rejected(&engine).await;
    assert!(count.count("dead_letter_dropped") >= 1.0, "{count:?}");
    // Still serving.
    let r = post(
        "application/cloudevents+json",
        serde_json::to_vec(&event(9999)).unwrap(),
    )
    .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    assert_eq!(
        call(&engine, "GET", "/fn/probe/hello", Some("key-p"), None)
            .await
            .status(),
        200
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_browser_on_an_allowed_origin_gets_its_preflight_and_answers_others_do_not() {
    let config = config_file(&format!(
        r#"
[[auth.api_keys]]
name = "app"
sha256 = "{}"
functions = ["probe"]

[cors.probe]
allow_origins = ["https://todo.test"]
allow_methods = ["GET", "POST"]
"#,
        sha("key-app")
    ));
    let engine = guarded(&[probe_fn()], &config, &[]).await;
    let preflight = |origin: &'static str, method: &'static str| {
        let engine = &engine;
        async move {
            client()
                .request(reqwest::Method::OPTIONS, engine.url("/fn/probe/echo"))
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
                .await
                .unwrap()
        }
    };
    // Answered by the gateway, without a credential (a preflight carries none).
    let ok = preflight("https://todo.test", "POST").await;
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://todo.test"
    );
    assert_eq!(ok.headers()["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        ok.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );
    let (s, code, _) = error_of(preflight("https://evil.test", "POST").await).await;
    assert_eq!((s, code.as_str()), (403, "cors"));
    assert_eq!(
        error_of(preflight("https://todo.test", "DELETE").await)
            .await
            .0,
        403
    );
    // The request itself still needs its credential; every answer to the allowed origin says so.
    let r = client()
        .post(engine.url("/fn/probe/echo"))
        .header("origin", "https://todo.test")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://todo.test"
    );
    let r = client()
        .post(engine.url("/fn/probe/echo"))
        .header("origin", "https://todo.test")
        .bearer_auth("key-app")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://todo.test"
    );
    assert_eq!(r.headers()["vary"], "Origin");
    let r = client()
        .post(engine.url("/fn/probe/echo"))
        .header("origin", "https://evil.test")
        .bearer_auth("key-app")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "not for another origin"
    );
    engine.stop().await;
}
