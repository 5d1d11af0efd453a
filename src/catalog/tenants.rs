//! Tenants, and self-service signup.
use super::{keys::issue_key, *};

impl Catalog {
    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant> {
        let plan = self.assignable_plan(&PlanRef::Id(new.plan_id)).await?;
        let tenant = tenant_on(&plan, new, now());
        self.store.create_tenant(&tenant).await?;
        Ok(tenant)
    }

    /// Self-service signup: a tenant on the plan (trialing for the plan's
    /// trial days, if any) and its first key, in one transaction.
    pub async fn signup(&self, signup: Signup) -> Result<(Tenant, IssuedKey)> {
        let plan = self.assignable_plan(&PlanRef::Slug(signup.plan)).await?;
        let at = now();
        let tenant = tenant_on(
            &plan,
            NewTenant {
                profile: TenantProfile {
                    external_id: None,
                    email: Some(signup.email),
                    name: signup.name,
                    company: signup.company,
                    metadata: Metadata::default(),
                },
                plan_id: plan.id,
                status: None,
                trial_end: None,
            },
            at,
        );
        let issued = issue_key(
            NewKey {
                tenant_id: tenant.id,
                environment: signup.environment,
                settings: KeySettings {
                    name: "default".into(),
                    ..KeySettings::default()
                },
            },
            at,
        );
        self.store
            .create_tenant_with_key(&tenant, &issued.key, issued.secret.hash())
            .await?;
        self.announce(Change::Key(issued.key.id));
        Ok((tenant, issued))
    }

    pub async fn get_tenant(&self, tenant: &TenantRef) -> Result<Tenant> {
        match tenant {
            TenantRef::Id(id) => self.store.get_tenant(*id).await?,
            TenantRef::ExternalId(e) => self.store.get_tenant_by_external_id(e).await?,
        }
        .ok_or_else(|| match tenant {
            TenantRef::Id(id) => Error::not_found("tenant", id),
            TenantRef::ExternalId(e) => {
                Error::not_found("tenant", format!("with external id {:?}", e.as_str()))
            }
        })
    }

    pub async fn list_tenants(
        &self,
        filter: TenantFilter,
        page: PageRequest,
    ) -> Result<Page<Tenant>> {
        let rows = self.store.list_tenants(&filter, &page).await?;
        Ok(Page::from_rows(&page, rows, |t| t.id.to_string()))
    }

    pub async fn update_tenant(&self, id: TenantId, patch: TenantPatch) -> Result<Tenant> {
        self.modify_tenant(id, move |t| {
            if let Some(v) = patch.external_id.clone() {
                t.profile.external_id = v;
            }
            if let Some(v) = patch.email.clone() {
                t.profile.email = v;
            }
            if let Some(v) = patch.name.clone() {
                t.profile.name = v;
            }
            if let Some(v) = patch.company.clone() {
                t.profile.company = v;
            }
            if let Some(v) = patch.status {
                t.set_status(v, now());
            }
            if let Some(v) = patch.trial_end {
                t.trial_end = v;
            }
            if let Some(v) = patch.metadata.clone() {
                t.profile.metadata = v;
            }
            Ok(())
        })
        .await
    }

    pub async fn change_plan(&self, id: TenantId, plan_id: PlanId) -> Result<Tenant> {
        let plan = self.assignable_plan(&PlanRef::Id(plan_id)).await?;
        self.modify_tenant(id, move |t| {
            t.plan_id = plan.id;
            Ok(())
        })
        .await
    }

    async fn modify_tenant(
        &self,
        id: TenantId,
        change: impl Fn(&mut Tenant) -> Result<()> + Send + Sync,
    ) -> Result<Tenant> {
        let store = &self.store;
        modify(
            "tenant",
            id,
            || Box::pin(async move { store.get_tenant(id).await }),
            |t| t.updated_at,
            |t, at| t.updated_at = at,
            change,
            |t, expected| {
                let store = Arc::clone(store);
                Box::pin(async move { store.replace_tenant(t, expected).await })
            },
        )
        .await
        .inspect(|_| self.announce(Change::Tenant(id)))
    }
}

/// A new tenant on `plan`: trialing for the plan's trial days when it has
/// any (unless told otherwise), else active.
fn tenant_on(plan: &Plan, new: NewTenant, at: Timestamp) -> Tenant {
    let trial_days = i64::from(plan.spec.trial_days);
    let status = new.status.unwrap_or(if trial_days > 0 {
        TenantStatus::Trialing
    } else {
        TenantStatus::Active
    });
    let trial_end = match (status, new.trial_end) {
        (_, Some(end)) => Some(end),
        (TenantStatus::Trialing, None) => Some(at + time::Duration::days(trial_days)),
        _ => None,
    };
    Tenant {
        id: TenantId::generate(),
        profile: new.profile,
        plan_id: plan.id,
        status,
        trial_end,
        billing_period: None,
        trial_started_at: (status == TenantStatus::Trialing).then_some(at),
        converted_at: None,
        created_at: at,
        updated_at: at,
    }
}
