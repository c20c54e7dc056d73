-- Retention: which jobs use a blob, found by digest.
-- A job's source (its own, else its pipeline's), recorded at submission.
ALTER TABLE jobs ADD COLUMN source_digest TEXT;
CREATE INDEX jobs_by_output ON jobs (output_digest);
CREATE INDEX jobs_by_source ON jobs (source_digest);
CREATE INDEX attempts_by_output ON attempts (output_digest);
