-- Secrets (`atoll secret set`): each value sealed with AES-256-GCM under a key derived from the
-- CA key (every replica derives the same; the database alone reveals nothing), its name bound
-- in as associated data so a sealed value cannot be moved to another name. Hex text, for both
-- engines.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    sealed      TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);
