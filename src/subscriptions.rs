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
        subscription::{
            ApplyOutcome, Customer, CustomerUpdate, Subscription, SubscriptionId,
            SubscriptionUpdate,
        },
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

    /// Applies a provider's update of a customer to its tenant: `Stale` or
    /// `Unchanged` when not newer than the last one applied.
    pub async fn apply_customer(&self, u: &CustomerUpdate) -> Result<(ApplyOutcome, Tenant)> {
        let customer = u.customer();
        for _ in 0..MAX_ATTEMPTS {
            let link = self.store.customer_link(u.provider, &u.id).await?;
            let tenant = self
                .find_tenant(u.provider, &customer)
                .await?
                .ok_or_else(|| Error::not_found("tenant of customer", u.id.as_str()))?;
            let seen = link.and_then(|l| l.modified_at);
            if let Some(seen) = seen
                && u.modified_at <= seen
            {
                let outcome = if u.modified_at == seen {
                    ApplyOutcome::Unchanged
                } else {
                    ApplyOutcome::Stale
                };
                return Ok((outcome, tenant));
            }
            let expected = tenant.updated_at;
            let mut updated = tenant;
            take_customer(&mut updated, &customer);
            updated.updated_at = now();
            if self
                .store
                .save_customer(u.provider, &u.id, &updated, expected, u.modified_at)
                .await?
            {
                self.catalog.announce(Change::Tenant(updated.id));
                return Ok((ApplyOutcome::Applied, updated));
            }
        }
        Err(Error::Aborted(format!(
            "customer {} kept changing concurrently; retry",
            u.id.as_str()
        )))
    }

    /// The customer's tenant: by external id when set, else (or when no
    /// tenant has it yet) by the provider's id for the customer.
    async fn find_tenant(&self, provider: Provider, c: &Customer) -> Result<Option<Tenant>> {
        let store = self.catalog.store();
        if let Some(external_id) = &c.external_id
            && let Some(t) = store.get_tenant_by_external_id(external_id).await?
        {
            return Ok(Some(t));
        }
        match &c.provider_id {
            Some(id) => match self.store.customer_link(provider, id).await? {
                Some(link) => store.get_tenant(link.tenant_id).await,
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// One attempt; `None` when a concurrent change came first.
    async fn try_apply(
        &self,
        u: &SubscriptionUpdate,
    ) -> Result<Option<(ApplyOutcome, Subscription)>> {
        let stored = self.store.get_subscription(u.provider, &u.id).await?;
        if let Some(event) = &u.event_id
            && let Some(applied_to) = self.store.event_applied(u.provider, event).await?
        {
            // An event names one delivery of one subscription's update: the
            // same id for another subscription is the sender's mistake, and
            // no redelivery will mend it.
            return match stored {
                Some(s) if applied_to == u.id => Ok(Some((ApplyOutcome::Unchanged, s))),
                _ => Err(Error::FailedPrecondition(format!(
                    "event_id {} was applied to subscription {} already; an event id names one \
                     delivery of one subscription's update",
                    event.as_str(),
                    applied_to.as_str()
                ))),
            };
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
        let tenant = self.find_tenant(u.provider, &u.customer).await?;
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
                        external_id: u.customer.external_id.clone(),
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
    take_customer(&mut t, &u.customer);
    t.trial_end = match u.status {
        TenantStatus::Trialing => u.trial_end,
        _ => None,
    };
    t.billing_period = u.period;
    t.updated_at = at;
    t
}

/// The tenant takes what the provider says of its customer: the email and
/// name when given, and the external id when it has none yet (it was found
/// by the provider's id for the customer).
fn take_customer(t: &mut Tenant, c: &Customer) {
    if c.email.is_some() {
        t.profile.email = c.email.clone();
    }
    if !c.name.is_empty() {
        t.profile.name = c.name.clone();
    }
    if t.profile.external_id.is_none() {
        t.profile.external_id = c.external_id.clone();
    }
}
