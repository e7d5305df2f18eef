-- Monorepos: the directory of the repository that holds the service's
-- tandem.yaml and is its build root ('' for the top).
ALTER TABLE repos ADD COLUMN path TEXT NOT NULL DEFAULT '';
