-- When the user read a notification (null: unread).
ALTER TABLE notifications ADD COLUMN read_at BIGINT;
