//! The catalog use cases: the rules that span entities (a tenant's plan must
//! exist and not be archived, a key's tenant must exist, ...) over the
//! storage traits. The gRPC edge calls these with already-parsed values.
use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

mod credentials;
mod keys;
mod plans;
mod tenants;

pub use credentials::{Credentials, IssuedCredential, SEEDED_NAME};

use crate::{
    domain::{
        Error, Result, Timestamp,
        ids::{CredentialId, KeyId, PlanId, TenantId},
        key::{ApiKey, KeyEnvironment, KeySettings, display_prefix},
        now,
        page::{Page, PageRequest},
        plan::{
            BillingInterval, Feature, Plan, PlanSpec, Price, ProductId, ProductMapping, Provider,
            Quota, QuotaReset, RateLimit, Slug,
        },
        secret::IssuedSecret,
        tenant::{Email, ExternalId, Tenant, TenantProfile, TenantStatus},
        text::Metadata,
    },
    store::{CatalogStore, TenantFilter},
};

/// A change that caches (of entitlements, of credentials) must forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Key(KeyId),
    Tenant(TenantId),
    Plan(PlanId),
    Credential(CredentialId),
}

/// Told of every change (locally, and across replicas).
pub trait ChangeListener: Send + Sync + 'static {
    fn changed(&self, change: Change);

    /// Changes may have been missed (the channel was lost): forget everything.
    fn missed_changes(&self) {}
}

/// Tells each of several listeners.
#[derive(Clone, Default)]
pub struct Listeners(pub Vec<Arc<dyn ChangeListener>>);

impl ChangeListener for Listeners {
    fn changed(&self, change: Change) {
        for l in &self.0 {
            l.changed(change);
        }
    }

    fn missed_changes(&self) {
        for l in &self.0 {
            l.missed_changes();
        }
    }
}

/// Longest grace period a rotated secret may keep verifying.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often an optimistic update is retried when others keep winning.
const MAX_ATTEMPTS: usize = 16;

pub enum PlanRef {
    Id(PlanId),
    Slug(Slug),
}

pub enum TenantRef {
    Id(TenantId),
    ExternalId(ExternalId),
}

/// Changes to a plan; `None` leaves a field alone.
#[derive(Default)]
pub struct PlanPatch {
    pub display_name: Option<String>,
    pub price: Option<Price>,
    pub billing_interval: Option<BillingInterval>,
    pub trial_days: Option<u16>,
    pub rate_limit: Option<RateLimit>,
    pub quotas: Option<Vec<Quota>>,
    pub features: Option<Vec<Feature>>,
    pub quota_reset: Option<QuotaReset>,
}

pub struct NewTenant {
    pub profile: TenantProfile,
    pub plan_id: PlanId,
    pub status: Option<TenantStatus>,
    pub trial_end: Option<Timestamp>,
}

/// Changes to a tenant; `None` leaves a field alone, `Some(None)` clears it.
#[derive(Default)]
pub struct TenantPatch {
    pub external_id: Option<Option<ExternalId>>,
    pub email: Option<Option<Email>>,
    pub name: Option<String>,
    pub company: Option<String>,
    pub status: Option<TenantStatus>,
    pub trial_end: Option<Option<Timestamp>>,
    pub metadata: Option<Metadata>,
}

pub struct NewKey {
    pub tenant_id: TenantId,
    pub environment: KeyEnvironment,
    pub settings: KeySettings,
}

/// Changes to a key; `None` leaves a field alone, `Some(None)` clears it.
#[derive(Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub disabled: Option<bool>,
    pub expires_at: Option<Option<Timestamp>>,
    pub rate_limit_override: Option<Option<RateLimit>>,
    pub quota_overrides: Option<Vec<Quota>>,
    pub metadata: Option<Metadata>,
}

/// A self-service signup, parsed.
pub struct Signup {
    pub email: Email,
    pub company: String,
    pub name: String,
    pub plan: Slug,
    pub environment: KeyEnvironment,
}

/// A key together with its secret, which exists only in this value.
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: IssuedSecret,
}

#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn CatalogStore>,
    listeners: Listeners,
}

impl Catalog {
    pub fn new(store: Arc<dyn CatalogStore>) -> Self {
        Self {
            store,
            listeners: Listeners::default(),
        }
    }

    /// Also tells `listener` of every change that cached entitlements must forget.
    pub fn with_listener(mut self, listener: Arc<dyn ChangeListener>) -> Self {
        self.listeners.0.push(listener);
        self
    }

    pub(crate) fn announce(&self, change: Change) {
        self.listeners.changed(change);
    }

    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }
}

/// Reads a row, applies `change`, and writes it back only if nobody else
/// wrote in between (compare-and-set on `updated_at`), retrying otherwise.
#[allow(clippy::too_many_arguments)]
async fn modify<'a, T, Id>(
    kind: &'static str,
    id: Id,
    load: impl Fn() -> BoxFuture<'a, Result<Option<T>>>,
    stamp: impl Fn(&T) -> Timestamp,
    set_stamp: impl Fn(&mut T, Timestamp),
    change: impl Fn(&mut T) -> Result<()>,
    store: impl for<'t> Fn(&'t T, Timestamp) -> BoxFuture<'t, Result<bool>>,
) -> Result<T>
where
    T: Clone,
    Id: std::fmt::Display + Copy,
{
    for _ in 0..MAX_ATTEMPTS {
        let current = load().await?.ok_or_else(|| Error::not_found(kind, id))?;
        let mut next = current.clone();
        let expected = stamp(&current);
        // Stamped first, so a change can record when it happened (revoked_at).
        set_stamp(&mut next, next_stamp(expected));
        change(&mut next)?;
        if store(&next, expected).await? {
            return Ok(next);
        }
    }
    Err(contended(kind, id))
}

/// A new `updated_at`: now, but always later than the previous one, so that
/// compare-and-set on it can never confuse two versions.
fn next_stamp(previous: Timestamp) -> Timestamp {
    now().max(previous + time::Duration::microseconds(1))
}

fn contended(kind: &str, id: impl std::fmt::Display) -> Error {
    Error::Aborted(format!("{kind} {id} is being changed concurrently; retry"))
}
