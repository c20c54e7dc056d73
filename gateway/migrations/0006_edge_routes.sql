-- How each input of each attempt travelled, as the gateway decided it when the child's cluster
-- asked: one row per decision (the first route, then each change, e.g. a fallback to the relay).
CREATE TABLE edge_routes (
    job_id       TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    from_job     TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    route        TEXT NOT NULL,
    from_cluster TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    reason       TEXT,
    PRIMARY KEY (job_id, attempt, from_job, seq)
);
