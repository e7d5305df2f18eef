-- People and their credentials (see tandem_core::access for the roles).
-- The supplier is the installation; its customers are named by the
-- `service.customer` of a tandem.yaml.
CREATE TABLE customers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- A user has one role; a customer's people have that customer.
CREATE TABLE users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    customer   TEXT REFERENCES customers(id),
    email      TEXT,
    created_at TEXT NOT NULL
);

-- API tokens: only the SHA-256 of each (a token is 32 random bytes, so a
-- fast hash is enough); shown once, when made.
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    hash       BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT
);
