//! Start-up failures: a bad setting prints key, value and reason and exits 64.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use zerofn_tests::FnProcess;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

async fn exit_of(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut process = FnProcess::spawn(PROBE, env).await;
    let code = process.wait_exit(Duration::from_secs(15)).await;
    (code, process.stderr_lines().join("\n"))
}

#[tokio::test]
async fn a_bad_value_exits_64_naming_key_value_and_reason() {
    let (code, stderr) = exit_of(&[
        ("K_SINK", "http://127.0.0.1:9/"),
        ("ZEROFN_SHUTDOWN_GRACE", "ten seconds"),
    ])
    .await;
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains(
            "invalid configuration: ZEROFN_SHUTDOWN_GRACE=\"ten seconds\": expected a duration"
        ),
        "{stderr}"
    );
    let (code, stderr) = exit_of(&[("ZEROFN_TRANSPORT", "kafka")]).await;
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("ZEROFN_TRANSPORT=\"kafka\": expected `dapr` or `http`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn publishing_without_a_sink_is_refused_at_start() {
    let (code, stderr) = exit_of(&[]).await;
    assert_eq!(code, Some(64));
    assert!(stderr.contains("K_SINK"), "{stderr}");
    assert!(
        stderr.contains("function probe publishes todo.notification.sent"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_port_in_use_is_a_runtime_error_not_a_usage_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let (code, stderr) = exit_of(&[("K_SINK", "http://127.0.0.1:9/"), ("PORT", &port)]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:") && stderr.contains("in use"),
        "{stderr}"
    );
}

#[tokio::test]
async fn in_kubernetes_an_event_function_refuses_a_store_of_its_own() {
    let k8s = ("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    let sink = ("K_SINK", "http://127.0.0.1:9/");
    for store in ["memory", "sqlite:/tmp/zerofn-k8s-test/zerofn.db"] {
        let (code, stderr) = exit_of(&[k8s, sink, ("ZEROFN_STORE", store)]).await;
        assert_eq!(code, Some(64), "{store}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "ZEROFN_STORE=\"{store}\": function probe consumes events in Kubernetes"
            )) && stderr.contains("ZEROFN_ALLOW_EPHEMERAL_STORE=true"),
            "{stderr}"
        );
    }
    // The default store is SQLite in the pod: refused too.
    let (code, stderr) = exit_of(&[k8s, sink]).await;
    assert_eq!(code, Some(64), "{stderr}");
    // Allowed explicitly, for a demo: it starts.
    let demo = FnProcess::start(
        PROBE,
        &[
            k8s,
            sink,
            ("ZEROFN_STORE", "memory"),
            ("ZEROFN_ALLOW_EPHEMERAL_STORE", "true"),
        ],
    )
    .await;
    drop(demo);
    // Outside Kubernetes the embedded default stays (the local loop).
    let local = FnProcess::start(PROBE, &[sink]).await;
    drop(local);
}

/// `n` probes started at once on `store`: each either serves or dies; how many serve.
async fn start_together(store: &str, n: usize) -> usize {
    let sink = ("K_SINK", "http://127.0.0.1:9/");
    let mut started = Vec::new();
    for _ in 0..n {
        started.push(FnProcess::spawn(PROBE, &[sink, ("ZEROFN_STORE", store)]).await);
    }
    let mut serving = 0;
    for p in &started {
        for _ in 0..100 {
            if zerofn_tests::client()
                .get(format!("{}/healthz", p.url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                serving += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for p in &started {
        assert!(
            !p.stderr_lines().iter().any(|l| l.contains("migrations")),
            "{store}: {:?}",
            p.stderr_lines()
        );
    }
    serving
}

#[tokio::test]
async fn replicas_starting_together_on_a_fresh_store_all_start() {
    let dir = std::env::temp_dir().join(format!("zerofn-migrate-{}", uuid::Uuid::new_v4()));
    let sqlite = format!("sqlite:{}/zerofn.db", dir.display());
    assert_eq!(start_together(&sqlite, 6).await, 6, "sqlite");
    // PostgreSQL: a database of its own, so the migrations really run for the first time.
    let fresh = zerofn_tests::fresh_postgres().await;
    assert_eq!(start_together(&fresh, 6).await, 6, "postgres");
}
