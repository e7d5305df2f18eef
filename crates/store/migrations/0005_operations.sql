-- Operations: incidents, the channels that hear of them, and every
-- delivery attempt.
CREATE TABLE incidents (
    id              INTEGER PRIMARY KEY,
    service         TEXT NOT NULL,
    env             TEXT,
    kind            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    status          TEXT NOT NULL,
    summary         TEXT NOT NULL,
    release         TEXT,
    suspect_release TEXT,
    opened_at       TEXT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    resolved_at     TEXT,
    resolved_by     TEXT,
    note            TEXT
);
CREATE INDEX incidents_status ON incidents(status);

CREATE TABLE channels (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    secret     TEXT,
    smtp       TEXT,
    service    TEXT,
    tier       TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE deliveries (
    id       INTEGER PRIMARY KEY,
    channel  INTEGER NOT NULL,
    incident INTEGER NOT NULL,
    event    TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    ok       INTEGER NOT NULL,
    detail   TEXT,
    at       TEXT NOT NULL
);
CREATE INDEX deliveries_incident ON deliveries(incident);
