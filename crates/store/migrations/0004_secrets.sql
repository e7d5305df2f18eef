-- Secret values by service. Never in the journal (events name the secret
-- only), never returned by the API; the database file is owner-only.
CREATE TABLE secrets (
    service    TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (service, name)
);
