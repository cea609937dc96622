//! One replica: a real OS process of the function binary on its own port, started like
//! Kubernetes would start it (env, probes) and stopped like Kubernetes stops it (SIGTERM, a
//! grace period, then SIGKILL).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Where a subscription's events are delivered on a replica (from its `/dapr/subscribe`).
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) pubsub: String,
    pub(crate) path: String,
    pub(crate) dead_letter_topic: Option<String>,
    /// Bulk delivery: most records per call.
    pub(crate) bulk: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DaprSubscription {
    pubsubname: String,
    topic: String,
    route: Option<String>,
    routes: Option<DaprRoutes>,
    dead_letter_topic: Option<String>,
    bulk_subscribe: Option<DaprBulk>,
}

#[derive(Deserialize)]
struct DaprRoutes {
    default: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DaprBulk {
    enabled: bool,
    max_messages_count: Option<u32>,
}

/// A running replica.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) routes: HashMap<String, Route>,
    /// Deliveries and requests being sent to it now.
    pub(crate) in_flight: AtomicUsize,
    /// Taken out of rotation (scale-down or engine stop): no new work.
    pub(crate) retiring: AtomicBool,
    /// Set once the process has exited.
    pub(crate) exited: tokio::sync::watch::Sender<bool>,
    pid: Option<u32>,
    child: Mutex<Option<Child>>,
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StartError(pub(crate) String);

/// What a replica is started with.
#[derive(Debug)]
pub(crate) struct Spec<'a> {
    pub(crate) function: &'a str,
    pub(crate) binary: &'a Path,
    pub(crate) id: u64,
    pub(crate) sidecar_port: u16,
    pub(crate) data_dir: &'a Path,
    /// Where the engine notes each replica's pid, for the next engine to sweep.
    pub(crate) pid_dir: &'a Path,
    /// The store every replica uses (`--store`, else the function's SQLite file).
    pub(crate) store: &'a str,
    /// `ZEROFN_GATEWAY_URL`: where the replica reaches other functions.
    pub(crate) gateway_url: &'a str,
    pub(crate) start_timeout: Duration,
}

/// Kill the replicas a previous engine on this state dir left running (it was SIGKILLed and
/// they had not noticed yet, or hung): each pidfile names a pid and its binary, and a pid is
/// killed only while it still runs that binary (pids are reused). Returns how many.
pub(crate) fn sweep(pid_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(pid_dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        let binary = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(pid) = pid
            && std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == Path::new(binary.trim()))
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            tracing::warn!(
                pid,
                binary = binary.trim(),
                "killed a replica a previous engine left running"
            );
            killed += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Forget a replica's pidfile once it exited.
pub(crate) fn forget(pid_dir: &Path, pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::fs::remove_file(pid_dir.join(pid.to_string()));
    }
}

/// A free port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()))?
}

/// The last lines a process wrote to stderr, for a start failure's reason.
type Tail = Arc<Mutex<VecDeque<String>>>;

fn tail_text(tail: &Tail) -> String {
    tail.lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

impl Replica {
    /// Spawn the process and wait until it is ready: listening, subscriptions read (as daprd
    /// does), `/readyz` answering 200. A process that exits or is not ready within the
    /// timeout is killed and reported with its last stderr lines.
    pub(crate) async fn start(
        spec: Spec<'_>,
        client: &reqwest::Client,
    ) -> Result<Replica, StartError> {
        let port = free_port().map_err(|e| StartError(format!("no free port: {e}")))?;
        std::fs::create_dir_all(spec.data_dir)
            .map_err(|e| StartError(format!("cannot create {}: {e}", spec.data_dir.display())))?;
        let mut cmd = Command::new(spec.binary);
        cmd.env("PORT", port.to_string())
            .env("ZEROFN_BIND_ADDR", "127.0.0.1")
            .env("DAPR_HTTP_PORT", spec.sidecar_port.to_string())
            .env("ZEROFN_TRANSPORT", "dapr")
            .env("ZEROFN_DATA_DIR", spec.data_dir)
            .env("ZEROFN_STORE", spec.store)
            .env("ZEROFN_REPLICA", spec.id.to_string())
            .env(zerofn::config::ENV_GATEWAY_URL, spec.gateway_url)
            // The replica exits when the engine is gone, even SIGKILLed.
            .env(
                zerofn::config::ENV_PARENT_PID,
                std::process::id().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches the engine only, which
            // stops delivering first and then drains each replica (as the kubelet would).
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| StartError(format!("cannot run {}: {e}", spec.binary.display())))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::create_dir_all(spec.pid_dir);
            let _ = std::fs::write(
                spec.pid_dir.join(pid.to_string()),
                spec.binary.display().to_string(),
            );
        }
        let tail: Tail = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            let function = spec.function.to_string();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{function}] {line}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == 5 {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = tokio::time::timeout(spec.start_timeout, async {
            wait_ready(&mut child, addr, client, &tail).await
        })
        .await;
        let routes = match ready {
            Ok(Ok(routes)) => routes,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(e);
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(StartError(format!(
                    "not ready within {:?} (the engine's --start-timeout); stderr: {}",
                    spec.start_timeout,
                    tail_text(&tail)
                )));
            }
        };
        Ok(Replica {
            id: spec.id,
            addr,
            routes,
            in_flight: AtomicUsize::new(0),
            retiring: AtomicBool::new(false),
            exited: tokio::sync::watch::channel(false).0,
            pid: child.id(),
            child: Mutex::new(Some(child)),
        })
    }

    /// Take the child, to wait on its exit (once).
    pub(crate) fn take_child(&self) -> Option<Child> {
        self.child.lock().ok().and_then(|mut c| c.take())
    }

    /// Send SIGTERM (through `kill(1)`: no `unsafe` in the workspace).
    pub(crate) fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Send SIGKILL (chaos, or a drain that outlasted the grace period).
    pub(crate) fn sigkill(&self) {
        self.signal("-KILL");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether new work may go here.
    pub(crate) fn serving(&self) -> bool {
        !self.retiring.load(Ordering::SeqCst)
    }
}

/// Poll `GET url` until it answers 2xx, failing if the process exits first.
/// `identify`: the answer must come from `child` (its `/healthz` names its pid).
async fn poll_until_ok(
    child: &mut Child,
    client: &reqwest::Client,
    url: &str,
    identify: bool,
    tail: &Tail,
) -> Result<(), StartError> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // Let the stderr reader catch up with the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(StartError(format!(
                "exited during start-up ({status}); stderr: {}",
                tail_text(tail)
            )));
        }
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            if !identify {
                return Ok(());
            }
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            match child.id() {
                Some(pid) if answered_by(&body, pid) => return Ok(()),
                // Another process took the port between choosing it and the child binding it:
                // keep polling; the child fails to bind and exits, and is reported.
                _ => {
                    tracing::warn!(%url, answer = %body, "a process other than the replica answered its port")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether a `/healthz` answer comes from process `pid` (the runtime names its pid).
fn answered_by(body: &serde_json::Value, pid: u32) -> bool {
    body["pid"].as_u64() == Some(u64::from(pid))
}

async fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    client: &reqwest::Client,
    tail: &Tail,
) -> Result<HashMap<String, Route>, StartError> {
    // 1. Listening.
    poll_until_ok(child, client, &format!("http://{addr}/healthz"), true, tail).await?;
    // 2. Subscriptions, as daprd reads them.
    let subs: Vec<DaprSubscription> = match client
        .get(format!("http://{addr}/dapr/subscribe"))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Vec::new(),
        Ok(r) => {
            return Err(StartError(format!(
                "GET /dapr/subscribe answered {}",
                r.status()
            )));
        }
        Err(e) => return Err(StartError(format!("GET /dapr/subscribe failed: {e}"))),
    };
    let routes = subs
        .into_iter()
        .filter_map(|s| {
            let path = s
                .routes
                .and_then(|r| r.default)
                .filter(|d| !d.is_empty())
                .or(s.route)?;
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            Some((
                s.topic,
                Route {
                    pubsub: s.pubsubname,
                    path,
                    dead_letter_topic: s.dead_letter_topic.filter(|t| !t.is_empty()),
                    bulk: s
                        .bulk_subscribe
                        .filter(|b| b.enabled)
                        .map(|b| b.max_messages_count.unwrap_or(100).max(1)),
                },
            ))
        })
        .collect();
    // 3. Ready.
    poll_until_ok(child, client, &format!("http://{addr}/readyz"), false, tail).await?;
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_replicas_own_answer_counts_as_ready() {
        assert!(answered_by(
            &json!({"status": "ok", "function": "probe", "pid": 42}),
            42
        ));
        assert!(!answered_by(
            &json!({"status": "ok", "function": "probe", "pid": 41}),
            42
        ));
        assert!(
            !answered_by(&json!({"status": "ok"}), 42),
            "not a zerofn runtime"
        );
        assert!(
            !answered_by(&serde_json::Value::Null, 42),
            "not JSON at all"
        );
    }
}
