-- budget's projection (portable SQL: SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS budget_limits (
    budget_id   TEXT   NOT NULL PRIMARY KEY,
    user_id     TEXT   NOT NULL,
    category    TEXT   NOT NULL,
    period      TEXT   NOT NULL,
    currency    TEXT   NOT NULL,
    limit_minor BIGINT NOT NULL,
    UNIQUE (user_id, category, period)
);

-- Each transaction as last seen: where it counts (category, month, currency) and how much it
-- spends (debits; 0 for a credit).
CREATE TABLE IF NOT EXISTS budget_transactions (
    transaction_id TEXT   NOT NULL PRIMARY KEY,
    user_id        TEXT   NOT NULL,
    category       TEXT   NOT NULL,
    period         TEXT   NOT NULL,
    currency       TEXT   NOT NULL,
    spend_minor    BIGINT NOT NULL,
    debit          BIGINT NOT NULL,             -- 1: spending; 0: income
    version        BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS budget_transactions_by_budget ON budget_transactions (user_id, category, period);

-- The alerts sent: at most one of each kind per budget (a budget is one period).
CREATE TABLE IF NOT EXISTS budget_alerts (
    budget_id   TEXT   NOT NULL,
    kind        TEXT   NOT NULL,                -- warning | exceeded
    spent_minor BIGINT NOT NULL,
    PRIMARY KEY (budget_id, kind)
);

-- One row per user, touched first by every delivery: deliveries for one user evaluate one
-- after the other (a budget and a transaction on different partitions cannot both miss the
-- other's row).
CREATE TABLE IF NOT EXISTS budget_users (
    user_id TEXT   NOT NULL PRIMARY KEY,
    touched BIGINT NOT NULL
);
