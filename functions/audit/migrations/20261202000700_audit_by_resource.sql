-- A resource's history (GET /audit/events?resource=task/…) without scanning the chain.
CREATE INDEX IF NOT EXISTS audit_log_by_resource ON audit_log (resource, seq);
