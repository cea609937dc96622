//! The finance companion end to end, through the real engine and gateway: ledger (HTTP),
//! categorize (HTTP), budget, insights, notify and audit as replica processes. A budget and three
//! transactions become exactly one warning and one exceeded alert the user reads from notify,
//! and the audit chain stays intact: with every POST sent twice under one `Idempotency-Key`,
//! with replicas SIGKILLed as it runs, and with budget at two replicas.
//!
//! Every wait is bounded; counts, never timings, are asserted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod engine;

use std::time::{Duration, Instant};

use engine::{Engine, ZEROFN, manifest, sibling};
use serde_json::{Value, json};
use zerofn::testing::Recorder;
use zerofn_tests::{FnProcess, client, fresh_id, sqlite_url};

/// The six functions of the finance companion, by directory.
fn finance() -> Vec<String> {
    [
        "ledger",
        "categorize",
        "budget",
        "insights",
        "notify",
        "audit",
    ]
    .iter()
    .map(|f| manifest(&format!("functions/{f}")))
    .collect()
}

/// POST `body` to `path` under `key` until the gateway answers with the function's own answer
/// (a replica killed mid-request gets a retry, as a client would): returns it.
async fn post(engine: &Engine, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = client()
            .post(engine.url(path))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            // 409: the first attempt still holds the key; 5xx: no replica answered.
            if status < 500 && status != 409 {
                return (status, answer);
            }
        }
        assert!(Instant::now() < deadline, "POST {path} never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// GET `path` until it answers 200 and `done` holds (at most 90 s).
async fn get_until(
    engine: &Engine,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Value::Null;
    loop {
        if let Ok(r) = client().get(engine.url(path)).send().await
            && r.status() == 200
        {
            last = r.json().await.unwrap_or(Value::Null);
            if done(&last) {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 90 s; last {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kinds(notifications: &Value) -> Vec<String> {
    let mut k: Vec<String> = notifications["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

/// The story: a 400.00 EUR groceries budget, then 150.00, 180.00 (82.5 %: the warning) and
/// 90.00 (105 %: the exceeded alert), each POSTed twice under its key. The third is posted
/// once the warning is readable, as a user's purchases come days apart: the budget and the
/// transactions travel on different topics, so without that the budget could arrive after
/// all three (and its user be told only that it is exceeded, which is right then too).
async fn story(engine: &Engine) {
    let user = fresh_id("u");
    let budget = json!({"user_id": user, "category": "groceries", "period": "2026-11",
                        "currency": "EUR", "limit_minor": 40_000});
    let key = fresh_id("budget");
    let (s1, b1) = post(engine, "/fn/ledger/budgets", &key, &budget).await;
    let (s2, b2) = post(engine, "/fn/ledger/budgets", &key, &budget).await;
    assert_eq!((s1, s2), (201, 201), "{b1} {b2}");
    assert_eq!(
        b1["budget_id"], b2["budget_id"],
        "the repeat answers the first response"
    );
    let spend = |amount: i64, description: &str, category: Option<&str>| {
        let mut t = json!({"user_id": user, "amount_minor": amount, "currency": "EUR",
                           "description": description, "occurred_at": "2026-11-05T18:30:00Z"});
        if let Some(c) = category {
            t["category"] = json!(c);
        }
        t
    };
    let twice = |t: Value| async move {
        let key = fresh_id("txn");
        let (s1, first) = post(engine, "/fn/ledger/transactions", &key, &t).await;
        let (s2, second) = post(engine, "/fn/ledger/transactions", &key, &t).await;
        assert_eq!((s1, s2), (201, 201), "{first} {second}");
        assert_eq!(first, second, "the repeat answers the first response");
        first
    };
    // Without a category: categorize's rules pick groceries.
    let first = twice(spend(-15_000, "ACME SUPERMARKET 0042", None)).await;
    assert_eq!(first["category"], "groceries", "{first}");
    twice(spend(-18_000, "Corner grocer", None)).await;
    let notifications = format!("/fn/notify/notifications?user_id={user}");
    get_until(engine, &notifications, "the 80 % warning", |n| {
        kinds(n).contains(&"budget_warning".to_string())
    })
    .await;
    twice(spend(-9_000, "Weekly shop", Some("Groceries"))).await;
    get_until(engine, &notifications, "the exceeded alert", |n| {
        kinds(n).contains(&"budget_exceeded".to_string())
    })
    .await;
    // Everything settled: still exactly one of each, and the chain intact.
    for f in ["ledger", "budget", "notify", "audit"] {
        engine
            .wait_for(f, 120, "every event handled", |s| s["total_lag"] == 0)
            .await;
    }
    let n = get_until(engine, &notifications, "notifications", |_| true).await;
    assert_eq!(
        kinds(&n),
        vec!["budget_exceeded", "budget_warning"],
        "exactly one warning and one exceeded alert: {n}"
    );
    let exceeded = n["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "budget_exceeded")
        .unwrap();
    assert_eq!(exceeded["title"], "groceries budget exceeded");
    assert!(
        exceeded["body"]
            .as_str()
            .unwrap()
            .contains("(420.00 of 400.00 EUR)"),
        "{exceeded}"
    );
    let ledger = get_until(
        engine,
        &format!("/fn/ledger/transactions?user_id={user}"),
        "the ledger",
        |_| true,
    )
    .await;
    assert_eq!(
        ledger["transactions"].as_array().unwrap().len(),
        3,
        "each stored once"
    );
    let budgets = get_until(
        engine,
        &format!("/fn/ledger/budgets?user_id={user}"),
        "the budget",
        |_| true,
    )
    .await;
    assert_eq!(budgets["budgets"][0]["spent_minor"], 42_000);
    let verdict = get_until(engine, "/fn/audit/audit/verify", "the audit chain", |_| {
        true
    })
    .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    // One budget, three transactions, two alerts and their two finance.alert.sent.
    assert!(verdict["rows"].as_u64().unwrap() >= 8, "{verdict}");
}

#[tokio::test]
async fn a_budget_and_three_transactions_become_one_warning_and_one_exceeded_alert() {
    let engine = Engine::start(&finance(), None, &[], &[]).await;
    story(&engine).await;
    engine.stop().await;
}

#[tokio::test]
async fn the_story_holds_while_replicas_are_killed() {
    let engine = Engine::start(
        &finance(),
        None,
        &[],
        &["--chaos", "kill-replica", "--chaos-interval", "300ms"],
    )
    .await;
    story(&engine).await;
    let kills = engine.chaos_kills();
    assert!(kills >= 3, "the chaos struck: {kills} kills");
    engine.stop().await;
}

#[tokio::test]
async fn the_story_holds_with_budget_at_two_replicas() {
    let engine = Engine::start(&finance(), None, &[], &["--min", "budget=2"]).await;
    engine
        .wait_for("budget", 60, "two budget replicas", |s| s["replicas"] == 2)
        .await;
    story(&engine).await;
    let s = engine.status("budget").await;
    assert_eq!(s["replicas"], 2, "{s}");
    engine.stop().await;
}

/// The ledger process aborted at `point` of a transaction's write, then restarted on the same
/// store: the row and its event are both there or both absent.
async fn crash_during_a_write(store: &str, point: &str) -> (usize, usize) {
    let sidecar = Recorder::start().await.unwrap();
    let port = sidecar.port().to_string();
    let ledger = sibling("ledger");
    let mut env = vec![
        ("DAPR_HTTP_PORT", port.as_str()),
        ("ZEROFN_STORE", store),
        ("ZEROFN_LEASE", "1s"),
        ("ZEROFN_RELAY_INTERVAL", "1s"),
    ];
    let healthy_env = env.clone();
    env.push(("ZEROFN_CRASH_AT", point));
    let mut crashing = FnProcess::start(&ledger, &env).await;
    let user = fresh_id("u");
    let t = json!({"user_id": user, "amount_minor": -1_000, "currency": "EUR", "category": "dining",
                   "description": "Trattoria", "occurred_at": "2026-11-05T20:00:00Z"});
    let lost = client()
        .post(format!("{}/transactions", crashing.url()))
        .json(&t)
        .send()
        .await;
    assert!(lost.is_err(), "{point}: the process died mid-write");
    assert_ne!(crashing.wait_exit(Duration::from_secs(10)).await, Some(0));
    let healthy = FnProcess::start(&ledger, &healthy_env).await;
    let rows = client()
        .get(format!("{}/transactions?user_id={user}", healthy.url()))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["transactions"]
        .as_array()
        .unwrap()
        .len();
    // A committed write's event is published by the restarted process's relay (within a
    // lease and a relay round); give it that, then count.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = || {
        sidecar
            .requests()
            .iter()
            .filter(|r| r.json()["data"]["user_id"] == user.as_str())
            .count()
    };
    while rows == 1 && events() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // a relay round more: no second copy
    (rows, events())
}

#[tokio::test]
async fn a_crash_during_a_ledger_write_leaves_the_row_and_its_event_both_or_neither() {
    let store = sqlite_url();
    assert_eq!(
        crash_during_a_write(&store, "after_handler").await,
        (0, 0),
        "before the commit: neither"
    );
    assert_eq!(
        crash_during_a_write(&store, "after_commit").await,
        (1, 1),
        "after the commit: both, the event published once"
    );
}

#[tokio::test]
async fn the_demo_month_tells_each_user_what_matters_once() {
    let engine = Engine::start(&finance(), None, &[], &[]).await;
    let demo = || async {
        let out = tokio::process::Command::new(ZEROFN)
            .args(["demo", "--gateway", &engine.url("")])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = demo().await;
    for told in [
        "ada was told (5):",
        "[budget_warning] groceries budget at 85 %",
        "[budget_exceeded] groceries budget exceeded",
        "[insight] Recurring charge: Netflix.com",
        "grace was told (5):",
        "[insight] Dining is up 74 % this month",
        "linus was told (2):",
        "[insight] A large payment: 1299.00 EUR",
    ] {
        assert!(first.contains(told), "{told:?} in:\n{first}");
    }
    // Again: every POST carries its Idempotency-Key, so nothing is told twice.
    let second = demo().await;
    let counts = |out: &str| {
        out.lines()
            .filter(|l| l.contains(" was told ("))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&second), counts(&first));
    engine.stop().await;
}

#[tokio::test]
async fn one_trace_from_the_transaction_post_to_the_notification() {
    const TRACE: &str = "6cf92f3577b34da6a3ce929d0e0e4738";
    let otlp = zerofn_tests::OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let fns: Vec<String> = ["ledger", "categorize", "budget", "notify"]
        .iter()
        .map(|f| manifest(&format!("functions/{f}")))
        .collect();
    let engine = Engine::start(
        &fns,
        None,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
        &[],
    )
    .await;
    let user = fresh_id("u");
    let budget = json!({"user_id": user, "category": "groceries", "period": "2026-11",
                        "currency": "EUR", "limit_minor": 10_000});
    assert_eq!(
        post(&engine, "/fn/ledger/budgets", &fresh_id("b"), &budget)
            .await
            .0,
        201
    );
    engine
        .wait_for("budget", 60, "the budget taken in", |s| {
            s["processed"].as_u64() >= Some(1)
        })
        .await;
    // No category: ledger asks categorize, inside the same trace.
    let t = json!({"user_id": user, "amount_minor": -9_000, "currency": "EUR",
                   "description": "ACME SUPERMARKET", "occurred_at": "2026-11-05T18:30:00Z"});
    let r = client()
        .post(engine.url("/fn/ledger/transactions"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .json(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    get_until(
        &engine,
        &format!("/fn/notify/notifications?user_id={user}"),
        "the warning",
        |n| !n["notifications"].as_array().unwrap().is_empty(),
    )
    .await;
    engine.stop().await; // the replicas drain and flush their exporters
    let deadline = Instant::now() + Duration::from_secs(15);
    let in_trace = || {
        otlp.spans()
            .into_iter()
            .filter(|s| s.trace_id == TRACE)
            .collect::<Vec<_>>()
    };
    let services = |spans: &[zerofn_tests::ReceivedSpan]| {
        let mut s: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    while services(&in_trace()).len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = in_trace();
    assert_eq!(
        services(&spans),
        vec!["budget", "categorize", "ledger", "notify", "zerofn-gateway"],
        "every hop in the caller's trace: {:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
    let budget = zerofn_tests::one_span(&spans, "budget", "finance.transaction.created process");
    let notify = zerofn_tests::one_span(&spans, "notify", "finance.budget.warning process");
    assert!(
        spans
            .iter()
            .any(|s| s.service == "ledger" && s.span_id == budget.parent_span_id),
        "budget's delivery under ledger's write"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.service == "budget" && s.span_id == notify.parent_span_id),
        "notify's delivery under budget's handler"
    );
}
