-- Secret values sealed (see sealed.rs) and per environment: `env` '' is
-- the service-wide value an environment without its own falls back to.
-- Values already kept move over in clear and are sealed, and their clear
-- copy blanked, by the store when it opens (`Store::seal_secrets`), with
-- secure_delete on so no page keeps them.
CREATE TABLE secrets_sealed (
    service    TEXT NOT NULL,
    env        TEXT NOT NULL DEFAULT '',
    name       TEXT NOT NULL,
    value      TEXT NOT NULL DEFAULT '',
    sealed     BLOB,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (service, env, name)
);
INSERT INTO secrets_sealed (service, env, name, value, sealed, updated_at)
    SELECT service, '', name, value, NULL, updated_at FROM secrets;
DROP TABLE secrets;
ALTER TABLE secrets_sealed RENAME TO secrets;
