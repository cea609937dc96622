-- reminders: each task's reminder as last set (portable SQL: SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS reminders (
    task_id       TEXT NOT NULL PRIMARY KEY,
    user_id       TEXT NOT NULL,
    title         TEXT NOT NULL,
    due_at        TEXT,                      -- RFC 3339, UTC
    remind_before TEXT,                      -- 30s, 15m, 2h, 1d
    remind_at     TEXT,                      -- due_at - remind_before: when the job is due
    state         TEXT NOT NULL              -- open | completed | deleted
);
