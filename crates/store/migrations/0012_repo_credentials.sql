-- A repository's credential (a token, used over HTTPS): the user name, and
-- the token sealed with the store's key (see sealed.rs), never in clear.
CREATE TABLE repo_credentials (
    service  TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    sealed   BLOB NOT NULL
);
