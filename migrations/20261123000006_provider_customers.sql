-- A payment provider's customers and the tenant each is, so a customer with
-- no external id is found again by the provider's id for it.
ALTER TABLE subscriptions ADD COLUMN customer_provider_id TEXT;

CREATE TABLE provider_customers (
    provider    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    -- The provider's modification time of the last customer update applied;
    -- NULL until one is.
    modified_at BIGINT,
    PRIMARY KEY (provider, customer_id)
);
