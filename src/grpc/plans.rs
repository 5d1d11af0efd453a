//! `tollgate.v1.Plans`.
use tonic::{Request, Response, Status};

use crate::subscriptions::Subscriptions;

use super::{
    convert::{id, id_filter, new_plan, plan_patch},
    pb::{self, plans_server},
};
use crate::{
    catalog::{Catalog, PlanRef},
    domain::{
        Error,
        ids::PlanId,
        page::PageRequest,
        plan::{ProductId, Provider, Slug},
    },
};

pub struct PlansService {
    catalog: Catalog,
    subscriptions: Subscriptions,
}

impl PlansService {
    pub fn new(catalog: Catalog, subscriptions: Subscriptions) -> Self {
        Self {
            catalog,
            subscriptions,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn product(provider: &str, product_id: &str) -> Result<(Provider, ProductId), Error> {
    let mut v = super::convert::Violations::default();
    let provider = v.check("", Provider::parse("provider", provider));
    let product = v.check("", ProductId::parse("product_id", product_id));
    v.finish(|| Some((provider?, product?)))
}

#[tonic::async_trait]
impl plans_server::Plans for PlansService {
    async fn create_plan(&self, req: Request<pb::CreatePlanRequest>) -> Reply<pb::Plan> {
        let (slug, spec) = new_plan(req.into_inner())?;
        let plan = self.catalog.create_plan(slug, spec).await?;
        Ok(Response::new((&plan).into()))
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Reply<pb::Plan> {
        use pb::get_plan_request::Lookup;
        let plan = match req.into_inner().lookup {
            Some(Lookup::Id(s)) => PlanRef::Id(id("id", &s, PlanId::parse)?),
            Some(Lookup::Slug(s)) => PlanRef::Slug(Slug::parse("slug", &s).map_err(Error::from)?),
            None => return Err(Error::invalid("lookup", "set id or slug").into()),
        };
        let plan = self.catalog.get_plan(&plan).await?;
        Ok(Response::new((&plan).into()))
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> Reply<pb::ListPlansResponse> {
        let req = req.into_inner();
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("plans;archived={}", req.show_archived),
        )
        .map_err(Error::from)?;
        let page = self.catalog.list_plans(req.show_archived, page).await?;
        Ok(Response::new(pb::ListPlansResponse {
            plans: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_plan(&self, req: Request<pb::UpdatePlanRequest>) -> Reply<pb::Plan> {
        let (id, patch) = plan_patch(req.into_inner())?;
        let plan = self.catalog.update_plan(id, patch).await?;
        Ok(Response::new((&plan).into()))
    }

    async fn archive_plan(&self, req: Request<pb::ArchivePlanRequest>) -> Reply<pb::Plan> {
        let id = id("id", &req.into_inner().id, PlanId::parse)?;
        let plan = self.catalog.archive_plan(id).await?;
        Ok(Response::new((&plan).into()))
    }

    async fn map_product(&self, req: Request<pb::MapProductRequest>) -> Reply<pb::ProductMapping> {
        let req = req.into_inner();
        let (provider, product_id) = product(&req.provider, &req.product_id)?;
        let plan_id = id("plan_id", &req.plan_id, PlanId::parse)?;
        let mapping = self
            .catalog
            .map_product(provider, product_id, plan_id)
            .await?;
        // Subscriptions that waited for this product apply now. The mapping
        // stands either way; one that fails here applies with the
        // subscription's next update.
        match self
            .subscriptions
            .apply_pending(provider, &mapping.product_id)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                product_id = mapping.product_id.as_str(),
                subscriptions = n,
                "pending subscriptions applied"
            ),
            Err(error) => tracing::warn!(
                %error,
                product_id = mapping.product_id.as_str(),
                "pending subscriptions not applied yet"
            ),
        }
        Ok(Response::new((&mapping).into()))
    }

    async fn unmap_product(
        &self,
        req: Request<pb::UnmapProductRequest>,
    ) -> Reply<pb::UnmapProductResponse> {
        let req = req.into_inner();
        let (provider, product_id) = product(&req.provider, &req.product_id)?;
        let mapping = self.catalog.unmap_product(provider, product_id).await?;
        Ok(Response::new(pb::UnmapProductResponse {
            mapping: Some((&mapping).into()),
        }))
    }

    async fn list_product_mappings(
        &self,
        req: Request<pb::ListProductMappingsRequest>,
    ) -> Reply<pb::ListProductMappingsResponse> {
        let req = req.into_inner();
        let plan_id = id_filter("plan_id", &req.plan_id, PlanId::parse)?;
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("mappings;plan={}", req.plan_id),
        )
        .map_err(Error::from)?;
        let page = self.catalog.list_product_mappings(plan_id, page).await?;
        Ok(Response::new(pb::ListProductMappingsResponse {
            mappings: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
