//! The engine's dashboard: its data stream over HTTP (shape, and that it streams), and the page
//! in headless Chromium (Debian's `chromium` and `chromium-driver`, which `make test` installs),
//! driven over the W3C WebDriver protocol: a function going 0 → 1 → 0, an event in the stream,
//! a refused event as a dead letter, and a fixed-up copy replayed from the page applied once.
//! Screenshots of those moments go to `$CARGO_TARGET_TMPDIR/dashboard/`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::{path::PathBuf, process::Stdio, time::Duration};

use base64::Engine as _;
use engine::{Engine, manifest, sibling};
use serde_json::{Value, json};
use zerofn_tests::{client, fresh_id};

fn probe_fn() -> String {
    format!("{}={}", manifest("tests/function.toml"), sibling("probe"))
}

fn task_event(id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tests/dashboard",
        "type": "todo.task.created",
        "subject": "user-1",
        "partitionkey": "user-1",
        "data": data
    })
}

/// The first `n` `update` events of the dashboard's stream, parsed.
async fn updates(url: &str, n: usize) -> Vec<Value> {
    let mut response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "a server-sent event stream"
    );
    let mut buffer = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the stream sends again within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if message.lines().any(|l| l == "event: update") {
                let data: String = message
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                out.push(serde_json::from_str(&data).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn the_data_stream_sends_every_function_and_what_happened_since_the_last_update() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let page = client()
        .get(engine.url("/_zerofn/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<title>zerofn engine</title>")
    );

    let id = fresh_id("stream");
    engine
        .post_events(&[task_event(&id, zerofn_tests::task("record"))])
        .await;
    engine
        .wait_for("probe", 30, "handled", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    // A request to the HTTP side counts too.
    let hello = client()
        .get(engine.url("/fn/probe/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    // The first update holds everything kept; the next ones only what is new.
    let got = updates(&engine.url("/_zerofn/dashboard/stream"), 3).await;
    let first = &got[0];
    let probe = &first["functions"][0];
    assert_eq!(probe["name"], "probe");
    for key in [
        "kind",
        "replicas",
        "desired",
        "reason",
        "lag",
        "retries",
        "dead_letters",
        "last_cold_start_ms",
        "last_start_error",
    ] {
        assert!(probe.get(key).is_some(), "{key} in {probe}");
    }
    let figures = &probe["figures"];
    assert!(figures["p50_ms"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["p95_ms"].as_f64().unwrap() >= figures["p50_ms"].as_f64().unwrap());
    assert!(
        figures["events_per_second"].as_f64().unwrap() > 0.0,
        "{figures}"
    );
    assert!(
        figures["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[1].as_u64() >= Some(1)),
        "the replica history shows the wake-up: {figures}"
    );
    let delivered: Vec<&Value> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"] == id)
        .collect();
    assert_eq!(delivered.len(), 1, "{first}");
    let e = delivered[0];
    assert_eq!(
        (
            e["function"].as_str(),
            e["type"].as_str(),
            e["subject"].as_str(),
            e["outcome"].as_str()
        ),
        (
            Some("probe"),
            Some("todo.task.created"),
            Some("user-1"),
            Some("applied")
        )
    );
    assert_eq!(e["trace_id"].as_str().map(str::len), Some(32), "{e}");
    assert!(
        first["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["function"] == "probe"
                && e["type"] == "GET /hello"
                && e["outcome"] == "ok"
                && e["duration_ms"].as_f64() > Some(0.0)),
        "{first}"
    );
    assert!(
        first["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["function"] == "probe" && d["to"] == 1 && d["reason"] == "lag"),
        "{first}"
    );
    assert!(first["dead_letters"].is_array(), "{first}");
    for later in &got[1..] {
        assert!(later["at"].as_i64() >= first["at"].as_i64());
        assert!(
            !later["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == id),
            "an event is sent once per stream"
        );
    }
    // A replay needs the dashboard's header (a page of another origin cannot send it).
    let refused = client()
        .post(engine.url("/_zerofn/dashboard/dead-letters/x/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let missing = client()
        .post(engine.url("/_zerofn/dashboard/dead-letters/nope/replay"))
        .header("x-zerofn-dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    engine.stop().await;
}

/// Headless Chromium through chromedriver, spoken to in the W3C WebDriver protocol.
struct Browser {
    driver: tokio::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver =
            std::env::var("ZEROFN_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{chromedriver}: {e} (make test installs Debian's chromium-driver)")
            });
        let http = client();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1440,1000", "--no-first-run", "--disable-extensions"
                ]}
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        Browser {
            driver,
            url: format!("{base}/session/{id}"),
            http,
        }
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let r: Value = self
            .http
            .post(format!("{}/{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["value"].get("error").is_some() {
            panic!("WebDriver {path}: {r}");
        }
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("url", json!({"url": url})).await;
    }

    /// Run `script` (a function body; `return` its answer) in the page.
    async fn eval(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Evaluate `script` until it returns something truthy; that value.
    async fn wait_for(&self, what: &str, script: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(script).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let r: Value = self
            .http
            .get(format!("{}/screenshot", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    async fn quit(mut self) {
        let _ = self.http.delete(&self.url).send().await;
        let _ = self.driver.kill().await;
    }
}

/// The probe's row's replica count now (`-1` before the row exists).
const REPLICAS: &str = r##"const c = document.querySelector('tr[data-function="probe"] [data-field="replicas"]'); const n = c ? Number(c.dataset.replicas) : -1;"##;

#[tokio::test]
async fn the_page_shows_a_function_wake_and_sleep_an_event_and_a_dead_letter_replayed_once() {
    let engine = Engine::start(&[probe_fn()], None, &[], &[]).await;
    let browser = Browser::start().await;
    browser.goto(&engine.url("/_zerofn/dashboard")).await;
    browser
        .wait_for(
            "the live connection",
            r##"return document.getElementById("connection").dataset.state === "live";"##,
            30,
        )
        .await;
    browser
        .wait_for("probe at zero", &format!("{REPLICAS} return n === 0;"), 30)
        .await;
    browser.screenshot("1-at-zero.png").await;

    // An event through the gateway: the function wakes, the event shows in the stream.
    let id = fresh_id("page");
    engine
        .post_events(&[task_event(&id, zerofn_tests::task("record"))])
        .await;
    let woke = browser
        .wait_for(
            "probe awake",
            &format!("{REPLICAS} return n >= 1 ? n : 0;"),
            60,
        )
        .await;
    assert!(woke.as_u64() >= Some(1));
    let outcome = browser
        .wait_for("the event in the stream", &format!(r##"const r = document.querySelector('#events tr[data-event-id="{id}"]'); return r ? r.dataset.outcome : null;"##), 30)
        .await;
    assert_eq!(outcome, "applied");
    browser.screenshot("2-awake-and-applied.png").await;
    // The filter narrows the stream to what matches.
    let shown = browser
        .eval(r##"const f = document.getElementById("event-filter"); f.value = "no-such-thing"; f.dispatchEvent(new Event("input")); return document.querySelectorAll("#events tbody tr[data-event-id]").length;"##)
        .await;
    assert_eq!(shown, 0);
    browser
        .eval(r##"const f = document.getElementById("event-filter"); f.value = ""; f.dispatchEvent(new Event("input")); return true;"##)
        .await;

    // Back to zero after the cooldown; the decisions say why.
    browser.wait_for("probe back at zero", r##"const c = document.querySelector('tr[data-function="probe"] [data-field="replicas"]'); return c && c.dataset.replicas === '0' && c.dataset.desired === '0';"##, 60).await;
    let decisions = browser.eval(r##"return [...document.querySelectorAll('#decisions li[data-function="probe"]')].map(l => l.textContent);"##).await;
    let decisions: Vec<String> = serde_json::from_value(decisions).unwrap();
    assert!(
        decisions.iter().any(|d| d.contains("0 → 1 (lag)")),
        "{decisions:?}"
    );
    assert!(decisions.iter().any(|d| d.contains("→ 0")), "{decisions:?}");
    browser.screenshot("3-back-to-zero.png").await;

    // A schema-violating event: refused at the gateway, listed as a dead letter.
    let bad = fresh_id("bad");
    let mut invalid = zerofn_tests::task("oops");
    invalid.as_object_mut().unwrap().remove("title");
    let refused = client()
        .post(engine.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .json(&task_event(&bad, invalid))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    browser
        .wait_for(
            "the dead letter",
            &format!(
                r##"return !!document.querySelector('#dead-letters tr[data-event-id="{bad}"]');"##
            ),
            30,
        )
        .await;
    browser.screenshot("4-dead-letter.png").await;

    // Show it, fix its data, replay it — twice: applied once.
    browser
        .eval(&format!(r##"document.querySelector('#dead-letters tr[data-event-id="{bad}"] button').click(); return true;"##))
        .await;
    let original = browser
        .wait_for("the original event", r##"const p = document.getElementById("dead-letter"); return !p.hidden && document.getElementById("dead-letter-event").textContent;"##, 30)
        .await;
    assert!(original.as_str().unwrap().contains(&bad), "{original}");
    let fixed = serde_json::to_string(&zerofn_tests::task("record")).unwrap();
    browser
        .eval(&format!(
            r##"document.getElementById("dead-letter-data").value = {}; return true;"##,
            serde_json::to_string(&fixed).unwrap()
        ))
        .await;
    for _ in 0..2 {
        browser.eval(r##"document.getElementById("replay-result").textContent = ""; document.getElementById("replay").click(); return true;"##).await;
        let result = browser
            .wait_for(
                "the replay's answer",
                r##"return document.getElementById("replay-result").textContent;"##,
                30,
            )
            .await;
        assert!(result.as_str().unwrap().starts_with("Replayed"), "{result}");
    }
    let outcomes = browser
        .wait_for("both replays delivered", &format!(r##"const o = [...document.querySelectorAll('#events tr[data-event-id="{bad}"]')].map(r => r.dataset.outcome); return o.length >= 2 ? o : null;"##), 60)
        .await;
    let mut outcomes: Vec<String> = serde_json::from_value(outcomes).unwrap();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec!["applied", "duplicate"],
        "the fixed copy applied once"
    );
    assert_eq!(
        zerofn_tests::effect_rows(&engine.store("probe"), &bad).await,
        1
    );
    browser.screenshot("5-replayed-once.png").await;

    // Keyboard: every control can be reached and has a label.
    let unlabelled = browser
        .eval(r##"return [...document.querySelectorAll("input, textarea")].filter(e => !document.querySelector(`label[for="${e.id}"]`)).length + [...document.querySelectorAll("button")].filter(b => !(b.textContent.trim() || b.getAttribute("aria-label"))).length;"##)
        .await;
    assert_eq!(unlabelled, 0);
    browser.quit().await;
    engine.stop().await;
}
