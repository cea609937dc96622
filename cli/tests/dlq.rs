//! `zerofn dlq` against a real SQLite store and a real function server: a broken event is
//! dead-lettered, listed, shown, and replayed once the cause is fixed — processed exactly once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use serde_json::Value;
use zerofn::testing::{Recorder, TestServer};
use zerofn_tests::{Calls, MANIFEST, client, effect_rows, fresh_id, probe, structured, task};

async fn zerofn(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zerofn"))
        .args(args)
        .env_remove("ZEROFN_STORE")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_dead_letter_is_listed_shown_and_replayed_once_after_the_fix() {
    let dir = std::env::temp_dir().join(fresh_id("zerofn-cli"));
    let store = format!("sqlite:{}/zerofn.db", dir.display());
    let sink = Recorder::start().await.unwrap();
    let calls = Calls::default();
    calls.set_broken(true);
    let sink_url = sink.url();
    let server = TestServer::start(
        MANIFEST,
        probe(calls.clone()),
        &[("K_SINK", &sink_url), ("ZEROFN_STORE", &store)],
    )
    .await
    .unwrap();

    let id = fresh_id("broken");
    let response = client()
        .post(server.url())
        .header("content-type", "application/cloudevents+json")
        .json(&structured(&id, task("broken")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let dead = response.headers()["zerofn-dead-letter"]
        .to_str()
        .unwrap()
        .to_string();

    let (ok, table, err) = zerofn(&["dlq", "ls", "--store", &store]).await;
    assert!(ok, "{err}");
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("ERROR") && header.contains("ATTEMPTS"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&dead))
        .unwrap_or_else(|| panic!("{dead} not in\n{table}"));
    assert!(
        row.contains("handler_permanent") && row.contains(&id),
        "{row}"
    );

    let (ok, json, _) = zerofn(&[
        "dlq", "ls", "--store", &store, "--fn", "probe", "--since", "1h", "--json",
    ])
    .await;
    assert!(ok);
    let listed: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], dead.as_str());
    let (ok, none, _) = zerofn(&["dlq", "ls", "--store", &store, "--fn", "someone-else"]).await;
    assert!(ok && none.contains("(no dead letters)"), "{none}");

    let (ok, shown, _) = zerofn(&["dlq", "show", &dead, "--store", &store]).await;
    assert!(ok);
    assert!(
        shown.contains("the downstream service rejected it"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("todo.task.created {id} from /tasks")),
        "{shown}"
    );

    let (ok, dry, _) = zerofn(&["dlq", "replay", &dead, "--store", &store, "--dry-run"]).await;
    assert!(
        ok && dry.contains("would publish") && dry.contains("\"replayof\""),
        "{dry}"
    );
    assert_eq!(calls.count_of(&id), 1, "a dry run publishes nothing");

    // Fix the cause, replay: processed once, with its effect and its output.
    calls.set_broken(false);
    let (ok, replayed, err) = zerofn(&[
        "dlq",
        "replay",
        &dead,
        "--store",
        &store,
        "--sink",
        &server.url(),
    ])
    .await;
    assert!(ok, "{replayed}{err}");
    assert!(replayed.contains("replayed (202"), "{replayed}");
    assert_eq!(calls.count_of(&id), 2);
    let last = calls.all().into_iter().rfind(|c| c.id == id).unwrap();
    assert_eq!(last.extension("replayof"), Some(dead.as_str()));
    assert_eq!(effect_rows(&store, &id).await, 1);
    assert_eq!(
        sink.requests()
            .iter()
            .filter(|r| r.json()["causationid"] == id.as_str())
            .count(),
        1
    );

    // Replaying the same dead letter again is guarded by the idempotency layer.
    let (ok, again, _) = zerofn(&[
        "dlq",
        "replay",
        "--all",
        "--fn",
        "probe",
        "--store",
        &store,
        "--sink",
        &server.url(),
        "--rate",
        "50",
    ])
    .await;
    assert!(ok, "{again}");
    assert_eq!(calls.count_of(&id), 2, "not processed twice");
    assert_eq!(effect_rows(&store, &id).await, 1);

    // Nothing to publish to: a clear error.
    let (ok, _, err) = zerofn(&["dlq", "replay", &dead, "--store", &store]).await;
    assert!(
        !ok && err.contains("--dapr") && err.contains("--sink"),
        "{err}"
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn replay_all_works_on_every_store() {
    for (name, store) in zerofn_tests::stores().await {
        let sink = Recorder::start().await.unwrap();
        let calls = Calls::default();
        calls.set_broken(true);
        let sink_url = sink.url();
        let server = TestServer::start(
            MANIFEST,
            probe(calls.clone()),
            &[("K_SINK", &sink_url), ("ZEROFN_STORE", &store)],
        )
        .await
        .unwrap();
        let mut dead = Vec::new();
        for _ in 0..3 {
            let response = client()
                .post(server.url())
                .header("content-type", "application/cloudevents+json")
                .json(&structured(&fresh_id("all"), task("broken")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 422, "{name}");
            dead.push(
                response.headers()["zerofn-dead-letter"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let (ok, out, err) = zerofn(&[
            "dlq",
            "replay",
            "--all",
            "--fn",
            "probe",
            "--since",
            "10m",
            "--store",
            &store,
            "--dry-run",
            "--rate",
            "1000/s",
        ])
        .await;
        assert!(ok, "{name}: {err}");
        for id in &dead {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(id.as_str()) && l.contains("would publish")),
                "{name}: {id} not in {out}"
            );
        }
        server.shutdown().await.unwrap();
    }
}
