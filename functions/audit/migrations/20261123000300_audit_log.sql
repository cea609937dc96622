-- The audit log: append-only, each row chained to the previous by its hash (portable SQL).
CREATE TABLE IF NOT EXISTS audit_log (
    seq            BIGINT NOT NULL PRIMARY KEY,   -- position in the chain, from 1
    recorded_at    BIGINT NOT NULL,               -- epoch milliseconds
    actor          TEXT   NOT NULL,               -- the user the event is about
    action         TEXT   NOT NULL,               -- the CloudEvent type
    resource       TEXT   NOT NULL,               -- entity/id, e.g. task/0193…
    event_id       TEXT   NOT NULL,
    event_source   TEXT   NOT NULL,
    correlation_id TEXT   NOT NULL,
    data           TEXT   NOT NULL,               -- the event data, JSON
    prev_hash      TEXT   NOT NULL,               -- hash of row seq - 1 (64 zeros for the first)
    hash           TEXT   NOT NULL                -- sha256 of this row's fields and prev_hash
);

CREATE UNIQUE INDEX IF NOT EXISTS audit_log_event ON audit_log (event_source, event_id);
