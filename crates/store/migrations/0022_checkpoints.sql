-- Signed checkpoints of the journal's Merkle tree (see tandem_proof): the
-- tree's size and root, and the signed note as it was published.
CREATE TABLE checkpoints (
    size INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at TEXT NOT NULL
);
