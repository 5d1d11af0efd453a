-- Durable usage: absolute totals per tenant, resource and quota period,
-- written by idempotent upserts that never lower a total.
CREATE TABLE usage_counters (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    resource     TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    used         BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, resource, period_start)
);
