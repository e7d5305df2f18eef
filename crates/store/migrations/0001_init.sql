-- The journal: append-only, hash-chained (see tandem_core::journal).
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY,
    ts      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL UNIQUE
);
CREATE INDEX events_kind ON events(kind);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;

-- Read models, updated in the same transaction as the event that changes them.
CREATE TABLE services (
    name         TEXT PRIMARY KEY,
    owner        TEXT,
    customer     TEXT,
    tier         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    source       TEXT NOT NULL,
    live_release INTEGER,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE releases (
    service    TEXT NOT NULL REFERENCES services(name),
    number     INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    path       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    source     TEXT NOT NULL,
    status     TEXT NOT NULL,
    reason     TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (service, number)
);
