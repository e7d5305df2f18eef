-- An unacknowledged page is told again every `repeat_s` seconds on a
-- channel that asks for it, and, `escalate_after_s` seconds after it
-- opened, told once to the channel `escalate_to` as well.
ALTER TABLE channels ADD COLUMN repeat_s INTEGER;
ALTER TABLE channels ADD COLUMN escalate_after_s INTEGER;
ALTER TABLE channels ADD COLUMN escalate_to INTEGER;
