-- notify's in-app notifications (portable SQL: SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS notifications (
    id             TEXT   NOT NULL PRIMARY KEY,   -- derived from the event's source + id
    user_id        TEXT   NOT NULL,
    channel        TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    title          TEXT   NOT NULL,
    body           TEXT   NOT NULL,
    cause_event_id TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id, created_at);
