//! `make bench`, the todo app: search, filter and page over one user's 10 000 tasks through the
//! gateway (p50/p95 per query shape), and reminder lateness — from a reminder's time to the
//! notification notify stored for it (p50/p95) — with `reminders` asleep at zero between them.
//! Real engine, release builds; bounded in count; prints and writes `bench/todo.json`; asserts
//! nothing about speed. `ZEROFN_BENCH_TASKS` makes the task count smaller for a quick look.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a report printer

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use zerofn_tests::{
    FnProcess, client, get_json, percentile,
    report::{Better, Row},
};

const QUERIES: usize = 50;
const REMINDERS: usize = 10;

#[tokio::main]
async fn main() {
    let tasks: usize = std::env::var("ZEROFN_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let zerofn = env!("CARGO_BIN_EXE_zerofn");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = std::env::temp_dir().join(format!("zerofn-bench-todo-{}", std::process::id()));
    let mut args = vec![
        "dev".to_string(),
        "--listen".into(),
        "127.0.0.1:{port}".into(),
        "--state-dir".into(),
        state.display().to_string(),
        "--cooldown".into(),
        "1s".into(),
    ];
    for f in ["tasks", "reminders", "notify"] {
        args.extend([
            "--fn".into(),
            root.join("functions").join(f).display().to_string(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut engine = FnProcess::start_with_args(zerofn, &args, &[("ZEROFN_LOG", "warn")]).await;
    let url = engine.url();

    // One user's tasks: titles from a small vocabulary, three priorities, a few tags, due dates
    // spread over a year, a tenth completed.
    let user = format!("bench-{}", std::process::id());
    let words = [
        "water", "plants", "call", "mum", "pay", "rent", "book", "dentist", "buy", "milk", "fix",
        "bike",
    ];
    let loaded = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let title = format!(
            "{} {} {i}",
            words[i % words.len()],
            words[(i / 7) % words.len()]
        );
        let due = Utc::now() + chrono::Duration::hours(i64::try_from(i % 8760).unwrap() - 2000);
        let priority = ["low", "medium", "high"][i % 3];
        let tag = ["home", "work", "family", "errand"][i % 4];
        let body = json!({"user_id": user, "title": title, "priority": priority, "tags": [tag],
                          "due_at": due.to_rfc3339_opts(SecondsFormat::Secs, true)});
        let r = client()
            .post(format!("{url}/fn/tasks/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let t: Value = r.json().await.unwrap();
        ids.push(t["task_id"].as_str().unwrap().to_string());
    }
    for id in ids.iter().step_by(10) {
        let r = client()
            .post(format!("{url}/fn/tasks/tasks/{id}/complete"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let load_s = loaded.elapsed().as_secs_f64();

    let shapes: [(&str, String); 5] = [
        ("search q=milk", "q=milk&limit=50".to_string()),
        (
            "filter tag + priority + open",
            "tag=home&priority=high&status=open&limit=50".to_string(),
        ),
        (
            "overdue, by priority",
            "overdue=true&sort=priority&order=desc&limit=50".to_string(),
        ),
        ("sort by title", "sort=title&limit=50".to_string()),
        ("page 5 by due date (cursor)", String::new()),
    ];
    println!(
        "\nthe todo app: {tasks} tasks of one user, queries through the gateway ({QUERIES} each)"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "query", "p50 ms", "p95 ms", "rows"
    );
    let mut results = serde_json::Map::new();
    for (name, query) in shapes {
        let mut times = Vec::with_capacity(QUERIES);
        let mut rows = 0;
        for _ in 0..QUERIES {
            let started = Instant::now();
            let v = if query.is_empty() {
                let mut cursor: Option<String> = None;
                let mut v = Value::Null;
                for _ in 0..5 {
                    let q = match &cursor {
                        Some(c) => {
                            format!("{url}/fn/tasks/tasks?user_id={user}&limit=50&cursor={c}")
                        }
                        None => format!("{url}/fn/tasks/tasks?user_id={user}&limit=50"),
                    };
                    v = get_json(&q).await;
                    cursor = v["next_cursor"].as_str().map(str::to_string);
                }
                v
            } else {
                get_json(&format!("{url}/fn/tasks/tasks?user_id={user}&{query}")).await
            };
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            rows = v["tasks"].as_array().map_or(0, Vec::len);
        }
        let (p50, p95) = (percentile(&mut times, 50), percentile(&mut times, 95));
        println!("{name:<34} {p50:>10.1} {p95:>10.1} {rows:>8}");
        Row::new(
            "todo app",
            &format!("{name}, {tasks} tasks (p95)"),
            p95,
            "ms",
            Better::Lower,
        )
        .against("the product's requirement", 1000.0)
        .record();
        results.insert(
            name.into(),
            json!({"p50_ms": p50, "p95_ms": p95, "rows": rows}),
        );
    }

    // Reminder lateness: reminders at zero (cooldown 1 s), each task reminded a few seconds ahead.
    let mut late = Vec::with_capacity(REMINDERS);
    for i in 0..REMINDERS {
        let remind_user = format!("{user}-r{i}");
        wait_at_zero(&url, "reminders").await;
        let due = Utc::now() + chrono::Duration::seconds(5);
        let body = json!({"user_id": remind_user, "title": "Stretch", "due_at": due.to_rfc3339_opts(SecondsFormat::Millis, true),
                          "remind_before": "2s"});
        let r = client()
            .post(format!("{url}/fn/tasks/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let remind_at = due - chrono::Duration::seconds(2);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = get_json(&format!(
                "{url}/fn/notify/notifications?user_id={remind_user}"
            ))
            .await;
            if let Some(first) = n["notifications"].as_array().and_then(|a| a.first()) {
                let stored: DateTime<Utc> = first["created_at"].as_str().unwrap().parse().unwrap();
                late.push((stored - remind_at).num_milliseconds() as f64);
                break;
            }
            assert!(Instant::now() < deadline, "no reminder within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (l50, l95) = (percentile(&mut late, 50), percentile(&mut late, 95));
    println!(
        "{:<34} {l50:>10.1} {l95:>10.1} {REMINDERS:>8}",
        "reminder lateness (from zero)"
    );
    println!(
        "(load: {tasks} tasks POSTed in {load_s:.1} s; the seeds ask 1 s for search and 2 min at p95 for reminders)"
    );
    Row::new(
        "todo app",
        "reminder lateness from zero (p95)",
        l95,
        "ms",
        Better::Lower,
    )
    .against("the product's requirement (2 min)", 120_000.0)
    .record();
    results.insert(
        "reminder lateness from zero".into(),
        json!({"p50_ms": l50, "p95_ms": l95, "samples": REMINDERS}),
    );
    engine.sigterm();
    engine.wait_exit(Duration::from_secs(60)).await;
    let _ = std::fs::remove_dir_all(&state);
    let record = json!({
        "measured_at": Utc::now(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "tasks": tasks,
        "results": results,
    });
    let out = root.join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("todo.json"),
        serde_json::to_string_pretty(&record).unwrap() + "\n",
    )
    .unwrap();
}

async fn wait_at_zero(url: &str, function: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = get_json(&format!("{url}/_zerofn/status")).await;
        let f = status["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == function)
            .cloned()
            .unwrap();
        if f["replicas"] == 0 && f["starting"] == 0 && f["total_lag"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{function} never went back to zero"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
