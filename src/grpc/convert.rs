//! Proto messages become domain values here, once, with errors that name the
//! request field; domain values become proto messages on the way out.
use std::collections::HashMap;

use prost_types::{FieldMask, Timestamp as PbTimestamp};

use super::pb;
use crate::{
    catalog::{KeyPatch, NewKey, NewTenant, PlanPatch, Signup, TenantPatch},
    domain::{
        ACCEPTED_MICROS, ACCEPTED_RANGE, Error, FieldViolation, Result, Timestamp,
        credits::{
            Applied, Balance, CreditChange, CreditType, EntryKind, IdempotencyKey, LedgerEntry,
            parse_amount,
        },
        from_micros,
        ids::TenantId,
        invoice::{Invoice, InvoiceStatus, LineKind},
        key::{ApiKey, KeyEnvironment, KeySettings, KeyStatus},
        plan::{
            BillingInterval, Feature, MAX_TRIAL_DAYS, Overage, Plan, PlanSpec, Price, ProductId,
            ProductMapping, Provider, Quota, QuotaReset, RateLimit, Slug,
        },
        subscription::{
            ApplyOutcome, Customer, CustomerId, CustomerUpdate, EventId, Subscription,
            SubscriptionId, SubscriptionUpdate,
        },
        tenant::{Email, ExternalId, Tenant, TenantProfile, TenantStatus, parse_name},
        text::{Metadata, bounded},
        to_micros,
        verify::Period,
    },
    metering::UsageReport,
};

/// Collects every violation of a request, so one answer lists them all.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps the value, or records why not under `parent` (may be empty).
    pub fn check<T>(
        &mut self,
        parent: &str,
        r: std::result::Result<T, FieldViolation>,
    ) -> Option<T> {
        r.map_err(|v| {
            self.0.push(if parent.is_empty() {
                v
            } else {
                v.under(parent)
            })
        })
        .ok()
    }

    pub fn check_all<T>(
        &mut self,
        parent: &str,
        r: std::result::Result<T, Vec<FieldViolation>>,
    ) -> Option<T> {
        r.map_err(|vs| {
            self.0.extend(vs.into_iter().map(|v| {
                if parent.is_empty() {
                    v
                } else {
                    v.under(parent)
                }
            }))
        })
        .ok()
    }

    /// Parses a required string field: empty is "is required", anything
    /// else goes through `parse`.
    pub fn required<T>(
        &mut self,
        field: &str,
        s: &str,
        parse: impl FnOnce(&str, &str) -> std::result::Result<T, FieldViolation>,
    ) -> Option<T> {
        if s.is_empty() {
            self.push(field, "is required");
            return None;
        }
        self.check("", parse(field, s))
    }

    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Ok(value)` when nothing was recorded.
    pub fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T> {
        if self.0.is_empty() {
            value()
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("value missing without violation")))
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// Parses a required id field.
pub fn id<T>(
    field: &str,
    s: &str,
    parse: fn(&str, &str) -> std::result::Result<T, FieldViolation>,
) -> Result<T> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    parse(field, s).map_err(Error::from)
}

/// Parses an optional id filter: empty means no filter.
pub fn id_filter<T>(
    field: &str,
    s: &str,
    parse: fn(&str, &str) -> std::result::Result<T, FieldViolation>,
) -> Result<Option<T>> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(field, s).map(Some).map_err(Error::from)
    }
}

pub fn timestamp(t: Timestamp) -> PbTimestamp {
    let micros = to_micros(t);
    PbTimestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Parses a timestamp, truncated to microseconds; one outside the accepted
/// range is refused here, so no period computed from it can overflow.
pub fn from_timestamp(
    field: &str,
    t: &PbTimestamp,
) -> std::result::Result<Timestamp, FieldViolation> {
    let bad = || FieldViolation::new(field, format!("must be a timestamp {ACCEPTED_RANGE}"));
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(FieldViolation::new(
            field,
            "must be a valid timestamp (nanos from 0 to 999,999,999)",
        ));
    }
    let micros = t
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1_000)))
        .filter(|m| ACCEPTED_MICROS.contains(m))
        .ok_or_else(bad)?;
    from_micros(micros).ok_or_else(bad)
}

/// The paths of a required update mask, each checked against `allowed`.
pub fn mask_paths(mask: Option<&FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Err(Error::invalid(
            "update_mask",
            format!("is required; allowed paths: {}", allowed.join(", ")),
        ));
    };
    let mut v = Violations::default();
    for p in &mask.paths {
        if !allowed.contains(&p.as_str()) {
            v.push(
                "update_mask",
                format!(
                    "{p:?} cannot be updated; allowed paths: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    v.finish(|| Some(mask.paths.clone()))
}

fn price(v: &mut Violations, field: &str, p: Option<&pb::Price>) -> Option<Price> {
    match p {
        None => {
            v.push(field, "is required");
            None
        }
        Some(p) => v.check_all(field, Price::parse(p.amount_minor, &p.currency)),
    }
}

fn billing_interval(v: &mut Violations, field: &str, raw: i32) -> Option<BillingInterval> {
    match pb::BillingInterval::try_from(raw) {
        Ok(pb::BillingInterval::Month) => Some(BillingInterval::Month),
        Ok(pb::BillingInterval::Year) => Some(BillingInterval::Year),
        _ => {
            v.push(
                field,
                "must be BILLING_INTERVAL_MONTH or BILLING_INTERVAL_YEAR",
            );
            None
        }
    }
}

fn trial_days(v: &mut Violations, field: &str, days: i32) -> Option<u16> {
    if (0..=MAX_TRIAL_DAYS).contains(&i64::from(days)) {
        Some(days as u16)
    } else {
        v.push(field, format!("must be between 0 and {MAX_TRIAL_DAYS}"));
        None
    }
}

fn rate_limit(v: &mut Violations, field: &str, r: Option<&pb::RateLimit>) -> Option<RateLimit> {
    match r {
        None => {
            v.push(field, "is required");
            None
        }
        Some(r) => v.check_all(field, RateLimit::parse(r.requests_per_minute, r.burst)),
    }
}

fn quotas(v: &mut Violations, field: &str, qs: &[pb::Quota]) -> Option<Vec<Quota>> {
    let mut out = Vec::with_capacity(qs.len());
    let mut ok = true;
    for (i, q) in qs.iter().enumerate() {
        let overage = match pb::OveragePolicy::try_from(q.overage_policy) {
            Ok(pb::OveragePolicy::HardCap) => {
                if q.overage_unit_price_micros != 0 {
                    v.push(
                        format!("{field}[{i}].overage_unit_price_micros"),
                        "must be 0 unless overage_policy is OVERAGE_POLICY_BILLED",
                    );
                    ok = false;
                }
                Some(Overage::HardCap)
            }
            Ok(pb::OveragePolicy::Billed) => Some(Overage::Billed {
                unit_price_micros: q.overage_unit_price_micros,
            }),
            _ => None,
        };
        match v.check_all(
            &format!("{field}[{i}]"),
            Quota::parse(&q.resource, q.included_units, overage),
        ) {
            Some(q) => out.push(q),
            None => ok = false,
        }
    }
    if ok {
        v.check_all(field, Quota::check_list(&out).map(|()| out))
    } else {
        None
    }
}

fn quota_reset(v: &mut Violations, field: &str, r: Option<&pb::QuotaReset>) -> Option<QuotaReset> {
    use pb::quota_reset::Schedule;
    match r.and_then(|r| r.schedule.as_ref()) {
        None => {
            v.push(field, "is required: calendar_month or billing_period");
            None
        }
        Some(Schedule::CalendarMonth(m)) => v.check(
            "",
            QuotaReset::calendar_month(&format!("{field}.calendar_month.day"), i64::from(m.day)),
        ),
        Some(Schedule::BillingPeriod(_)) => Some(QuotaReset::BillingPeriod),
    }
}

fn display_name(v: &mut Violations, field: &str, s: &str) -> Option<String> {
    v.check("", bounded(field, s, 200, true))
}

fn metadata(v: &mut Violations, field: &str, m: &HashMap<String, String>) -> Option<Metadata> {
    v.check("", Metadata::parse(field, m.clone()))
}

pub fn new_plan(req: pb::CreatePlanRequest) -> Result<(Slug, PlanSpec)> {
    let Some(p) = req.plan else {
        return Err(Error::invalid("plan", "is required"));
    };
    let mut v = Violations::default();
    let slug = v.check("", Slug::parse("plan.slug", &p.slug));
    let spec = (
        display_name(&mut v, "plan.display_name", &p.display_name),
        price(&mut v, "plan.price", p.price.as_ref()),
        billing_interval(&mut v, "plan.billing_interval", p.billing_interval),
        trial_days(&mut v, "plan.trial_days", p.trial_days),
        rate_limit(&mut v, "plan.rate_limit", p.rate_limit.as_ref()),
        quotas(&mut v, "plan.quotas", &p.quotas),
        v.check("", Feature::parse_list("plan.features", &p.features)),
        quota_reset(&mut v, "plan.quota_reset", p.quota_reset.as_ref()),
    );
    v.finish(|| {
        let (
            display_name,
            price,
            billing_interval,
            trial_days,
            rate_limit,
            quotas,
            features,
            quota_reset,
        ) = spec;
        Some((
            slug?,
            PlanSpec {
                display_name: display_name?,
                price: price?,
                billing_interval: billing_interval?,
                trial_days: trial_days?,
                rate_limit: rate_limit?,
                quotas: quotas?,
                features: features?,
                quota_reset: quota_reset?,
            },
        ))
    })
}

pub const PLAN_MASK: &[&str] = &[
    "display_name",
    "price",
    "billing_interval",
    "trial_days",
    "rate_limit",
    "quotas",
    "features",
    "quota_reset",
];

pub fn plan_patch(req: pb::UpdatePlanRequest) -> Result<(crate::domain::ids::PlanId, PlanPatch)> {
    let Some(p) = req.plan else {
        return Err(Error::invalid("plan", "is required"));
    };
    let id = id("plan.id", &p.id, crate::domain::ids::PlanId::parse)?;
    let paths = mask_paths(req.update_mask.as_ref(), PLAN_MASK)?;
    let mut v = Violations::default();
    let mut patch = PlanPatch::default();
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                patch.display_name = display_name(&mut v, "plan.display_name", &p.display_name)
            }
            "price" => patch.price = price(&mut v, "plan.price", p.price.as_ref()),
            "billing_interval" => {
                patch.billing_interval =
                    billing_interval(&mut v, "plan.billing_interval", p.billing_interval)
            }
            "trial_days" => patch.trial_days = trial_days(&mut v, "plan.trial_days", p.trial_days),
            "rate_limit" => {
                patch.rate_limit = rate_limit(&mut v, "plan.rate_limit", p.rate_limit.as_ref())
            }
            "quotas" => patch.quotas = quotas(&mut v, "plan.quotas", &p.quotas),
            "features" => {
                patch.features = v.check("", Feature::parse_list("plan.features", &p.features))
            }
            "quota_reset" => {
                patch.quota_reset = quota_reset(&mut v, "plan.quota_reset", p.quota_reset.as_ref())
            }
            _ => unreachable!("mask_paths checked the paths"),
        }
    }
    v.finish(|| Some((id, patch)))
}

fn optional<T>(
    v: &mut Violations,
    s: &str,
    parse: impl FnOnce(&str) -> std::result::Result<T, FieldViolation>,
) -> Option<Option<T>> {
    if s.is_empty() {
        Some(None)
    } else {
        v.check("", parse(s)).map(Some)
    }
}

fn tenant_status(v: &mut Violations, field: &str, raw: i32) -> Option<Option<TenantStatus>> {
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

fn opt_timestamp(
    v: &mut Violations,
    field: &str,
    t: Option<&PbTimestamp>,
) -> Option<Option<Timestamp>> {
    match t {
        None => Some(None),
        Some(t) => v.check("", from_timestamp(field, t)).map(Some),
    }
}

fn required_timestamp(
    v: &mut Violations,
    field: &str,
    t: Option<&PbTimestamp>,
) -> Option<Timestamp> {
    match t {
        None => {
            v.push(field, "is required");
            None
        }
        Some(t) => v.check("", from_timestamp(field, t)),
    }
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

fn key_environment(v: &mut Violations, field: &str, raw: i32) -> Option<KeyEnvironment> {
    match pb::KeyEnvironment::try_from(raw) {
        Ok(pb::KeyEnvironment::Unspecified | pb::KeyEnvironment::Live) => {
            Some(KeyEnvironment::Live)
        }
        Ok(pb::KeyEnvironment::Test) => Some(KeyEnvironment::Test),
        Err(_) => {
            v.push(field, format!("{raw} is not a KeyEnvironment"));
            None
        }
    }
}

fn opt_rate_limit(
    v: &mut Violations,
    field: &str,
    r: Option<&pb::RateLimit>,
) -> Option<Option<RateLimit>> {
    match r {
        None => Some(None),
        Some(r) => rate_limit(v, field, Some(r)).map(Some),
    }
}

pub fn new_key(req: pb::CreateKeyRequest) -> Result<NewKey> {
    let Some(k) = req.key else {
        return Err(Error::invalid("key", "is required"));
    };
    let mut v = Violations::default();
    let tenant_id = v.required("key.tenant_id", &k.tenant_id, TenantId::parse);
    let environment = key_environment(&mut v, "key.environment", k.environment);
    let name = display_name(&mut v, "key.name", &k.name);
    let expires_at = opt_timestamp(&mut v, "key.expire_time", k.expire_time.as_ref());
    let rate_limit_override = opt_rate_limit(
        &mut v,
        "key.rate_limit_override",
        k.rate_limit_override.as_ref(),
    );
    let quota_overrides = quotas(&mut v, "key.quota_overrides", &k.quota_overrides);
    let metadata = metadata(&mut v, "key.metadata", &k.metadata);
    v.finish(|| {
        Some(NewKey {
            tenant_id: tenant_id?,
            environment: environment?,
            settings: KeySettings {
                name: name?,
                disabled: k.disabled,
                expires_at: expires_at?,
                rate_limit_override: rate_limit_override?,
                quota_overrides: quota_overrides?,
                metadata: metadata?,
            },
        })
    })
}

pub const KEY_MASK: &[&str] = &[
    "name",
    "disabled",
    "expire_time",
    "rate_limit_override",
    "quota_overrides",
    "metadata",
];

pub fn key_patch(req: pb::UpdateKeyRequest) -> Result<(crate::domain::ids::KeyId, KeyPatch)> {
    let Some(k) = req.key else {
        return Err(Error::invalid("key", "is required"));
    };
    let id = id("key.id", &k.id, crate::domain::ids::KeyId::parse)?;
    let paths = mask_paths(req.update_mask.as_ref(), KEY_MASK)?;
    let mut v = Violations::default();
    let mut patch = KeyPatch::default();
    for path in &paths {
        match path.as_str() {
            "name" => patch.name = display_name(&mut v, "key.name", &k.name),
            "disabled" => patch.disabled = Some(k.disabled),
            "expire_time" => {
                patch.expires_at = opt_timestamp(&mut v, "key.expire_time", k.expire_time.as_ref())
            }
            "rate_limit_override" => {
                patch.rate_limit_override = opt_rate_limit(
                    &mut v,
                    "key.rate_limit_override",
                    k.rate_limit_override.as_ref(),
                )
            }
            "quota_overrides" => {
                patch.quota_overrides = quotas(&mut v, "key.quota_overrides", &k.quota_overrides)
            }
            "metadata" => patch.metadata = metadata(&mut v, "key.metadata", &k.metadata),
            _ => unreachable!("mask_paths checked the paths"),
        }
    }
    v.finish(|| Some((id, patch)))
}

// ---- domain → proto ---------------------------------------------------------

fn rate_limit_to_pb(r: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests_per_minute: r.requests_per_minute,
        burst: r.burst,
    }
}

fn quota_to_pb(q: &Quota) -> pb::Quota {
    let (policy, micros) = match q.overage {
        Overage::HardCap => (pb::OveragePolicy::HardCap, 0),
        Overage::Billed { unit_price_micros } => (pb::OveragePolicy::Billed, unit_price_micros),
    };
    pb::Quota {
        resource: q.resource.as_str().to_owned(),
        included_units: q.included_units,
        overage_policy: policy as i32,
        overage_unit_price_micros: micros,
    }
}

impl From<&Plan> for pb::Plan {
    fn from(p: &Plan) -> Self {
        use pb::quota_reset::{BillingPeriod, CalendarMonth, Schedule};
        let s = &p.spec;
        pb::Plan {
            id: p.id.to_string(),
            slug: p.slug.to_string(),
            display_name: s.display_name.clone(),
            price: Some(pb::Price {
                amount_minor: s.price.amount_minor,
                currency: s.price.currency.code().to_owned(),
            }),
            billing_interval: match s.billing_interval {
                BillingInterval::Month => pb::BillingInterval::Month,
                BillingInterval::Year => pb::BillingInterval::Year,
            } as i32,
            trial_days: i32::from(s.trial_days),
            rate_limit: Some(rate_limit_to_pb(&s.rate_limit)),
            quotas: s.quotas.iter().map(quota_to_pb).collect(),
            features: s.features.iter().map(|f| f.as_str().to_owned()).collect(),
            quota_reset: Some(pb::QuotaReset {
                schedule: Some(match s.quota_reset {
                    QuotaReset::CalendarMonth { day } => Schedule::CalendarMonth(CalendarMonth {
                        day: i32::from(day),
                    }),
                    QuotaReset::BillingPeriod => Schedule::BillingPeriod(BillingPeriod {}),
                }),
            }),
            archived: p.archived,
            create_time: Some(timestamp(p.created_at)),
            update_time: Some(timestamp(p.updated_at)),
        }
    }
}

impl From<&ProductMapping> for pb::ProductMapping {
    fn from(m: &ProductMapping) -> Self {
        pb::ProductMapping {
            provider: m.provider.as_str().to_owned(),
            product_id: m.product_id.as_str().to_owned(),
            plan_id: m.plan_id.to_string(),
            create_time: Some(timestamp(m.created_at)),
        }
    }
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

impl From<&UsageReport> for pb::GetUsageResponse {
    fn from(r: &UsageReport) -> Self {
        Self {
            tenant_id: r.tenant_id.to_string(),
            period_start: Some(timestamp(r.period.start)),
            period_end: Some(timestamp(r.period.end)),
            resources: r
                .resources
                .iter()
                .map(|u| pb::ResourceUsage {
                    resource: u.resource.as_str().to_owned(),
                    used: u.used,
                    included: u.included,
                    overage: u.overage,
                })
                .collect(),
        }
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

/// A key as the API shows it; its status depends on the time of asking.
pub fn key_to_pb(k: &ApiKey, at: Timestamp) -> pb::Key {
    let s = &k.settings;
    pb::Key {
        id: k.id.to_string(),
        tenant_id: k.tenant_id.to_string(),
        name: s.name.clone(),
        environment: match k.environment {
            KeyEnvironment::Live => pb::KeyEnvironment::Live,
            KeyEnvironment::Test => pb::KeyEnvironment::Test,
        } as i32,
        prefix: k.prefix.clone(),
        status: match k.status(at) {
            KeyStatus::Active => pb::KeyStatus::Active,
            KeyStatus::Revoked => pb::KeyStatus::Revoked,
            KeyStatus::Expired => pb::KeyStatus::Expired,
        } as i32,
        disabled: s.disabled,
        expire_time: s.expires_at.map(timestamp),
        rate_limit_override: s.rate_limit_override.as_ref().map(rate_limit_to_pb),
        quota_overrides: s.quota_overrides.iter().map(quota_to_pb).collect(),
        metadata: s.metadata.entries().clone().into_iter().collect(),
        create_time: Some(timestamp(k.created_at)),
        update_time: Some(timestamp(k.updated_at)),
        last_used_time: k.last_used_at.map(timestamp),
        revoke_time: k.revoked_at.map(timestamp),
    }
}

/// A grant or debit request, every field checked at once.
pub fn credit_change(
    kind: EntryKind,
    tenant_id: &str,
    credit_type: &str,
    amount: i64,
    idempotency_key: &str,
    expire_time: Option<&PbTimestamp>,
) -> Result<CreditChange> {
    let mut v = Violations::default();
    let tenant_id = v.required("tenant_id", tenant_id, TenantId::parse);
    let credit_type = v.check("", CreditType::parse("credit_type", credit_type));
    let amount = v.check("", parse_amount("amount", amount));
    let idempotency_key = v.check(
        "",
        IdempotencyKey::parse("idempotency_key", idempotency_key),
    );
    let expires_at = match expire_time {
        Some(t) => v.check("", from_timestamp("expire_time", t)).map(Some),
        None => Some(None),
    };
    v.finish(|| {
        Some(CreditChange {
            tenant_id: tenant_id?,
            credit_type: credit_type?,
            kind,
            amount: amount?,
            idempotency_key: idempotency_key?,
            expires_at: expires_at?,
        })
    })
}

pub fn entry_to_pb(e: &LedgerEntry, replayed: bool) -> pb::CreditEntry {
    pb::CreditEntry {
        id: e.id.to_string(),
        tenant_id: e.tenant_id.to_string(),
        credit_type: e.credit_type.as_str().to_owned(),
        kind: match e.kind {
            EntryKind::Grant => pb::CreditEntryKind::Grant,
            EntryKind::Debit => pb::CreditEntryKind::Debit,
        } as i32,
        amount: e.amount,
        balance_after: e.balance_after,
        idempotency_key: e.idempotency_key.as_str().to_owned(),
        expire_time: e.expires_at.map(timestamp),
        create_time: Some(timestamp(e.created_at)),
        replayed,
    }
}

impl From<&Applied> for pb::CreditEntry {
    fn from(a: &Applied) -> Self {
        entry_to_pb(&a.entry, a.replayed)
    }
}

impl From<&Balance> for pb::CreditBalance {
    fn from(b: &Balance) -> Self {
        pb::CreditBalance {
            credit_type: b.credit_type.as_str().to_owned(),
            balance: b.balance,
            next_expire_time: b.next_expiry.map(timestamp),
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

fn subscription_status_to_pb(s: TenantStatus) -> pb::SubscriptionStatus {
    match s {
        TenantStatus::Trialing => pb::SubscriptionStatus::Trialing,
        TenantStatus::Active => pb::SubscriptionStatus::Active,
        TenantStatus::PastDue => pb::SubscriptionStatus::PastDue,
        TenantStatus::Canceled => pb::SubscriptionStatus::Canceled,
        TenantStatus::Revoked => pb::SubscriptionStatus::Revoked,
        TenantStatus::Paused => pb::SubscriptionStatus::Paused,
    }
}

/// A required `customer`: at least one of its two ids.
fn customer(v: &mut Violations, c: Option<&pb::Customer>) -> Option<Customer> {
    let Some(c) = c else {
        v.push("customer", "is required");
        return None;
    };
    if c.external_id.is_empty() && c.provider_customer_id.is_empty() {
        v.push(
            "customer.external_id",
            "customer.external_id or customer.provider_customer_id is required",
        );
        return None;
    }
    let external_id = optional(v, &c.external_id, |s| {
        ExternalId::parse("customer.external_id", s)
    });
    let provider_id = optional(v, &c.provider_customer_id, |s| {
        CustomerId::parse("customer.provider_customer_id", s)
    });
    let email = optional(v, &c.email, |s| Email::parse("customer.email", s));
    let name = v.check("", parse_name("customer.name", &c.name));
    Some(Customer {
        external_id: external_id?,
        provider_id: provider_id?,
        email: email?,
        name: name?,
    })
}

pub fn customer_update(r: pb::ApplyCustomerRequest) -> Result<CustomerUpdate> {
    let mut v = Violations::default();
    let provider = v.required("provider", &r.provider, Provider::parse);
    let customer = customer(&mut v, r.customer.as_ref());
    let id = customer.as_ref().and_then(|c| c.provider_id.clone());
    if customer.is_some() && id.is_none() {
        v.push("customer.provider_customer_id", "is required");
    }
    let modified_at = required_timestamp(&mut v, "modified_at", r.modified_at.as_ref());
    v.finish(|| {
        let c = customer?;
        Some(CustomerUpdate {
            provider: provider?,
            id: id?,
            external_id: c.external_id,
            email: c.email,
            name: c.name,
            modified_at: modified_at?,
        })
    })
}

pub fn subscription_update(r: pb::ApplySubscriptionRequest) -> Result<SubscriptionUpdate> {
    let mut v = Violations::default();
    let provider = v.required("provider", &r.provider, Provider::parse);
    let id = v.check(
        "",
        SubscriptionId::parse("subscription_id", &r.subscription_id),
    );
    let customer = customer(&mut v, r.customer.as_ref());
    let product_id = v.check("", ProductId::parse("product_id", &r.product_id));
    let status = match pb::SubscriptionStatus::try_from(r.status) {
        Ok(pb::SubscriptionStatus::Trialing) => Some(TenantStatus::Trialing),
        Ok(pb::SubscriptionStatus::Active) => Some(TenantStatus::Active),
        Ok(pb::SubscriptionStatus::PastDue) => Some(TenantStatus::PastDue),
        Ok(pb::SubscriptionStatus::Canceled) => Some(TenantStatus::Canceled),
        Ok(pb::SubscriptionStatus::Revoked) => Some(TenantStatus::Revoked),
        Ok(pb::SubscriptionStatus::Paused) => Some(TenantStatus::Paused),
        Ok(pb::SubscriptionStatus::Unspecified) => {
            v.push("status", "is required");
            None
        }
        Err(_) => {
            v.push(
                "status",
                format!("{} is not a SubscriptionStatus", r.status),
            );
            None
        }
    };
    let start = opt_timestamp(
        &mut v,
        "current_period_start",
        r.current_period_start.as_ref(),
    );
    let end = opt_timestamp(&mut v, "current_period_end", r.current_period_end.as_ref());
    let period = match (start, end) {
        (Some(Some(start)), Some(Some(end))) if start < end => Some(Some(Period { start, end })),
        (Some(Some(_)), Some(Some(_))) => {
            v.push("current_period_end", "must be after current_period_start");
            None
        }
        (Some(None), Some(None)) => Some(None),
        (Some(_), Some(_)) => {
            v.push(
                "current_period_end",
                "current_period_start and current_period_end go together",
            );
            None
        }
        _ => None,
    };
    let trial_end = opt_timestamp(&mut v, "trial_end", r.trial_end.as_ref());
    let modified_at = required_timestamp(&mut v, "modified_at", r.modified_at.as_ref());
    let event_id = if r.event_id.is_empty() {
        Some(None)
    } else {
        v.check("", EventId::parse("event_id", &r.event_id))
            .map(Some)
    };
    v.finish(|| {
        Some(SubscriptionUpdate {
            provider: provider?,
            id: id?,
            customer: customer?,
            product_id: product_id?,
            status: status?,
            period: period?,
            cancel_at_period_end: r.cancel_at_period_end,
            trial_end: trial_end?,
            modified_at: modified_at?,
            event_id: event_id?,
        })
    })
}

pub fn apply_outcome_to_pb(o: ApplyOutcome) -> pb::ApplyOutcome {
    match o {
        ApplyOutcome::Applied => pb::ApplyOutcome::Applied,
        ApplyOutcome::Pending => pb::ApplyOutcome::Pending,
        ApplyOutcome::Unchanged => pb::ApplyOutcome::Unchanged,
        ApplyOutcome::Stale => pb::ApplyOutcome::Stale,
    }
}

impl From<&Subscription> for pb::Subscription {
    fn from(s: &Subscription) -> Self {
        pb::Subscription {
            provider: s.provider.as_str().to_owned(),
            id: s.id.as_str().to_owned(),
            tenant_id: s.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            customer: Some(pb::Customer {
                external_id: s
                    .customer
                    .external_id
                    .as_ref()
                    .map(|x| x.as_str().to_owned())
                    .unwrap_or_default(),
                provider_customer_id: s
                    .customer
                    .provider_id
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                email: s
                    .customer
                    .email
                    .as_ref()
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default(),
                name: s.customer.name.clone(),
            }),
            product_id: s.product_id.as_str().to_owned(),
            plan_id: s.plan_id.map(|p| p.to_string()).unwrap_or_default(),
            status: subscription_status_to_pb(s.status) as i32,
            current_period_start: s.period.map(|p| timestamp(p.start)),
            current_period_end: s.period.map(|p| timestamp(p.end)),
            cancel_at_period_end: s.cancel_at_period_end,
            trial_end: s.trial_end.map(timestamp),
            modified_at: Some(timestamp(s.modified_at)),
            pending: s.pending(),
            create_time: Some(timestamp(s.created_at)),
            update_time: Some(timestamp(s.updated_at)),
        }
    }
}

impl From<&Invoice> for pb::Invoice {
    fn from(i: &Invoice) -> Self {
        pb::Invoice {
            id: i.id.to_string(),
            tenant_id: i.tenant_id.to_string(),
            period: i.month.name.clone(),
            currency: i.currency.code().to_owned(),
            lines: i
                .lines
                .iter()
                .map(|l| pb::InvoiceLine {
                    kind: match l.kind {
                        LineKind::Plan => pb::InvoiceLineKind::Plan,
                        LineKind::Overage => pb::InvoiceLineKind::Overage,
                    } as i32,
                    description: l.description.clone(),
                    plan_id: l.plan_id.map(|p| p.to_string()).unwrap_or_default(),
                    resource: l
                        .resource
                        .as_ref()
                        .map(|r| r.as_str().to_owned())
                        .unwrap_or_default(),
                    quantity: l.quantity,
                    unit_amount_micros: l.unit_amount_micros.unwrap_or_default(),
                    start_time: Some(timestamp(l.from)),
                    end_time: Some(timestamp(l.to)),
                    amount_minor: l.amount_minor,
                })
                .collect(),
            total_minor: i.total_minor,
            status: match i.status {
                InvoiceStatus::Draft => pb::InvoiceStatus::Draft,
                InvoiceStatus::Finalized => pb::InvoiceStatus::Finalized,
            } as i32,
            create_time: Some(timestamp(i.created_at)),
            update_time: Some(timestamp(i.updated_at)),
            finalize_time: i.finalized_at.map(timestamp),
        }
    }
}

fn money(m: &std::collections::BTreeMap<String, i64>) -> Vec<pb::Money> {
    m.iter()
        .map(|(currency, amount)| pb::Money {
            currency: currency.clone(),
            amount_minor: *amount,
        })
        .collect()
}

fn figures(f: &[crate::domain::revenue::TenantFigure]) -> Vec<pb::TenantFigure> {
    f.iter()
        .map(|f| pb::TenantFigure {
            tenant_id: f.tenant_id.to_string(),
            external_id: f.external_id.clone().unwrap_or_default(),
            value: f.value,
            currency: f.currency.clone().unwrap_or_default(),
        })
        .collect()
}

impl From<&crate::domain::revenue::RevenueSummary> for pb::GetRevenueSummaryResponse {
    fn from(r: &crate::domain::revenue::RevenueSummary) -> Self {
        pb::GetRevenueSummaryResponse {
            period: r.month.name.clone(),
            mrr: money(&r.mrr),
            tenants_by_status: r
                .tenants_by_status
                .iter()
                .map(|(s, n)| pb::TenantStatusCount {
                    status: tenant_status_to_pb(*s) as i32,
                    tenants: *n,
                })
                .collect(),
            trials_started: r.trials_started,
            trials_converted: r.trials_converted,
            total_calls: r.total_calls,
            overage_revenue: money(&r.overage_revenue),
            top_by_usage: figures(&r.top_by_usage),
            top_by_revenue: figures(&r.top_by_revenue),
        }
    }
}
