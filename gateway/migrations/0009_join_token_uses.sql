-- A join token may enroll several replicas of its cluster (the pods of a StatefulSet share one
-- token from one Secret): `uses` counts the replicas it enrolled, up to `max_uses`.
ALTER TABLE join_tokens ADD COLUMN max_uses BIGINT NOT NULL DEFAULT 1;
ALTER TABLE join_tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
UPDATE join_tokens SET uses = 1 WHERE used_ms IS NOT NULL;
