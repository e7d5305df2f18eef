-- Environments before production: which release each one runs (production's
-- is `services.live_release`), and the approvals that promote a run.
CREATE TABLE deployments (
    service    TEXT NOT NULL,
    env        TEXT NOT NULL,
    release    INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (service, env)
);

CREATE TABLE approvals (
    run      INTEGER NOT NULL,
    env      TEXT NOT NULL,
    approver TEXT NOT NULL,
    at       TEXT NOT NULL,
    PRIMARY KEY (run, env, approver)
);
