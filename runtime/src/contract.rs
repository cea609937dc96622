//! The event contracts: a JSON Schema for the `data` of every event type, embedded at build
//! time from the workspace's `contracts/events/<type>/schema.json`.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/contracts.rs"));
}

/// A compiled set of contracts, keyed by CloudEvent type.
#[derive(Clone)]
pub struct Contracts {
    validators: Arc<BTreeMap<String, jsonschema::Validator>>,
}

impl std::fmt::Debug for Contracts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contracts")
            .field("types", &self.validators.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why `data` does not satisfy its contract: every violation, in document order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .violations.join("; "))]
pub struct Violation {
    /// One line per violated rule: `data/<json pointer>: <message>`.
    pub violations: Vec<String>,
}

impl Contracts {
    /// Every contract the runtime was built with.
    pub fn embedded() -> Result<Contracts, crate::Error> {
        Self::from_schemas(embedded::EMBEDDED.iter().map(|(ty, text)| (*ty, *text)))
    }

    /// Compile contracts from `(type, schema text)` pairs.
    pub fn from_schemas<'a>(
        schemas: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Contracts, crate::Error> {
        let mut validators = BTreeMap::new();
        for (ty, text) in schemas {
            let fail = |reason: String| crate::Error::Contract {
                ty: ty.to_string(),
                reason,
            };
            let schema: Value =
                serde_json::from_str(text).map_err(|e| fail(format!("schema is not JSON: {e}")))?;
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| fail(format!("schema does not compile: {e}")))?;
            validators.insert(ty.to_string(), validator);
        }
        Ok(Contracts {
            validators: Arc::new(validators),
        })
    }

    /// The event types that have a contract.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.validators.keys().map(String::as_str)
    }

    /// True if `ty` has a contract.
    pub fn knows(&self, ty: &str) -> bool {
        self.validators.contains_key(ty)
    }

    /// Check `data` against the contract of `ty`. `None` if `ty` has no contract.
    pub fn validate(&self, ty: &str, data: &Value) -> Option<Result<(), Violation>> {
        let validator = self.validators.get(ty)?;
        let violations: Vec<String> = validator
            .iter_errors(data)
            .map(|e| format!("data{}: {}", e.instance_path(), e))
            .collect();
        Some(if violations.is_empty() {
            Ok(())
        } else {
            Err(Violation { violations })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_carry_the_pointer() {
        let c = Contracts::from_schemas([(
            "t",
            r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":0}},"additionalProperties":false}"#,
        )])
        .unwrap();
        assert_eq!(c.validate("t", &json!({"n": 1})), Some(Ok(())));
        let err = c
            .validate("t", &json!({"n": -1, "x": 1}))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.violations.len(), 2, "{err}");
        assert!(
            err.to_string()
                .contains("data/n: -1 is less than the minimum of 0"),
            "{err}"
        );
        assert!(c.validate("unknown", &json!({})).is_none());
    }

    #[test]
    fn bad_schema_is_a_contract_error() {
        let err = Contracts::from_schemas([("t", r#"{"type": 12}"#)]).unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("\"t\""), "{err}");
    }
}
