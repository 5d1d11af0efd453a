-- The catalog: plans, product mappings, tenants, API keys and credentials.
-- Portable between PostgreSQL and SQLite: times are BIGINT microseconds since
-- the Unix epoch, flags are BIGINT 0/1, structured values are JSON text.

CREATE TABLE plans (
    id                 TEXT PRIMARY KEY,
    slug               TEXT NOT NULL UNIQUE,
    display_name       TEXT NOT NULL,
    price_amount_minor BIGINT NOT NULL,
    price_currency     TEXT NOT NULL,
    billing_interval   TEXT NOT NULL,
    trial_days         BIGINT NOT NULL,
    rate_limit         TEXT NOT NULL,
    quotas             TEXT NOT NULL,
    features           TEXT NOT NULL,
    -- NULL: quotas reset with the tenant's billing period.
    quota_reset_day    BIGINT,
    archived           BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE product_mappings (
    provider   TEXT NOT NULL,
    product_id TEXT NOT NULL,
    plan_id    TEXT NOT NULL REFERENCES plans (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, product_id)
);
CREATE INDEX product_mappings_by_plan ON product_mappings (plan_id);

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    external_id TEXT UNIQUE,
    email       TEXT,
    name        TEXT NOT NULL,
    company     TEXT NOT NULL,
    plan_id     TEXT NOT NULL REFERENCES plans (id),
    status      TEXT NOT NULL,
    trial_end   BIGINT,
    metadata    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX tenants_by_plan ON tenants (plan_id, id);

CREATE TABLE api_keys (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id),
    name                TEXT NOT NULL,
    environment         TEXT NOT NULL,
    prefix              TEXT NOT NULL,
    disabled            BIGINT NOT NULL,
    expires_at          BIGINT,
    rate_limit_override TEXT,
    quota_overrides     TEXT NOT NULL,
    metadata            TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    last_used_at        BIGINT,
    revoked_at          BIGINT
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

-- Every secret a key has had: the current one (expires_at NULL) and rotated
-- ones still inside their grace period. Only SHA-256 hashes, in hex.
CREATE TABLE api_key_secrets (
    secret_hash TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX api_key_secrets_by_key ON api_key_secrets (key_id);

CREATE TABLE credentials (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
