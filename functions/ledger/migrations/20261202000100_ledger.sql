-- ledger's budgets and transactions (portable SQL: SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS ledger_budgets (
    budget_id   TEXT   NOT NULL PRIMARY KEY,
    user_id     TEXT   NOT NULL,
    category    TEXT   NOT NULL,
    period      TEXT   NOT NULL,              -- YYYY-MM
    currency    TEXT   NOT NULL,
    limit_minor BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (user_id, category, period)
);

CREATE TABLE IF NOT EXISTS ledger_transactions (
    transaction_id TEXT   NOT NULL PRIMARY KEY,
    user_id        TEXT   NOT NULL,
    account_id     TEXT   NOT NULL,
    amount_minor   BIGINT NOT NULL,           -- negative: spending
    currency       TEXT   NOT NULL,
    description    TEXT   NOT NULL,
    merchant       TEXT,
    category       TEXT   NOT NULL,
    occurred_at    TEXT   NOT NULL,           -- RFC 3339, UTC, seconds: sorts as text
    period         TEXT   NOT NULL,           -- YYYY-MM of occurred_at
    version        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS ledger_transactions_by_user ON ledger_transactions (user_id, occurred_at);
CREATE INDEX IF NOT EXISTS ledger_transactions_by_budget ON ledger_transactions (user_id, category, period);
