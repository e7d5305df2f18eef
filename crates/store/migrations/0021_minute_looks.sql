-- How a minute without requests is judged: the monitor looks about once a
-- second; `looks` is how often it looked during the minute and
-- `unready_looks` how often no instance was ready. Rows from before (0, 0)
-- are judged by `ready` alone, as a whole minute.
ALTER TABLE minutes ADD COLUMN looks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE minutes ADD COLUMN unready_looks INTEGER NOT NULL DEFAULT 0;
