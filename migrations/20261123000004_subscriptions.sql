-- Subscriptions bought through a payment provider, and the billing period
-- they give their tenant.
ALTER TABLE tenants ADD COLUMN period_start BIGINT;
ALTER TABLE tenants ADD COLUMN period_end BIGINT;

-- The latest state of each subscription, as the provider last reported it.
-- plan_id is NULL while the product is not mapped to a plan yet (pending).
CREATE TABLE subscriptions (
    provider             TEXT NOT NULL,
    id                   TEXT NOT NULL,
    tenant_id            TEXT REFERENCES tenants (id),
    customer_external_id TEXT NOT NULL,
    customer_email       TEXT,
    customer_name        TEXT NOT NULL,
    product_id           TEXT NOT NULL,
    plan_id              TEXT REFERENCES plans (id),
    status               TEXT NOT NULL,
    period_start         BIGINT,
    period_end           BIGINT,
    cancel_at_period_end BIGINT NOT NULL,
    trial_end            BIGINT,
    modified_at          BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    PRIMARY KEY (provider, id)
);
CREATE INDEX subscriptions_pending ON subscriptions (provider, product_id);
CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant_id);

-- Provider events (webhook deliveries) already applied, so a redelivery is
-- applied once even if the subscription changed in between.
CREATE TABLE subscription_events (
    provider        TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    applied_at      BIGINT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
