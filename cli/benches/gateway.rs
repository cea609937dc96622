//! `make bench`, the gateway's part: `zerofn gateway` (production mode: an API key checked on
//! every request, rate limits on) against nginx (Debian's, as a reverse proxy with upstream
//! keep-alive and no access log), both in front of the same probe process on 127.0.0.1, loaded
//! by the same client (`wrk`, one thread, 50 connections) in alternating rounds of the same
//! length. Prints and records p50/p95/p99 and requests/s as ratios to nginx's, and both
//! proxies' idle RSS. `make bench` installs nginx and wrk when missing (`apt-get`). Bounded in
//! time; asserts nothing about speed (only that every answer was a 200).

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a report printer

use std::{path::Path, process::Stdio, time::Duration};

use zerofn_tests::{
    FnProcess, free_port,
    report::{Better, Row, rss_mib},
};

/// `Authorization: Bearer bench-key`; its SHA-256 is in the gateway's configuration.
const KEY: &str = "bench-key";
const KEY_SHA256: &str = "b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7";
const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const CONNECTIONS: u32 = 50;

/// wrk's summary as our Lua `done` prints it: requests, µs, p50/p95/p99 µs, non-2xx/errors.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("ZEROFN %d %d %f %f %f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"#;

#[derive(Clone, Copy, Debug)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn wrk(url: &str, script: &Path, auth: bool) -> Load {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{SECONDS}s"),
        "--timeout",
        "10s",
        "-s",
    ])
    .arg(script);
    if auth {
        cmd.args(["-H", &format!("Authorization: Bearer {KEY}")]);
    }
    let out = cmd.arg(url).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ZEROFN "))
        .unwrap_or_else(|| panic!("wrk printed no summary: {text}"));
    let f: Vec<f64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(
        f[5], 0.0,
        "{url}: {} errors or non-2xx answers: {text}",
        f[5]
    );
    Load {
        rps: f[0] / (f[1] / 1e6),
        p50_ms: f[2] / 1e3,
        p95_ms: f[3] / 1e3,
        p99_ms: f[4] / 1e3,
    }
}

/// nginx's and its workers' RSS (the master and its children).
fn tree_rss(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    rss_mib(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(rss_mib)
            .sum::<f64>()
}

/// The median round by requests/s.
fn median(mut loads: Vec<Load>) -> Load {
    loads.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    loads[loads.len() / 2]
}

#[tokio::main]
async fn main() {
    for tool in ["nginx", "wrk"] {
        if !which(tool) {
            println!(
                "gateway against nginx: skipped, {tool} is not installed (make bench installs it)"
            );
            return;
        }
    }
    let zerofn = env!("CARGO_BIN_EXE_zerofn");
    let probe = Path::new(zerofn).with_file_name("probe");
    assert!(
        probe.is_file(),
        "build the probe first: cargo build --release -p zerofn-tests --bins"
    );
    let dir = std::env::temp_dir().join(format!("zerofn-bench-gw-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let script = dir.join("summary.lua");
    std::fs::write(&script, WRK_SCRIPT).unwrap();

    let function = FnProcess::start(
        &probe.display().to_string(),
        &[
            ("K_SINK", "http://127.0.0.1:9/"),
            ("ZEROFN_STORE", "memory"),
            ("ZEROFN_LOG", "warn"),
        ],
    )
    .await;

    // The gateway as shipped: authenticated, rate-limited (limits raised past the load).
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.api_keys]]\nname = \"bench\"\nsha256 = \"{KEY_SHA256}\"\nfunctions = [\"probe\"]\n\n\
             [limits]\nper_credential = {{ per_second = 1000000, burst = 1000000 }}\n\
             per_address = {{ per_second = 1000000, burst = 1000000 }}\n"
        ),
    )
    .unwrap();
    let internal = format!("127.0.0.1:{}", free_port().await);
    let upstream = format!("probe={}", function.url());
    let gateway = FnProcess::start_with_args(
        zerofn,
        &[
            "gateway",
            "--listen",
            "127.0.0.1:{port}",
            "--internal-listen",
            &internal,
            "--config",
            &config.display().to_string(),
            "--function",
            &upstream,
        ],
        &[],
    )
    .await;

    // nginx: the same upstream, keep-alive to it, no access log, one worker a core.
    let nginx_port = free_port().await;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream probe {{ server {up}; keepalive 64; }}\n\
             server {{\n    listen 127.0.0.1:{nginx_port};\n    location / {{\n      proxy_pass http://probe;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
            d = dir.display(),
            up = function.addr(),
        ),
    )
    .unwrap();
    let mut nginx = tokio::process::Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/hello");
    let http = zerofn_tests::client();
    for _ in 0..100 {
        if http
            .get(&nginx_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let version = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: ", "")
        })
        .unwrap_or_default();
    let gateway_url = format!("{}/fn/probe/hello", gateway.url());
    let idle = (rss_mib(gateway.pid()), tree_rss(nginx.id().unwrap()));

    // Warm both, then alternate rounds so a noisy moment hits both alike.
    wrk(&gateway_url, &script, true).await;
    wrk(&nginx_url, &script, false).await;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(wrk(&gateway_url, &script, true).await);
        theirs.push(wrk(&nginx_url, &script, false).await);
    }
    let (g, n) = (median(ours), median(theirs));
    println!(
        "\nGET /hello on the probe through a proxy: wrk, 1 thread, {CONNECTIONS} connections, {SECONDS} s a round, median of {ROUNDS} alternating rounds\n"
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9}",
        "", "req/s", "p50 ms", "p95 ms", "p99 ms"
    );
    for (name, l) in [
        ("zerofn gateway (API key, limits)", g),
        (version.as_str(), n),
    ] {
        println!(
            "{name:<34} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            l.rps, l.p50_ms, l.p95_ms, l.p99_ms
        );
    }
    println!(
        "ratios gateway/nginx: p50 {:.2}×, p95 {:.2}×, p99 {:.2}×, requests/s {:.2}× (targets: p50 ≤ 1.2×, requests/s ≥ 0.8×)",
        g.p50_ms / n.p50_ms,
        g.p95_ms / n.p95_ms,
        g.p99_ms / n.p99_ms,
        g.rps / n.rps
    );
    println!(
        "idle RSS: gateway {:.1} MiB, nginx (master + workers) {:.1} MiB",
        idle.0, idle.1
    );
    let beside = format!("{version} reverse proxy, same function, same client");
    for (what, ours, theirs, unit, better) in [
        (
            "latency p50 at 50 connections",
            g.p50_ms,
            n.p50_ms,
            "ms",
            Better::Lower,
        ),
        (
            "latency p95 at 50 connections",
            g.p95_ms,
            n.p95_ms,
            "ms",
            Better::Lower,
        ),
        (
            "latency p99 at 50 connections",
            g.p99_ms,
            n.p99_ms,
            "ms",
            Better::Lower,
        ),
        (
            "requests/s at 50 connections",
            g.rps,
            n.rps,
            "requests/s",
            Better::Higher,
        ),
    ] {
        Row::new(
            "gateway",
            &format!("zerofn gateway, {what}"),
            ours,
            unit,
            better,
        )
        .against(&beside, theirs)
        .record();
    }
    Row::new(
        "footprint",
        "idle RSS of the gateway",
        idle.0,
        "MiB",
        Better::Lower,
    )
    .against(&format!("{version}, master + workers"), idle.1)
    .record();
    let _ = nginx.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
