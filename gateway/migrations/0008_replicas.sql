-- Gateway replicas over one database.
-- The duties lease: one row. Its holder runs the duties that must run once (the scheduling
-- pass, rerouting, retention); `generation` grows with every change of holder, and every write
-- of those duties is fenced on it. `expires_ms` is by the database's clock.
CREATE TABLE gateway_lease (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    incarnation TEXT,
    generation  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
INSERT INTO gateway_lease (name, holder, incarnation, generation, expires_ms) VALUES ('duties', NULL, NULL, 0, 0);
-- Every generation and who took it (the chaos suite's checkers read it).
CREATE TABLE gateway_lease_history (
    generation  BIGINT PRIMARY KEY,
    holder      TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    acquired_ms BIGINT NOT NULL
);
-- The replicas alive now: each writes its row every renew interval, deletes it when it stops.
CREATE TABLE gateway_replicas (
    id          TEXT PRIMARY KEY,
    addr        TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    seen_ms     BIGINT NOT NULL,
    generation  BIGINT NOT NULL
);
-- The lease generation of the scheduling pass that bound or moved an attempt.
ALTER TABLE attempts ADD COLUMN generation BIGINT;
