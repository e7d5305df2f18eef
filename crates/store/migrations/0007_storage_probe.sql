-- The monitor's probe while a storage fault stands: one row, rewritten.
CREATE TABLE storage_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at TEXT NOT NULL
);
