//! Plans at the edge: CreatePlan's and UpdatePlan's requests parsed (prices,
//! intervals, rate limits, quotas, resets), plans and product mappings shown.
use super::*;

pub(super) fn price(v: &mut Violations, field: &str, p: Option<&pb::Price>) -> Option<Price> {
    match p {
        None => {
            v.push(field, "is required");
            None
        }
        Some(p) => v.check_all(field, Price::parse(p.amount_minor, &p.currency)),
    }
}

pub(super) fn billing_interval(
    v: &mut Violations,
    field: &str,
    raw: i32,
) -> Option<BillingInterval> {
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

pub(super) fn trial_days(v: &mut Violations, field: &str, days: i32) -> Option<u16> {
    if (0..=MAX_TRIAL_DAYS).contains(&i64::from(days)) {
        Some(days as u16)
    } else {
        v.push(field, format!("must be between 0 and {MAX_TRIAL_DAYS}"));
        None
    }
}

pub(super) fn rate_limit(
    v: &mut Violations,
    field: &str,
    r: Option<&pb::RateLimit>,
) -> Option<RateLimit> {
    match r {
        None => {
            v.push(field, "is required");
            None
        }
        Some(r) => v.check_all(field, RateLimit::parse(r.requests_per_minute, r.burst)),
    }
}

pub(super) fn quotas(v: &mut Violations, field: &str, qs: &[pb::Quota]) -> Option<Vec<Quota>> {
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

pub(super) fn quota_reset(
    v: &mut Violations,
    field: &str,
    r: Option<&pb::QuotaReset>,
) -> Option<QuotaReset> {
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

pub(super) fn rate_limit_to_pb(r: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests_per_minute: r.requests_per_minute,
        burst: r.burst,
    }
}

pub(super) fn quota_to_pb(q: &Quota) -> pb::Quota {
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
