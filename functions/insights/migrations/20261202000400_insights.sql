-- insights' view of a user's spending (portable SQL: SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS insights_spend (
    transaction_id TEXT   NOT NULL PRIMARY KEY,
    user_id        TEXT   NOT NULL,
    category       TEXT   NOT NULL,
    payee          TEXT   NOT NULL,              -- merchant or description, normalized
    currency       TEXT   NOT NULL,
    amount_minor   BIGINT NOT NULL,              -- a debit's amount
    occurred_at    TEXT   NOT NULL,              -- RFC 3339, UTC
    period         TEXT   NOT NULL               -- YYYY-MM
);

CREATE INDEX IF NOT EXISTS insights_spend_by_user ON insights_spend (user_id, period);

-- What the user was already told: one insight per kind and subject.
CREATE TABLE IF NOT EXISTS insights_told (
    user_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    PRIMARY KEY (user_id, kind, subject)
);
