-- What each cluster's executor runs (JSON: executor, runs, secrets, missing), as its leader says
-- in every heartbeat; NULL until it says. Placement and submit read it.
ALTER TABLE clusters ADD COLUMN capabilities TEXT;
