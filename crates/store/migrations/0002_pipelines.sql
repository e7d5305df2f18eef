-- Continuous delivery: services that come from a git repository, and the
-- pipeline runs of their commits. Read models like `services`: every change
-- is made together with the journal event that records it.
CREATE TABLE repos (
    service          TEXT PRIMARY KEY REFERENCES services(name),
    url              TEXT NOT NULL,
    branch           TEXT NOT NULL,
    webhook_secret   TEXT,
    poll_interval_ms INTEGER NOT NULL,
    created_at       TEXT NOT NULL
);

CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    service      TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    branch       TEXT NOT NULL,
    trigger      TEXT NOT NULL,
    author       TEXT,
    committed_at TEXT,
    message      TEXT,
    -- queued | running | waiting-approval | succeeded | failed | superseded
    -- | cancelled | interrupted
    status       TEXT NOT NULL,
    stage        TEXT,
    reason       TEXT,
    release      INTEGER,
    retry_of     INTEGER,
    stages       TEXT NOT NULL DEFAULT '[]',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX runs_service ON runs(service, id);
CREATE INDEX runs_status ON runs(status);
