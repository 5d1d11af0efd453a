-- Credit balances. Every grant and debit is a ledger entry, unique per tenant
-- and idempotency key; a grant's unspent part lives in credit_grants until
-- it is spent or expires. credit_accounts has one row per tenant and credit
-- type, locked by every grant and debit of that type, so they apply one at
-- a time and a balance never goes below zero.
CREATE TABLE credit_accounts (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    credit_type TEXT NOT NULL,
    PRIMARY KEY (tenant_id, credit_type)
);

CREATE TABLE credit_ledger (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    credit_type     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    balance_after   BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    expires_at      BIGINT,
    created_at      BIGINT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX credit_ledger_by_tenant ON credit_ledger (tenant_id, id);

-- A grant's id is its ledger entry's id.
CREATE TABLE credit_grants (
    id          TEXT PRIMARY KEY REFERENCES credit_ledger (id),
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    credit_type TEXT NOT NULL,
    remaining   BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX credit_grants_by_account ON credit_grants (tenant_id, credit_type);
