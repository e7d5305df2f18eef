-- Whether a repository answers its poller: the error, and since when it
-- has failed (NULL while it answers). Written on changes only.
ALTER TABLE repos ADD COLUMN poll_error TEXT;
ALTER TABLE repos ADD COLUMN poll_failing_since TEXT;
