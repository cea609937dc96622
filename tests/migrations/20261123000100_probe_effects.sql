-- The probe's effect: one row per handled event, written in the delivery's transaction.
CREATE TABLE IF NOT EXISTS probe_effects (
    event_id   TEXT   NOT NULL,
    attempt    BIGINT NOT NULL
);
