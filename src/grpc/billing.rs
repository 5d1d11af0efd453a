//! `tollgate.v1.Billing` (its tenant part).
use tonic::{Request, Response, Status};

use super::{
    convert::{from_timestamp, id, id_filter, new_tenant, tenant_patch, tenant_status_filter},
    pb::{self, billing_server},
};
use crate::{
    catalog::{Catalog, TenantRef},
    domain::{
        Error,
        ids::{PlanId, TenantId},
        page::PageRequest,
        tenant::ExternalId,
    },
    metering::Metering,
    store::TenantFilter,
};

pub struct BillingService {
    catalog: Catalog,
    metering: Metering,
}

impl BillingService {
    pub fn new(catalog: Catalog, metering: Metering) -> Self {
        Self { catalog, metering }
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
}
