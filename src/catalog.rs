//! The catalog use cases: the rules that span entities (a tenant's plan must
//! exist and not be archived, a key's tenant must exist, ...) over the
//! storage traits. The gRPC edge calls these with already-parsed values.
use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

use crate::{
    domain::{
        Error, Result, Timestamp,
        ids::{KeyId, PlanId, TenantId},
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

/// A catalog change that cached entitlements must forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Key(KeyId),
    Tenant(TenantId),
    Plan(PlanId),
}

/// Told of every catalog change (locally, and later across replicas).
pub trait ChangeListener: Send + Sync + 'static {
    fn changed(&self, change: Change);
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
    listeners: Vec<Arc<dyn ChangeListener>>,
}

impl Catalog {
    pub fn new(store: Arc<dyn CatalogStore>) -> Self {
        Self {
            store,
            listeners: Vec::new(),
        }
    }

    /// Also tells `listener` of every change that cached entitlements must forget.
    pub fn with_listener(mut self, listener: Arc<dyn ChangeListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    pub(crate) fn announce(&self, change: Change) {
        for l in &self.listeners {
            l.changed(change);
        }
    }

    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    // ---- plans -----------------------------------------------------------

    pub async fn create_plan(&self, slug: Slug, spec: PlanSpec) -> Result<Plan> {
        let at = now();
        let plan = Plan {
            id: PlanId::generate(),
            slug,
            spec,
            archived: false,
            created_at: at,
            updated_at: at,
        };
        self.store.create_plan(&plan).await?;
        Ok(plan)
    }

    pub async fn get_plan(&self, plan: &PlanRef) -> Result<Plan> {
        match plan {
            PlanRef::Id(id) => self.store.get_plan(*id).await?,
            PlanRef::Slug(slug) => self.store.get_plan_by_slug(slug).await?,
        }
        .ok_or_else(|| match plan {
            PlanRef::Id(id) => Error::not_found("plan", id),
            PlanRef::Slug(slug) => Error::not_found("plan", format!("with slug {slug}")),
        })
    }

    pub async fn list_plans(&self, show_archived: bool, page: PageRequest) -> Result<Page<Plan>> {
        let rows = self.store.list_plans(show_archived, &page).await?;
        Ok(Page::from_rows(&page, rows, |p| p.id.to_string()))
    }

    pub async fn update_plan(&self, id: PlanId, patch: PlanPatch) -> Result<Plan> {
        self.modify_plan(id, move |plan| {
            let s = &mut plan.spec;
            if let Some(v) = patch.display_name.clone() {
                s.display_name = v;
            }
            if let Some(v) = patch.price {
                s.price = v;
            }
            if let Some(v) = patch.billing_interval {
                s.billing_interval = v;
            }
            if let Some(v) = patch.trial_days {
                s.trial_days = v;
            }
            if let Some(v) = patch.rate_limit {
                s.rate_limit = v;
            }
            if let Some(v) = patch.quotas.clone() {
                s.quotas = v;
            }
            if let Some(v) = patch.features.clone() {
                s.features = v;
            }
            if let Some(v) = patch.quota_reset {
                s.quota_reset = v;
            }
            Ok(())
        })
        .await
    }

    /// Archives a plan; archiving it again changes nothing.
    pub async fn archive_plan(&self, id: PlanId) -> Result<Plan> {
        let plan = self.get_plan(&PlanRef::Id(id)).await?;
        if plan.archived {
            return Ok(plan);
        }
        self.modify_plan(id, |plan| {
            plan.archived = true;
            Ok(())
        })
        .await
    }

    pub async fn map_product(
        &self,
        provider: Provider,
        product_id: ProductId,
        plan_id: PlanId,
    ) -> Result<ProductMapping> {
        self.assignable_plan(&PlanRef::Id(plan_id)).await?;
        let mapping = ProductMapping {
            provider,
            product_id,
            plan_id,
            created_at: now(),
        };
        self.store.map_product(&mapping).await?;
        Ok(mapping)
    }

    pub async fn unmap_product(
        &self,
        provider: Provider,
        product_id: ProductId,
    ) -> Result<ProductMapping> {
        self.store
            .unmap_product(provider, &product_id)
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    "product mapping",
                    format!("{}/{}", provider.as_str(), product_id.as_str()),
                )
            })
    }

    pub async fn list_product_mappings(
        &self,
        plan_id: Option<PlanId>,
        page: PageRequest,
    ) -> Result<Page<ProductMapping>> {
        let rows = self.store.list_product_mappings(plan_id, &page).await?;
        Ok(Page::from_rows(&page, rows, |m| {
            format!("{}/{}", m.provider.as_str(), m.product_id.as_str())
        }))
    }

    /// The plan, if a tenant or product may be put on it.
    async fn assignable_plan(&self, plan: &PlanRef) -> Result<Plan> {
        let plan = self.get_plan(plan).await?;
        if plan.archived {
            return Err(Error::FailedPrecondition(format!(
                "plan {} is archived; no tenant or product can be put on it",
                plan.id
            )));
        }
        Ok(plan)
    }

    // ---- tenants ---------------------------------------------------------

    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant> {
        let plan = self.assignable_plan(&PlanRef::Id(new.plan_id)).await?;
        let tenant = tenant_on(&plan, new, now());
        self.store.create_tenant(&tenant).await?;
        Ok(tenant)
    }

    /// Self-service signup: a tenant on the plan (trialing for the plan's
    /// trial days, if any) and its first key, in one transaction.
    pub async fn signup(&self, signup: Signup) -> Result<(Tenant, IssuedKey)> {
        let plan = self.assignable_plan(&PlanRef::Slug(signup.plan)).await?;
        let at = now();
        let tenant = tenant_on(
            &plan,
            NewTenant {
                profile: TenantProfile {
                    external_id: None,
                    email: Some(signup.email),
                    name: signup.name,
                    company: signup.company,
                    metadata: Metadata::default(),
                },
                plan_id: plan.id,
                status: None,
                trial_end: None,
            },
            at,
        );
        let issued = issue_key(
            NewKey {
                tenant_id: tenant.id,
                environment: signup.environment,
                settings: KeySettings {
                    name: "default".into(),
                    ..KeySettings::default()
                },
            },
            at,
        );
        self.store
            .create_tenant_with_key(&tenant, &issued.key, issued.secret.hash())
            .await?;
        self.announce(Change::Key(issued.key.id));
        Ok((tenant, issued))
    }

    pub async fn get_tenant(&self, tenant: &TenantRef) -> Result<Tenant> {
        match tenant {
            TenantRef::Id(id) => self.store.get_tenant(*id).await?,
            TenantRef::ExternalId(e) => self.store.get_tenant_by_external_id(e).await?,
        }
        .ok_or_else(|| match tenant {
            TenantRef::Id(id) => Error::not_found("tenant", id),
            TenantRef::ExternalId(e) => {
                Error::not_found("tenant", format!("with external id {:?}", e.as_str()))
            }
        })
    }

    pub async fn list_tenants(
        &self,
        filter: TenantFilter,
        page: PageRequest,
    ) -> Result<Page<Tenant>> {
        let rows = self.store.list_tenants(&filter, &page).await?;
        Ok(Page::from_rows(&page, rows, |t| t.id.to_string()))
    }

    pub async fn update_tenant(&self, id: TenantId, patch: TenantPatch) -> Result<Tenant> {
        self.modify_tenant(id, move |t| {
            if let Some(v) = patch.external_id.clone() {
                t.profile.external_id = v;
            }
            if let Some(v) = patch.email.clone() {
                t.profile.email = v;
            }
            if let Some(v) = patch.name.clone() {
                t.profile.name = v;
            }
            if let Some(v) = patch.company.clone() {
                t.profile.company = v;
            }
            if let Some(v) = patch.status {
                t.set_status(v, now());
            }
            if let Some(v) = patch.trial_end {
                t.trial_end = v;
            }
            if let Some(v) = patch.metadata.clone() {
                t.profile.metadata = v;
            }
            Ok(())
        })
        .await
    }

    pub async fn change_plan(&self, id: TenantId, plan_id: PlanId) -> Result<Tenant> {
        let plan = self.assignable_plan(&PlanRef::Id(plan_id)).await?;
        self.modify_tenant(id, move |t| {
            t.plan_id = plan.id;
            Ok(())
        })
        .await
    }

    // ---- keys ------------------------------------------------------------

    pub async fn create_key(&self, new: NewKey) -> Result<IssuedKey> {
        // The tenant must exist; the foreign key would catch it too, but
        // without naming what is missing.
        self.get_tenant(&TenantRef::Id(new.tenant_id)).await?;
        if new.settings.expires_at.is_some_and(|at| at <= now()) {
            return Err(Error::invalid("key.expire_time", "must be in the future"));
        }
        let IssuedKey { key, secret } = issue_key(new, now());
        self.store.create_key(&key, secret.hash()).await?;
        // Caches that remember unknown secrets must not outlive a new one.
        self.announce(Change::Key(key.id));
        Ok(IssuedKey { key, secret })
    }

    pub async fn get_key(&self, id: KeyId) -> Result<ApiKey> {
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::not_found("key", id))
    }

    pub async fn list_keys(&self, tenant_id: TenantId, page: PageRequest) -> Result<Page<ApiKey>> {
        // An unknown tenant is NOT_FOUND rather than an empty list.
        self.get_tenant(&TenantRef::Id(tenant_id)).await?;
        let rows = self.store.list_keys(tenant_id, &page).await?;
        Ok(Page::from_rows(&page, rows, |k| k.id.to_string()))
    }

    pub async fn update_key(&self, id: KeyId, patch: KeyPatch) -> Result<ApiKey> {
        if patch.expires_at.flatten().is_some_and(|at| at <= now()) {
            return Err(Error::invalid("key.expire_time", "must be in the future"));
        }
        self.modify_key(id, move |k| {
            let s = &mut k.settings;
            if let Some(v) = patch.name.clone() {
                s.name = v;
            }
            if let Some(v) = patch.disabled {
                s.disabled = v;
            }
            if let Some(v) = patch.expires_at {
                s.expires_at = v;
            }
            if let Some(v) = patch.rate_limit_override {
                s.rate_limit_override = v;
            }
            if let Some(v) = patch.quota_overrides.clone() {
                s.quota_overrides = v;
            }
            if let Some(v) = patch.metadata.clone() {
                s.metadata = v;
            }
            Ok(())
        })
        .await
    }

    /// Revokes a key; revoking it again changes nothing.
    pub async fn revoke_key(&self, id: KeyId) -> Result<ApiKey> {
        let key = self.get_key(id).await?;
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        self.modify_key(id, |k| {
            if k.revoked_at.is_none() {
                k.revoked_at = Some(k.updated_at);
            }
            Ok(())
        })
        .await
    }

    pub async fn rotate_key(&self, id: KeyId, grace: Duration) -> Result<IssuedKey> {
        if grace > MAX_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 30 days"));
        }
        let grace = time::Duration::try_from(grace)
            .map_err(|_| Error::invalid("grace_period", "is out of range"))?;
        for _ in 0..MAX_ATTEMPTS {
            let current = self.get_key(id).await?;
            if current.revoked_at.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "key {id} is revoked; create a new key instead"
                )));
            }
            let secret = current.environment.issue_secret();
            let mut key = current.clone();
            key.updated_at = next_stamp(current.updated_at);
            key.prefix = display_prefix(secret.expose());
            let old_until = key.updated_at + grace;
            if self
                .store
                .rotate_key(&key, current.updated_at, secret.hash(), old_until)
                .await?
            {
                self.announce(Change::Key(id));
                return Ok(IssuedKey { key, secret });
            }
        }
        Err(contended("key", id))
    }

    // ---- optimistic read-modify-write -------------------------------------

    async fn modify_plan(
        &self,
        id: PlanId,
        change: impl Fn(&mut Plan) -> Result<()> + Send + Sync,
    ) -> Result<Plan> {
        let store = &self.store;
        modify(
            "plan",
            id,
            || Box::pin(async move { store.get_plan(id).await }),
            |p| p.updated_at,
            |p, at| p.updated_at = at,
            change,
            |p, expected| {
                let store = Arc::clone(store);
                Box::pin(async move { store.replace_plan(p, expected).await })
            },
        )
        .await
        .inspect(|_| self.announce(Change::Plan(id)))
    }

    async fn modify_tenant(
        &self,
        id: TenantId,
        change: impl Fn(&mut Tenant) -> Result<()> + Send + Sync,
    ) -> Result<Tenant> {
        let store = &self.store;
        modify(
            "tenant",
            id,
            || Box::pin(async move { store.get_tenant(id).await }),
            |t| t.updated_at,
            |t, at| t.updated_at = at,
            change,
            |t, expected| {
                let store = Arc::clone(store);
                Box::pin(async move { store.replace_tenant(t, expected).await })
            },
        )
        .await
        .inspect(|_| self.announce(Change::Tenant(id)))
    }

    async fn modify_key(
        &self,
        id: KeyId,
        change: impl Fn(&mut ApiKey) -> Result<()> + Send + Sync,
    ) -> Result<ApiKey> {
        let store = &self.store;
        modify(
            "key",
            id,
            || Box::pin(async move { store.get_key(id).await }),
            |k| k.updated_at,
            |k, at| k.updated_at = at,
            change,
            |k, expected| {
                let store = Arc::clone(store);
                Box::pin(async move { store.replace_key(k, expected).await })
            },
        )
        .await
        .inspect(|_| self.announce(Change::Key(id)))
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

/// A new tenant on `plan`: trialing for the plan's trial days when it has
/// any (unless told otherwise), else active.
fn tenant_on(plan: &Plan, new: NewTenant, at: Timestamp) -> Tenant {
    let trial_days = i64::from(plan.spec.trial_days);
    let status = new.status.unwrap_or(if trial_days > 0 {
        TenantStatus::Trialing
    } else {
        TenantStatus::Active
    });
    let trial_end = match (status, new.trial_end) {
        (_, Some(end)) => Some(end),
        (TenantStatus::Trialing, None) => Some(at + time::Duration::days(trial_days)),
        _ => None,
    };
    Tenant {
        id: TenantId::generate(),
        profile: new.profile,
        plan_id: plan.id,
        status,
        trial_end,
        billing_period: None,
        trial_started_at: (status == TenantStatus::Trialing).then_some(at),
        converted_at: None,
        created_at: at,
        updated_at: at,
    }
}

/// A new key and its secret.
fn issue_key(new: NewKey, at: Timestamp) -> IssuedKey {
    let secret = new.environment.issue_secret();
    IssuedKey {
        key: ApiKey {
            id: KeyId::generate(),
            tenant_id: new.tenant_id,
            environment: new.environment,
            prefix: display_prefix(secret.expose()),
            settings: new.settings,
            created_at: at,
            updated_at: at,
            last_used_at: None,
            revoked_at: None,
        },
        secret,
    }
}
