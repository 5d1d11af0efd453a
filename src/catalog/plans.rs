//! Plans and the provider products mapped to them.
use super::*;

impl Catalog {
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
    pub(super) async fn assignable_plan(&self, plan: &PlanRef) -> Result<Plan> {
        let plan = self.get_plan(plan).await?;
        if plan.archived {
            return Err(Error::FailedPrecondition(format!(
                "plan {} is archived; no tenant or product can be put on it",
                plan.id
            )));
        }
        Ok(plan)
    }

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
}
