-- Gate policy, held by the control plane: per service and environment the
-- approvals a promotion needs at least, who may give them (a JSON list of
-- actors; empty: anyone), and whether a commit's spec must keep the
-- environment. A spec may ask for more, never for less.
CREATE TABLE policies (
    service    TEXT NOT NULL,
    env        TEXT NOT NULL,
    approvals  INTEGER NOT NULL DEFAULT 0,
    approvers  TEXT NOT NULL DEFAULT '[]',
    required   INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (service, env)
);
