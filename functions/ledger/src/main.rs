//! ledger: the finance companion's system of record. Budgets and transactions are rows; every
//! write emits its event (`finance.budget.created`, `finance.transaction.created` /
//! `.updated`) through the outbox in the write's own transaction, so a row stored is an event
//! published, never one without the other. An `Idempotency-Key` makes a retried POST answer
//! the first response and write nothing new.
//!
//! - `POST /budgets` `{user_id, category, period, currency, limit_minor}` → 201; the same
//!   user, category and period again → 409. `GET /budgets?user_id=` with the spend so far.
//! - `POST /transactions` `{user_id, amount_minor, currency, description, occurred_at,
//!   category?, merchant?, account_id?}` → 201 (negative amounts are spending; without a
//!   category, categorize picks one). `PATCH /transactions/{id}` (amount, category,
//!   description, merchant) → 200. `GET /transactions?user_id=&from=&to=&category=`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, patch},
};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::Row;
use zerofn::{Emit, Fields, Write, WriteError, invalid};

/// Where categorize answers (`POST {url}` with `{description, amount_minor}`). Unset: the
/// gateway's path to it, `$ZEROFN_GATEWAY_URL/fn/categorize/categorize`.
const ENV_CATEGORIZE_URL: &str = "LEDGER_CATEGORIZE_URL";

/// How long a categorize call may take before the write answers 503.
const CATEGORIZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const MANIFEST: zerofn::ManifestSource = zerofn::manifest!()
    .migrations(&MIGRATIONS)
    .sql_routes(routes);

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::serve(MANIFEST).await
}

fn routes(pool: sqlx::AnyPool) -> Router {
    let categorize = std::env::var(ENV_CATEGORIZE_URL).ok().or_else(|| {
        std::env::var(zerofn::config::ENV_GATEWAY_URL)
            .ok()
            .map(|gw| format!("{}/fn/categorize/categorize", gw.trim_end_matches('/')))
    });
    Router::new()
        .route("/budgets", get(list_budgets).post(create_budget))
        .route(
            "/transactions",
            get(list_transactions).post(create_transaction),
        )
        .route("/transactions/{id}", patch(update_transaction))
        .with_state(Ledger {
            pool,
            categorize,
            http: reqwest::Client::new(),
        })
}

#[derive(Clone)]
struct Ledger {
    pool: sqlx::AnyPool,
    /// categorize's URL; none configured: a transaction needs its category.
    categorize: Option<String>,
    http: reqwest::Client,
}

// ---------------------------------------------------------------------------------------------
// Budgets

#[derive(Debug, Serialize)]
struct Budget {
    budget_id: String,
    user_id: String,
    category: String,
    period: String,
    currency: String,
    limit_minor: i64,
}

/// `finance.budget.created`.
#[derive(Serialize)]
struct BudgetCreated<'a> {
    #[serde(flatten)]
    budget: &'a Budget,
    created_at: String,
}

async fn create_budget(mut write: Write, body: Bytes) -> Result<Response, WriteError> {
    let mut f = Fields::parse(&body)?;
    let budget = Budget {
        budget_id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id(&mut f)?,
        category: category(&f.required_str("category")?, "category")?,
        period: period(&f.required_str("period")?)?,
        currency: currency(&f.required_str("currency")?)?,
        limit_minor: match f.required_int("limit_minor")? {
            n if n > 0 => n,
            n => return Err(invalid("limit_minor", format!("must be above 0, got {n}"))),
        },
    };
    f.no_other_fields()?;
    let now = Utc::now();
    {
        let mut conn = write.conn().await?;
        let inserted = sqlx::query(
            "INSERT INTO ledger_budgets (budget_id, user_id, category, period, currency, limit_minor, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&budget.budget_id)
        .bind(&budget.user_id)
        .bind(&budget.category)
        .bind(&budget.period)
        .bind(&budget.currency)
        .bind(budget.limit_minor)
        .bind(now.timestamp_millis())
        .execute(&mut **conn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(WriteError {
                    status: StatusCode::CONFLICT,
                    code: "budget_exists",
                    message: format!(
                        "user {} already has a {} budget for {}",
                        budget.user_id, budget.category, budget.period
                    ),
                });
            }
            Err(e) => return Err(WriteError::internal(e)),
        }
    }
    let created = BudgetCreated {
        budget: &budget,
        created_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
    };
    write.emit(
        Emit::new("finance.budget.created", &created)?
            .partition_key(&budget.user_id)
            .subject(&budget.budget_id),
    );
    write.respond(StatusCode::CREATED, &budget).await
}

#[derive(Deserialize)]
struct ByUser {
    user_id: Option<String>,
}

/// The user's budgets, newest period first, each with what was spent in it so far (debits
/// in the budget's category, period and currency).
async fn list_budgets(State(l): State<Ledger>, Query(q): Query<ByUser>) -> Response {
    let user = match q.user_id.as_deref().map(check_user_id) {
        Some(Ok(u)) => u,
        Some(Err(e)) => return e.into_response(),
        None => return invalid("user_id", "is required: whose budgets to list").into_response(),
    };
    let rows = sqlx::query(
        "SELECT b.budget_id, b.category, b.period, b.currency, b.limit_minor, \
         CAST(COALESCE((SELECT -SUM(t.amount_minor) FROM ledger_transactions t \
           WHERE t.user_id = b.user_id AND t.category = b.category AND t.period = b.period \
           AND t.currency = b.currency AND t.amount_minor < 0), 0) AS BIGINT) AS spent_minor \
         FROM ledger_budgets b WHERE b.user_id = $1 ORDER BY b.period DESC, b.category",
    )
    .bind(&user)
    .fetch_all(&l.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return WriteError::internal(e).into_response(),
    };
    let budgets: Result<Vec<Value>, sqlx::Error> = rows
        .iter()
        .map(|r| {
            Ok(json!({
                "budget_id": r.try_get::<String, _>("budget_id")?,
                "user_id": user,
                "category": r.try_get::<String, _>("category")?,
                "period": r.try_get::<String, _>("period")?,
                "currency": r.try_get::<String, _>("currency")?,
                "limit_minor": r.try_get::<i64, _>("limit_minor")?,
                "spent_minor": r.try_get::<i64, _>("spent_minor")?,
            }))
        })
        .collect();
    match budgets {
        Ok(b) => Json(json!({ "budgets": b })).into_response(),
        Err(e) => WriteError::internal(e).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Transactions

#[derive(Debug, Clone, Serialize, PartialEq)]
struct Transaction {
    transaction_id: String,
    user_id: String,
    account_id: String,
    /// Negative: spending.
    amount_minor: i64,
    currency: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    merchant: Option<String>,
    category: String,
    occurred_at: String,
    version: i64,
}

impl Transaction {
    /// `finance.transaction.created`: the amount as a positive number and a direction.
    fn created(&self) -> Value {
        let mut data = json!({
            "transaction_id": self.transaction_id,
            "user_id": self.user_id,
            "account_id": self.account_id,
            "amount_minor": self.amount_minor.unsigned_abs(),
            "currency": self.currency,
            "direction": if self.amount_minor < 0 { "debit" } else { "credit" },
            "category": self.category,
            "description": self.description,
            "occurred_at": self.occurred_at,
        });
        if let Some(m) = &self.merchant {
            data["merchant"] = json!(m);
        }
        data
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Transaction, sqlx::Error> {
        Ok(Transaction {
            transaction_id: r.try_get("transaction_id")?,
            user_id: r.try_get("user_id")?,
            account_id: r.try_get("account_id")?,
            amount_minor: r.try_get("amount_minor")?,
            currency: r.try_get("currency")?,
            description: r.try_get("description")?,
            merchant: r.try_get("merchant")?,
            category: r.try_get("category")?,
            occurred_at: r.try_get("occurred_at")?,
            version: r.try_get("version")?,
        })
    }
}

const TRANSACTION_COLUMNS: &str = "transaction_id, user_id, account_id, amount_minor, currency, \
    description, merchant, category, occurred_at, version";

async fn create_transaction(
    State(l): State<Ledger>,
    mut write: Write,
    body: Bytes,
) -> Result<Response, WriteError> {
    let mut f = Fields::parse(&body)?;
    let user_id = user_id(&mut f)?;
    let amount_minor = match f.required_int("amount_minor")? {
        0 => return Err(invalid("amount_minor", "must not be 0")),
        n => n,
    };
    let currency = currency(&f.required_str("currency")?)?;
    let description = description(f.required_str("description")?)?;
    let occurred_at = occurred_at(&f.required_str("occurred_at")?)?;
    let category = match f.optional_str("category")? {
        Some(c) => Some(category(&c, "category")?),
        None => None,
    };
    let merchant = f.optional_str("merchant")?.map(merchant).transpose()?;
    let account_id = match f.optional_str("account_id")? {
        Some(a) if (1..=64).contains(&a.len()) => a.to_string(),
        Some(_) => return Err(invalid("account_id", "must be 1 to 64 characters")),
        None => "main".to_string(),
    };
    f.no_other_fields()?;
    let category = match category {
        Some(c) => c,
        None => l.categorize(&description, amount_minor).await?,
    };
    let t = Transaction {
        transaction_id: uuid::Uuid::now_v7().to_string(),
        user_id,
        account_id,
        amount_minor,
        currency,
        description,
        merchant,
        category,
        occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        version: 1,
    };
    let now = Utc::now().timestamp_millis();
    {
        let mut conn = write.conn().await?;
        sqlx::query(
            "INSERT INTO ledger_transactions (transaction_id, user_id, account_id, amount_minor, currency, \
             description, merchant, category, occurred_at, period, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        )
        .bind(&t.transaction_id)
        .bind(&t.user_id)
        .bind(&t.account_id)
        .bind(t.amount_minor)
        .bind(&t.currency)
        .bind(&t.description)
        .bind(&t.merchant)
        .bind(&t.category)
        .bind(&t.occurred_at)
        .bind(occurred_at.format("%Y-%m").to_string())
        .bind(t.version)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map_err(WriteError::internal)?;
    }
    write.emit(
        Emit::new("finance.transaction.created", &t.created())?
            .partition_key(&t.user_id)
            .subject(&t.transaction_id),
    );
    write.respond(StatusCode::CREATED, &t).await
}

impl Ledger {
    /// The category categorize suggests; unreachable or failing: a 503 the client retries.
    async fn categorize(&self, description: &str, amount_minor: i64) -> Result<String, WriteError> {
        let unavailable = |why: String| WriteError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "categorize_unavailable",
            message: format!("no category given and categorize could not pick one: {why}"),
        };
        let Some(url) = &self.categorize else {
            return Err(unavailable(format!(
                "{ENV_CATEGORIZE_URL} (or {}) is not set",
                zerofn::config::ENV_GATEWAY_URL
            )));
        };
        #[derive(Deserialize)]
        struct Suggestion {
            category: String,
        }
        // The call joins the request's trace.
        let traceparent =
            zerofn::edge::traceparent_for(&zerofn::prelude::tracing::Span::current(), None);
        let response = self
            .http
            .post(url)
            .header("traceparent", traceparent)
            .timeout(CATEGORIZE_TIMEOUT)
            .json(&json!({"description": description, "amount_minor": amount_minor}))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("it answered {}", response.status())));
        }
        let s: Suggestion = response
            .json()
            .await
            .map_err(|e| unavailable(format!("its answer: {e}")))?;
        category(&s.category, "category").map_err(|e| unavailable(e.message))
    }
}

async fn update_transaction(
    mut write: Write,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, WriteError> {
    let mut f = Fields::parse(&body)?;
    let amount_minor = f.optional_int("amount_minor")?;
    let new_category = match f.optional_str("category")? {
        Some(c) => Some(category(&c, "category")?),
        None => None,
    };
    let new_description = f
        .optional_str("description")?
        .map(description)
        .transpose()?;
    let new_merchant = f.optional_str("merchant")?.map(merchant).transpose()?;
    f.no_other_fields()?;
    let mut conn = write.conn().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSACTION_COLUMNS} FROM ledger_transactions WHERE transaction_id = $1"
    )))
    .bind(&id)
    .fetch_optional(&mut **conn)
    .await
    .map_err(WriteError::internal)?;
    let Some(row) = row else {
        return Err(WriteError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no transaction {id}"),
        });
    };
    let before = Transaction::from_row(&row).map_err(WriteError::internal)?;
    let mut after = before.clone();
    let mut changes = Map::new();
    if let Some(a) = amount_minor.filter(|a| *a != before.amount_minor) {
        if a == 0 || (a < 0) != (before.amount_minor < 0) {
            return Err(invalid(
                "amount_minor",
                format!(
                    "cannot change {} to {a}: a {} stays one (post a new transaction instead)",
                    before.amount_minor,
                    if before.amount_minor < 0 {
                        "debit"
                    } else {
                        "credit"
                    }
                ),
            ));
        }
        after.amount_minor = a;
        changes.insert("amount_minor".into(), json!(a.unsigned_abs()));
    }
    if let Some(c) = new_category.filter(|c| *c != before.category) {
        changes.insert("category".into(), json!(c));
        after.category = c;
    }
    if let Some(d) = new_description.filter(|d| *d != before.description) {
        changes.insert("description".into(), json!(d));
        after.description = d;
    }
    if let Some(m) = new_merchant.filter(|m| before.merchant.as_ref() != Some(m)) {
        changes.insert("merchant".into(), json!(m));
        after.merchant = Some(m);
    }
    if changes.is_empty() {
        drop(conn);
        // Nothing to change: nothing written, nothing emitted.
        return Ok(Json(before).into_response());
    }
    after.version = before.version + 1;
    let updated = sqlx::query(
        "UPDATE ledger_transactions SET amount_minor = $1, category = $2, description = $3, merchant = $4, \
         version = $5, updated_at = $6 WHERE transaction_id = $7 AND version = $8",
    )
    .bind(after.amount_minor)
    .bind(&after.category)
    .bind(&after.description)
    .bind(&after.merchant)
    .bind(after.version)
    .bind(Utc::now().timestamp_millis())
    .bind(&id)
    .bind(before.version)
    .execute(&mut **conn)
    .await
    .map_err(WriteError::internal)?;
    drop(conn);
    if updated.rows_affected() != 1 {
        return Err(WriteError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!("transaction {id} changed meanwhile: read it again and retry"),
        });
    }
    let event = json!({
        "transaction_id": after.transaction_id,
        "user_id": after.user_id,
        "version": after.version,
        "changes": changes,
        "updated_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    write.emit(
        Emit::new("finance.transaction.updated", &event)?
            .partition_key(&after.user_id)
            .subject(&after.transaction_id),
    );
    write.respond(StatusCode::OK, &after).await
}

#[derive(Deserialize)]
struct TransactionQuery {
    user_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    category: Option<String>,
    limit: Option<i64>,
}

/// The user's transactions, oldest first: `from` (inclusive) and `to` (exclusive) are dates
/// (`YYYY-MM-DD`) or RFC 3339 times.
async fn list_transactions(State(l): State<Ledger>, Query(q): Query<TransactionQuery>) -> Response {
    match transactions(&l.pool, q).await {
        Ok(list) => Json(json!({ "transactions": list })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn transactions(
    pool: &sqlx::AnyPool,
    q: TransactionQuery,
) -> Result<Vec<Transaction>, WriteError> {
    let user = check_user_id(
        q.user_id
            .as_deref()
            .ok_or_else(|| invalid("user_id", "is required: whose transactions to list"))?,
    )?;
    let bound = |field: &str, v: Option<&str>, default: &str| match v {
        None => Ok(default.to_string()),
        Some(v) => instant(v)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("{v:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"),
                )
            }),
    };
    let from = bound("from", q.from.as_deref(), "")?;
    let to = bound("to", q.to.as_deref(), "~")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit", "must be between 1 and 1000"));
    }
    let mut sql = format!(
        "SELECT {TRANSACTION_COLUMNS} FROM ledger_transactions \
         WHERE user_id = $1 AND occurred_at >= $2 AND occurred_at < $3"
    );
    if q.category.is_some() {
        sql.push_str(" AND category = $5");
    }
    sql.push_str(" ORDER BY occurred_at, transaction_id LIMIT $4");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .bind(from)
        .bind(to)
        .bind(limit);
    if let Some(c) = &q.category {
        query = query.bind(c.to_lowercase());
    }
    let rows = query.fetch_all(pool).await.map_err(WriteError::internal)?;
    rows.iter()
        .map(Transaction::from_row)
        .collect::<Result<_, _>>()
        .map_err(WriteError::internal)
}

// ---------------------------------------------------------------------------------------------
// Input: every refusal is a 422 that names the field (`zerofn::Fields`, `zerofn::invalid`).

fn user_id(f: &mut Fields) -> Result<String, WriteError> {
    check_user_id(&f.required_str("user_id")?)
}

fn check_user_id(u: &str) -> Result<String, WriteError> {
    let ok = (1..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(u.to_string())
    } else {
        Err(invalid(
            "user_id",
            format!("{u:?} must be 1 to 64 of A-Z a-z 0-9 . _ : -"),
        ))
    }
}

/// Categories compare in lower case: `Groceries` and `groceries` are one budget.
fn category(c: &str, field: &str) -> Result<String, WriteError> {
    let c = c.trim().to_lowercase();
    if (1..=64).contains(&c.chars().count()) {
        Ok(c)
    } else {
        Err(invalid(field, "must be 1 to 64 characters"))
    }
}

fn description(d: String) -> Result<String, WriteError> {
    match d.trim() {
        "" => Err(invalid("description", "must not be empty")),
        t if t.chars().count() > 512 => {
            Err(invalid("description", "must be at most 512 characters"))
        }
        t => Ok(t.to_string()),
    }
}

fn merchant(m: String) -> Result<String, WriteError> {
    if m.chars().count() <= 128 {
        Ok(m)
    } else {
        Err(invalid("merchant", "must be at most 128 characters"))
    }
}

/// `YYYY-MM`, a real month.
fn period(p: &str) -> Result<String, WriteError> {
    let ok = p.len() == 7
        && p.as_bytes()[4] == b'-'
        && NaiveDate::parse_from_str(&format!("{p}-01"), "%Y-%m-%d").is_ok();
    if ok {
        Ok(p.to_string())
    } else {
        Err(invalid("period", format!("{p:?} is not a month (YYYY-MM)")))
    }
}

fn currency(c: &str) -> Result<String, WriteError> {
    if CURRENCIES.contains(&c) {
        Ok(c.to_string())
    } else {
        Err(invalid(
            "currency",
            format!("{c:?} is not an ISO 4217 currency code (e.g. EUR, USD)"),
        ))
    }
}

fn occurred_at(t: &str) -> Result<DateTime<Utc>, WriteError> {
    DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid("occurred_at", format!("{t:?} is not an RFC 3339 time: {e}")))
}

/// A date (midnight UTC) or an RFC 3339 time.
fn instant(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Active ISO 4217 codes.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use zerofn::testing;

    /// The ledger in-process on a fresh SQLite store, publishing to a recording sidecar.
    struct Rig {
        app: Router,
        sidecar: testing::Recorder,
    }

    async fn rig() -> Rig {
        let sidecar = testing::Recorder::start().await.unwrap();
        let port = sidecar.port().to_string();
        let app = testing::http_router(MANIFEST, &[("DAPR_HTTP_PORT", &port)])
            .await
            .unwrap();
        Rig { app, sidecar }
    }

    impl Rig {
        async fn call(
            &self,
            method: &str,
            uri: &str,
            body: Option<Value>,
            key: Option<&str>,
        ) -> (StatusCode, Value) {
            let headers: Vec<(&str, &str)> =
                key.map(|k| ("idempotency-key", k)).into_iter().collect();
            testing::call(&self.app, method, uri, body.as_ref(), &headers).await
        }

        /// The events published so far, of type `ty`.
        fn published(&self, ty: &str) -> Vec<Value> {
            self.sidecar
                .requests()
                .iter()
                .map(|r| r.json())
                .filter(|e| e["type"] == ty)
                .collect()
        }
    }

    fn budget() -> Value {
        json!({"user_id": "u-1", "category": "Groceries", "period": "2026-11", "currency": "EUR", "limit_minor": 40000})
    }

    fn spend(amount: i64, category: &str) -> Value {
        json!({"user_id": "u-1", "amount_minor": amount, "currency": "EUR", "description": "ACME market",
               "occurred_at": "2026-11-05T10:00:00+01:00", "category": category})
    }

    #[tokio::test]
    async fn a_budget_is_created_once_per_user_category_and_period() {
        let r = rig().await;
        let (s, b) = r.call("POST", "/budgets", Some(budget()), None).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(
            b["category"], "groceries",
            "categories compare in lower case"
        );
        let events = r.published("finance.budget.created");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["data"]["budget_id"], b["budget_id"]);
        assert_eq!(events[0]["data"]["limit_minor"], 40000);
        let (s, e) = r.call("POST", "/budgets", Some(budget()), None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        assert_eq!(e["error"], "budget_exists");
        assert_eq!(
            r.published("finance.budget.created").len(),
            1,
            "nothing emitted for a refusal"
        );
        // The spend so far: debits of the budget's category, period and currency only.
        for t in [
            spend(-12_000, "groceries"),
            spend(-500, "dining"),
            spend(2_000, "groceries"),
        ] {
            assert_eq!(
                r.call("POST", "/transactions", Some(t), None).await.0,
                StatusCode::CREATED
            );
        }
        let mut other_month = spend(-700, "groceries");
        other_month["occurred_at"] = json!("2026-12-01T00:00:00Z");
        assert_eq!(
            r.call("POST", "/transactions", Some(other_month), None)
                .await
                .0,
            StatusCode::CREATED
        );
        let (s, list) = r.call("GET", "/budgets?user_id=u-1", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["budgets"][0]["spent_minor"], 12_000, "{list}");
    }

    #[tokio::test]
    async fn a_transaction_is_stored_and_emitted_together() {
        let r = rig().await;
        let (s, t) = r
            .call(
                "POST",
                "/transactions",
                Some(spend(-4_250, "groceries")),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        assert_eq!(t["amount_minor"], -4_250);
        assert_eq!(
            t["occurred_at"], "2026-11-05T09:00:00Z",
            "normalized to UTC"
        );
        let events = r.published("finance.transaction.created");
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e["data"]["transaction_id"], t["transaction_id"]);
        assert_eq!(e["data"]["amount_minor"], 4_250);
        assert_eq!(e["data"]["direction"], "debit");
        assert_eq!(e["data"]["account_id"], "main");
        assert_eq!(e["subject"], t["transaction_id"]);
        let (_, list) = r
            .call(
                "GET",
                "/transactions?user_id=u-1&from=2026-11-01&to=2026-12-01",
                None,
                None,
            )
            .await;
        assert_eq!(list["transactions"].as_array().unwrap().len(), 1);
        assert_eq!(list["transactions"][0], t);
        let (_, none) = r
            .call(
                "GET",
                "/transactions?user_id=u-1&from=2026-11-06",
                None,
                None,
            )
            .await;
        assert_eq!(none["transactions"], json!([]));
        let (_, dining) = r
            .call(
                "GET",
                "/transactions?user_id=u-1&category=Dining",
                None,
                None,
            )
            .await;
        assert_eq!(dining["transactions"], json!([]));
    }

    #[tokio::test]
    async fn a_retried_post_with_its_idempotency_key_answers_the_first_response() {
        let r = rig().await;
        let (s1, first) = r
            .call(
                "POST",
                "/transactions",
                Some(spend(-999, "dining")),
                Some("k-1"),
            )
            .await;
        let (s2, second) = r
            .call(
                "POST",
                "/transactions",
                Some(spend(-999, "dining")),
                Some("k-1"),
            )
            .await;
        assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
        assert_eq!(first, second, "the same transaction");
        assert_eq!(
            r.published("finance.transaction.created").len(),
            1,
            "emitted once"
        );
        let (_, list) = r.call("GET", "/transactions?user_id=u-1", None, None).await;
        assert_eq!(
            list["transactions"].as_array().unwrap().len(),
            1,
            "stored once"
        );
    }

    #[tokio::test]
    async fn bad_input_is_a_422_naming_the_field() {
        let r = rig().await;
        let cases = [
            (
                "/budgets",
                json!({"category": "x", "period": "2026-11", "currency": "EUR", "limit_minor": 1}),
                "user_id: is required",
            ),
            (
                "/budgets",
                {
                    let mut b = budget();
                    b["currency"] = json!("XYZ");
                    b
                },
                "currency: \"XYZ\" is not an ISO 4217 currency code",
            ),
            (
                "/budgets",
                {
                    let mut b = budget();
                    b["period"] = json!("2026-13");
                    b
                },
                "period: \"2026-13\" is not a month (YYYY-MM)",
            ),
            (
                "/budgets",
                {
                    let mut b = budget();
                    b["limit_minor"] = json!(0);
                    b
                },
                "limit_minor: must be above 0, got 0",
            ),
            (
                "/budgets",
                {
                    let mut b = budget();
                    b["limit_minor"] = json!(12.5);
                    b
                },
                "limit_minor: must be a whole number, got 12.5",
            ),
            (
                "/budgets",
                {
                    let mut b = budget();
                    b["limit"] = json!(1);
                    b
                },
                "limit: is not a field of this request",
            ),
            (
                "/transactions",
                spend(0, "x"),
                "amount_minor: must not be 0",
            ),
            (
                "/transactions",
                {
                    let mut t = spend(-1, "x");
                    t["occurred_at"] = json!("yesterday");
                    t
                },
                "occurred_at: \"yesterday\" is not an RFC 3339 time",
            ),
            (
                "/transactions",
                {
                    let mut t = spend(-1, "x");
                    t["description"] = json!(" ");
                    t
                },
                "description: must not be empty",
            ),
            (
                "/transactions",
                {
                    let mut t = spend(-1, "x");
                    t["user_id"] = json!("a b");
                    t
                },
                "user_id: \"a b\" must be 1 to 64",
            ),
        ];
        for (path, body, message) in cases {
            let (s, e) = r.call("POST", path, Some(body), None).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {e}");
            assert_eq!(e["error"], "invalid_field");
            assert!(
                e["message"].as_str().unwrap().starts_with(message),
                "{e} starts with {message}"
            );
        }
        let (s, e) = r.call("POST", "/budgets", None, None).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json"))
        );
        assert_eq!(
            r.call("GET", "/budgets", None, None).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            r.call("GET", "/transactions?user_id=u-1&from=soon", None, None)
                .await
                .0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert!(r.sidecar.requests().is_empty(), "nothing emitted");
    }

    #[tokio::test]
    async fn an_update_emits_what_changed_with_the_next_version() {
        let r = rig().await;
        let (_, t) = r
            .call("POST", "/transactions", Some(spend(-1_000, "dining")), None)
            .await;
        let path = format!("/transactions/{}", t["transaction_id"].as_str().unwrap());
        let (s, after) = r.call("PATCH", &path, Some(json!({"amount_minor": -1_500, "category": "Groceries", "description": "ACME market"})), None).await;
        assert_eq!(s, StatusCode::OK, "{after}");
        assert_eq!(
            (after["amount_minor"].as_i64(), after["version"].as_i64()),
            (Some(-1_500), Some(2))
        );
        let updates = r.published("finance.transaction.updated");
        assert_eq!(updates.len(), 1);
        assert_eq!(
            updates[0]["data"]["changes"],
            json!({"amount_minor": 1_500, "category": "groceries"}),
            "only what changed (the description did not)"
        );
        assert_eq!(updates[0]["data"]["version"], 2);
        // Nothing changed: nothing written or emitted.
        let (s, same) = r
            .call("PATCH", &path, Some(json!({"category": "groceries"})), None)
            .await;
        assert_eq!((s, same["version"].as_i64()), (StatusCode::OK, Some(2)));
        assert_eq!(r.published("finance.transaction.updated").len(), 1);
        // A debit stays a debit.
        let (s, e) = r
            .call("PATCH", &path, Some(json!({"amount_minor": 1_500})), None)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("amount_minor: cannot change -1500 to 1500")
        );
        let (s, _) = r
            .call(
                "PATCH",
                "/transactions/nope",
                Some(json!({"category": "x"})),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn without_a_category_categorize_picks_it() {
        // A stand-in for categorize on 127.0.0.1 (the engine test calls the real one).
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let seen_by_server = seen.clone();
        let standin = Router::new().route(
            "/categorize",
            axum::routing::post(move |Json(v): Json<Value>| {
                let seen = seen_by_server.clone();
                async move {
                    seen.lock().unwrap().push(v);
                    Json(json!({"category": "Groceries", "matched": "market"}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/categorize", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, standin).await });
        let ledger = Ledger {
            pool: sqlx::AnyPool::connect_lazy("sqlite::memory:").unwrap(),
            categorize: Some(url),
            http: reqwest::Client::new(),
        };
        assert_eq!(
            ledger.categorize("ACME market", -1_250).await.unwrap(),
            "groceries"
        );
        assert_eq!(
            seen.lock().unwrap()[0],
            json!({"description": "ACME market", "amount_minor": -1_250})
        );
        // Unreachable: a 503 the client can retry, naming what failed.
        let down = Ledger {
            categorize: Some("http://127.0.0.1:9/categorize".into()),
            ..ledger
        };
        let e = down.categorize("ACME market", -1).await.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "categorize_unavailable")
        );
    }

    #[tokio::test]
    async fn without_a_category_or_categorize_the_post_is_refused_and_nothing_is_written() {
        let r = rig().await;
        let mut t = spend(-1, "x");
        t.as_object_mut().unwrap().remove("category");
        let (s, e) = r.call("POST", "/transactions", Some(t), None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
        assert!(
            e["message"].as_str().unwrap().contains(ENV_CATEGORIZE_URL),
            "{e}"
        );
        let (_, list) = r.call("GET", "/transactions?user_id=u-1", None, None).await;
        assert_eq!(list["transactions"], json!([]));
    }

    #[test]
    fn periods_and_instants() {
        assert!(period("2026-02").is_ok());
        for bad in ["2026-2", "2026-00", "26-02", "2026/02", "2026-02-01"] {
            assert!(period(bad).is_err(), "{bad}");
        }
        assert_eq!(
            instant("2026-11-01").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert!(instant("2026-11-01T10:00:00+02:00").is_some());
        assert!(instant("11/01/2026").is_none());
    }
}
