//! The real `zerofn dev` binary as a test fixture, shared by the engine suites: started on a
//! fresh (or given) state directory, polled through `/_zerofn/status`, stopped with SIGTERM.

#![allow(dead_code)] // each suite uses the part it needs

pub(crate) mod cases;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use zerofn_tests::{FnProcess, client, get_json};

pub(crate) const ZEROFN: &str = env!("CARGO_BIN_EXE_zerofn");

pub(crate) fn sibling(name: &str) -> String {
    let path = PathBuf::from(ZEROFN).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build the function binaries first (cargo build --workspace --bins; make test does)",
        path.display()
    );
    path.display().to_string()
}

pub(crate) fn manifest(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .display()
        .to_string()
}

pub(crate) struct Engine {
    pub(crate) process: FnProcess,
    pub(crate) state: PathBuf,
}

impl Engine {
    /// `zerofn dev` with `fns` (`--fn` values) on a fresh (or given) state directory.
    pub(crate) async fn start(
        fns: &[String],
        state: Option<PathBuf>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Engine {
        let state = state.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("zerofn-dev-test-{}", uuid::Uuid::new_v4()))
        });
        let state_arg = state.display().to_string();
        let mut args: Vec<&str> = vec![
            "dev",
            "--listen",
            "127.0.0.1:{port}",
            "--state-dir",
            &state_arg,
        ];
        for f in fns {
            args.extend(["--fn", f.as_str()]);
        }
        args.extend(extra);
        let process = FnProcess::start_with_args(ZEROFN, &args, env).await;
        let engine = Engine { process, state };
        // The log asked for is the log used (the Kafka suites run with the status on the
        // public listener; a `--gateway-config` takes it off).
        if extra.contains(&"--kafka") {
            let log = get_json(&engine.url("/_zerofn/status")).await["log"].clone();
            assert_eq!(log, "kafka");
        }
        engine
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.url())
    }

    pub(crate) async fn status(&self, function: &str) -> Value {
        let all = get_json(&self.url("/_zerofn/status")).await;
        all["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == function)
            .cloned()
            .unwrap_or_else(|| panic!("{function} not in {all}"))
    }

    /// Poll the status of `function` until `done` holds (at most `secs`), returning it.
    pub(crate) async fn wait_for(
        &self,
        function: &str,
        secs: u64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(function).await;
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs} s; status {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn post_events(&self, events: &[Value]) -> Value {
        let r = client()
            .post(self.url("/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    pub(crate) fn store(&self, function: &str) -> String {
        format!(
            "sqlite:{}",
            self.state
                .join("functions")
                .join(function)
                .join("zerofn.db")
                .display()
        )
    }

    pub(crate) async fn stop(mut self) -> PathBuf {
        self.process.sigterm();
        assert_eq!(
            self.process.wait_exit(Duration::from_secs(60)).await,
            Some(0),
            "engine exits cleanly"
        );
        self.state.clone()
    }

    /// How many replicas `--chaos kill-replica` has SIGKILLed so far.
    pub(crate) fn chaos_kills(&self) -> usize {
        self.process
            .log_lines()
            .iter()
            .filter(|l| l["message"] == "chaos: SIGKILL")
            .count()
    }

    /// The port of `function`'s sidecar (the engine's Dapr API for it), from the engine's log.
    pub(crate) fn sidecar_port(&self, function: &str) -> u64 {
        self.process
            .log_lines()
            .into_iter()
            .find(|l| {
                l["message"] == "function registered (0 replicas)" && l["function"] == function
            })
            .and_then(|l| l["sidecar_port"].as_u64())
            .unwrap_or_else(|| panic!("{function} was not registered"))
    }
}
