//! Benchmark results: every `make bench` program records its rows here, and `bench-report`
//! turns the rows of one run into `bench/results/` (Markdown and JSON, with the machine's core
//! count, the commit and the date) and the README's table.
//!
//! A row is one measured number with what it is compared with, measured in the same run, so
//! the table reads as ratios on whatever machine made it. Rows go, one JSON object a line, to
//! the file named by [`ENV_BENCH_ROWS`]; without it a program only prints.

use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// The file each bench program appends its rows to (`make bench` sets it).
pub const ENV_BENCH_ROWS: &str = "ZEROFN_BENCH_ROWS";

/// Which way is better for a row's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Latencies, sizes, memory.
    Lower,
    /// Throughputs.
    Higher,
}

/// One measured number, and what it is set beside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The table's section: `engine`, `runtime`, `gateway`, `start`, `footprint`, ...
    pub section: String,
    /// What was measured, in words.
    pub what: String,
    /// The number.
    pub value: f64,
    /// Its unit: `events/s`, `µs`, `ms`, `MiB`, `requests/s`.
    pub unit: String,
    /// Which way is better.
    pub better: Better,
    /// What the number is compared with (an alternative, a floor, or the target).
    pub against: Option<Against>,
}

/// The comparison of a row: a number measured in the same run, or a fixed target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Against {
    /// What it is, in words: `nginx 1.22 proxy, same client`, `spawn of a no-op binary`, ...
    pub what: String,
    /// Its number, in the row's unit.
    pub value: f64,
}

impl Row {
    /// A row with nothing beside it.
    pub fn new(section: &str, what: &str, value: f64, unit: &str, better: Better) -> Row {
        Row {
            section: section.into(),
            what: what.into(),
            value,
            unit: unit.into(),
            better,
            against: None,
        }
    }

    /// The same row set beside `value` of `what`.
    #[must_use]
    pub fn against(mut self, what: &str, value: f64) -> Row {
        self.against = Some(Against {
            what: what.into(),
            value,
        });
        self
    }

    /// `value / against`, the ratio the table shows (`None` without a comparison).
    pub fn ratio(&self) -> Option<f64> {
        let a = self.against.as_ref()?;
        (a.value != 0.0).then(|| self.value / a.value)
    }

    /// Append the row to the run's file ([`ENV_BENCH_ROWS`]), when there is one.
    pub fn record(&self) {
        let Ok(path) = std::env::var(ENV_BENCH_ROWS) else {
            return;
        };
        let line = serde_json::to_string(self).expect("a row serialises") + "\n";
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot append to {ENV_BENCH_ROWS}={path}: {e}"));
        file.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("cannot append to {ENV_BENCH_ROWS}={path}: {e}"));
    }
}

/// A process's resident set in MiB (`VmRSS` in `/proc/PID/status`; 0 when it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A number as the table prints it: three significant digits, no exponent.
pub fn shown(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The Markdown table of `rows`, in their order, sections as they come.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| section | measured | value | compared with | its value | ratio |\n|---|---|---:|---|---:|---:|\n",
    );
    for r in rows {
        let (what, value, ratio) = match &r.against {
            Some(a) => (
                a.what.as_str(),
                format!("{} {}", shown(a.value), r.unit),
                r.ratio().map_or_else(String::new, |x| format!("{x:.2}×")),
            ),
            None => ("", String::new(), String::new()),
        };
        out.push_str(&format!(
            "| {} | {} | {} {} | {what} | {value} | {ratio} |\n",
            r.section,
            r.what,
            shown(r.value),
            r.unit
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_as_its_ratio_to_what_it_is_compared_with() {
        let r = Row::new("gateway", "p50", 1.5, "ms", Better::Lower).against("nginx p50", 1.0);
        assert_eq!(r.ratio(), Some(1.5));
        assert_eq!(Row::new("x", "y", 1.0, "ms", Better::Lower).ratio(), None);
        assert_eq!(
            Row::new("x", "y", 1.0, "ms", Better::Lower)
                .against("zero", 0.0)
                .ratio(),
            None
        );
        let table = markdown(&[r]);
        assert!(
            table.contains("| gateway | p50 | 1.50 ms | nginx p50 | 1.00 ms | 1.50× |"),
            "{table}"
        );
        assert_eq!(shown(12345.6), "12346");
        assert_eq!(shown(42.42), "42.4");
        assert_eq!(shown(0.0421), "0.042");
    }
}
