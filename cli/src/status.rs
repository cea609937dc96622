//! `zerofn status`: per function — replicas now and desired and why (lag, a job due, HTTP
//! demand), lag per topic, events processed,
//! retries, dead letters, last cold start — from a running `zerofn dev`.

use std::io::Write;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

/// Show what the local engine is doing.
#[derive(Debug, Args)]
pub(crate) struct Status {
    /// The engine's gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// JSON for scripts.
    #[arg(long)]
    json: bool,
}

impl Status {
    pub(crate) async fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let url = format!("{}/_zerofn/status", self.gateway.trim_end_matches('/'));
        let status: Value = reqwest::get(&url)
            .await
            .with_context(|| {
                format!("cannot reach the engine at {url} (is `make run` / `zerofn dev` running?)")
            })?
            .error_for_status()
            .with_context(|| format!("{url} is not a zerofn dev gateway"))?
            .json()
            .await?;
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
            return Ok(());
        }
        writeln!(
            out,
            "{:<14} {:<12} {:>8} {:>7} {:<14} {:>8} {:>9} {:>7} {:>6} {:>11}  LAST START ERROR",
            "FUNCTION",
            "KIND",
            "REPLICAS",
            "DESIRED",
            "WHY",
            "LAG",
            "PROCESSED",
            "RETRIES",
            "DLQ",
            "COLD START"
        )?;
        for f in status["functions"].as_array().into_iter().flatten() {
            let n = |k: &str| f[k].as_u64().unwrap_or_default();
            let cold = match f["last_cold_start_ms"].as_u64() {
                Some(ms) => format!("{ms} ms"),
                None => "-".into(),
            };
            writeln!(
                out,
                "{:<14} {:<12} {:>8} {:>7} {:<14} {:>8} {:>9} {:>7} {:>6} {:>11}  {}",
                f["name"].as_str().unwrap_or_default(),
                f["kind"].as_str().unwrap_or_default(),
                format!("{}+{}", n("replicas"), n("starting")),
                n("desired"),
                f["reason"].as_str().unwrap_or("-"),
                f["total_lag"].as_i64().unwrap_or_default(),
                n("processed"),
                n("retries"),
                n("dead_letters"),
                cold,
                f["last_start_error"].as_str().unwrap_or("-"),
            )?;
        }
        let dropped = status["retention_dropped_unread"]
            .as_u64()
            .unwrap_or_default();
        if dropped > 0 {
            writeln!(
                out,
                "retention deleted {dropped} record(s) before every consumer group had read them (the engine log names the topics and offsets)"
            )?;
        }
        Ok(())
    }
}
