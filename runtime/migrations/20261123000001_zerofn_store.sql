-- zerofn's store: idempotency records (the inbox), the transactional outbox and dead letters.
-- Portable SQL: the same file runs on SQLite and PostgreSQL (times are epoch milliseconds).

CREATE TABLE IF NOT EXISTS zerofn_inbox (
    function       TEXT   NOT NULL,
    key            TEXT   NOT NULL,
    state          TEXT   NOT NULL,          -- in_flight | failed | done | dead
    owner          TEXT   NOT NULL,          -- the delivery attempt holding the lease
    lease_until    BIGINT NOT NULL,
    attempts       BIGINT NOT NULL,          -- failed attempts so far
    first_failure  BIGINT,
    last_failure   BIGINT,
    last_error     TEXT,
    dead_letter_id TEXT,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    PRIMARY KEY (function, key)
);

CREATE INDEX IF NOT EXISTS zerofn_inbox_expiry ON zerofn_inbox (expires_at);

CREATE TABLE IF NOT EXISTS zerofn_outbox (
    function       TEXT   NOT NULL,
    key            TEXT   NOT NULL,
    seq            BIGINT NOT NULL,
    event_id       TEXT   NOT NULL,
    event_type     TEXT   NOT NULL,
    pubsub         TEXT   NOT NULL,
    topic          TEXT   NOT NULL,
    body           TEXT   NOT NULL,          -- the structured CloudEvent, JSON
    traceparent    TEXT   NOT NULL,
    partition_key  TEXT,
    created_at     BIGINT NOT NULL,
    sent_at        BIGINT,
    PRIMARY KEY (function, key, seq)
);

CREATE INDEX IF NOT EXISTS zerofn_outbox_unsent ON zerofn_outbox (function, sent_at);

CREATE TABLE IF NOT EXISTS zerofn_dead_letters (
    id             TEXT   NOT NULL PRIMARY KEY,
    function       TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    record         TEXT   NOT NULL,          -- the DeadLetter record, JSON
    replayed_at    BIGINT
);

CREATE INDEX IF NOT EXISTS zerofn_dead_letters_by_function ON zerofn_dead_letters (function, created_at);
