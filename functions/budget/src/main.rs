//! budget: the analytics step of the finance companion. Transactions and budgets come in; a
//! projection of spend per user, category and month is kept in the delivery's transaction;
//! `finance.budget.warning` goes out the first time spend reaches 80 % of a budget's limit and
//! `finance.budget.exceeded` the first time it passes 100 %, each at most once per budget (a
//! budget is one month), whatever the redeliveries, replicas or the order of updates.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::{AnyConnection, Row};
use zerofn::{Typed, prelude::*};

#[derive(Debug, Deserialize)]
struct TransactionCreated {
    transaction_id: String,
    user_id: String,
    amount_minor: i64,
    currency: String,
    direction: String,
    category: String,
    occurred_at: DateTime<Utc>,
}

/// What `finance.transaction.updated` may change that counts here.
#[derive(Debug, Deserialize)]
struct Changes {
    amount_minor: Option<i64>,
    category: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TransactionUpdated {
    transaction_id: String,
    user_id: String,
    version: i64,
    changes: Changes,
}

#[derive(Debug, Deserialize)]
struct BudgetCreated {
    budget_id: String,
    user_id: String,
    category: String,
    period: String,
    currency: String,
    limit_minor: i64,
}

/// The three event types budget consumes; the CloudEvent type picks the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Input {
    #[serde(rename = "finance.transaction.created")]
    Created(TransactionCreated),
    #[serde(rename = "finance.transaction.updated")]
    Updated(TransactionUpdated),
    #[serde(rename = "finance.budget.created")]
    Budget(BudgetCreated),
}

impl Input {
    fn user_id(&self) -> &str {
        match self {
            Input::Created(t) => &t.user_id,
            Input::Updated(u) => &u.user_id,
            Input::Budget(b) => &b.user_id,
        }
    }
}

async fn handle(event: Event<Typed<Input>>) -> Result<Vec<Emit>, HandlerError> {
    let mut guard = event.conn().await?;
    let conn: &mut AnyConnection = &mut guard;
    let user = event.data.user_id();
    // Deliveries for one user run one after the other from here to the commit.
    sqlx::query(
        "INSERT INTO budget_users (user_id, touched) VALUES ($1, 1) \
         ON CONFLICT (user_id) DO UPDATE SET touched = budget_users.touched + 1",
    )
    .bind(user)
    .execute(&mut *conn)
    .await?;
    // The budgets (category, month) whose spend this event may have moved.
    let moved: Vec<(String, String)> = match &*event.data {
        Input::Created(t) => {
            let period = t.occurred_at.format("%Y-%m").to_string();
            let debit = t.direction == "debit";
            sqlx::query(
                "INSERT INTO budget_transactions (transaction_id, user_id, category, period, currency, spend_minor, debit, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1) ON CONFLICT (transaction_id) DO NOTHING",
            )
            .bind(&t.transaction_id)
            .bind(&t.user_id)
            .bind(t.category.to_lowercase())
            .bind(&period)
            .bind(&t.currency)
            .bind(if debit { t.amount_minor } else { 0 })
            .bind(i64::from(debit))
            .execute(&mut *conn)
            .await?;
            vec![(t.category.to_lowercase(), period)]
        }
        Input::Updated(u) => update(conn, u).await?,
        Input::Budget(b) => {
            sqlx::query(
                "INSERT INTO budget_limits (budget_id, user_id, category, period, currency, limit_minor) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (budget_id) DO NOTHING",
            )
            .bind(&b.budget_id)
            .bind(&b.user_id)
            .bind(b.category.to_lowercase())
            .bind(&b.period)
            .bind(&b.currency)
            .bind(b.limit_minor)
            .execute(&mut *conn)
            .await?;
            vec![(b.category.to_lowercase(), b.period.clone())]
        }
    };
    let mut emits = Vec::new();
    for (category, period) in moved {
        emits.extend(evaluate(conn, user, &category, &period).await?);
    }
    Ok(emits)
}

/// Apply an update in version order: an older or repeated version is ignored; a version past
/// the next waits (retryable) for the ones before it, as does an update of a transaction not
/// seen yet. Returns the budgets it moved (the old and the new category's).
async fn update(
    conn: &mut AnyConnection,
    u: &TransactionUpdated,
) -> Result<Vec<(String, String)>, HandlerError> {
    let row = sqlx::query(
        "SELECT category, period, spend_minor, debit, version FROM budget_transactions WHERE transaction_id = $1",
    )
    .bind(&u.transaction_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(HandlerError::retryable(format!(
            "transaction {} not seen yet: waiting for its finance.transaction.created",
            u.transaction_id
        )));
    };
    let version: i64 = row.try_get("version")?;
    match order(version, u.version) {
        Order::Stale => {
            tracing::info!(transaction_id = %u.transaction_id, version = u.version, seen = version, "an update already applied: ignored");
            return Ok(vec![]);
        }
        Order::Early => {
            return Err(HandlerError::retryable(format!(
                "transaction {} version {} came before version {}: waiting for it",
                u.transaction_id,
                u.version,
                version + 1
            )));
        }
        Order::Next => {}
    }
    let old_category: String = row.try_get("category")?;
    let period: String = row.try_get("period")?;
    let debit = row.try_get::<i64, _>("debit")? == 1;
    let category = u
        .changes
        .category
        .as_deref()
        .map_or_else(|| old_category.clone(), str::to_lowercase);
    let spend = match (debit, u.changes.amount_minor) {
        (true, Some(a)) => a,
        _ => row.try_get("spend_minor")?,
    };
    sqlx::query(
        "UPDATE budget_transactions SET category = $1, spend_minor = $2, version = $3 WHERE transaction_id = $4",
    )
    .bind(&category)
    .bind(spend)
    .bind(u.version)
    .bind(&u.transaction_id)
    .execute(&mut *conn)
    .await?;
    let mut moved = vec![(old_category, period.clone())];
    if category != moved[0].0 {
        moved.push((category, period));
    }
    Ok(moved)
}

/// Where an update stands against the version last applied.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    Stale,
    Next,
    Early,
}

fn order(applied: i64, incoming: i64) -> Order {
    match incoming - applied {
        d if d <= 0 => Order::Stale,
        1 => Order::Next,
        _ => Order::Early,
    }
}

/// The alerts due for the budget of `user`, `category` and `period` (if it has one), each
/// recorded so that it is sent once.
async fn evaluate(
    conn: &mut AnyConnection,
    user: &str,
    category: &str,
    period: &str,
) -> Result<Vec<Emit>, HandlerError> {
    let budget = sqlx::query(
        "SELECT budget_id, currency, limit_minor FROM budget_limits WHERE user_id = $1 AND category = $2 AND period = $3",
    )
    .bind(user)
    .bind(category)
    .bind(period)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(budget) = budget else {
        return Ok(vec![]);
    };
    let budget_id: String = budget.try_get("budget_id")?;
    let currency: String = budget.try_get("currency")?;
    let limit: i64 = budget.try_get("limit_minor")?;
    let spent: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(spend_minor), 0) AS BIGINT) FROM budget_transactions \
         WHERE user_id = $1 AND category = $2 AND period = $3 AND currency = $4",
    )
    .bind(user)
    .bind(category)
    .bind(period)
    .bind(&currency)
    .fetch_one(&mut *conn)
    .await?;
    let sent: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM budget_alerts WHERE budget_id = $1")
            .bind(&budget_id)
            .fetch_all(&mut *conn)
            .await?;
    let sent = Sent {
        warning: sent.iter().any(|k| k == "warning"),
        exceeded: sent.iter().any(|k| k == "exceeded"),
    };
    let mut emits = Vec::new();
    for (alert, send) in due(limit, spent, sent) {
        let recorded = sqlx::query(
            "INSERT INTO budget_alerts (budget_id, kind, spent_minor) VALUES ($1, $2, $3) \
             ON CONFLICT (budget_id, kind) DO NOTHING",
        )
        .bind(&budget_id)
        .bind(alert.kind())
        .bind(spent)
        .execute(&mut *conn)
        .await?;
        if !send || recorded.rows_affected() != 1 {
            continue;
        }
        let mut data = json!({
            "budget_id": budget_id, "user_id": user, "category": category, "period": period,
            "currency": currency, "limit_minor": limit, "spent_minor": spent,
        });
        match alert {
            Alert::Warning => {
                data["percent_used"] = json!(percent(spent, limit));
                data["threshold_percent"] = json!(WARN_PERCENT);
            }
            Alert::Exceeded => data["over_by_minor"] = json!(spent - limit),
        }
        tracing::info!(budget_id = %budget_id, kind = alert.kind(), spent, limit, "budget alert");
        emits.push(
            Emit::new(alert.event_type(), &data)?
                .partition_key(user)
                .subject(&budget_id),
        );
    }
    Ok(emits)
}

/// The warning threshold, in percent of the limit.
const WARN_PERCENT: i64 = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alert {
    Warning,
    Exceeded,
}

impl Alert {
    fn kind(self) -> &'static str {
        match self {
            Alert::Warning => "warning",
            Alert::Exceeded => "exceeded",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Alert::Warning => "finance.budget.warning",
            Alert::Exceeded => "finance.budget.exceeded",
        }
    }
}

/// The alerts a budget has had.
#[derive(Clone, Copy, Debug, Default)]
struct Sent {
    warning: bool,
    exceeded: bool,
}

/// The alerts to record now, each with whether to send it: the warning the first time spend
/// reaches 80 % of `limit` without passing it, the exceeded alert the first time it passes
/// 100 %. A budget that goes past its limit before any warning gets the exceeded alert alone:
/// its warning is recorded unsent, so it never comes after.
fn due(limit: i64, spent: i64, sent: Sent) -> Vec<(Alert, bool)> {
    let (limit, spent) = (i128::from(limit), i128::from(spent));
    let mut due = Vec::new();
    if spent > limit {
        if !sent.warning {
            due.push((Alert::Warning, false));
        }
        if !sent.exceeded {
            due.push((Alert::Exceeded, true));
        }
    } else if spent * 100 >= limit * i128::from(WARN_PERCENT) && !sent.warning {
        due.push((Alert::Warning, true));
    }
    due
}

/// Percent of `limit` spent, to one decimal, rounded down (80.0 ≤ it ≤ 100.0 for a warning).
fn percent(spent: i64, limit: i64) -> f64 {
    let tenths = i128::from(spent) * 1000 / i128::from(limit.max(1));
    // At most 1000 tenths for a warning: exact in an f64.
    i64::try_from(tenths).unwrap_or(i64::MAX) as f64 / 10.0
}

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::run(handler_fn(handle), MANIFEST).await
}

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const MANIFEST: zerofn::ManifestSource = zerofn::manifest!().migrations(&MIGRATIONS);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;
    use zerofn::{EventData, contract::Contracts, testing};

    struct Rig {
        db: testing::TestDb,
    }

    async fn rig() -> Rig {
        Rig {
            db: testing::TestDb::open(MANIFEST).await.unwrap(),
        }
    }

    impl Rig {
        /// Deliver one event; its emitted events' types and data (checked against their
        /// contracts).
        async fn deliver(
            &self,
            ty: &str,
            data: Value,
        ) -> Result<Vec<(String, Value)>, HandlerError> {
            let input = Typed::<Input>::from_event(ty, data).unwrap();
            let emits = self
                .db
                .run(Event::test(input).with_type(ty), handle)
                .await?;
            let contracts = Contracts::embedded().unwrap();
            Ok(emits
                .iter()
                .map(|e| {
                    assert_eq!(
                        contracts.validate(e.ty(), e.data()),
                        Some(Ok(())),
                        "{:?}",
                        e.data()
                    );
                    (e.ty().to_string(), e.data().clone())
                })
                .collect())
        }

        async fn budget(&self, id: &str, category: &str, limit: i64) -> Vec<(String, Value)> {
            self.deliver(
                "finance.budget.created",
                json!({"budget_id": id, "user_id": "u-1", "category": category, "period": "2026-11",
                       "currency": "EUR", "limit_minor": limit, "created_at": "2026-11-01T00:00:00Z"}),
            )
            .await
            .unwrap()
        }

        async fn spend(&self, id: &str, category: &str, amount: i64) -> Vec<(String, Value)> {
            self.deliver(
                "finance.transaction.created",
                transaction(id, category, amount),
            )
            .await
            .unwrap()
        }

        async fn update(
            &self,
            id: &str,
            version: i64,
            changes: Value,
        ) -> Result<Vec<(String, Value)>, HandlerError> {
            self.deliver(
                "finance.transaction.updated",
                json!({"transaction_id": id, "user_id": "u-1", "version": version, "changes": changes,
                       "updated_at": "2026-11-20T00:00:00Z"}),
            )
            .await
        }
    }

    fn transaction(id: &str, category: &str, amount: i64) -> Value {
        json!({"transaction_id": id, "user_id": "u-1", "account_id": "main", "amount_minor": amount,
               "currency": "EUR", "direction": "debit", "category": category,
               "occurred_at": "2026-11-10T12:00:00Z"})
    }

    fn kinds(emitted: &[(String, Value)]) -> Vec<&str> {
        emitted.iter().map(|(t, _)| t.as_str()).collect()
    }

    const B: &str = "0193a7c2-5000-7000-8000-000000000001";
    const T1: &str = "0193a7c2-6000-7000-8000-000000000001";
    const T2: &str = "0193a7c2-6000-7000-8000-000000000002";
    const T3: &str = "0193a7c2-6000-7000-8000-000000000003";

    #[test]
    fn the_alerts_due() {
        let none = Sent::default();
        let warned = Sent {
            warning: true,
            exceeded: false,
        };
        let both = Sent {
            warning: true,
            exceeded: true,
        };
        assert_eq!(due(40_000, 31_999, none), vec![]);
        assert_eq!(
            due(40_000, 32_000, none),
            vec![(Alert::Warning, true)],
            "80 % exactly"
        );
        assert_eq!(
            due(40_000, 40_000, none),
            vec![(Alert::Warning, true)],
            "100 % is not past it"
        );
        assert_eq!(due(40_000, 40_000, warned), vec![]);
        assert_eq!(due(40_000, 40_001, warned), vec![(Alert::Exceeded, true)]);
        assert_eq!(
            due(40_000, 90_000, none),
            vec![(Alert::Warning, false), (Alert::Exceeded, true)],
            "straight past the limit: the exceeded alert alone"
        );
        assert_eq!(due(40_000, 90_000, both), vec![]);
        assert_eq!(
            due(i64::MAX, i64::MAX, none),
            vec![(Alert::Warning, true)],
            "no overflow"
        );
        assert!((percent(32_000, 40_000) - 80.0).abs() < f64::EPSILON);
        assert!((percent(33_333, 40_000) - 83.3).abs() < 1e-9);
    }

    #[test]
    fn updates_apply_in_version_order() {
        assert_eq!(order(1, 1), Order::Stale);
        assert_eq!(order(2, 1), Order::Stale);
        assert_eq!(order(1, 2), Order::Next);
        assert_eq!(order(1, 3), Order::Early);
    }

    #[tokio::test]
    async fn a_warning_at_80_percent_then_an_exceeded_alert_each_once() {
        let r = rig().await;
        assert_eq!(r.budget(B, "Groceries", 40_000).await, vec![]);
        assert_eq!(r.spend(T1, "groceries", 20_000).await, vec![], "50 %");
        let w = r.spend(T2, "groceries", 13_000).await;
        assert_eq!(kinds(&w), vec!["finance.budget.warning"], "82.5 %");
        assert_eq!(w[0].1["percent_used"], 82.5);
        assert_eq!(w[0].1["spent_minor"], 33_000);
        let x = r.spend(T3, "groceries", 9_000).await;
        assert_eq!(kinds(&x), vec!["finance.budget.exceeded"]);
        assert_eq!(x[0].1["over_by_minor"], 2_000);
        // The same transaction again (a replay under another event id): counted once.
        assert_eq!(r.spend(T3, "groceries", 9_000).await, vec![]);
        assert_eq!(
            r.spend("0193a7c2-6000-7000-8000-000000000004", "groceries", 5_000)
                .await,
            vec![],
            "once each"
        );
        // Other categories, months and currencies do not count.
        let mut other = transaction("0193a7c2-6000-7000-8000-000000000005", "dining", 90_000);
        assert_eq!(
            r.deliver("finance.transaction.created", other.clone())
                .await
                .unwrap(),
            vec![]
        );
        other["transaction_id"] = json!("0193a7c2-6000-7000-8000-000000000006");
        other["category"] = json!("groceries");
        other["occurred_at"] = json!("2026-12-01T00:00:00Z");
        assert_eq!(
            r.deliver("finance.transaction.created", other)
                .await
                .unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn income_and_other_currencies_do_not_count() {
        let r = rig().await;
        r.budget(B, "groceries", 10_000).await;
        let mut credit = transaction(T1, "groceries", 50_000);
        credit["direction"] = json!("credit");
        assert_eq!(
            r.deliver("finance.transaction.created", credit)
                .await
                .unwrap(),
            vec![]
        );
        let mut dollars = transaction(T2, "groceries", 50_000);
        dollars["currency"] = json!("USD");
        assert_eq!(
            r.deliver("finance.transaction.created", dollars)
                .await
                .unwrap(),
            vec![]
        );
        assert_eq!(
            kinds(&r.spend(T3, "groceries", 8_000).await),
            vec!["finance.budget.warning"]
        );
    }

    #[tokio::test]
    async fn straight_past_the_limit_is_one_exceeded_alert_and_no_later_warning() {
        let r = rig().await;
        r.budget(B, "groceries", 10_000).await;
        assert_eq!(
            kinds(&r.spend(T1, "groceries", 12_000).await),
            vec!["finance.budget.exceeded"]
        );
        // Brought back under, then to 90 %: the warning's moment has passed.
        assert_eq!(
            r.update(T1, 2, json!({"amount_minor": 9_000}))
                .await
                .unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn a_budget_created_after_the_spending_alerts_at_once() {
        let r = rig().await;
        r.spend(T1, "groceries", 8_500).await;
        assert_eq!(
            kinds(&r.budget(B, "groceries", 10_000).await),
            vec!["finance.budget.warning"]
        );
    }

    #[tokio::test]
    async fn a_transaction_moved_between_categories_moves_its_spend() {
        let r = rig().await;
        r.budget(B, "groceries", 10_000).await;
        r.budget("0193a7c2-5000-7000-8000-000000000002", "dining", 10_000)
            .await;
        assert_eq!(
            kinds(&r.spend(T1, "dining", 9_000).await),
            vec!["finance.budget.warning"]
        );
        assert_eq!(r.spend(T2, "groceries", 5_000).await, vec![]);
        // 9 000 moves from dining to groceries: groceries at 140 %.
        let moved = r
            .update(T1, 2, json!({"category": "Groceries"}))
            .await
            .unwrap();
        assert_eq!(kinds(&moved), vec!["finance.budget.exceeded"]);
        assert_eq!(moved[0].1["budget_id"], B);
        assert_eq!(moved[0].1["spent_minor"], 14_000);
        // Dining is back to 0; more dining spend does not warn twice.
        assert_eq!(r.spend(T3, "dining", 9_500).await, vec![]);
    }

    #[tokio::test]
    async fn an_amount_update_counts_the_new_amount() {
        let r = rig().await;
        r.budget(B, "groceries", 10_000).await;
        assert_eq!(r.spend(T1, "groceries", 5_000).await, vec![]);
        let up = r
            .update(T1, 2, json!({"amount_minor": 8_000, "description": "ACME"}))
            .await
            .unwrap();
        assert_eq!(kinds(&up), vec!["finance.budget.warning"]);
        assert_eq!(up[0].1["spent_minor"], 8_000, "replaced, not added");
        let over = r
            .update(T1, 3, json!({"amount_minor": 10_001}))
            .await
            .unwrap();
        assert_eq!(kinds(&over), vec!["finance.budget.exceeded"]);
    }

    #[tokio::test]
    async fn updates_wait_for_what_comes_before_them_and_ignore_what_is_old() {
        let r = rig().await;
        r.budget(B, "groceries", 10_000).await;
        let early = r
            .update(T1, 2, json!({"amount_minor": 9_000}))
            .await
            .unwrap_err();
        assert!(
            !early.is_permanent(),
            "retried until the transaction arrives: {early}"
        );
        r.spend(T1, "groceries", 1_000).await;
        let gap = r
            .update(T1, 3, json!({"amount_minor": 9_500}))
            .await
            .unwrap_err();
        assert!(gap.to_string().contains("waiting for it"), "{gap}");
        assert_eq!(
            kinds(
                &r.update(T1, 2, json!({"amount_minor": 9_000}))
                    .await
                    .unwrap()
            ),
            vec!["finance.budget.warning"]
        );
        assert_eq!(
            r.update(T1, 2, json!({"amount_minor": 1})).await.unwrap(),
            vec![],
            "an old version changes nothing"
        );
        assert_eq!(
            kinds(
                &r.update(T1, 3, json!({"amount_minor": 10_500}))
                    .await
                    .unwrap()
            ),
            vec!["finance.budget.exceeded"]
        );
    }
}
