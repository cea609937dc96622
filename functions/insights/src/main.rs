//! insights: each spending transaction is checked against the user's history, and a pattern
//! worth telling becomes one `finance.insight.generated`, once:
//!
//! - `spending_spike`: a category's spend this month passes 1.5 × its average over the
//!   previous three months (two of them with spending at least);
//! - `large_transaction`: one payment of at least 3 × the user's average over the last 90 days
//!   (five payments at least);
//! - `recurring_charge`: the same payee charging about the same amount (± 5 %) around the same
//!   day (± 4 days), once a month, this month and the two before.
//!
//! The words are rule-based unless an OpenAI-compatible chat-completions endpoint is configured
//! (`INSIGHTS_LLM_URL`); a model that fails or is slower than `INSIGHTS_LLM_TIMEOUT` leaves the
//! rule-based text in place.

use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};
use zerofn::prelude::*;

/// OpenAI-compatible API base, e.g. `https://api.openai.com/v1` (`/chat/completions` is
/// appended). Unset: the rule-based text, no network.
const ENV_LLM_URL: &str = "INSIGHTS_LLM_URL";
/// The model to ask. Default `gpt-4o-mini`.
const ENV_LLM_MODEL: &str = "INSIGHTS_LLM_MODEL";
/// Bearer token for the endpoint (from a Secret).
const ENV_LLM_API_KEY: &str = "INSIGHTS_LLM_API_KEY";
/// Longest the model may take before the rule-based text is used. Default `2s`.
const ENV_LLM_TIMEOUT: &str = "INSIGHTS_LLM_TIMEOUT";

#[derive(Debug, Deserialize)]
struct TransactionCreated {
    transaction_id: String,
    user_id: String,
    amount_minor: i64,
    currency: String,
    direction: String,
    category: String,
    merchant: Option<String>,
    description: Option<String>,
    occurred_at: DateTime<Utc>,
}

/// The language model that words insights.
#[derive(Clone, Debug)]
struct Llm {
    url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl Llm {
    /// From the environment: none without `INSIGHTS_LLM_URL`; a bad setting is an error naming
    /// the key, the value and why.
    fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Llm>, String> {
        let Some(url) = get(ENV_LLM_URL).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{ENV_LLM_URL}={url:?}: not an http(s) URL"));
        }
        let timeout = match get(ENV_LLM_TIMEOUT) {
            None => Duration::from_secs(2),
            Some(v) => zerofn::config::parse_duration(&v)
                .map_err(|e| format!("{ENV_LLM_TIMEOUT}={v:?}: {e}"))?,
        };
        Ok(Some(Llm {
            url: format!("{}/chat/completions", url.trim_end_matches('/')),
            model: get(ENV_LLM_MODEL).unwrap_or_else(|| "gpt-4o-mini".into()),
            api_key: get(ENV_LLM_API_KEY).filter(|k| !k.is_empty()),
            timeout,
            http: reqwest::Client::new(),
        }))
    }

    /// The model's wording of `finding`, or why there is none.
    async fn word(&self, finding: &Finding) -> Result<String, String> {
        let request = json!({
            "model": self.model,
            "temperature": 0.2,
            "max_tokens": 160,
            "messages": [
                {"role": "system", "content": "You write one short, friendly, factual note (at most two sentences) \
                  to a user of a personal-finance app about a pattern in their spending. Use only the facts given; \
                  amounts are in the currency given. No greeting, no advice beyond the facts."},
                {"role": "user", "content": finding.facts.to_string()},
            ],
        });
        let mut call = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .json(&request);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("it answered {}", response.status()));
        }
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .map(str::trim)
            .unwrap_or_default();
        if text.is_empty() || text.chars().count() > 2000 {
            return Err("no usable text in its answer".into());
        }
        Ok(text.to_string())
    }
}

/// A pattern found, with its rule-based wording and the facts a model may word instead.
#[derive(Debug, PartialEq)]
struct Finding {
    kind: &'static str,
    severity: &'static str,
    /// What it is about: one insight per user, kind and subject.
    subject: String,
    title: String,
    body: String,
    facts: Value,
}

#[derive(Clone, Debug)]
struct Insights {
    llm: Option<Llm>,
}

impl Insights {
    async fn handle(&self, event: Event<TransactionCreated>) -> Result<Vec<Emit>, HandlerError> {
        let t = &event.data;
        if t.direction != "debit" {
            return Ok(vec![]);
        }
        let mut guard = event.conn().await?;
        let conn: &mut AnyConnection = &mut guard;
        let period = t.occurred_at.format("%Y-%m").to_string();
        let payee = payee(
            t.merchant
                .as_deref()
                .or(t.description.as_deref())
                .unwrap_or(""),
        );
        let category = t.category.to_lowercase();
        let stored = sqlx::query(
            "INSERT INTO insights_spend (transaction_id, user_id, category, payee, currency, amount_minor, occurred_at, period) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(&t.transaction_id)
        .bind(&t.user_id)
        .bind(&category)
        .bind(&payee)
        .bind(&t.currency)
        .bind(t.amount_minor)
        .bind(t.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .bind(&period)
        .execute(&mut *conn)
        .await?;
        if stored.rows_affected() == 0 {
            return Ok(vec![]); // seen already (the same transaction under another event)
        }
        let mut findings = Vec::new();
        findings.extend(self.spike(conn, t, &category).await?);
        findings.extend(self.large(conn, t, &payee).await?);
        findings.extend(self.recurring(conn, t, &payee).await?);
        let mut emits = Vec::new();
        for mut f in findings {
            let told = sqlx::query(
                "INSERT INTO insights_told (user_id, kind, subject) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&t.user_id)
            .bind(f.kind)
            .bind(&f.subject)
            .execute(&mut *conn)
            .await?;
            if told.rows_affected() != 1 {
                continue;
            }
            if let Some(llm) = &self.llm {
                match llm.word(&f).await {
                    Ok(text) => f.body = text,
                    Err(why) => {
                        tracing::warn!(reason = %why, kind = f.kind, "the language model did not word the insight: rule-based text")
                    }
                }
            }
            let id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                format!("insight:{}:{}:{}", t.user_id, f.kind, f.subject).as_bytes(),
            );
            let data = json!({
                "insight_id": id, "user_id": t.user_id, "kind": f.kind, "severity": f.severity,
                "title": f.title, "body": f.body, "period": period, "generated_at": Utc::now(),
            });
            tracing::info!(insight_id = %id, kind = f.kind, user_id = %t.user_id, "insight");
            emits.push(
                Emit::new("finance.insight.generated", &data)?
                    .partition_key(&t.user_id)
                    .subject(id.to_string()),
            );
        }
        Ok(emits)
    }

    /// This month's spend in the category against the three months before.
    async fn spike(
        &self,
        conn: &mut AnyConnection,
        t: &TransactionCreated,
        category: &str,
    ) -> Result<Option<Finding>, HandlerError> {
        let months = months_back(t.occurred_at, 3);
        let rows = sqlx::query(
            "SELECT period, CAST(SUM(amount_minor) AS BIGINT) AS total FROM insights_spend \
             WHERE user_id = $1 AND category = $2 AND currency = $3 AND period IN ($4, $5, $6, $7) GROUP BY period",
        )
        .bind(&t.user_id)
        .bind(category)
        .bind(&t.currency)
        .bind(&months[0])
        .bind(&months[1])
        .bind(&months[2])
        .bind(&months[3])
        .fetch_all(&mut *conn)
        .await?;
        let total = |p: &str| -> Result<i64, sqlx::Error> {
            for r in &rows {
                if r.try_get::<String, _>("period")? == p {
                    return r.try_get("total");
                }
            }
            Ok(0)
        };
        let now = total(&months[0])?;
        let before = [total(&months[1])?, total(&months[2])?, total(&months[3])?];
        Ok(spike(now, &before).map(|(average, percent)| {
            let month = t.occurred_at.format("%B");
            let c = &t.currency;
            Finding {
                kind: "spending_spike",
                severity: if percent >= 100 { "important" } else { "notice" },
                subject: format!("{category}:{}", months[0]),
                title: clip(&format!("{} is up {percent} % this month", capitalized(category)), 120),
                body: format!(
                    "You spent {} {c} on {category} so far in {month}, {percent} % more than your 3-month average of {} {c}.",
                    amount(now, c),
                    amount(average, c)
                ),
                facts: json!({"pattern": "category spend well above its 3-month average", "category": category,
                              "month": months[0], "spent_minor": now, "average_minor": average,
                              "percent_above": percent, "currency": c}),
            }
        }))
    }

    /// One payment against the user's payments of the last 90 days.
    async fn large(
        &self,
        conn: &mut AnyConnection,
        t: &TransactionCreated,
        payee: &str,
    ) -> Result<Option<Finding>, HandlerError> {
        let since = (t.occurred_at - chrono::Duration::days(90))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let until = t
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let previous: Vec<i64> = sqlx::query_scalar(
            "SELECT amount_minor FROM insights_spend WHERE user_id = $1 AND currency = $2 \
             AND transaction_id <> $3 AND occurred_at >= $4 AND occurred_at <= $5",
        )
        .bind(&t.user_id)
        .bind(&t.currency)
        .bind(&t.transaction_id)
        .bind(since)
        .bind(until)
        .fetch_all(&mut *conn)
        .await?;
        Ok(large(t.amount_minor, &previous).map(|(average, times)| {
            let c = &t.currency;
            let who = if payee.is_empty() { "A payment".to_string() } else { capitalized(payee) };
            Finding {
                kind: "large_transaction",
                severity: "notice",
                subject: t.transaction_id.clone(),
                title: clip(&format!("A large payment: {} {c}", amount(t.amount_minor, c)), 120),
                body: format!(
                    "{who} charged {} {c} on {}, about {times}× your usual payment of {} {c}.",
                    amount(t.amount_minor, c),
                    t.occurred_at.format("%-d %B"),
                    amount(average, c)
                ),
                facts: json!({"pattern": "one payment far above the user's usual", "payee": payee,
                              "amount_minor": t.amount_minor, "usual_minor": average, "times_usual": times,
                              "date": t.occurred_at.date_naive(), "currency": c}),
            }
        }))
    }

    /// The same payee, about the same amount around the same day, once in this month and in
    /// each of the two before.
    async fn recurring(
        &self,
        conn: &mut AnyConnection,
        t: &TransactionCreated,
        payee: &str,
    ) -> Result<Option<Finding>, HandlerError> {
        if payee.is_empty() {
            return Ok(None);
        }
        let months = months_back(t.occurred_at, 2);
        let rows = sqlx::query(
            "SELECT period, amount_minor, occurred_at FROM insights_spend WHERE user_id = $1 AND payee = $2 \
             AND currency = $3 AND period IN ($4, $5, $6)",
        )
        .bind(&t.user_id)
        .bind(payee)
        .bind(&t.currency)
        .bind(&months[0])
        .bind(&months[1])
        .bind(&months[2])
        .fetch_all(&mut *conn)
        .await?;
        let mut seen = Vec::new();
        for r in &rows {
            let at: String = r.try_get("occurred_at")?;
            let day = at.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(0);
            seen.push(Charge {
                period: r.try_get("period")?,
                amount: r.try_get("amount_minor")?,
                day,
            });
        }
        if !recurring(t.amount_minor, t.occurred_at.day(), &months, &seen) {
            return Ok(None);
        }
        let c = &t.currency;
        let yearly = t.amount_minor.saturating_mul(12);
        Ok(Some(Finding {
            kind: "recurring_charge",
            severity: "info",
            subject: payee.to_string(),
            title: clip(&format!("Recurring charge: {}", capitalized(payee)), 120),
            body: format!(
                "{} has charged about {} {c} every month since {}. If it is a subscription you no longer use, \
                 cancelling it saves about {} {c} a year.",
                capitalized(payee),
                amount(t.amount_minor, c),
                month_name(&months[2]),
                amount(yearly, c)
            ),
            facts: json!({"pattern": "a monthly charge from the same payee", "payee": payee,
                          "amount_minor": t.amount_minor, "months": [months[2], months[1], months[0]],
                          "yearly_minor": yearly, "currency": c}),
        }))
    }
}

/// A category's spend this month against the three before: the average of the months with
/// spending (two at least) and how many percent above it, when 1.5 × it or more.
fn spike(now: i64, before: &[i64]) -> Option<(i64, i64)> {
    let with_spend: Vec<i64> = before.iter().copied().filter(|m| *m > 0).collect();
    if with_spend.len() < 2 {
        return None;
    }
    let average = with_spend.iter().sum::<i64>() / i64::try_from(with_spend.len()).ok()?;
    (average > 0 && i128::from(now) * 2 >= i128::from(average) * 3)
        .then(|| (average, (now - average) * 100 / average))
}

/// One payment against the user's others: the average of five or more, and how many times
/// it the payment is, when three or more.
fn large(amount: i64, previous: &[i64]) -> Option<(i64, i64)> {
    if previous.len() < 5 {
        return None;
    }
    let average = previous.iter().sum::<i64>() / i64::try_from(previous.len()).ok()?;
    (average > 0 && amount >= average.saturating_mul(3)).then(|| (average, amount / average))
}

/// A payee's charge, as the recurring rule sees it.
#[derive(Debug)]
struct Charge {
    period: String,
    amount: i64,
    /// Day of the month.
    day: u32,
}

/// Whether a charge of `amount` on `day` of `months[0]` is a monthly one: the payee's only
/// charge in each of `months` (this one included), each within 5 % of the amount and 4 days
/// of the day. A shop visited several times a month, or for varying amounts, is not.
fn recurring(amount: i64, day: u32, months: &[String], seen: &[Charge]) -> bool {
    let close = |c: &Charge| {
        i128::from((c.amount - amount).abs()) * 100 <= i128::from(amount) * 5
            && c.day.abs_diff(day) <= 4
    };
    months.iter().all(|m| {
        let mut in_month = seen.iter().filter(|c| &c.period == m);
        matches!((in_month.next(), in_month.next()), (Some(c), None) if close(c))
    })
}

/// The month of `at` and the `n` before it, as `YYYY-MM`, newest first.
fn months_back(at: DateTime<Utc>, n: u32) -> Vec<String> {
    let first = NaiveDate::from_ymd_opt(at.year(), at.month(), 1).unwrap_or_default();
    (0..=n)
        .map(|i| {
            first
                .checked_sub_months(Months::new(i))
                .unwrap_or(first)
                .format("%Y-%m")
                .to_string()
        })
        .collect()
}

fn month_name(period: &str) -> String {
    NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d")
        .map(|d| d.format("%B %Y").to_string())
        .unwrap_or_else(|_| period.to_string())
}

/// A merchant or description as one payee: lower case, words with digits (card and store
/// numbers) dropped (`NETFLIX.COM 0042` → `netflix.com`, `SPOTIFY P0042` → `spotify`).
fn payee(raw: &str) -> String {
    raw.to_lowercase()
        .split_whitespace()
        .filter(|word| !word.chars().any(|c| c.is_ascii_digit()))
        .map(|word| {
            word.chars()
                .filter(|c| c.is_alphabetic() || matches!(c, '.' | '&' | '\''))
                .collect::<String>()
                .trim_matches('.')
                .to_string()
        })
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Minor units in major ones, with the currency's decimals (none for JPY, KRW, ISK).
fn amount(minor: i64, currency: &str) -> String {
    if matches!(currency, "JPY" | "KRW" | "ISK") {
        return minor.to_string();
    }
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        minor.unsigned_abs() / 100,
        minor.unsigned_abs() % 100
    )
}

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const MANIFEST: zerofn::ManifestSource = zerofn::manifest!().migrations(&MIGRATIONS);

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    let llm = match Llm::from_env(|k| std::env::var(k).ok()) {
        Ok(llm) => llm,
        Err(why) => {
            eprintln!("insights: configuration error: {why}");
            std::process::exit(64);
        }
    };
    let insights = Insights { llm };
    zerofn::run(
        handler_fn(move |event| {
            let insights = insights.clone();
            async move { insights.handle(event).await }
        }),
        MANIFEST,
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use super::*;
    use zerofn::{contract::Contracts, testing};

    /// A debit of `amount` at `payee` in `category` on `date` (`YYYY-MM-DD`).
    fn debit(id: u32, amount: i64, category: &str, payee: &str, date: &str) -> TransactionCreated {
        TransactionCreated {
            transaction_id: format!("0193a7c2-6000-7000-8000-{id:012}"),
            user_id: "u-1".into(),
            amount_minor: amount,
            currency: "EUR".into(),
            direction: "debit".into(),
            category: category.into(),
            merchant: Some(payee.into()),
            description: None,
            occurred_at: format!("{date}T12:00:00Z").parse().unwrap(),
        }
    }

    struct Rig {
        db: testing::TestDb,
        insights: Insights,
    }

    async fn rig(llm: Option<Llm>) -> Rig {
        Rig {
            db: testing::TestDb::open(MANIFEST).await.unwrap(),
            insights: Insights { llm },
        }
    }

    impl Rig {
        /// The insights one transaction gives (each checked against its contract): (kind, data).
        async fn feed(&self, t: TransactionCreated) -> Vec<(String, Value)> {
            let emits = self
                .db
                .run(
                    Event::test(t).with_type("finance.transaction.created"),
                    |e| self.insights.handle(e),
                )
                .await
                .unwrap();
            let contracts = Contracts::embedded().unwrap();
            emits
                .iter()
                .map(|e| {
                    assert_eq!(
                        contracts.validate(e.ty(), e.data()),
                        Some(Ok(())),
                        "{:?}",
                        e.data()
                    );
                    (
                        e.data()["kind"].as_str().unwrap().to_string(),
                        e.data().clone(),
                    )
                })
                .collect()
        }
    }

    #[test]
    fn the_rules() {
        assert_eq!(
            spike(30_000, &[10_000, 0, 0]),
            None,
            "one month of history is not a trend"
        );
        assert_eq!(spike(30_000, &[10_000, 20_000, 0]), Some((15_000, 100)));
        assert_eq!(
            spike(22_499, &[15_000, 15_000, 15_000]),
            None,
            "under 1.5 ×"
        );
        assert_eq!(spike(22_500, &[15_000, 15_000, 15_000]), Some((15_000, 50)));
        assert_eq!(
            large(3_000, &[1_000; 4]),
            None,
            "four payments are too few to judge"
        );
        assert_eq!(large(2_999, &[1_000; 5]), None);
        assert_eq!(large(3_000, &[1_000; 5]), Some((1_000, 3)));
        let months = ["2026-11", "2026-10", "2026-09"].map(String::from);
        let charge = |period: &str, amount: i64, day: u32| Charge {
            period: period.into(),
            amount,
            day,
        };
        let monthly = |a: i64, b: i64| {
            vec![
                charge("2026-11", 1_599, 14),
                charge("2026-10", a, 14),
                charge("2026-09", b, 13),
            ]
        };
        assert!(recurring(1_599, 14, &months, &monthly(1_599, 1_599)));
        assert!(
            recurring(1_599, 14, &months, &monthly(1_650, 1_560)),
            "within 5 %"
        );
        assert!(
            !recurring(1_599, 14, &months, &monthly(1_599, 1_800)),
            "not the same amount"
        );
        let mut missing = monthly(1_599, 1_599);
        missing.pop();
        assert!(!recurring(1_599, 14, &months, &missing), "a month missing");
        let mut twice = monthly(1_599, 1_599);
        twice.push(charge("2026-10", 1_599, 28));
        assert!(
            !recurring(1_599, 14, &months, &twice),
            "a shop visited twice a month"
        );
        let mut moved = monthly(1_599, 1_599);
        moved[1].day = 25;
        assert!(
            !recurring(1_599, 14, &months, &moved),
            "not around the same day"
        );
        let jan = "2026-01-15T00:00:00Z".parse().unwrap();
        assert_eq!(
            months_back(jan, 3),
            ["2026-01", "2025-12", "2025-11", "2025-10"]
        );
        assert_eq!(payee("NETFLIX.COM 0042"), "netflix.com");
        assert_eq!(payee("SPOTIFY P0042"), "spotify");
        assert_eq!(payee("  Corner   GROCER! "), "corner grocer");
        assert_eq!(amount(-1_599, "EUR"), "-15.99");
        assert_eq!(amount(1_200, "JPY"), "1200");
    }

    #[tokio::test]
    async fn a_category_well_above_its_average_is_told_once_a_month() {
        let r = rig(None).await;
        r.feed(debit(1, 10_000, "Groceries", "ACME", "2026-08-05"))
            .await;
        r.feed(debit(2, 12_000, "groceries", "ACME", "2026-09-05"))
            .await;
        r.feed(debit(3, 14_000, "groceries", "ACME", "2026-10-05"))
            .await;
        assert_eq!(
            r.feed(debit(4, 10_000, "groceries", "Market", "2026-11-03"))
                .await,
            vec![]
        );
        let told = r
            .feed(debit(5, 9_000, "groceries", "Market", "2026-11-20"))
            .await;
        assert_eq!(told.len(), 1, "{told:?}");
        let (kind, data) = &told[0];
        assert_eq!(kind, "spending_spike");
        assert_eq!(data["title"], "Groceries is up 58 % this month");
        assert_eq!(
            data["body"],
            "You spent 190.00 EUR on groceries so far in November, 58 % more than your 3-month average of 120.00 EUR."
        );
        assert_eq!(data["period"], "2026-11");
        assert_eq!(
            r.feed(debit(6, 5_000, "groceries", "Market", "2026-11-25"))
                .await,
            vec![],
            "once a month"
        );
    }

    #[tokio::test]
    async fn a_large_payment_is_told_and_a_replay_is_not() {
        let r = rig(None).await;
        for i in 0..5 {
            assert_eq!(
                r.feed(debit(i, 2_000, "dining", "Cafe", "2026-11-01"))
                    .await,
                vec![]
            );
        }
        let t = debit(10, 65_000, "electronics", "Big Shop", "2026-11-12");
        let told = r.feed(t).await;
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].0, "large_transaction");
        assert_eq!(
            told[0].1["body"],
            "Big shop charged 650.00 EUR on 12 November, about 32× your usual payment of 20.00 EUR."
        );
        // The same transaction again, under another event: nothing new.
        assert_eq!(
            r.feed(debit(10, 65_000, "electronics", "Big Shop", "2026-11-12"))
                .await,
            vec![]
        );
        // Income is not spending.
        let mut credit = debit(11, 900_000, "income", "Employer", "2026-11-25");
        credit.direction = "credit".into();
        assert_eq!(r.feed(credit).await, vec![]);
    }

    #[tokio::test]
    async fn a_monthly_charge_from_one_payee_is_told_once() {
        let r = rig(None).await;
        assert_eq!(
            r.feed(debit(
                1,
                1_599,
                "subscriptions",
                "NETFLIX.COM 0001",
                "2026-09-14"
            ))
            .await,
            vec![]
        );
        assert_eq!(
            r.feed(debit(
                2,
                1_599,
                "subscriptions",
                "NETFLIX.COM 0002",
                "2026-10-14"
            ))
            .await,
            vec![]
        );
        let told = r
            .feed(debit(
                3,
                1_599,
                "subscriptions",
                "Netflix.com 0003",
                "2026-11-14",
            ))
            .await;
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].0, "recurring_charge");
        assert_eq!(told[0].1["title"], "Recurring charge: Netflix.com");
        assert!(
            told[0].1["body"]
                .as_str()
                .unwrap()
                .contains("saves about 191.88 EUR a year"),
            "{told:?}"
        );
        assert_eq!(
            r.feed(debit(
                4,
                1_599,
                "subscriptions",
                "NETFLIX.COM",
                "2026-12-14"
            ))
            .await,
            vec![],
            "once"
        );
    }

    /// What the stand-in model was sent: the `Authorization` header and the JSON body.
    type Asked = Arc<Mutex<Vec<(Option<String>, Value)>>>;

    /// A stand-in for an OpenAI-compatible endpoint on 127.0.0.1: answers `content` after
    /// `delay`, with `status`; keeps what it was sent.
    async fn model(
        status: u16,
        delay: Duration,
        content: &str,
    ) -> (String, Arc<Mutex<Vec<(Option<String>, Value)>>>) {
        use axum::{Json, Router, http::HeaderMap, routing::post};
        let seen: Asked = Arc::default();
        let kept = seen.clone();
        let content = content.to_string();
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, Json(body): Json<Value>| {
                let kept = kept.clone();
                let content = content.clone();
                async move {
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                    kept.lock().unwrap().push((auth, body));
                    tokio::time::sleep(delay).await;
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]})),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn llm(url: &str, timeout: &str) -> Llm {
        let env = [
            (ENV_LLM_URL, url.to_string()),
            (ENV_LLM_MODEL, "test-model".to_string()),
            (ENV_LLM_API_KEY, "sk-test".to_string()),
            (ENV_LLM_TIMEOUT, timeout.to_string()),
        ];
        Llm::from_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap()
            .unwrap()
    }

    /// A history that makes the next 65.00 payment large.
    async fn history(r: &Rig) {
        for i in 0..5 {
            r.feed(debit(i, 1_000, "dining", "Cafe", "2026-11-01"))
                .await;
        }
    }

    #[tokio::test]
    async fn a_configured_model_words_the_insight_from_its_facts() {
        let (url, seen) = model(
            200,
            Duration::ZERO,
            "  That 65 EUR at Big Shop is well above your usual.  ",
        )
        .await;
        let r = rig(Some(llm(&url, "2s"))).await;
        history(&r).await;
        let told = r
            .feed(debit(9, 6_500, "electronics", "Big Shop", "2026-11-12"))
            .await;
        assert_eq!(
            told[0].1["body"],
            "That 65 EUR at Big Shop is well above your usual."
        );
        assert_eq!(
            told[0].1["title"], "A large payment: 65.00 EUR",
            "the title stays the rule's"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "asked once");
        let (auth, body) = &seen[0];
        assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(body["model"], "test-model");
        let facts: Value =
            serde_json::from_str(body["messages"][1]["content"].as_str().unwrap()).unwrap();
        assert_eq!(facts["amount_minor"], 6_500);
        assert_eq!(facts["usual_minor"], 1_000);
        assert_eq!(facts["payee"], "big shop");
    }

    #[tokio::test]
    async fn a_slow_or_failing_model_leaves_the_rule_based_text() {
        let rule =
            "Big shop charged 65.00 EUR on 12 November, about 6× your usual payment of 10.00 EUR.";
        let (slow, seen) = model(200, Duration::from_secs(5), "too late").await;
        let r = rig(Some(llm(&slow, "300ms"))).await;
        history(&r).await;
        let told = r
            .feed(debit(9, 6_500, "electronics", "Big Shop", "2026-11-12"))
            .await;
        assert_eq!(told[0].1["body"], rule, "past the timeout");
        assert_eq!(seen.lock().unwrap().len(), 1);
        let (failing, _) = model(500, Duration::ZERO, "oops").await;
        let r = rig(Some(llm(&failing, "2s"))).await;
        history(&r).await;
        let told = r
            .feed(debit(9, 6_500, "electronics", "Big Shop", "2026-11-12"))
            .await;
        assert_eq!(told[0].1["body"], rule, "an error status");
        let (empty, _) = model(200, Duration::ZERO, "   ").await;
        let r = rig(Some(llm(&empty, "2s"))).await;
        history(&r).await;
        let told = r
            .feed(debit(9, 6_500, "electronics", "Big Shop", "2026-11-12"))
            .await;
        assert_eq!(told[0].1["body"], rule, "no text");
    }

    #[test]
    fn model_settings_are_checked() {
        let none = Llm::from_env(|_| None).unwrap();
        assert!(none.is_none(), "unset: rule-based, no network");
        let bad_url =
            Llm::from_env(|k| (k == ENV_LLM_URL).then(|| "api.example".to_string())).unwrap_err();
        assert_eq!(
            bad_url,
            "INSIGHTS_LLM_URL=\"api.example\": not an http(s) URL"
        );
        let bad_timeout = Llm::from_env(|k| match k {
            ENV_LLM_URL => Some("http://127.0.0.1:1/v1".into()),
            ENV_LLM_TIMEOUT => Some("soon".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(
            bad_timeout.starts_with("INSIGHTS_LLM_TIMEOUT=\"soon\": "),
            "{bad_timeout}"
        );
    }
}
