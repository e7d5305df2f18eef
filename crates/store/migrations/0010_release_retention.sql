-- Retention: when a release's files were removed (its row stays, as
-- history; it can no longer be rolled back to).
ALTER TABLE releases ADD COLUMN pruned_at TEXT;
