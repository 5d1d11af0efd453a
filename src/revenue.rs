//! The revenue summary of a month: MRR now, tenants by status, the month's
//! trials, calls and overage, and its top tenants by usage and by revenue
//! (revenue as invoiced: generate the month's invoices first).
use std::{collections::HashMap, sync::Arc};

use crate::{
    domain::{
        Result,
        invoice::BillingMonth,
        revenue::{RevenueSummary, TenantFigure, mrr, top_ten},
        tenant::TenantStatus,
    },
    store::RevenueStore,
};

#[derive(Clone)]
pub struct Revenue {
    store: Arc<dyn RevenueStore>,
}

impl Revenue {
    pub fn new(store: Arc<dyn RevenueStore>) -> Self {
        Self { store }
    }

    pub async fn summary(&self, month: BillingMonth) -> Result<RevenueSummary> {
        let period = month.period;
        let tenants = self.store.all_tenants().await?;
        let plans: HashMap<_, _> = self
            .store
            .all_plans()
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let external: HashMap<_, _> = tenants
            .iter()
            .map(|t| {
                (
                    t.id,
                    t.profile
                        .external_id
                        .as_ref()
                        .map(|e| e.as_str().to_owned()),
                )
            })
            .collect();
        let in_month = |t: Option<crate::domain::Timestamp>| {
            t.is_some_and(|t| period.start <= t && t < period.end)
        };
        let usage = self.store.usage_by_tenant(period.start, period.end).await?;
        let invoices = self.store.invoice_totals(&month.name).await?;
        let mut overage_revenue = std::collections::BTreeMap::new();
        for (_, currency, _, overage) in &invoices {
            *overage_revenue.entry(currency.clone()).or_insert(0) += overage;
        }
        Ok(RevenueSummary {
            mrr: mrr(tenants
                .iter()
                .filter_map(|t| plans.get(&t.plan_id).map(|p| (t, p)))),
            tenants_by_status: TenantStatus::ALL
                .into_iter()
                .map(|s| (s, tenants.iter().filter(|t| t.status == s).count() as i64))
                .collect(),
            trials_started: tenants
                .iter()
                .filter(|t| in_month(t.trial_started_at))
                .count() as i64,
            trials_converted: tenants.iter().filter(|t| in_month(t.converted_at)).count() as i64,
            total_calls: usage.iter().map(|(_, n)| n).sum(),
            overage_revenue,
            top_by_usage: top_ten(
                usage
                    .iter()
                    .map(|(id, n)| TenantFigure {
                        tenant_id: *id,
                        external_id: external.get(id).cloned().flatten(),
                        value: *n,
                        currency: None,
                    })
                    .collect(),
            ),
            top_by_revenue: top_ten(
                invoices
                    .iter()
                    .map(|(id, currency, total, _)| TenantFigure {
                        tenant_id: *id,
                        external_id: external.get(id).cloned().flatten(),
                        value: *total,
                        currency: Some(currency.clone()),
                    })
                    .collect(),
            ),
            month,
        })
    }
}
