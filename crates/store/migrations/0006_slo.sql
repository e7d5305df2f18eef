-- Per-minute availability rollups (one row per service environment and
-- minute: at most 43,200 a month each), and maintenance windows.
CREATE TABLE minutes (
    service TEXT NOT NULL,
    env     TEXT NOT NULL DEFAULT '',
    minute  INTEGER NOT NULL,
    total   INTEGER NOT NULL,
    errors  INTEGER NOT NULL,
    -- latency histogram of the minute (JSON array, proxy bucket bounds)
    buckets TEXT NOT NULL,
    ready   INTEGER NOT NULL,
    PRIMARY KEY (service, env, minute)
);

CREATE TABLE maintenance (
    id         INTEGER PRIMARY KEY,
    service    TEXT NOT NULL,
    starts_at  TEXT NOT NULL,
    ends_at    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX maintenance_service ON maintenance(service);
