-- Dashboard sign-ins: a session cookie's id (stored hashed) stands for the user token it was
-- opened with (hashed too), until it expires or the token is revoked. In the database, so that
-- any gateway replica serves a session another opened.
CREATE TABLE dashboard_sessions (
    id_hash     TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
