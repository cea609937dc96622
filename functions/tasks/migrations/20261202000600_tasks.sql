-- tasks (portable SQL: SQLite and PostgreSQL). Times are RFC 3339 text in UTC with millisecond
-- precision, so they sort as text.
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT   NOT NULL PRIMARY KEY,
    user_id       TEXT   NOT NULL,
    title         TEXT   NOT NULL,
    description   TEXT   NOT NULL,
    search        TEXT   NOT NULL,             -- lower(title + ' ' + description): what q matches
    priority      BIGINT NOT NULL,             -- 0 low, 1 medium, 2 high
    tags          TEXT   NOT NULL,             -- JSON array, as given
    due_at        TEXT,
    recurrence    TEXT,                        -- JSON {every, interval, until}
    remind_before TEXT,
    status        TEXT   NOT NULL,             -- open | completed
    created_at    TEXT   NOT NULL,
    completed_at  TEXT,
    version       BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS tasks_by_user_due ON tasks (user_id, status, due_at);
CREATE INDEX IF NOT EXISTS tasks_by_user_created ON tasks (user_id, created_at);

-- One row per tag, for filters over several tags.
CREATE TABLE IF NOT EXISTS task_tags (
    task_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tag     TEXT NOT NULL,
    PRIMARY KEY (task_id, tag)
);

CREATE INDEX IF NOT EXISTS task_tags_by_user ON task_tags (user_id, tag);
