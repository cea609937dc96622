-- An outbox entry may schedule or cancel a Dapr job instead of publishing: {"name", "due"} as JSON.
ALTER TABLE zerofn_outbox ADD COLUMN job TEXT;
