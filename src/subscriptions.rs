//! Subscriptions sold through a payment provider: each reported state is
//! applied to its tenant once, in order of the provider's modification time,
//! and kept pending while its product is not mapped to a plan.
use std::sync::Arc;

use crate::{
    catalog::{Catalog, Change},
    domain::{
        Error, Result,
        ids::TenantId,
        now,
        page::{Page, PageRequest},
        plan::{ProductId, Provider},
        subscription::{ApplyOutcome, Subscription, SubscriptionId, SubscriptionUpdate},
        tenant::{Tenant, TenantProfile, TenantStatus},
        text::Metadata,
    },
    store::{SubscriptionStore, TenantWrite},
};

/// How often an update is retried when concurrent ones keep winning.
const MAX_ATTEMPTS: usize = 16;

#[derive(Clone)]
pub struct Subscriptions {
    catalog: Catalog,
    store: Arc<dyn SubscriptionStore>,
}

impl Subscriptions {
    pub fn new(catalog: Catalog, store: Arc<dyn SubscriptionStore>) -> Self {
        Self { catalog, store }
    }

    /// Applies one reported state; returns what it did and the subscription
    /// as it now stands.
    pub async fn apply(&self, u: &SubscriptionUpdate) -> Result<(ApplyOutcome, Subscription)> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(done) = self.try_apply(u).await? {
                return Ok(done);
            }
        }
        Err(Error::Aborted(format!(
            "subscription {} kept changing concurrently; retry",
            u.id.as_str()
        )))
    }

    /// Applies the subscriptions that waited for this product's mapping.
    pub async fn apply_pending(&self, provider: Provider, product_id: &ProductId) -> Result<usize> {
        let mut applied = 0;
        for s in self
            .store
            .pending_subscriptions(provider, product_id)
            .await?
        {
            let update = SubscriptionUpdate {
                provider: s.provider,
                id: s.id.clone(),
                customer: s.customer.clone(),
                product_id: s.product_id.clone(),
                status: s.status,
                period: s.period,
                cancel_at_period_end: s.cancel_at_period_end,
                trial_end: s.trial_end,
                modified_at: s.modified_at,
                event_id: None,
            };
            if self.apply(&update).await?.0 == ApplyOutcome::Applied {
                applied += 1;
            }
        }
        Ok(applied)
    }

    pub async fn get(&self, provider: Provider, id: &SubscriptionId) -> Result<Subscription> {
        self.store
            .get_subscription(provider, id)
            .await?
            .ok_or_else(|| Error::not_found("subscription", id.as_str()))
    }

    pub async fn list(
        &self,
        tenant_id: Option<TenantId>,
        page: PageRequest,
    ) -> Result<Page<Subscription>> {
        let rows = self.store.list_subscriptions(tenant_id, &page).await?;
        Ok(Page::from_rows(&page, rows, |s| s.id.as_str().to_owned()))
    }

    /// One attempt; `None` when a concurrent change came first.
    async fn try_apply(
        &self,
        u: &SubscriptionUpdate,
    ) -> Result<Option<(ApplyOutcome, Subscription)>> {
        let stored = self.store.get_subscription(u.provider, &u.id).await?;
        if let Some(event) = &u.event_id
            && self.store.event_applied(u.provider, event).await?
        {
            let s = stored.ok_or_else(|| {
                Error::Internal(anyhow::anyhow!("an applied event without its subscription"))
            })?;
            return Ok(Some((ApplyOutcome::Unchanged, s)));
        }
        if let Some(s) = &stored {
            if u.modified_at < s.modified_at {
                return Ok(Some((ApplyOutcome::Stale, s.clone())));
            }
            if s.same_as(u) && !s.pending() {
                return Ok(Some((ApplyOutcome::Unchanged, s.clone())));
            }
        }
        let store = self.catalog.store();
        let mapping = store.get_product_mapping(u.provider, &u.product_id).await?;
        let tenant = store
            .get_tenant_by_external_id(&u.customer.external_id)
            .await?;
        let at = now();
        let mut subscription = Subscription {
            provider: u.provider,
            id: u.id.clone(),
            customer: u.customer.clone(),
            product_id: u.product_id.clone(),
            plan_id: mapping.as_ref().map(|m| m.plan_id),
            tenant_id: tenant.as_ref().map(|t| t.id),
            status: u.status,
            period: u.period,
            cancel_at_period_end: u.cancel_at_period_end,
            trial_end: u.trial_end,
            modified_at: u.modified_at,
            created_at: stored.as_ref().map_or(at, |s| s.created_at),
            updated_at: at,
        };
        let expected = stored.as_ref().map(|s| s.updated_at);
        let Some(mapping) = mapping else {
            // Nothing the provider can fix: keep it, and say what to map.
            tracing::warn!(
                provider = u.provider.as_str(),
                product_id = u.product_id.as_str(),
                subscription = u.id.as_str(),
                "subscription kept pending: map this product to a plan with MapProduct"
            );
            let saved = self
                .store
                .save_subscription(&subscription, expected, None, u.event_id.as_ref())
                .await?;
            return Ok(saved.then_some((ApplyOutcome::Pending, subscription)));
        };
        let write = match tenant {
            Some(t) => {
                let expected = t.updated_at;
                TenantWrite::Replace {
                    tenant: follow(t, u, mapping.plan_id, at),
                    expected,
                }
            }
            None => TenantWrite::Create(follow(
                Tenant {
                    id: TenantId::generate(),
                    profile: TenantProfile {
                        external_id: Some(u.customer.external_id.clone()),
                        email: None,
                        name: String::new(),
                        company: String::new(),
                        metadata: Metadata::default(),
                    },
                    plan_id: mapping.plan_id,
                    // `follow` sets it, noting a trial's start.
                    status: TenantStatus::Active,
                    trial_end: None,
                    billing_period: None,
                    trial_started_at: None,
                    converted_at: None,
                    created_at: at,
                    updated_at: at,
                },
                u,
                mapping.plan_id,
                at,
            )),
        };
        let tenant_id = match &write {
            TenantWrite::Create(t) | TenantWrite::Replace { tenant: t, .. } => t.id,
        };
        subscription.tenant_id = Some(tenant_id);
        if !self
            .store
            .save_subscription(&subscription, expected, Some(&write), u.event_id.as_ref())
            .await?
        {
            return Ok(None);
        }
        // Every replica's next Verify sees the new plan and status.
        self.catalog.announce(Change::Tenant(tenant_id));
        Ok(Some((ApplyOutcome::Applied, subscription)))
    }
}

/// The tenant as the subscription says it is: plan, status, trial, billing
/// period, and the customer's email and name.
fn follow(
    mut t: Tenant,
    u: &SubscriptionUpdate,
    plan_id: crate::domain::ids::PlanId,
    at: crate::domain::Timestamp,
) -> Tenant {
    t.plan_id = plan_id;
    t.set_status(u.tenant_status(), at);
    t.trial_end = match u.status {
        TenantStatus::Trialing => u.trial_end,
        _ => None,
    };
    t.billing_period = u.period;
    if u.customer.email.is_some() {
        t.profile.email = u.customer.email.clone();
    }
    if !u.customer.name.is_empty() {
        t.profile.name = u.customer.name.clone();
    }
    t.updated_at = at;
    t
}
