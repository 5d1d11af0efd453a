//! Invoices from durable usage: a calendar month of a tenant's plan prices,
//! prorated by the second across plan changes, plus billed overage.
use std::{collections::BTreeMap, sync::Arc};

use crate::{
    catalog::{Catalog, PlanRef, TenantRef},
    domain::{
        Error, Result,
        ids::{InvoiceId, TenantId},
        invoice::{BillingMonth, Invoice, InvoiceStatus, overage_line, plan_line, segments},
        now,
        page::{Page, PageRequest},
        plan::{Plan, Resource},
    },
    store::{InvoiceStore, UsageStore},
};

#[derive(Clone)]
pub struct Invoicing {
    catalog: Catalog,
    invoices: Arc<dyn InvoiceStore>,
    usage: Arc<dyn UsageStore>,
}

impl Invoicing {
    pub fn new(
        catalog: Catalog,
        invoices: Arc<dyn InvoiceStore>,
        usage: Arc<dyn UsageStore>,
    ) -> Self {
        Self {
            catalog,
            invoices,
            usage,
        }
    }

    /// Builds the month's invoice and stores it as a draft, replacing an
    /// earlier draft of the same month.
    pub async fn generate(&self, tenant_id: TenantId, month: BillingMonth) -> Result<Invoice> {
        let tenant = self.catalog.get_tenant(&TenantRef::Id(tenant_id)).await?;
        let mut history = self.invoices.plan_history(tenant_id).await?;
        if history.is_empty() {
            // Tenants from before plan histories were kept.
            history.push((tenant.created_at, tenant.plan_id));
        }
        let period = month.period;
        let mut lines = Vec::new();
        let mut last: Option<Plan> = None;
        for (plan_id, from, to) in segments(&history, period) {
            let plan = self.catalog.get_plan(&PlanRef::Id(plan_id)).await?;
            if last
                .as_ref()
                .is_some_and(|l| l.spec.price.currency != plan.spec.price.currency)
            {
                return Err(Error::FailedPrecondition(format!(
                    "tenant {tenant_id} changed between plans in different currencies in {}; \
                     one invoice has one currency",
                    month.name
                )));
            }
            lines.push(plan_line(&plan, from, to, period));
            last = Some(plan);
        }
        // Overage under the plan in force at the month's end.
        let Some(plan) = last else {
            return Err(Error::FailedPrecondition(format!(
                "tenant {tenant_id} had no plan in {}",
                month.name
            )));
        };
        let mut used: BTreeMap<Resource, i64> = BTreeMap::new();
        for total in self
            .usage
            .usage_starting_in(tenant_id, period.start, period.end)
            .await?
        {
            *used.entry(total.resource).or_default() += total.used;
        }
        for (resource, used) in &used {
            lines.extend(overage_line(&plan, resource, *used, period));
        }
        let at = now();
        let invoice = Invoice {
            id: InvoiceId::generate(),
            tenant_id,
            month,
            currency: plan.spec.price.currency,
            total_minor: lines.iter().map(|l| l.amount_minor).sum(),
            lines,
            status: InvoiceStatus::Draft,
            created_at: at,
            updated_at: at,
            finalized_at: None,
        };
        self.invoices.save_draft(&invoice).await
    }

    pub async fn finalize(&self, id: InvoiceId) -> Result<Invoice> {
        self.invoices
            .finalize_invoice(id, now())
            .await?
            .ok_or_else(|| Error::not_found("invoice", id))
    }

    pub async fn get(&self, id: InvoiceId) -> Result<Invoice> {
        self.invoices
            .get_invoice(id)
            .await?
            .ok_or_else(|| Error::not_found("invoice", id))
    }

    pub async fn list(
        &self,
        tenant_id: Option<TenantId>,
        page: PageRequest,
    ) -> Result<Page<Invoice>> {
        let rows = self.invoices.list_invoices(tenant_id, &page).await?;
        Ok(Page::from_rows(&page, rows, |i| i.id.to_string()))
    }
}
