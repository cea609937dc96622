//! `zerofn demo`: the finance companion with a realistic month. Three users set budgets, then
//! four months of their card transactions (August to November 2026) go through the gateway to
//! ledger; what each user was told (budget warnings and alerts, insights) is read back from
//! notify and printed. Every POST carries an `Idempotency-Key` derived from the data, so running
//! it twice changes nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Load the demo data through a running engine's gateway and print what each user was told.
#[derive(Debug, clap::Args)]
pub(crate) struct Demo {
    /// The gateway of a running engine (`make run`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// Longest to wait for every function to catch up.
    #[arg(long, default_value = "120s", value_parser = crate::dev::duration)]
    timeout: Duration,
}

/// One card transaction: day (`YYYY-MM-DD`), amount in cents (negative: spending),
/// description, category (none: categorize picks it).
type Txn = (String, i64, &'static str, Option<&'static str>);

struct User {
    id: &'static str,
    /// Category, monthly limit in cents (November 2026).
    budgets: &'static [(&'static str, i64)],
    transactions: Vec<Txn>,
}

/// The same charge on the same day of each month.
fn monthly(day: &str, amount: i64, description: &'static str, months: &[&str]) -> Vec<Txn> {
    months
        .iter()
        .map(|m| (format!("{m}-{day}"), amount, description, None))
        .collect()
}

/// A shop visited about monthly: the amount varies from one month to the next, as it does.
fn visits(day: &str, amount: i64, description: &'static str, months: &[&str]) -> Vec<Txn> {
    const VARIATION: [i64; 4] = [-8, 5, 11, -4];
    months
        .iter()
        .zip(VARIATION.iter().cycle())
        .map(|(m, v)| {
            (
                format!("{m}-{day}"),
                amount * (100 + v) / 100,
                description,
                None,
            )
        })
        .collect()
}

const HISTORY: [&str; 3] = ["2026-08", "2026-09", "2026-10"];
const ALL: [&str; 4] = ["2026-08", "2026-09", "2026-10", "2026-11"];

fn users() -> Vec<User> {
    let mut ada = Vec::new();
    ada.extend(visits("04", -7_450, "ACME SUPERMARKET", &HISTORY));
    ada.extend(visits("11", -7_820, "ACME SUPERMARKET", &HISTORY));
    ada.extend(visits("18", -6_990, "CORNER GROCER", &HISTORY));
    ada.extend(visits("25", -8_100, "ACME SUPERMARKET", &HISTORY));
    ada.extend(visits("15", -4_500, "TRATTORIA RESTAURANT", &HISTORY));
    ada.extend(monthly("09", -1_599, "NETFLIX.COM", &ALL));
    ada.extend(monthly("21", -1_099, "SPOTIFY P0042", &ALL));
    ada.extend([
        ("2026-11-03".into(), -8_650, "ACME SUPERMARKET", None),
        ("2026-11-10".into(), -9_120, "ACME SUPERMARKET", None),
        ("2026-11-17".into(), -7_980, "CORNER GROCER", None),
        ("2026-11-22".into(), -8_400, "ACME SUPERMARKET", None),
        ("2026-11-27".into(), -9_500, "ACME SUPERMARKET", None),
        ("2026-11-14".into(), -3_800, "TRATTORIA RESTAURANT", None),
        ("2026-11-30".into(), 310_000, "SALARY ACME CORP", None),
    ]);
    let mut grace = Vec::new();
    grace.extend(visits("06", -2_800, "CAFE LUNA", &HISTORY));
    grace.extend(visits("20", -5_200, "SUSHI RESTAURANT", &HISTORY));
    grace.extend(monthly("12", -2_400, "CITY TRAIN PASS", &HISTORY));
    grace.extend([
        ("2026-11-02".into(), -3_400, "CAFE LUNA", None),
        ("2026-11-07".into(), -6_100, "SUSHI RESTAURANT", None),
        ("2026-11-12".into(), -2_400, "CITY TRAIN PASS", None),
        ("2026-11-13".into(), -4_800, "TAPAS RESTAURANT", None),
        ("2026-11-19".into(), -3_900, "CAFE LUNA", None),
        ("2026-11-24".into(), -5_600, "SUSHI RESTAURANT", None),
        ("2026-11-26".into(), -1_850, "UBER TRIP", None),
        ("2026-11-28".into(), -2_700, "CAFE LUNA", None),
    ]);
    let mut linus = Vec::new();
    linus.extend(visits("03", -3_200, "FARM MARKET GROCER", &HISTORY));
    linus.extend(visits("17", -2_900, "FARM MARKET GROCER", &HISTORY));
    linus.extend(visits("09", -1_500, "FUEL STATION", &HISTORY));
    linus.extend([
        ("2026-11-03".into(), -3_400, "FARM MARKET GROCER", None),
        ("2026-11-09".into(), -1_900, "FUEL STATION", None),
        (
            "2026-11-16".into(),
            -129_900,
            "LAPTOP STORE",
            Some("electronics"),
        ),
        ("2026-11-17".into(), -3_100, "FARM MARKET GROCER", None),
    ]);
    vec![
        User {
            id: "ada",
            budgets: &[
                ("groceries", 40_000),
                ("dining", 15_000),
                ("subscriptions", 3_000),
            ],
            transactions: ada,
        },
        User {
            id: "grace",
            budgets: &[("dining", 20_000), ("transport", 12_000)],
            transactions: grace,
        },
        User {
            id: "linus",
            budgets: &[("groceries", 30_000), ("electronics", 100_000)],
            transactions: linus,
        },
    ]
}

impl Demo {
    pub(crate) async fn run(&self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let base = self.gateway.trim_end_matches('/');
        let users = users();
        let post = |path: String, key: String, body: Value| {
            let http = http.clone();
            async move {
                let r = http
                    .post(format!("{base}{path}"))
                    .header("idempotency-key", key)
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| {
                        format!("POST {base}{path}: is the engine running (make run)?")
                    })?;
                let status = r.status().as_u16();
                if !(matches!(status, 200 | 201) || (status == 409 && path.ends_with("/budgets"))) {
                    bail!(
                        "POST {path}: {status} {}",
                        r.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            }
        };
        for u in &users {
            for (category, limit) in u.budgets {
                let budget = json!({"user_id": u.id, "category": category, "period": "2026-11",
                                    "currency": "EUR", "limit_minor": limit});
                post(
                    "/fn/ledger/budgets".into(),
                    format!("demo-budget-{}-{category}", u.id),
                    budget,
                )
                .await?;
            }
        }
        // The budgets are known before the spending starts, as they would be.
        self.settle(&http, base).await?;
        let mut posted = 0;
        for u in &users {
            let mut txns = u.transactions.clone();
            txns.sort_by(|a, b| a.0.cmp(&b.0));
            for (i, (day, amount, description, category)) in txns.iter().enumerate() {
                let mut t = json!({"user_id": u.id, "amount_minor": amount, "currency": "EUR",
                                   "description": description, "occurred_at": format!("{day}T12:00:00Z")});
                if let Some(c) = category {
                    t["category"] = json!(c);
                }
                post(
                    "/fn/ledger/transactions".into(),
                    format!("demo-txn-{}-{i}", u.id),
                    t,
                )
                .await?;
                posted += 1;
            }
        }
        self.settle(&http, base).await?;
        writeln!(
            out,
            "{posted} transactions of {} users, August to November 2026\n",
            users.len()
        )?;
        for u in &users {
            let url = format!("{base}/fn/notify/notifications?user_id={}&limit=50", u.id);
            let told: Value = http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let mut items = told["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            items.reverse(); // oldest first: the month as it happened
            writeln!(out, "{} was told ({}):", u.id, items.len())?;
            for n in items {
                writeln!(
                    out,
                    "  [{}] {}: {}",
                    n["kind"].as_str().unwrap_or_default(),
                    n["title"].as_str().unwrap_or_default(),
                    n["body"].as_str().unwrap_or_default()
                )?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// Wait until every function has handled every event (no lag anywhere).
    async fn settle(&self, http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut calm = 0;
        loop {
            let status: Value = http
                .get(format!("{base}/_zerofn/status"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let busy = status["functions"]
                .as_array()
                .map(|fs| fs.iter().any(|f| f["total_lag"] != 0))
                .unwrap_or(true);
            // Twice in a row: an event just emitted shows as lag a moment later.
            calm = if busy { 0 } else { calm + 1 };
            if calm >= 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the functions did not catch up within {:?}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
