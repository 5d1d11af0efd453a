-- The plans a tenant was on and since when, for prorating invoices. Written
-- with every tenant creation and plan change.
CREATE TABLE tenant_plans (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    since     BIGINT NOT NULL,
    plan_id   TEXT NOT NULL REFERENCES plans (id),
    PRIMARY KEY (tenant_id, since)
);

-- One invoice per tenant and calendar month; a draft is rebuilt in place
-- until it is finalized, after which it never changes.
CREATE TABLE invoices (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    period       TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end   BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    total_minor  BIGINT NOT NULL,
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finalized_at BIGINT,
    UNIQUE (tenant_id, period)
);
CREATE INDEX invoices_by_tenant ON invoices (tenant_id, id);

CREATE TABLE invoice_lines (
    invoice_id         TEXT NOT NULL REFERENCES invoices (id),
    position           BIGINT NOT NULL,
    kind               TEXT NOT NULL,
    description        TEXT NOT NULL,
    plan_id            TEXT,
    resource           TEXT,
    quantity           BIGINT NOT NULL,
    unit_amount_micros BIGINT,
    from_at            BIGINT NOT NULL,
    to_at              BIGINT NOT NULL,
    amount_minor       BIGINT NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

-- When a tenant's trial started and when it converted to paying, for the
-- revenue summary's trial figures.
ALTER TABLE tenants ADD COLUMN trial_started_at BIGINT;
ALTER TABLE tenants ADD COLUMN converted_at BIGINT;
