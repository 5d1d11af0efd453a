//! `tollgate.v1.Billing`: tenants, signup, subscriptions, usage and credits.
use tonic::{Request, Response, Status};

use super::{
    convert::{
        Violations, apply_outcome_to_pb, credit_change, customer_update, entry_to_pb,
        from_timestamp, id, id_filter, key_to_pb, new_tenant, signup, subscription_update,
        tenant_patch, tenant_status_filter,
    },
    pb::{self, billing_server},
};
use crate::{
    catalog::{Catalog, TenantRef},
    credits::Credits,
    domain::{
        Error,
        credits::{CreditType, EntryKind},
        ids::InvoiceId,
        ids::{PlanId, TenantId},
        invoice::{month_of, parse_month},
        now,
        page::PageRequest,
        plan::{Currency, Provider},
        subscription::SubscriptionId,
        tenant::ExternalId,
    },
    invoicing::Invoicing,
    metering::Metering,
    revenue::Revenue,
    store::TenantFilter,
    subscriptions::Subscriptions,
};

pub struct BillingService {
    catalog: Catalog,
    metering: Metering,
    credits: Credits,
    subscriptions: Subscriptions,
    invoicing: Invoicing,
    revenue: Revenue,
}

impl BillingService {
    pub fn new(
        catalog: Catalog,
        metering: Metering,
        credits: Credits,
        subscriptions: Subscriptions,
        invoicing: Invoicing,
        revenue: Revenue,
    ) -> Self {
        Self {
            catalog,
            metering,
            credits,
            subscriptions,
            invoicing,
            revenue,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl billing_server::Billing for BillingService {
    async fn create_tenant(&self, req: Request<pb::CreateTenantRequest>) -> Reply<pb::Tenant> {
        let tenant = self
            .catalog
            .create_tenant(new_tenant(req.into_inner())?)
            .await?;
        Ok(Response::new((&tenant).into()))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Reply<pb::Tenant> {
        use pb::get_tenant_request::Lookup;
        let tenant = match req.into_inner().lookup {
            Some(Lookup::Id(s)) => TenantRef::Id(id("id", &s, TenantId::parse)?),
            Some(Lookup::ExternalId(s)) => {
                TenantRef::ExternalId(ExternalId::parse("external_id", &s).map_err(Error::from)?)
            }
            None => return Err(Error::invalid("lookup", "set id or external_id").into()),
        };
        let tenant = self.catalog.get_tenant(&tenant).await?;
        Ok(Response::new((&tenant).into()))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Reply<pb::ListTenantsResponse> {
        let req = req.into_inner();
        let filter = TenantFilter {
            plan_id: id_filter("plan_id", &req.plan_id, PlanId::parse)?,
            status: tenant_status_filter(req.status)?,
        };
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("tenants;plan={};status={}", req.plan_id, req.status),
        )
        .map_err(Error::from)?;
        let page = self.catalog.list_tenants(filter, page).await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_tenant(&self, req: Request<pb::UpdateTenantRequest>) -> Reply<pb::Tenant> {
        let (id, patch) = tenant_patch(req.into_inner())?;
        let tenant = self.catalog.update_tenant(id, patch).await?;
        Ok(Response::new((&tenant).into()))
    }

    async fn change_plan(&self, req: Request<pb::ChangePlanRequest>) -> Reply<pb::Tenant> {
        let req = req.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id, TenantId::parse)?;
        let plan_id = id("plan_id", &req.plan_id, PlanId::parse)?;
        let tenant = self.catalog.change_plan(tenant_id, plan_id).await?;
        Ok(Response::new((&tenant).into()))
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> Reply<pb::GetUsageResponse> {
        let req = req.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id, TenantId::parse)?;
        let at = req
            .at
            .map(|t| from_timestamp("at", &t))
            .transpose()
            .map_err(Error::from)?;
        let report = self.metering.usage(tenant_id, at).await?;
        Ok(Response::new((&report).into()))
    }

    async fn signup(&self, req: Request<pb::SignupRequest>) -> Reply<pb::SignupResponse> {
        let (tenant, issued) = self.catalog.signup(signup(req.into_inner())?).await?;
        Ok(Response::new(pb::SignupResponse {
            tenant: Some((&tenant).into()),
            key: Some(key_to_pb(&issued.key, issued.key.created_at)),
            secret: issued.secret.into_exposed(),
        }))
    }

    async fn apply_subscription(
        &self,
        req: Request<pb::ApplySubscriptionRequest>,
    ) -> Reply<pb::ApplySubscriptionResponse> {
        let update = subscription_update(req.into_inner())?;
        let (outcome, subscription) = self.subscriptions.apply(&update).await?;
        Ok(Response::new(pb::ApplySubscriptionResponse {
            outcome: apply_outcome_to_pb(outcome) as i32,
            subscription: Some((&subscription).into()),
        }))
    }

    async fn apply_customer(
        &self,
        req: Request<pb::ApplyCustomerRequest>,
    ) -> Reply<pb::ApplyCustomerResponse> {
        let update = customer_update(req.into_inner())?;
        let (outcome, tenant) = self.subscriptions.apply_customer(&update).await?;
        Ok(Response::new(pb::ApplyCustomerResponse {
            outcome: apply_outcome_to_pb(outcome) as i32,
            tenant: Some((&tenant).into()),
        }))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> Reply<pb::Subscription> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let provider = v.required("provider", &req.provider, Provider::parse);
        let id = v.check("", SubscriptionId::parse("id", &req.id));
        let (provider, id) = v.finish(|| Some((provider?, id?)))?;
        let subscription = self.subscriptions.get(provider, &id).await?;
        Ok(Response::new((&subscription).into()))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Reply<pb::ListSubscriptionsResponse> {
        let req = req.into_inner();
        let tenant_id = id_filter("tenant_id", &req.tenant_id, TenantId::parse)?;
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("subscriptions;tenant={}", req.tenant_id),
        )
        .map_err(Error::from)?;
        let page = self.subscriptions.list(tenant_id, page).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn generate_invoice(
        &self,
        req: Request<pb::GenerateInvoiceRequest>,
    ) -> Reply<pb::Invoice> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let tenant_id = v.required("tenant_id", &req.tenant_id, TenantId::parse);
        let month = v.check("", parse_month("period", &req.period));
        let (tenant_id, month) = v.finish(|| Some((tenant_id?, month?)))?;
        let invoice = self.invoicing.generate(tenant_id, month).await?;
        Ok(Response::new((&invoice).into()))
    }

    async fn finalize_invoice(
        &self,
        req: Request<pb::FinalizeInvoiceRequest>,
    ) -> Reply<pb::Invoice> {
        let id = id("id", &req.into_inner().id, InvoiceId::parse)?;
        let invoice = self.invoicing.finalize(id).await?;
        Ok(Response::new((&invoice).into()))
    }

    async fn get_invoice(&self, req: Request<pb::GetInvoiceRequest>) -> Reply<pb::Invoice> {
        let id = id("id", &req.into_inner().id, InvoiceId::parse)?;
        let invoice = self.invoicing.get(id).await?;
        Ok(Response::new((&invoice).into()))
    }

    async fn list_invoices(
        &self,
        req: Request<pb::ListInvoicesRequest>,
    ) -> Reply<pb::ListInvoicesResponse> {
        let req = req.into_inner();
        let tenant_id = id_filter("tenant_id", &req.tenant_id, TenantId::parse)?;
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("invoices;tenant={}", req.tenant_id),
        )
        .map_err(Error::from)?;
        let page = self.invoicing.list(tenant_id, page).await?;
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_revenue_summary(
        &self,
        req: Request<pb::GetRevenueSummaryRequest>,
    ) -> Reply<pb::GetRevenueSummaryResponse> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let month = if req.period.is_empty() {
            Some(month_of(now()))
        } else {
            v.check("", parse_month("period", &req.period))
        };
        let currency = if req.currency.is_empty() {
            Some(None)
        } else {
            v.check("", Currency::parse("currency", &req.currency))
                .map(Some)
        };
        let (month, currency) = v.finish(|| Some((month?, currency?)))?;
        let mut summary = self.revenue.summary(month).await?;
        if let Some(currency) = currency {
            summary.keep_currency(currency.code());
        }
        Ok(Response::new((&summary).into()))
    }

    async fn grant_credits(&self, req: Request<pb::GrantCreditsRequest>) -> Reply<pb::CreditEntry> {
        let r = req.into_inner();
        let change = credit_change(
            EntryKind::Grant,
            &r.tenant_id,
            &r.credit_type,
            r.amount,
            &r.idempotency_key,
            r.expire_time.as_ref(),
        )?;
        let applied = self.credits.apply(change).await?;
        Ok(Response::new((&applied).into()))
    }

    async fn debit_credits(&self, req: Request<pb::DebitCreditsRequest>) -> Reply<pb::CreditEntry> {
        let r = req.into_inner();
        let change = credit_change(
            EntryKind::Debit,
            &r.tenant_id,
            &r.credit_type,
            r.amount,
            &r.idempotency_key,
            None,
        )?;
        let applied = self.credits.apply(change).await?;
        Ok(Response::new((&applied).into()))
    }

    async fn get_balances(
        &self,
        req: Request<pb::GetBalancesRequest>,
    ) -> Reply<pb::GetBalancesResponse> {
        let tenant_id = id("tenant_id", &req.into_inner().tenant_id, TenantId::parse)?;
        let balances = self.credits.balances(tenant_id).await?;
        Ok(Response::new(pb::GetBalancesResponse {
            tenant_id: tenant_id.to_string(),
            balances: balances.iter().map(Into::into).collect(),
        }))
    }

    async fn list_ledger(
        &self,
        req: Request<pb::ListLedgerRequest>,
    ) -> Reply<pb::ListLedgerResponse> {
        let req = req.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id, TenantId::parse)?;
        let credit_type = id_filter("credit_type", &req.credit_type, CreditType::parse)?;
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("ledger;tenant={};type={}", req.tenant_id, req.credit_type),
        )
        .map_err(Error::from)?;
        let page = self.credits.ledger(tenant_id, credit_type, page).await?;
        Ok(Response::new(pb::ListLedgerResponse {
            entries: page.items.iter().map(|e| entry_to_pb(e, false)).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
