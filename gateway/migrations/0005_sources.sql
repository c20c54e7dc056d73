-- Pushed sources (`atoll push`): archives in the gateway's store that pipelines may name and
-- every replica may fetch by digest.
CREATE TABLE sources (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
