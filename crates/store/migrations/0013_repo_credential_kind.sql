-- A repository's credential is a token (HTTPS, with a user name) or a
-- deploy key (SSH, the private key sealed; no user name).
ALTER TABLE repo_credentials ADD COLUMN kind TEXT NOT NULL DEFAULT 'token';
