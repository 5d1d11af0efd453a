//! Revenue figures: monthly recurring revenue and the month's leaders.
use std::collections::BTreeMap;

use super::{
    ids::TenantId,
    invoice::{BillingMonth, div_half_up},
    plan::{BillingInterval, Plan},
    tenant::{Tenant, TenantStatus},
};

/// One tenant's figure in a ranking: calls, or an amount in minor units of
/// `currency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFigure {
    pub tenant_id: TenantId,
    pub external_id: Option<String>,
    pub value: i64,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueSummary {
    pub month: BillingMonth,
    /// By currency code, in minor units.
    pub mrr: BTreeMap<String, i64>,
    pub tenants_by_status: Vec<(TenantStatus, i64)>,
    pub trials_started: i64,
    pub trials_converted: i64,
    pub total_calls: i64,
    /// Billed overage on the month's invoices, by currency.
    pub overage_revenue: BTreeMap<String, i64>,
    pub top_by_usage: Vec<TenantFigure>,
    pub top_by_revenue: Vec<TenantFigure>,
}

impl RevenueSummary {
    /// Drops money in any other currency.
    pub fn keep_currency(&mut self, code: &str) {
        self.mrr.retain(|c, _| c == code);
        self.overage_revenue.retain(|c, _| c == code);
        self.top_by_revenue
            .retain(|f| f.currency.as_deref() == Some(code));
    }
}

/// Statuses that pay every month: active, and past due while the provider
/// retries. Trials pay nothing yet; canceled and revoked tenants will not
/// renew.
pub fn pays(status: TenantStatus) -> bool {
    matches!(status, TenantStatus::Active | TenantStatus::PastDue)
}

/// Monthly recurring revenue per currency: each paying tenant's plan price,
/// a yearly plan counting a twelfth, summed exactly and rounded half-up once
/// per currency.
pub fn mrr<'a>(tenants: impl IntoIterator<Item = (&'a Tenant, &'a Plan)>) -> BTreeMap<String, i64> {
    let mut twelfths: BTreeMap<String, i128> = BTreeMap::new();
    for (tenant, plan) in tenants {
        if !pays(tenant.status) {
            continue;
        }
        let per_year_in_twelfths = match plan.spec.billing_interval {
            BillingInterval::Month => 12,
            BillingInterval::Year => 1,
        };
        *twelfths
            .entry(plan.spec.price.currency.code().to_owned())
            .or_default() += i128::from(plan.spec.price.amount_minor) * per_year_in_twelfths;
    }
    twelfths
        .into_iter()
        .map(|(currency, t)| (currency, div_half_up(t, 12)))
        .collect()
}

/// The first ten by `value`, highest first (ties by tenant id).
pub fn top_ten(mut figures: Vec<TenantFigure>) -> Vec<TenantFigure> {
    figures.sort_by(|a, b| b.value.cmp(&a.value).then(a.tenant_id.cmp(&b.tenant_id)));
    figures.truncate(10);
    figures
}
