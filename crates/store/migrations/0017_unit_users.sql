-- Isolation: the uid each unit (a service in an environment) runs as,
-- and its builds. Given at first use and never given again, even after
-- the unit is removed: a new unit never inherits an old one's files.
CREATE TABLE unit_users (
    unit       TEXT PRIMARY KEY,
    uid        INTEGER NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
