-- Pipelines and jobs. A job row holds its current attempt's binding (cluster, attempt); every
-- state change is a conditional UPDATE on that binding, which is what lets exactly one result in.

CREATE TABLE pipelines (
    id           TEXT PRIMARY KEY,
    submitted_by TEXT NOT NULL,
    spec         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    pipeline_id      TEXT NOT NULL REFERENCES pipelines (id),
    idx              INTEGER NOT NULL,
    name             TEXT NOT NULL,
    state            TEXT NOT NULL,
    cluster          TEXT,
    attempt          INTEGER NOT NULL DEFAULT 1,
    failed_attempts  INTEGER NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    reason           TEXT,
    exit_code        INTEGER,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    finished_ms      BIGINT,
    UNIQUE (pipeline_id, name)
);

CREATE INDEX jobs_by_cluster ON jobs (cluster, state);
CREATE INDEX jobs_by_state ON jobs (state);

-- One row per attempt that was bound to a cluster: the history behind "exactly one accepted
-- result" (the checker reads it) and the job's details.
CREATE TABLE attempts (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    cluster     TEXT NOT NULL,
    state       TEXT NOT NULL,
    term        BIGINT,
    exit_code   INTEGER,
    message     TEXT,
    bound_ms    BIGINT NOT NULL,
    ended_ms    BIGINT,
    PRIMARY KEY (job_id, attempt)
);
