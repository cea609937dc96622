//! A trigger's metadata, read with the keys and defaults of KEDA's built-in `kafka` trigger
//! (`shared/reference/keda-kafka.md` §2), so that moving a trigger from `type: kafka` to
//! `type: external-push` is a one-line change. What `zerofn scaler` does not do is refused by
//! name rather than ignored.

use std::collections::HashMap;

use crate::lag::{ResetPolicy, Rules};

/// One trigger: which group's lag on which topic, and how it scales.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trigger {
    pub(crate) bootstrap_servers: String,
    pub(crate) consumer_group: String,
    pub(crate) topic: String,
    pub(crate) lag_threshold: u64,
    pub(crate) activation_lag_threshold: u64,
    pub(crate) rules: Rules,
    /// `allowIdleConsumers`: no partition cap.
    pub(crate) allow_idle_consumers: bool,
}

/// Metadata that cannot be used: the key and why (a gRPC `InvalidArgument`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadMetadata {
    pub(crate) key: &'static str,
    pub(crate) reason: String,
}

impl std::fmt::Display for BadMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "scalerMetadata.{}: {}", self.key, self.reason)
    }
}

fn bad(key: &'static str, reason: impl Into<String>) -> BadMetadata {
    BadMetadata {
        key,
        reason: reason.into(),
    }
}

/// KEDA's options `zerofn scaler` does not implement: refused when set to anything but off.
const NOT_SUPPORTED: &[&str] = &[
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "partitionLimitation",
];

fn required(m: &HashMap<String, String>, key: &'static str) -> Result<String, BadMetadata> {
    match m.get(key).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(bad(key, "required")),
    }
}

fn number(
    m: &HashMap<String, String>,
    key: &'static str,
    default: u64,
    least: u64,
) -> Result<u64, BadMetadata> {
    match m.get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= least => Ok(n),
            _ => Err(bad(
                key,
                format!("{v:?} is not a whole number of at least {least}"),
            )),
        },
    }
}

fn flag(m: &HashMap<String, String>, key: &'static str) -> Result<bool, BadMetadata> {
    match m.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" || v.is_empty() => Ok(false),
        Some(v) => Err(bad(key, format!("{v:?} is not true or false"))),
    }
}

/// Read a trigger's `scalerMetadata`.
pub(crate) fn parse(m: &HashMap<String, String>) -> Result<Trigger, BadMetadata> {
    let bootstrap_servers = required(m, "bootstrapServers")?;
    let consumer_group = required(m, "consumerGroup")?;
    let topic = required(m, "topic").map_err(|_| {
        bad(
            "topic",
            "required: zerofn scaler reads one topic per trigger (the function chart renders one trigger per subscribed topic)",
        )
    })?;
    let lag_threshold = number(m, "lagThreshold", 10, 1)?;
    let activation_lag_threshold = number(m, "activationLagThreshold", 0, 0)?;
    let policy = match m.get("offsetResetPolicy").map(|v| v.trim()) {
        None | Some("latest") => ResetPolicy::Latest,
        Some("earliest") => ResetPolicy::Earliest,
        Some(v) => {
            return Err(bad(
                "offsetResetPolicy",
                format!("{v:?} is not latest or earliest"),
            ));
        }
    };
    let allow_idle_consumers = flag(m, "allowIdleConsumers")?;
    let scale_to_zero_on_invalid_offset = flag(m, "scaleToZeroOnInvalidOffset")?;
    for &key in NOT_SUPPORTED {
        let off = match m.get(key).map(|v| v.trim()) {
            None | Some("" | "false") => true,
            Some(_) => false,
        };
        if !off {
            return Err(bad(key, "not supported by zerofn scaler"));
        }
    }
    Ok(Trigger {
        bootstrap_servers,
        consumer_group,
        topic,
        lag_threshold,
        activation_lag_threshold,
        rules: Rules {
            policy,
            scale_to_zero_on_invalid_offset,
        },
        allow_idle_consumers,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("bootstrapServers", "127.0.0.1:9092"),
        ("consumerGroup", "notify"),
        ("topic", "todo.task.created"),
    ];

    #[test]
    fn keda_s_defaults_apply() {
        let t = parse(&meta(BASE)).unwrap();
        assert_eq!(
            (
                t.lag_threshold,
                t.activation_lag_threshold,
                t.rules.policy == ResetPolicy::Earliest
            ),
            (10, 0, false)
        );
        assert!(!t.allow_idle_consumers && !t.rules.scale_to_zero_on_invalid_offset);
        let mut m = meta(BASE);
        m.insert("lagThreshold".into(), "100".into());
        m.insert("activationLagThreshold".into(), "5".into());
        m.insert("offsetResetPolicy".into(), "earliest".into());
        m.insert("allowIdleConsumers".into(), "true".into());
        m.insert("excludePersistentLag".into(), "false".into());
        let t = parse(&m).unwrap();
        assert_eq!(
            (
                t.lag_threshold,
                t.activation_lag_threshold,
                t.rules.policy == ResetPolicy::Earliest,
                t.allow_idle_consumers
            ),
            (100, 5, true, true)
        );
    }

    #[test]
    fn bad_metadata_names_its_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("consumerGroup", "g"), ("topic", "t")],
                "bootstrapServers",
            ),
            (
                &[("bootstrapServers", "b"), ("topic", "t")],
                "consumerGroup",
            ),
            (
                &[("bootstrapServers", "b"), ("consumerGroup", "g")],
                "topic",
            ),
        ];
        for (pairs, key) in cases {
            assert_eq!(parse(&meta(pairs)).unwrap_err().key, *key);
        }
        for (key, value) in [
            ("lagThreshold", "0"),
            ("lagThreshold", "ten"),
            ("activationLagThreshold", "-1"),
            ("offsetResetPolicy", "oldest"),
            ("allowIdleConsumers", "yes"),
            ("limitToPartitionsWithLag", "true"),
            ("partitionLimitation", "1,2"),
        ] {
            let mut m = meta(BASE);
            m.insert(key.into(), value.into());
            let e = parse(&m).unwrap_err();
            assert_eq!(e.key, key, "{value}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("scalerMetadata.{key}: "))
            );
        }
    }
}
