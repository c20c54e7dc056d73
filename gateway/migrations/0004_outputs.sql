-- Job outputs: the digest (sha256:<hex>) and size of the archive the attempt's cluster stored.
-- On the job for the accepted result, on the attempt for every attempt that reported one.
ALTER TABLE jobs ADD COLUMN output_digest TEXT;
ALTER TABLE jobs ADD COLUMN output_size BIGINT;
ALTER TABLE attempts ADD COLUMN output_digest TEXT;
ALTER TABLE attempts ADD COLUMN output_size BIGINT;
