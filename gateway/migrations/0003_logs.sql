-- Job logs as the running cluster shipped them: numbered pieces per attempt, so a resent piece
-- is stored once and readers follow by (attempt, seq).
CREATE TABLE log_chunks (
    job_id   TEXT NOT NULL REFERENCES jobs (id),
    attempt  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    stream   TEXT NOT NULL,
    data     TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);

CREATE INDEX jobs_by_pipeline_state ON jobs (pipeline_id, state);

-- When the cluster reported the attempt running (submit-to-start latency).
ALTER TABLE attempts ADD COLUMN started_ms BIGINT;
