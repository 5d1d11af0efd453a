//! Storage traits. Backends live beside them (`sql` serves PostgreSQL and
//! SQLite); every backend passes the conformance suite in `tests/it/store.rs`.
//! A method that writes several rows does so in one transaction.
use async_trait::async_trait;

use crate::domain::{
    Result, Timestamp,
    credential::{Credential, Scope},
    credits::{Applied, Balance, CreditChange, CreditType, LedgerEntry},
    ids::InvoiceId,
    ids::{CredentialId, KeyId, PlanId, TenantId},
    invoice::Invoice,
    key::ApiKey,
    page::PageRequest,
    plan::{Plan, ProductId, ProductMapping, Provider, Resource, Slug},
    secret::SecretHash,
    subscription::{CustomerId, CustomerLink, EventId, Subscription, SubscriptionId},
    tenant::{ExternalId, Tenant, TenantStatus},
};

pub mod sql;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantFilter {
    pub plan_id: Option<PlanId>,
    pub status: Option<TenantStatus>,
}

/// Plans, product mappings, tenants and keys.
///
/// `replace_*` methods are optimistic: they write only if the stored row's
/// `updated_at` still equals `expected`, and say whether they wrote.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Fails with `AlreadyExists` when the slug is taken.
    async fn create_plan(&self, plan: &Plan) -> Result<()>;
    async fn get_plan(&self, id: PlanId) -> Result<Option<Plan>>;
    async fn get_plan_by_slug(&self, slug: &Slug) -> Result<Option<Plan>>;
    async fn list_plans(&self, show_archived: bool, page: &PageRequest) -> Result<Vec<Plan>>;
    async fn replace_plan(&self, plan: &Plan, expected: Timestamp) -> Result<bool>;

    /// Fails with `AlreadyExists` when the product is mapped already.
    async fn map_product(&self, mapping: &ProductMapping) -> Result<()>;
    async fn get_product_mapping(
        &self,
        provider: Provider,
        product_id: &ProductId,
    ) -> Result<Option<ProductMapping>>;
    /// Removes and returns the mapping, if there was one.
    async fn unmap_product(
        &self,
        provider: Provider,
        product_id: &ProductId,
    ) -> Result<Option<ProductMapping>>;
    async fn list_product_mappings(
        &self,
        plan_id: Option<PlanId>,
        page: &PageRequest,
    ) -> Result<Vec<ProductMapping>>;

    /// Fails with `AlreadyExists` when the external id is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>>;
    async fn get_tenant_by_external_id(&self, external_id: &ExternalId) -> Result<Option<Tenant>>;
    async fn list_tenants(&self, filter: &TenantFilter, page: &PageRequest) -> Result<Vec<Tenant>>;
    /// Fails with `AlreadyExists` when a changed external id is taken.
    async fn replace_tenant(&self, tenant: &Tenant, expected: Timestamp) -> Result<bool>;

    /// Stores the key and the hash of its first secret, together.
    async fn create_key(&self, key: &ApiKey, secret: SecretHash) -> Result<()>;
    /// Creates a tenant and its first key in one transaction (signup).
    async fn create_tenant_with_key(
        &self,
        tenant: &Tenant,
        key: &ApiKey,
        secret: SecretHash,
    ) -> Result<()>;
    async fn get_key(&self, id: KeyId) -> Result<Option<ApiKey>>;
    async fn list_keys(&self, tenant_id: TenantId, page: &PageRequest) -> Result<Vec<ApiKey>>;
    /// The key one of whose secrets hashes to `secret` and is still valid at
    /// `at` (current, or rotated out but inside its grace period).
    async fn find_key_by_secret(
        &self,
        secret: SecretHash,
        at: Timestamp,
    ) -> Result<Option<ApiKey>> {
        Ok(self.find_secret(secret, at).await?.map(|(key, _)| key))
    }
    /// The same, with when that secret stops verifying (`None`: never).
    async fn find_secret(
        &self,
        secret: SecretHash,
        at: Timestamp,
    ) -> Result<Option<(ApiKey, Option<Timestamp>)>>;
    async fn replace_key(&self, key: &ApiKey, expected: Timestamp) -> Result<bool>;
    /// Replaces the key (new prefix), makes every older secret expire at
    /// `old_valid_until` at the latest, and adds `new_secret`, in one
    /// transaction.
    async fn rotate_key(
        &self,
        key: &ApiKey,
        expected: Timestamp,
        new_secret: SecretHash,
        old_valid_until: Timestamp,
    ) -> Result<bool>;
}

/// One counter's absolute total for a tenant, resource and period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageTotal {
    pub tenant_id: TenantId,
    pub resource: Resource,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub used: i64,
}

/// Units one source served on one counter from one lease, in one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub tenant_id: TenantId,
    pub resource: Resource,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// The lease the units were served from; 0 for none (failing open).
    pub lease: i64,
    pub units: i64,
}

/// Durable usage counters.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds batch `seq` of `source` (a replica) in one transaction, once: a
    /// batch retried after an unknown outcome adds nothing the second time.
    /// A batch names each (lease, counter) at most once.
    async fn add_usage(&self, source: &str, seq: i64, increments: &[Increment]) -> Result<()>;
    /// A dead source's lease: adds the units granted to it (`granted`) less
    /// those the source already added from it, once; returns the units
    /// added. The source's later increments from that lease add nothing.
    async fn claim_lease(&self, source: &str, lease: i64, granted: &Increment) -> Result<i64>;
    /// Forgets what `source`'s leases wrote, closed with nothing left to
    /// claim.
    async fn forget_leases(&self, source: &str, leases: &[i64]) -> Result<()>;
    /// Forgets batches and leases last written before `before`, whose
    /// retries and claims are long over; returns the rows forgotten.
    async fn prune_ledger(&self, before: Timestamp) -> Result<u64>;
    /// Writes absolute totals in one statement; a total never goes down, so
    /// replaying an older flush changes nothing.
    async fn upsert_usage(&self, totals: &[UsageTotal]) -> Result<()>;
    /// The stored total, 0 when none.
    async fn get_usage(
        &self,
        tenant_id: TenantId,
        resource: &Resource,
        period_start: Timestamp,
    ) -> Result<i64>;
    /// Every counter of a tenant whose period starts in `[from, to)`.
    async fn usage_starting_in(
        &self,
        tenant_id: TenantId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<UsageTotal>>;
    /// Every counter of a tenant whose period contains `at`.
    async fn list_usage(&self, tenant_id: TenantId, at: Timestamp) -> Result<Vec<UsageTotal>>;
}

/// The credentials that callers of the gRPC API present.
#[async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// Fails with `AlreadyExists` when the token is in use already.
    async fn create_credential(&self, credential: &Credential, token: SecretHash) -> Result<()>;
    /// The credential of `admin_token`, on every start: creates it unless one
    /// with this token exists already (a revoked one stays revoked), and
    /// revokes, in the same transaction, every other seeded credential (a
    /// token set before). Returns the ids revoked.
    async fn seed_credential(
        &self,
        credential: &Credential,
        token: SecretHash,
    ) -> Result<Vec<CredentialId>>;
    /// The unrevoked credential whose token hashes to `token`, expired or not.
    async fn find_credential(&self, token: SecretHash) -> Result<Option<Credential>>;
    /// Every credential, revoked ones too, oldest first.
    async fn list_credentials(&self) -> Result<Vec<Credential>>;
    /// Revokes the credential at `at` (a revoked one keeps its first
    /// revocation time); `None` if there is none with this id.
    async fn revoke_credential(
        &self,
        id: CredentialId,
        at: Timestamp,
    ) -> Result<Option<Credential>>;
    /// Unrevoked credentials of `scope`.
    async fn count_credentials(&self, scope: Scope) -> Result<i64>;
}

/// Credit ledgers. Grants and debits of one tenant and credit type apply one
/// at a time, so a balance never goes below zero under concurrency.
#[async_trait]
pub trait CreditStore: Send + Sync + 'static {
    /// Applies the grant or debit at `at` in one transaction, or returns the
    /// entry an earlier change with the same idempotency key made
    /// (`replayed`). The same key with another change is `AlreadyExists`; a
    /// debit over the balance is `InsufficientCredits`; a new change that
    /// fails `CreditChange::check_new` is `InvalidArgument`. None writes.
    async fn apply_credit(&self, change: &CreditChange, at: Timestamp) -> Result<Applied>;
    /// Every credit type the tenant has had, with its balance at `at`
    /// (expired grants no longer count).
    async fn balances(&self, tenant_id: TenantId, at: Timestamp) -> Result<Vec<Balance>>;
    /// One credit type's balance at `at`; 0 when the tenant never had any.
    async fn balance(
        &self,
        tenant_id: TenantId,
        credit_type: &CreditType,
        at: Timestamp,
    ) -> Result<i64>;
    /// Ledger entries, oldest first.
    async fn list_ledger(
        &self,
        tenant_id: TenantId,
        credit_type: Option<&CreditType>,
        page: &PageRequest,
    ) -> Result<Vec<LedgerEntry>>;
}

/// The tenant side of a subscription change.
#[derive(Debug, Clone)]
pub enum TenantWrite {
    Create(Tenant),
    /// Written only if the stored row's `updated_at` is still `expected`.
    Replace {
        tenant: Tenant,
        expected: Timestamp,
    },
}

/// Subscriptions and the provider events already applied.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    async fn get_subscription(
        &self,
        provider: Provider,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>>;
    /// Ordered by id, optionally only one tenant's.
    async fn list_subscriptions(
        &self,
        tenant_id: Option<TenantId>,
        page: &PageRequest,
    ) -> Result<Vec<Subscription>>;
    /// Subscriptions waiting for this product to be mapped to a plan.
    async fn pending_subscriptions(
        &self,
        provider: Provider,
        product_id: &ProductId,
    ) -> Result<Vec<Subscription>>;
    /// The subscription an event was applied to; `None` if it was not.
    async fn event_applied(
        &self,
        provider: Provider,
        event: &EventId,
    ) -> Result<Option<SubscriptionId>>;
    /// In one transaction: the subscription (written only if its stored
    /// `updated_at` is still `expected`; `None`: only if not stored yet),
    /// the tenant write, the customer's link to the tenant (a new tenant's
    /// only if the customer has none yet), and the event as applied. `false`, writing
    /// nothing, when a concurrent change came first.
    async fn save_subscription(
        &self,
        subscription: &Subscription,
        expected: Option<Timestamp>,
        tenant: Option<&TenantWrite>,
        event: Option<&EventId>,
    ) -> Result<bool>;
    async fn customer_link(
        &self,
        provider: Provider,
        id: &CustomerId,
    ) -> Result<Option<CustomerLink>>;
    /// In one transaction: the tenant (written only if its stored
    /// `updated_at` is still `expected`) and the customer's link to it with
    /// `modified_at` (only if newer than the stored one). `false`, writing
    /// nothing, when a concurrent change came first.
    async fn save_customer(
        &self,
        provider: Provider,
        id: &CustomerId,
        tenant: &Tenant,
        expected: Timestamp,
        modified_at: Timestamp,
    ) -> Result<bool>;
}

/// Invoices, and the plan history they are prorated from.
#[async_trait]
pub trait InvoiceStore: Send + Sync + 'static {
    /// The tenant's plans and since when, oldest first.
    async fn plan_history(&self, tenant_id: TenantId) -> Result<Vec<(Timestamp, PlanId)>>;
    /// Stores a draft for its tenant and month: a new invoice, or the
    /// existing draft rebuilt in place (its id and creation time kept).
    /// `FailedPrecondition` when that month's invoice is finalized.
    async fn save_draft(&self, invoice: &Invoice) -> Result<Invoice>;
    /// Freezes the invoice; finalizing it again changes nothing.
    async fn finalize_invoice(&self, id: InvoiceId, at: Timestamp) -> Result<Option<Invoice>>;
    async fn get_invoice(&self, id: InvoiceId) -> Result<Option<Invoice>>;
    /// Ordered by id, optionally one tenant's.
    async fn list_invoices(
        &self,
        tenant_id: Option<TenantId>,
        page: &PageRequest,
    ) -> Result<Vec<Invoice>>;
}

/// What the revenue summary reads, all of it at once.
#[async_trait]
pub trait RevenueStore: Send + Sync + 'static {
    async fn all_tenants(&self) -> Result<Vec<Tenant>>;
    async fn all_plans(&self) -> Result<Vec<Plan>>;
    /// Units per tenant over all resources, for counters whose period starts
    /// in `[from, to)`.
    async fn usage_by_tenant(&self, from: Timestamp, to: Timestamp)
    -> Result<Vec<(TenantId, i64)>>;
    /// The month's invoices: tenant, currency, total, and overage part.
    async fn invoice_totals(&self, month: &str) -> Result<Vec<(TenantId, String, i64, i64)>>;
}
