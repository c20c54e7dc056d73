-- The registry, tokens and matrix rows. Portable SQL: SQLite 3.35+ and PostgreSQL 12+.
-- Times are unix milliseconds; lists are JSON text.

CREATE TABLE clusters (
    name          TEXT PRIMARY KEY,
    labels        TEXT NOT NULL DEFAULT '[]',
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    revoked_ms    BIGINT,
    term          BIGINT NOT NULL DEFAULT 0,
    leader_id     BIGINT,
    endpoint      TEXT,
    replicas      TEXT NOT NULL DEFAULT '[]',
    registered_ms BIGINT,
    last_seen_ms  BIGINT
);

CREATE TABLE join_tokens (
    hash        TEXT PRIMARY KEY,
    cluster     TEXT NOT NULL,
    labels      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    used_ms     BIGINT,
    used_by     TEXT
);

CREATE TABLE user_tokens (
    hash        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT
);

-- One row per reporting cluster (not one per cell): its whole row of the matrix.
CREATE TABLE matrix_rows (
    reporter    TEXT PRIMARY KEY,
    term        BIGINT NOT NULL,
    cells       TEXT NOT NULL,
    reported_ms BIGINT NOT NULL
);
