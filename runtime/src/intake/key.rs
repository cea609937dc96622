//! Idempotency keys: which deliveries are "the same event". The identity an event is known by
//! (`source` + `id`, its Kafka coordinates, or a field of its data) is hashed to a fixed width,
//! so no attribute length can make a key a poison message for the store's index.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{event::Context, manifest::KeyStrategy};

/// The readable identity of an event under `strategy` (hashed by [`hashed`] before use).
pub(crate) fn identity(strategy: &KeyStrategy, ctx: &Context, data: &Value) -> String {
    match (strategy, &ctx.kafka) {
        (KeyStrategy::Kafka, Some(k)) => {
            format!("kafka:{}/{}/{}", k.topic, k.partition, k.offset)
        }
        (KeyStrategy::Data(pointer), _) => match data.pointer(pointer) {
            Some(Value::String(s)) => format!("data:{s}"),
            Some(v) if !v.is_null() => format!("data:{v}"),
            _ => format!("ce:{}\u{1f}{}", ctx.source, ctx.id),
        },
        _ => format!("ce:{}\u{1f}{}", ctx.source, ctx.id),
    }
}

/// The stored key: a SHA-256 of the identity and, for the replay of a dead letter, of the
/// dead letter's id (a replay is a new event for idempotency, once per dead letter).
pub(crate) fn hashed(identity: &str, replay_of: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    if let Some(id) = replay_of {
        h.update(b"\x1freplayof:");
        h.update(id.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KafkaCoordinates;
    use serde_json::json;

    fn ctx(id: &str) -> Context {
        let mut c = Context::test("t");
        c.id = id.into();
        c.source = "/s".into();
        c
    }

    #[test]
    fn identities_per_strategy() {
        let c = ctx("e-1");
        assert_eq!(
            identity(&KeyStrategy::SourceId, &c, &json!({})),
            "ce:/s\u{1f}e-1"
        );
        let mut k = c.clone();
        k.kafka = Some(KafkaCoordinates {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            key: None,
            timestamp_ms: None,
        });
        assert_eq!(identity(&KeyStrategy::Kafka, &k, &json!({})), "kafka:t/2/7");
        // Kafka strategy without coordinates falls back to source + id.
        assert_eq!(
            identity(&KeyStrategy::Kafka, &c, &json!({})),
            "ce:/s\u{1f}e-1"
        );
        let data = KeyStrategy::Data("/order".into());
        assert_eq!(identity(&data, &c, &json!({"order": "o-9"})), "data:o-9");
        assert_eq!(identity(&data, &c, &json!({"order": 12})), "data:12");
        assert_eq!(
            identity(&data, &c, &json!({"order": null})),
            "ce:/s\u{1f}e-1"
        );
    }

    #[test]
    fn keys_are_fixed_width_and_distinguish_replays() {
        let long = "x".repeat(5000);
        let a = hashed(&format!("ce:/s\u{1f}{long}"), None);
        let b = hashed("ce:/s\u{1f}1", None);
        assert_eq!(a.len(), b.len());
        assert_eq!(a.len(), "sha256:".len() + 64);
        assert_ne!(a, b);
        assert_eq!(b, hashed("ce:/s\u{1f}1", None), "deterministic");
        let r1 = hashed("ce:/s\u{1f}1", Some("dl-1"));
        let r2 = hashed("ce:/s\u{1f}1", Some("dl-2"));
        assert_ne!(r1, b);
        assert_ne!(r1, r2);
    }
}
