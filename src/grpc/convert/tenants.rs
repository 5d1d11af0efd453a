//! Tenants at the edge: CreateTenant's, UpdateTenant's and Signup's requests
//! parsed, tenants and their statuses shown.
use super::*;

pub(super) fn tenant_status(
    v: &mut Violations,
    field: &str,
    raw: i32,
) -> Option<Option<TenantStatus>> {
    use pb::TenantStatus as P;
    match P::try_from(raw) {
        Ok(P::Unspecified) => Some(None),
        Ok(P::Trialing) => Some(Some(TenantStatus::Trialing)),
        Ok(P::Active) => Some(Some(TenantStatus::Active)),
        Ok(P::PastDue) => Some(Some(TenantStatus::PastDue)),
        Ok(P::Canceled) => Some(Some(TenantStatus::Canceled)),
        Ok(P::Revoked) => Some(Some(TenantStatus::Revoked)),
        Ok(P::Paused) => Some(Some(TenantStatus::Paused)),
        Err(_) => {
            v.push(field, format!("{raw} is not a TenantStatus"));
            None
        }
    }
}

pub fn tenant_status_filter(raw: i32) -> Result<Option<TenantStatus>> {
    let mut v = Violations::default();
    let status = tenant_status(&mut v, "status", raw);
    v.finish(|| status)
}

pub fn new_tenant(req: pb::CreateTenantRequest) -> Result<NewTenant> {
    let Some(t) = req.tenant else {
        return Err(Error::invalid("tenant", "is required"));
    };
    let mut v = Violations::default();
    let external_id = optional(&mut v, &t.external_id, |s| {
        ExternalId::parse("tenant.external_id", s)
    });
    let email = optional(&mut v, &t.email, |s| Email::parse("tenant.email", s));
    let name = v.check("", parse_name("tenant.name", &t.name));
    let company = v.check("", parse_name("tenant.company", &t.company));
    let metadata = metadata(&mut v, "tenant.metadata", &t.metadata);
    let plan_id = v.required(
        "tenant.plan_id",
        &t.plan_id,
        crate::domain::ids::PlanId::parse,
    );
    let status = tenant_status(&mut v, "tenant.status", t.status);
    let trial_end = opt_timestamp(&mut v, "tenant.trial_end", t.trial_end.as_ref());
    v.finish(|| {
        Some(NewTenant {
            profile: TenantProfile {
                external_id: external_id?,
                email: email?,
                name: name?,
                company: company?,
                metadata: metadata?,
            },
            plan_id: plan_id?,
            status: status?,
            trial_end: trial_end?,
        })
    })
}

pub const TENANT_MASK: &[&str] = &[
    "external_id",
    "email",
    "name",
    "company",
    "status",
    "trial_end",
    "metadata",
];

pub fn tenant_patch(
    req: pb::UpdateTenantRequest,
) -> Result<(crate::domain::ids::TenantId, TenantPatch)> {
    let Some(t) = req.tenant else {
        return Err(Error::invalid("tenant", "is required"));
    };
    let id = id("tenant.id", &t.id, crate::domain::ids::TenantId::parse)?;
    let paths = mask_paths(req.update_mask.as_ref(), TENANT_MASK)?;
    let mut v = Violations::default();
    let mut patch = TenantPatch::default();
    for path in &paths {
        match path.as_str() {
            "external_id" => {
                patch.external_id = optional(&mut v, &t.external_id, |s| {
                    ExternalId::parse("tenant.external_id", s)
                })
            }
            "email" => {
                patch.email = optional(&mut v, &t.email, |s| Email::parse("tenant.email", s))
            }
            "name" => patch.name = v.check("", parse_name("tenant.name", &t.name)),
            "company" => patch.company = v.check("", parse_name("tenant.company", &t.company)),
            "status" => match tenant_status(&mut v, "tenant.status", t.status) {
                Some(None) => v.push("tenant.status", "must be set when in update_mask"),
                Some(s) => patch.status = s,
                None => {}
            },
            "trial_end" => {
                patch.trial_end = opt_timestamp(&mut v, "tenant.trial_end", t.trial_end.as_ref())
            }
            "metadata" => patch.metadata = metadata(&mut v, "tenant.metadata", &t.metadata),
            _ => unreachable!("mask_paths checked the paths"),
        }
    }
    v.finish(|| Some((id, patch)))
}

pub fn tenant_status_to_pb(s: TenantStatus) -> pb::TenantStatus {
    match s {
        TenantStatus::Trialing => pb::TenantStatus::Trialing,
        TenantStatus::Active => pb::TenantStatus::Active,
        TenantStatus::PastDue => pb::TenantStatus::PastDue,
        TenantStatus::Canceled => pb::TenantStatus::Canceled,
        TenantStatus::Revoked => pb::TenantStatus::Revoked,
        TenantStatus::Paused => pb::TenantStatus::Paused,
    }
}

impl From<&Tenant> for pb::Tenant {
    fn from(t: &Tenant) -> Self {
        pb::Tenant {
            id: t.id.to_string(),
            external_id: t
                .profile
                .external_id
                .as_ref()
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
            email: t
                .profile
                .email
                .as_ref()
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
            name: t.profile.name.clone(),
            company: t.profile.company.clone(),
            plan_id: t.plan_id.to_string(),
            status: tenant_status_to_pb(t.status) as i32,
            trial_end: t.trial_end.map(timestamp),
            metadata: t.profile.metadata.entries().clone().into_iter().collect(),
            create_time: Some(timestamp(t.created_at)),
            update_time: Some(timestamp(t.updated_at)),
            current_period_start: t.billing_period.map(|p| timestamp(p.start)),
            current_period_end: t.billing_period.map(|p| timestamp(p.end)),
        }
    }
}

pub fn signup(req: pb::SignupRequest) -> Result<Signup> {
    let mut v = Violations::default();
    let email = v.check("", Email::parse("email", &req.email));
    let company = display_name(&mut v, "company", &req.company);
    let name = v.check("", parse_name("name", &req.name));
    let plan = v.required("plan_slug", &req.plan_slug, Slug::parse);
    let environment = key_environment(&mut v, "environment", req.environment);
    v.finish(|| {
        Some(Signup {
            email: email?,
            company: company?,
            name: name?,
            plan: plan?,
            environment: environment?,
        })
    })
}
