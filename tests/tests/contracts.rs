//! Golden test of `contracts/`: every valid example passes its schema, every invalid one fails
//! with exactly the message in its `.err` file, and the runtime embeds every contract.
//! `ZEROFN_BLESS=1 cargo test --test contracts` rewrites the `.err` files (review the diff).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{
    fs,
    path::{Path, PathBuf},
};

use zerofn::contract::Contracts;

const TYPES: [&str; 15] = [
    "finance.transaction.created",
    "finance.transaction.updated",
    "finance.budget.created",
    "finance.budget.warning",
    "finance.budget.exceeded",
    "finance.insight.generated",
    "finance.alert.sent",
    "todo.task.created",
    "todo.task.updated",
    "todo.task.completed",
    "todo.task.deleted",
    "todo.reminder.scheduled",
    "todo.reminder.due",
    "todo.notification.sent",
    // The runtime's own: a trigger of a schedule declared in function.toml.
    "zerofn.schedule.due",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts/events")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_matches_its_golden_verdict() {
    let bless = std::env::var_os("ZEROFN_BLESS").is_some();
    let mut dirs: Vec<PathBuf> = fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut expected: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "contracts/events must hold exactly the seed systems' event types"
    );

    let mut checked = 0;
    for dir in &dirs {
        let ty = dir.file_name().unwrap().to_string_lossy().into_owned();
        let schema = fs::read_to_string(dir.join("schema.json")).unwrap();
        let contracts = Contracts::from_schemas([(ty.as_str(), schema.as_str())]).unwrap();
        let schema_json: serde_json::Value = serde_json::from_str(&schema).unwrap();
        assert_eq!(schema_json["title"], ty.as_str(), "{ty}: schema title");
        assert!(
            jsonschema::meta::is_valid(&schema_json),
            "{ty}: schema is not valid JSON Schema"
        );

        let valid = json_files(&dir.join("valid"));
        let invalid = json_files(&dir.join("invalid"));
        assert!(
            !valid.is_empty() && !invalid.is_empty(),
            "{ty}: needs valid and invalid examples"
        );
        for file in valid {
            let data: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
            let verdict = contracts.validate(&ty, &data).unwrap();
            assert!(
                verdict.is_ok(),
                "{}: {}",
                file.display(),
                verdict.unwrap_err()
            );
            checked += 1;
        }
        for file in invalid {
            let data: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
            let err = match contracts.validate(&ty, &data).unwrap() {
                Ok(()) => panic!("{}: an invalid example passed", file.display()),
                Err(e) => e.to_string(),
            };
            let err_file = file.with_extension("err");
            if bless {
                fs::write(&err_file, format!("{err}\n")).unwrap();
            }
            let golden = fs::read_to_string(&err_file).unwrap_or_else(|_| {
                panic!(
                    "{} is missing (run with ZEROFN_BLESS=1)",
                    err_file.display()
                )
            });
            assert_eq!(err, golden.trim_end(), "{}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} examples");
}

#[test]
fn the_runtime_embeds_every_contract() {
    let embedded = Contracts::embedded().unwrap();
    let types: Vec<&str> = embedded.types().collect();
    let mut expected = TYPES.to_vec();
    expected.sort();
    assert_eq!(types, expected);
}
