-- The first response to an HTTP write sent with an Idempotency-Key: a retry of the same request gets it
-- again, and nothing is written or emitted twice. Kept as long as the write's idempotency record.

CREATE TABLE IF NOT EXISTS zerofn_responses (
    function       TEXT   NOT NULL,
    key            TEXT   NOT NULL,          -- the write's idempotency key (hashed)
    status         BIGINT NOT NULL,
    body           TEXT   NOT NULL,          -- JSON
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (function, key)
);
