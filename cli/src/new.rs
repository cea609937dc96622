//! `zerofn new NAME --kind event|http`: a function crate that builds, passes its test and runs
//! in `zerofn dev` at once: `function.toml`, `src/main.rs` (a handler with its unit tests) and a
//! README, from the templates in `cli/templates/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What the function is triggered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Consumes CloudEvents (Dapr pub/sub on Kafka), scaled by KEDA on consumer lag.
    Event,
    /// Serves HTTP behind the gateway, scaled by Knative on concurrent requests.
    Http,
}

/// Write a new function crate.
#[derive(Debug, clap::Args)]
pub(crate) struct New {
    /// The function's name: a DNS label (it is the Dapr app id and the Kafka consumer group).
    name: String,
    /// What triggers it.
    #[arg(long, value_enum, default_value = "event")]
    kind: Kind,
    /// One line on what it does.
    #[arg(long)]
    description: Option<String>,
    /// Where function crates live.
    #[arg(long, default_value = "functions")]
    functions_dir: PathBuf,
}

/// The files of a new function: path inside its directory, contents.
fn files(kind: Kind) -> [(&'static str, &'static str); 4] {
    match kind {
        Kind::Event => [
            (
                "Cargo.toml",
                include_str!("../templates/event/Cargo.toml.tmpl"),
            ),
            (
                "function.toml",
                include_str!("../templates/event/function.toml"),
            ),
            (
                "src/main.rs",
                include_str!("../templates/event/main.rs.tmpl"),
            ),
            ("README.md", include_str!("../templates/event/README.md")),
        ],
        Kind::Http => [
            (
                "Cargo.toml",
                include_str!("../templates/http/Cargo.toml.tmpl"),
            ),
            (
                "function.toml",
                include_str!("../templates/http/function.toml"),
            ),
            (
                "src/main.rs",
                include_str!("../templates/http/main.rs.tmpl"),
            ),
            ("README.md", include_str!("../templates/http/README.md")),
        ],
    }
}

/// Why `name` cannot name a function, if it cannot.
fn refuse_name(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !name.ends_with('-');
    (!ok).then_some(
        "a function name is a DNS label: 1 to 63 of a-z 0-9 -, starting with a letter, not ending with -",
    )
}

impl New {
    pub(crate) fn run(&self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        if let Some(why) = refuse_name(&self.name) {
            bail!("{:?}: {why}", self.name);
        }
        let dir = self.functions_dir.join(&self.name);
        if dir.exists() {
            bail!("{} exists already: pick another name", dir.display());
        }
        let description = self.description.clone().unwrap_or_else(|| match self.kind {
            Kind::Event => "a zerofn event function".into(),
            Kind::Http => "a zerofn HTTP function".into(),
        });
        if description.contains(['"', '\n', '\\']) {
            bail!("--description {description:?}: one line, without quotes or backslashes");
        }
        for (path, template) in files(self.kind) {
            let text = template
                .replace("{{name}}", &self.name)
                .replace("{{description}}", &description);
            write(&dir.join(path), &text)?;
        }
        writeln!(
            out,
            "created {}: cargo test -p {name}, then `make run` runs it (gateway: {})",
            dir.display(),
            match self.kind {
                Kind::Event => "POST /events".to_string(),
                Kind::Http => format!("/fn/{}/hello", self.name),
            },
            name = self.name,
        )?;
        Ok(())
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["notify", "a", "budget-2", "x1-y"] {
            assert_eq!(refuse_name(ok), None, "{ok}");
        }
        for bad in ["", "Notify", "1st", "a_b", "a-", "a.b", &"a".repeat(64)] {
            assert!(refuse_name(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn every_kind_writes_a_function_whose_manifest_parses() {
        for kind in [Kind::Event, Kind::Http] {
            let root = std::env::temp_dir().join(format!("zerofn-new-{}", uuid::Uuid::new_v4()));
            let new = New {
                name: "hello-fn".into(),
                kind,
                description: Some("says hello".into()),
                functions_dir: root.clone(),
            };
            let mut out = Vec::new();
            new.run(&mut out).unwrap();
            let dir = root.join("hello-fn");
            let manifest = crate::values::load_manifest(&dir).unwrap();
            assert_eq!(manifest.name, "hello-fn");
            assert_eq!(manifest.description, "says hello");
            assert_eq!(manifest.http.is_some(), kind == Kind::Http, "{kind:?}");
            assert_eq!(
                manifest.subscriptions.is_empty(),
                kind == Kind::Http,
                "{kind:?}"
            );
            crate::values::function_values(&manifest).unwrap();
            let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
            assert!(!main.contains("{{"), "every placeholder filled");
            assert!(main.contains("#[cfg(test)]"), "with its unit test");
            // Never over an existing function.
            let again = new.run(&mut Vec::new()).unwrap_err().to_string();
            assert!(again.contains("exists already"), "{again}");
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
}
