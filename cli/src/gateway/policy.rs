//! What an authenticated caller may do: pure decisions over its [`Policy`], tested here.

use super::config::Policy;

/// A refusal: what was refused, for the 403's message (never the credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Forbidden(pub(crate) String);

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (dots
/// included: `finance.*` matches `finance.budget.exceeded`).
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole text
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Policy {
    /// May call HTTP function `name` (`/fn/{name}`, `/async/{name}`).
    pub(crate) fn function(&self, name: &str) -> Result<(), Forbidden> {
        if self.functions.iter().any(|g| glob(g, name)) {
            Ok(())
        } else {
            Err(Forbidden(format!(
                "this credential may not call function {name:?}"
            )))
        }
    }

    /// May post an event of type `ty` with `subject`; `claim` is the value of the policy's
    /// subject claim in the caller's token (`None`: the token has no such claim).
    pub(crate) fn event(
        &self,
        ty: &str,
        subject: Option<&str>,
        claim: Option<&str>,
    ) -> Result<(), Forbidden> {
        if !self.events.iter().any(|g| glob(g, ty)) {
            return Err(Forbidden(format!(
                "this credential may not post events of type {ty:?}"
            )));
        }
        let Some(name) = &self.subject_claim else {
            return Ok(());
        };
        match (claim, subject) {
            (None, _) => Err(Forbidden(format!(
                "events must carry the caller's {name} claim as subject, and the token has none"
            ))),
            (Some(_), None) => Err(Forbidden(format!(
                "a {ty} event needs a subject equal to the token's {name} claim"
            ))),
            (Some(c), Some(s)) if c == s => Ok(()),
            (Some(_), Some(s)) => Err(Forbidden(format!(
                "subject {s:?} is not the token's {name} claim: a caller may post only its own events"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "anything.at.all", true),
            ("tasks", "tasks", true),
            ("tasks", "tasks2", false),
            ("task*", "tasks", true),
            ("finance.transaction.*", "finance.transaction.created", true),
            ("finance.transaction.*", "finance.budget.exceeded", false),
            ("finance.*", "finance.budget.exceeded", true),
            ("*.created", "todo.task.created", true),
            ("*.created", "todo.task.completed", false),
            ("todo.*.created", "todo.task.created", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, t), m, "{p} ~ {t}");
        }
    }

    #[test]
    fn functions_events_and_the_subject_rule() {
        let p = Policy {
            functions: vec!["categorize".into()],
            events: vec!["finance.transaction.*".into()],
            subject_claim: Some("sub".into()),
        };
        assert!(p.function("categorize").is_ok());
        assert!(p.function("ledger").unwrap_err().0.contains("\"ledger\""));
        assert!(
            p.event("finance.transaction.created", Some("u-1"), Some("u-1"))
                .is_ok()
        );
        assert!(
            p.event("finance.budget.exceeded", Some("u-1"), Some("u-1"))
                .unwrap_err()
                .0
                .contains("finance.budget.exceeded")
        );
        assert!(
            p.event("finance.transaction.created", Some("u-2"), Some("u-1"))
                .unwrap_err()
                .0
                .contains("only its own")
        );
        assert!(
            p.event("finance.transaction.created", None, Some("u-1"))
                .is_err()
        );
        assert!(
            p.event("finance.transaction.created", Some("u-1"), None)
                .is_err()
        );
        let keys = Policy {
            subject_claim: None,
            ..p
        };
        assert!(
            keys.event("finance.transaction.created", Some("anyone"), None)
                .is_ok()
        );
        assert!(
            Policy::default().function("x").is_err(),
            "nothing unless listed"
        );
    }
}
