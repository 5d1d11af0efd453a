-- The replicas' usage ledger, one row per batch and one per lease instead of
-- one per lease and batch (the long tail wrote, indexed three times and
-- later deleted a row per decision):
-- - usage_batches: each replica's batches (source and number), so a flush
--   retried after an unknown outcome adds nothing twice;
-- - usage_leases: the units each lease has written, updated in place; a
--   claim on a dead replica's lease adds what it was granted less these,
--   and marks it claimed, so that a late write from it (a replica that was
--   only cut off) adds nothing more.
-- usage_increments stays for replicas of the version before, which may
-- still be writing during a rollout; a later migration drops it.
CREATE TABLE usage_batches (
    source TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    at     BIGINT NOT NULL,
    PRIMARY KEY (source, seq)
);
CREATE TABLE usage_leases (
    source  TEXT NOT NULL,
    lease   BIGINT NOT NULL,
    written BIGINT NOT NULL,
    -- 1 once claimed (SQLite has no boolean).
    claimed INTEGER NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (source, lease)
);
