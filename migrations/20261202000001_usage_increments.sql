-- Usage added as increments by the replicas that served it: each batch is
-- keyed by its source (a replica) and number, so a retried flush adds
-- nothing twice, and by the lease its units came from, so a dead replica's
-- lease can be claimed for exactly the units it had not yet written.
CREATE TABLE usage_increments (
    source       TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    lease        BIGINT NOT NULL,
    tenant_id    TEXT NOT NULL,
    resource     TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    units        BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (source, seq, lease, tenant_id, resource, period_start)
);
CREATE INDEX usage_increments_lease ON usage_increments (source, lease);
CREATE INDEX usage_increments_at ON usage_increments (at);
