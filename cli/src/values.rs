//! `zerofn values`: Helm values generated from `function.toml`, so the chart and the function never
//! disagree. `zerofn values functions/notify` gives the `zerofn-function` chart's function part (kind,
//! topics, consumer group, scaling, HTTP settings, dead-letter topic); `--platform` gives the
//! `zerofn-platform` chart's topic list (every subscribed, published and dead-letter topic) and the
//! gateway's HTTP functions. The output is JSON, which Helm reads as YAML.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};
use zerofn::Manifest;

/// Partitions of every topic the platform chart creates; a function's `scaling.max` must not exceed it.
pub(crate) const PARTITIONS: u32 = 12;

/// Generate Helm values from `function.toml`.
#[derive(Debug, Args)]
pub(crate) struct Values {
    /// The function's directory (holding `function.toml` and `Cargo.toml`).
    function: Option<PathBuf>,
    /// The image, `REPOSITORY:TAG`.
    #[arg(long)]
    image: Option<String>,
    /// Values for the platform chart instead: every function under `--functions-dir`.
    #[arg(long, conflicts_with = "function")]
    platform: bool,
    /// Where the functions are (for `--platform`).
    #[arg(long, default_value = "functions")]
    functions_dir: PathBuf,
}

/// `[package] name` of `dir/Cargo.toml`.
pub(crate) fn package_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table
        .get("package")?
        .get("name")?
        .as_str()
        .map(str::to_string)
}

/// Parse a `function.toml` (or the one in a directory) with the crate name from the `Cargo.toml`
/// next to it (the manifest's default function name).
pub(crate) fn load_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let path = if path.is_dir() {
        path.join("function.toml")
    } else {
        path.to_path_buf()
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let crate_name = package_name(dir)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    Manifest::parse(&text, &crate_name, "0.0.0").with_context(|| format!("{}", path.display()))
}

/// The `zerofn-function` values of one manifest.
pub(crate) fn function_values(m: &Manifest) -> anyhow::Result<Value> {
    let topics: Vec<&str> = m.subscriptions.iter().map(|s| s.topic.as_str()).collect();
    if m.scaling.max > PARTITIONS {
        bail!(
            "function {}: scaling.max = {} exceeds the {PARTITIONS} partitions of its topics (KEDA caps at the partition count)",
            m.name,
            m.scaling.max
        );
    }
    let mut v = json!({
        "function": {
            "name": m.name,
            "description": m.description,
            "kind": match (m.http.is_some(), m.subscriptions.is_empty(), m.schedules.is_empty()) {
                (true, true, _) => "http",
                (false, true, false) => "scheduled",
                _ => "events",
            },
            "sql": m.needs_sql,
        },
        "subscriptions": m.subscriptions.iter().map(|s| json!({"topic": s.topic, "pubsub": s.pubsub, "route": s.route})).collect::<Vec<_>>(),
        "publishes": m.publishes.iter().map(|p| json!({"type": p.ty, "topic": p.topic})).collect::<Vec<_>>(),
        "deadLetterTopic": m.delivery.dead_letter_topic,
        "kafka": {"topics": topics},
        "scaling": {
            // A Dapr job cannot wake a function at zero in a cluster (KEDA does not see the
            // scheduler): a function that schedules jobs or has schedules keeps one replica,
            // or its jobs would wait for its next event.
            "min": if m.jobs.is_empty() && m.schedules.is_empty() { m.scaling.min } else { m.scaling.min.max(1) },
            "max": m.scaling.max,
            "lagThreshold": m.scaling.lag_threshold,
            "activationLagThreshold": m.scaling.activation_lag_threshold,
            "cooldownSeconds": m.scaling.cooldown.as_secs(),
            "push": m.scaling.push,
        },
    });
    if let Some(h) = &m.http {
        v["http"] = json!({"concurrency": h.concurrency, "timeoutSeconds": h.timeout.as_secs().clamp(1, 600)});
    }
    Ok(v)
}

/// The `zerofn-platform` values of all manifests.
pub(crate) fn platform_values(all: &[Manifest]) -> Value {
    let mut topics = BTreeSet::new();
    let mut dead_letters = BTreeSet::from([crate::gateway::DEAD_LETTER_TOPIC.to_string()]);
    for m in all {
        topics.extend(m.subscriptions.iter().map(|s| s.topic.clone()));
        topics.extend(m.publishes.iter().map(|p| p.topic.clone()));
        dead_letters.insert(m.delivery.dead_letter_topic.clone());
        if m.http.is_some() {
            topics.insert(crate::dev::engine::async_topic(&m.name));
        }
    }
    let topic = |name: &String, dead_letter: bool| json!({"name": name, "partitions": PARTITIONS, "deadLetter": dead_letter});
    json!({
        "topics": topics.iter().map(|t| topic(t, false)).chain(dead_letters.iter().map(|t| topic(t, true))).collect::<Vec<_>>(),
        "gateway": {
            "functions": all.iter().filter(|m| m.http.is_some()).map(|m| m.name.clone()).collect::<Vec<_>>(),
        },
        "pubsubScopes": pubsub_scopes(all, &topics),
    })
}

/// The Dapr app id of the gateway (the platform chart's).
const GATEWAY_APP_ID: &str = "zerofn-gateway";

/// Who may use the Kafka pub/sub component and for what (Dapr's `scopes`, `publishingScopes`,
/// `subscriptionScopes`): each function publishes what its function.toml declares plus its own
/// dead-letter topic and subscribes to its topics plus its own dead-letter topic; the gateway
/// publishes event topics and `deadletter.gateway` and subscribes to nothing. No app may write
/// another's dead-letter topic or an `async.*` topic.
fn pubsub_scopes(all: &[Manifest], topics: &BTreeSet<String>) -> Value {
    let mut apps: Vec<&str> = Vec::new();
    let mut publishing: Vec<String> = Vec::new();
    let mut subscription: Vec<String> = Vec::new();
    let list = |t: BTreeSet<&str>| t.into_iter().collect::<Vec<_>>().join(",");
    for m in all {
        let own_dead_letters = m.delivery.dead_letter_topic.as_str();
        let mut publishes: BTreeSet<&str> = m.publishes.iter().map(|p| p.topic.as_str()).collect();
        publishes.insert(own_dead_letters);
        let mut subscribes: BTreeSet<&str> =
            m.subscriptions.iter().map(|s| s.topic.as_str()).collect();
        if m.dead_letter_pubsub().is_some() {
            subscribes.insert(own_dead_letters);
        }
        apps.push(&m.name);
        publishing.push(format!("{}={}", m.name, list(publishes)));
        subscription.push(format!("{}={}", m.name, list(subscribes)));
    }
    let async_prefix = crate::dev::engine::async_topic("");
    let mut gateway: BTreeSet<&str> = topics
        .iter()
        .map(String::as_str)
        .filter(|t| !t.starts_with(&async_prefix))
        .collect();
    gateway.insert(crate::gateway::DEAD_LETTER_TOPIC);
    apps.push(GATEWAY_APP_ID);
    publishing.push(format!("{GATEWAY_APP_ID}={}", list(gateway)));
    subscription.push(format!("{GATEWAY_APP_ID}="));
    json!({
        "apps": apps,
        "publishing": publishing.join(";"),
        "subscription": subscription.join(";"),
    })
}

impl Values {
    pub(crate) fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let v = if self.platform {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.functions_dir)
                .with_context(|| format!("--functions-dir {}", self.functions_dir.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("function.toml").is_file())
                .collect();
            dirs.sort();
            let all = dirs
                .iter()
                .map(|d| load_manifest(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            platform_values(&all)
        } else {
            let Some(dir) = &self.function else {
                bail!(
                    "name a function directory (zerofn values functions/notify) or pass --platform"
                );
            };
            let mut v = function_values(&load_manifest(dir)?)?;
            if let Some(image) = &self.image {
                let Some((repository, tag)) =
                    image.rsplit_once(':').filter(|(r, _)| !r.ends_with('/'))
                else {
                    bail!("--image {image:?}: expected REPOSITORY:TAG");
                };
                v["image"] = json!({"repository": repository, "tag": tag});
            }
            v
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text, "demo", "0.0.0").unwrap()
    }

    #[test]
    fn scaling_and_topics_come_from_function_toml() {
        let m = manifest(
            "[function]\nname = \"notify\"\n[[subscriptions]]\ntopic = \"a\"\n[[subscriptions]]\ntopic = \"b\"\n\
             [scaling]\nmax = 4\nlag_threshold = 50\nactivation_lag_threshold = 2\ncooldown = \"2m\"\npush = true\n",
        );
        let v = function_values(&m).unwrap();
        assert_eq!(v["function"]["kind"], "events");
        assert_eq!(v["kafka"]["topics"], json!(["a", "b"]));
        assert_eq!(
            v["scaling"],
            json!({"min": 0, "max": 4, "lagThreshold": 50, "activationLagThreshold": 2, "cooldownSeconds": 120, "push": true})
        );
        assert_eq!(v["deadLetterTopic"], "deadletter.notify");
        let too_many =
            manifest("[function]\n[[subscriptions]]\ntopic = \"a\"\n[scaling]\nmax = 13\n");
        assert!(
            function_values(&too_many)
                .unwrap_err()
                .to_string()
                .contains("exceeds the 12 partitions")
        );
    }

    #[test]
    fn the_chart_accepts_exactly_the_runtimes_settings() {
        let schema: Value = serde_json::from_str(include_str!(
            "../../helm/zerofn-function/values.schema.json"
        ))
        .unwrap();
        let settable: BTreeSet<&str> = schema["properties"]["env"]["propertyNames"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Set by the chart itself (or by Dapr), or a test hook.
        let fixed = [
            "PORT",
            "ZEROFN_TRANSPORT",
            "DAPR_HTTP_PORT",
            "DAPR_API_TOKEN",
            "APP_API_TOKEN",
            "ZEROFN_DATA_DIR",
            "ZEROFN_CRASH_AT",
        ];
        for key in zerofn::config::ALL_KEYS {
            assert!(
                settable.contains(key) != fixed.contains(key),
                "{key}: settable in values xor set by the chart"
            );
        }
        assert!(
            settable
                .iter()
                .all(|k| zerofn::config::ALL_KEYS.contains(k)),
            "no key the runtime does not read"
        );
    }
}
