//! `make bench`'s last step: the rows every bench program recorded in this run
//! (`ZEROFN_BENCH_ROWS`) become `bench/results/{date}-{commit}.{md,json}` and
//! `bench/results/latest.{md,json}`, with the machine's core count, the commit and the date,
//! and the README's table between its `bench:begin` and `bench:end` markers.
//!
//! Usage: `bench-report ROWS_FILE REPO_ROOT`.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a report writer

use std::{path::Path, process::Command};

use serde_json::json;
use zerofn_tests::report::{Row, markdown};

const BEGIN: &str = "<!-- bench:begin (written by make bench) -->";
const END: &str = "<!-- bench:end -->";

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(rows_file), Some(root)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-report ROWS_FILE REPO_ROOT");
        std::process::exit(64);
    };
    let root = Path::new(&root);
    let text = std::fs::read_to_string(&rows_file)
        .unwrap_or_else(|e| panic!("cannot read the run's rows {rows_file}: {e}"));
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a bad row {l:?}: {e}")))
        .collect();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Dirty: the code differs from the commit. What the run itself writes (bench/: the chain's
    // and the todo app's JSON, the results) and the README's table do not count.
    let code_changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)bench",
        ":(exclude)README.md",
    ]);
    if code_changed.is_some_and(|s| !s.is_empty()) {
        commit.push_str("-dirty");
    }
    let now = chrono::Utc::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let header = format!(
        "`make bench` on {} UTC, commit `{commit}`, {cores} cores, release builds, everything on 127.0.0.1. \
         Ratios are value ÷ compared value, both measured in this run.\n\n",
        now.format("%Y-%m-%d %H:%M"),
    );
    let md = header + &markdown(&rows);
    let record = json!({
        "measured_at": now,
        "commit": commit,
        "cores": cores,
        "rows": rows.iter().map(|r| {
            let mut v = serde_json::to_value(r).unwrap();
            v["ratio"] = json!(r.ratio());
            v
        }).collect::<Vec<_>>(),
    });
    let json = serde_json::to_string_pretty(&record).unwrap() + "\n";
    let out = root.join("bench/results");
    std::fs::create_dir_all(&out).unwrap();
    let stem = format!("{}-{commit}", now.format("%Y-%m-%d"));
    for (name, body) in [
        (format!("{stem}.md"), &md),
        (format!("{stem}.json"), &json),
        ("latest.md".to_string(), &md),
        ("latest.json".to_string(), &json),
    ] {
        std::fs::write(out.join(&name), body).unwrap();
    }
    let readme = root.join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            let updated = format!("{}{BEGIN}\n{md}{}", &text[..b], &text[e..]);
            std::fs::write(&readme, updated).unwrap();
        }
        _ => eprintln!("README.md has no {BEGIN} … {END} markers: its table is not updated"),
    }
    println!(
        "\n{md}\nwritten: bench/results/{stem}.{{md,json}}, bench/results/latest.{{md,json}}, README.md"
    );
}
