//! Reading usage back: a tenant's units per resource in one quota period,
//! from the durable totals and the limiter's live counters (whichever is
//! further along, since the database lags by at most one flush).
use std::{collections::BTreeMap, sync::Arc};

use crate::{
    catalog::{Catalog, PlanRef, TenantRef},
    domain::{
        Result, Timestamp,
        ids::TenantId,
        now,
        plan::Resource,
        verify::{Period, billed_overage, tenant_period},
    },
    limiter::{Limiter, UsageKey},
    store::UsageStore,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUsage {
    pub resource: Resource,
    pub used: i64,
    pub included: i64,
    pub overage: i64,
}

#[derive(Debug, Clone)]
pub struct UsageReport {
    pub tenant_id: TenantId,
    pub period: Period,
    pub resources: Vec<ResourceUsage>,
}

#[derive(Clone)]
pub struct Metering {
    catalog: Catalog,
    usage: Arc<dyn UsageStore>,
    limiter: Arc<dyn Limiter>,
}

impl Metering {
    pub fn new(catalog: Catalog, usage: Arc<dyn UsageStore>, limiter: Arc<dyn Limiter>) -> Self {
        Self {
            catalog,
            usage,
            limiter,
        }
    }

    /// Usage in the period containing `at` (default: now).
    pub async fn usage(&self, tenant_id: TenantId, at: Option<Timestamp>) -> Result<UsageReport> {
        let tenant = self.catalog.get_tenant(&TenantRef::Id(tenant_id)).await?;
        let plan = self.catalog.get_plan(&PlanRef::Id(tenant.plan_id)).await?;
        let period = tenant_period(&plan, &tenant.terms(), at.unwrap_or_else(now));
        let mut used: BTreeMap<Resource, i64> = plan
            .spec
            .quotas
            .iter()
            .map(|q| (q.resource.clone(), 0))
            .collect();
        for total in self.usage.list_usage(tenant.id, period.start).await? {
            if total.period_start == period.start {
                used.insert(total.resource, total.used);
            }
        }
        let keys: Vec<UsageKey> = used
            .keys()
            .map(|resource| UsageKey {
                tenant_id: tenant.id,
                resource: resource.clone(),
                period,
            })
            .collect();
        for (key, live) in keys.iter().zip(self.limiter.live_usage(&keys).await?) {
            if let (Some(live), Some(u)) = (live, used.get_mut(&key.resource)) {
                *u = (*u).max(live);
            }
        }
        let resources = used
            .into_iter()
            .map(|(resource, used)| {
                let quota = plan.spec.quotas.iter().find(|q| q.resource == resource);
                ResourceUsage {
                    included: quota.map_or(0, |q| q.included_units),
                    overage: billed_overage(quota, used),
                    resource,
                    used,
                }
            })
            .collect();
        Ok(UsageReport {
            tenant_id: tenant.id,
            period,
            resources,
        })
    }
}
