//! The rules of a verification, free of storage: the answer codes, which
//! limits apply, the token bucket, quota periods, and the headers a gateway
//! forwards.
use std::collections::BTreeMap;

use time::{Date, Month, OffsetDateTime, Time};

use super::{
    FieldViolation, Timestamp,
    credits::CreditType,
    ids::{KeyId, TenantId},
    key::{KeyStatus, KeyTerms},
    plan::{BillingInterval, Overage, Plan, Quota, QuotaReset, RateLimit, Resource},
    tenant::{TenantStatus, TenantTerms},
};

/// Most units one call may cost.
pub const MAX_UNITS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCode {
    Valid,
    KeyNotFound,
    KeyRevoked,
    KeyExpired,
    KeyDisabled,
    TenantInactive,
    FeatureNotInPlan,
    RateLimited,
    QuotaExceeded,
    InsufficientCredits,
}

impl VerifyCode {
    /// The HTTP status a gateway should answer with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Valid => 200,
            Self::KeyNotFound | Self::KeyRevoked | Self::KeyExpired | Self::KeyDisabled => 401,
            Self::TenantInactive | Self::InsufficientCredits => 402,
            Self::FeatureNotInPlan => 403,
            Self::RateLimited | Self::QuotaExceeded => 429,
        }
    }
}

/// A parsed Verify request.
#[derive(Debug, Clone)]
pub struct VerifyInput {
    pub secret: String,
    pub resource: Option<Resource>,
    /// 0 asks without consuming.
    pub units: i64,
    pub required_features: Vec<String>,
    /// The credit type the call will spend and how many it needs.
    pub credits: Option<(CreditType, i64)>,
}

/// The most credits one Verify may ask for.
pub const MAX_CREDIT_UNITS: i64 = 1_000_000_000_000;

impl VerifyInput {
    pub fn parse(
        secret: String,
        resource: &str,
        units: Option<i64>,
        required_features: Vec<String>,
        credit_type: &str,
        credit_units: Option<i64>,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut errors = Vec::new();
        if secret.is_empty() {
            errors.push(FieldViolation::new("key", "is required"));
        } else if secret.len() > 256 {
            errors.push(FieldViolation::new("key", "must be at most 256 characters"));
        }
        let resource = if resource.is_empty() {
            None
        } else {
            Resource::parse("resource", resource)
                .map_err(|e| errors.push(e))
                .ok()
        };
        let units = units.unwrap_or(1);
        if !(0..=MAX_UNITS).contains(&units) {
            errors.push(FieldViolation::new(
                "units",
                format!("must be between 0 and {MAX_UNITS}"),
            ));
        }
        if required_features.len() > 100 {
            errors.push(FieldViolation::new(
                "required_features",
                "must have at most 100 entries",
            ));
        }
        let credit_units_ok = |n: i64| (1..=MAX_CREDIT_UNITS).contains(&n);
        let credits = match (credit_type, credit_units) {
            ("", None) => None,
            ("", Some(_)) => {
                errors.push(FieldViolation::new("credit_units", "needs credit_type"));
                None
            }
            (_, Some(n)) if !credit_units_ok(n) => {
                errors.push(FieldViolation::new(
                    "credit_units",
                    format!("must be between 1 and {MAX_CREDIT_UNITS}"),
                ));
                None
            }
            (t, n) => CreditType::parse("credit_type", t)
                .map_err(|e| errors.push(e))
                .ok()
                .map(|t| (t, n.unwrap_or(1))),
        };
        if errors.is_empty() {
            Ok(Self {
                secret,
                resource,
                units,
                required_features,
                credits,
            })
        } else {
            Err(errors)
        }
    }
}

/// The first key-or-tenant check that fails, in the order the contract gives.
pub fn gate(key: &KeyTerms, tenant: &TenantTerms, at: Timestamp) -> Option<VerifyCode> {
    match key.status(at) {
        KeyStatus::Revoked => return Some(VerifyCode::KeyRevoked),
        KeyStatus::Expired => return Some(VerifyCode::KeyExpired),
        KeyStatus::Active => {}
    }
    if key.disabled {
        return Some(VerifyCode::KeyDisabled);
    }
    if !tenant_active(tenant, at) {
        return Some(VerifyCode::TenantInactive);
    }
    None
}

/// Whether a tenant's customers may use the API at `at`.
pub fn tenant_active(tenant: &TenantTerms, at: Timestamp) -> bool {
    match tenant.status {
        TenantStatus::Active | TenantStatus::PastDue => true,
        TenantStatus::Trialing => tenant.trial_end.is_none_or(|end| at < end),
        // Access after cancellation lasts until the paid period ends; with no
        // period known, it has ended.
        TenantStatus::Canceled => tenant.period_end.is_some_and(|end| at < end),
        TenantStatus::Revoked | TenantStatus::Paused => false,
    }
}

/// Whether the plan has every required feature.
pub fn has_features(plan: &Plan, required: &[String]) -> bool {
    required
        .iter()
        .all(|r| plan.spec.features.iter().any(|f| f.as_str() == r))
}

/// The rate limit in force: the key's override, else the plan's; and the
/// bucket it fills (the key's own, or its tenant's shared one).
pub fn rate_limit_for(key: &KeyTerms, tenant: TenantId, plan: &Plan) -> (RateLimit, BucketId) {
    match key.rate_limit_override() {
        Some(limit) => (limit, BucketId::Key(key.id)),
        None => (plan.spec.rate_limit, BucketId::Tenant(tenant)),
    }
}

/// Whose token bucket a call takes from: its tenant's (the plan's limit),
/// or its key's (a key with a rate limit of its own). Shown as `t:<id>` or
/// `k:<id>`, its name in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketId {
    Tenant(TenantId),
    Key(KeyId),
}

impl std::fmt::Display for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketId::Tenant(id) => write!(f, "t:{id}"),
            BucketId::Key(id) => write!(f, "k:{id}"),
        }
    }
}

/// The quota on `resource` in force: the key's override, else the plan's.
pub fn quota_for<'a>(key: &'a KeyTerms, plan: &'a Plan, resource: &Resource) -> Option<&'a Quota> {
    key.quota_overrides()
        .iter()
        .chain(plan.spec.quotas.iter())
        .find(|q| &q.resource == resource)
}

/// A token bucket's state: `tokens` as of `at_micros`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_micros: i64,
}

/// The bucket's answer to one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketOutcome {
    pub allowed: bool,
    /// Tokens left after the call.
    pub tokens: f64,
    /// Microseconds until the call would be admitted (0 when it was).
    pub retry_after_micros: i64,
    /// Microseconds until the bucket is full again.
    pub full_in_micros: i64,
}

/// Refills the bucket to `now` and tries to take `units` (a 0-unit call asks
/// for 1 but takes nothing). Returns the new state and the outcome; when
/// denied, the state is only refilled.
pub fn take_tokens(
    state: Option<Bucket>,
    limit: RateLimit,
    units: i64,
    now_micros: i64,
) -> (Bucket, BucketOutcome) {
    let capacity = limit.burst as f64;
    let per_micro = limit.requests_per_minute as f64 / 60_000_000.0;
    let tokens = match state {
        None => capacity,
        Some(b) => {
            let elapsed = (now_micros - b.at_micros).max(0) as f64;
            (b.tokens + elapsed * per_micro).min(capacity)
        }
    };
    let allowed = tokens >= units.max(1) as f64;
    let left = if allowed && units > 0 {
        tokens - units as f64
    } else {
        tokens
    };
    (
        Bucket {
            tokens: left,
            at_micros: now_micros,
        },
        bucket_outcome(limit, units, left, allowed),
    )
}

/// The outcome of a call that found the bucket at `tokens` after taking what
/// it took (nothing when denied); shared with limiters that keep the bucket
/// elsewhere (a Redis script).
pub fn bucket_outcome(limit: RateLimit, units: i64, tokens: f64, allowed: bool) -> BucketOutcome {
    let per_micro = limit.requests_per_minute as f64 / 60_000_000.0;
    let retry_after_micros = if allowed {
        0
    } else {
        ((units.max(1) as f64 - tokens) / per_micro).ceil() as i64
    };
    BucketOutcome {
        allowed,
        tokens,
        retry_after_micros,
        full_in_micros: ((limit.burst as f64 - tokens) / per_micro).ceil() as i64,
    }
}

/// A quota period: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// The period of `tenant`'s quotas on `plan` that contains `at`. Billing
/// periods are the subscription's own when `at` falls in it, else anchored
/// at its start (or, without a subscription, at the tenant's creation).
pub fn tenant_period(plan: &Plan, tenant: &TenantTerms, at: Timestamp) -> Period {
    if plan.spec.quota_reset == QuotaReset::BillingPeriod
        && let Some(p) = tenant.billing_period()
        && p.start <= at
        && at < p.end
    {
        return p;
    }
    quota_period(
        plan.spec.quota_reset,
        plan.spec.billing_interval,
        tenant.anchor,
        at,
    )
}

/// The quota period containing `at`. Calendar periods start on the reset day
/// at 00:00 UTC; billing periods run from `anchor` (the tenant's billing
/// start) in steps of the plan's interval.
pub fn quota_period(
    reset: QuotaReset,
    interval: BillingInterval,
    anchor: Timestamp,
    at: Timestamp,
) -> Period {
    match reset {
        QuotaReset::CalendarMonth { day } => {
            let this = at_day(at.year(), at.month(), day);
            let start = if this <= at {
                this
            } else {
                add_months(this, -1, day)
            };
            Period {
                start,
                end: add_months(start, 1, day),
            }
        }
        QuotaReset::BillingPeriod => {
            let step = match interval {
                BillingInterval::Month => 1,
                BillingInterval::Year => 12,
            };
            let day = anchor.day();
            let months = (at.year() - anchor.year()) * 12
                + (i32::from(u8::from(at.month())) - i32::from(u8::from(anchor.month())));
            let mut n = months.div_euclid(step) * step;
            // Step back or forward until the period contains `at`.
            while add_months(anchor, n, day) > at {
                n -= step;
            }
            while add_months(anchor, n + step, day) <= at {
                n += step;
            }
            Period {
                start: add_months(anchor, n, day),
                end: add_months(anchor, n + step, day),
            }
        }
    }
}

fn at_day(year: i32, month: Month, day: u8) -> Timestamp {
    // Callers' timestamps end in year 9998 (the edge refuses later ones), so
    // the clamp only keeps a bug from being a panic.
    let year = year.clamp(Date::MIN.year(), Date::MAX.year());
    let day = day.min(time::util::days_in_month(month, year));
    Date::from_calendar_date(year, month, day)
        .expect("year and day clamped")
        .with_time(Time::MIDNIGHT)
        .assume_utc()
}

/// `t` moved by `n` months, on `day` (clamped to the month's length), keeping
/// the time of day.
fn add_months(t: Timestamp, n: i32, day: u8) -> Timestamp {
    let index = t.year() * 12 + i32::from(u8::from(t.month())) - 1 + n;
    let (year, month0) = (index.div_euclid(12), index.rem_euclid(12));
    let month = Month::try_from(month0 as u8 + 1).expect("1..=12");
    let date = at_day(year, month, day);
    OffsetDateTime::new_utc(date.date(), t.time())
}

/// The most units a period may use under `quota`: its included units under
/// a hard cap, `None` when overage is billed.
pub fn hard_cap(quota: &Quota) -> Option<i64> {
    match quota.overage {
        Overage::HardCap => Some(quota.included_units),
        Overage::Billed { .. } => None,
    }
}

/// The units past the included amount that are billed: none under a hard
/// cap or for a resource the plan does not meter.
pub fn billed_overage(quota: Option<&Quota>, used: i64) -> i64 {
    match quota {
        Some(q) if matches!(q.overage, Overage::Billed { .. }) => (used - q.included_units).max(0),
        _ => 0,
    }
}

/// Whether `units` more fit under `hard_cap` (a 0-unit call asks for 1);
/// without a cap everything fits.
pub fn fits(hard_cap: Option<i64>, used: i64, units: i64) -> bool {
    hard_cap.is_none_or(|cap| used + units.max(1) <= cap)
}

/// The headers a gateway forwards with its answer.
pub fn headers(
    code: VerifyCode,
    rate: Option<(RateLimit, BucketOutcome)>,
    quota: Option<(i64, i64, Period)>,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    let now_s = now.unix_timestamp();
    let mut policies = Vec::new();
    let mut states = Vec::new();
    if let Some((limit, outcome)) = rate {
        let remaining = outcome.tokens.floor() as i64;
        let full_s = (outcome.full_in_micros + 999_999) / 1_000_000;
        // The window in which an empty bucket fills up again.
        let window = ((limit.burst as f64) * 60.0 / limit.requests_per_minute as f64).ceil() as i64;
        h.insert("X-RateLimit-Limit".into(), limit.burst.to_string());
        h.insert("X-RateLimit-Remaining".into(), remaining.to_string());
        h.insert("X-RateLimit-Reset".into(), (now_s + full_s).to_string());
        policies.push(format!("\"burst\";q={};w={}", limit.burst, window.max(1)));
        states.push(format!("\"burst\";r={remaining};t={full_s}"));
        if code == VerifyCode::RateLimited {
            let retry = (outcome.retry_after_micros + 999_999) / 1_000_000;
            h.insert("Retry-After".into(), retry.max(1).to_string());
        }
    }
    if let Some((limit, used, period)) = quota {
        let remaining = (limit - used).max(0);
        let reset = period.end.unix_timestamp();
        h.insert("X-Quota-Limit".into(), limit.to_string());
        h.insert("X-Quota-Remaining".into(), remaining.to_string());
        h.insert("X-Quota-Reset".into(), reset.to_string());
        let window = (period.end - period.start).whole_seconds();
        policies.push(format!("\"quota\";q={limit};w={window}"));
        states.push(format!(
            "\"quota\";r={remaining};t={}",
            (reset - now_s).max(0)
        ));
        if code == VerifyCode::QuotaExceeded {
            h.insert("Retry-After".into(), (reset - now_s).max(1).to_string());
        }
    }
    if !policies.is_empty() {
        h.insert("RateLimit-Policy".into(), policies.join(", "));
        h.insert("RateLimit".into(), states.join(", "));
    }
    h
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn limit(rpm: i64, burst: i64) -> RateLimit {
        RateLimit {
            requests_per_minute: rpm,
            burst,
        }
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let l = limit(60, 10);
        let mut state = None;
        let mut allowed = 0;
        for _ in 0..20 {
            let (s, o) = take_tokens(state, l, 1, 0);
            state = Some(s);
            allowed += usize::from(o.allowed);
        }
        assert_eq!(allowed, 10);
        let (_, o) = take_tokens(state, l, 1, 0);
        assert!(!o.allowed);
        assert_eq!(o.retry_after_micros, 1_000_000);
        let (s, o) = take_tokens(state, l, 1, 999_000);
        assert!(!o.allowed, "not yet a whole token");
        let (_, o) = take_tokens(Some(s), l, 1, 1_000_000);
        assert!(o.allowed, "one token a second");
    }

    #[test]
    fn units_take_that_many_tokens_and_denials_take_none() {
        let l = limit(60, 10);
        let (s, o) = take_tokens(None, l, 5, 0);
        assert!(o.allowed);
        assert_eq!(s.tokens, 5.0);
        let (s, o) = take_tokens(Some(s), l, 6, 0);
        assert!(!o.allowed);
        assert_eq!(s.tokens, 5.0, "a denied call leaves the tokens");
        let (s, o) = take_tokens(Some(s), l, 0, 0);
        assert!(o.allowed);
        assert_eq!(s.tokens, 5.0, "0 units only ask");
    }

    #[test]
    fn calendar_periods_start_on_the_reset_day() {
        let reset = QuotaReset::CalendarMonth { day: 15 };
        let p = quota_period(
            reset,
            BillingInterval::Month,
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-11-23 10:00 UTC),
        );
        assert_eq!(p.start, datetime!(2026-11-15 0:00 UTC));
        assert_eq!(p.end, datetime!(2026-12-15 0:00 UTC));
        let p = quota_period(
            reset,
            BillingInterval::Month,
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-01-03 10:00 UTC),
        );
        assert_eq!(p.start, datetime!(2025-12-15 0:00 UTC));
        assert_eq!(p.end, datetime!(2026-01-15 0:00 UTC));
    }

    #[test]
    fn billing_periods_step_from_the_anchor() {
        let anchor = datetime!(2026-01-31 12:00 UTC);
        let p = quota_period(
            QuotaReset::BillingPeriod,
            BillingInterval::Month,
            anchor,
            datetime!(2026-03-05 0:00 UTC),
        );
        assert_eq!(p.start, datetime!(2026-02-28 12:00 UTC));
        assert_eq!(p.end, datetime!(2026-03-31 12:00 UTC));
        let p = quota_period(
            QuotaReset::BillingPeriod,
            BillingInterval::Year,
            anchor,
            datetime!(2027-06-01 0:00 UTC),
        );
        assert_eq!(p.start, datetime!(2027-01-31 12:00 UTC));
        assert_eq!(p.end, datetime!(2028-01-31 12:00 UTC));
    }

    #[test]
    fn billing_period_quotas_follow_the_subscription() {
        use crate::domain::{
            ids::{PlanId, TenantId},
            plan::{Currency, PlanSpec, Price, Slug},
        };
        let created = datetime!(2026-01-03 9:00 UTC);
        let plan = Plan {
            id: PlanId::generate(),
            slug: Slug::parse("", "pro").unwrap(),
            spec: PlanSpec {
                display_name: "Pro".into(),
                price: Price {
                    amount_minor: 100,
                    currency: Currency::parse("", "USD").unwrap(),
                },
                billing_interval: BillingInterval::Month,
                trial_days: 0,
                rate_limit: limit(60, 10),
                quotas: vec![],
                features: vec![],
                quota_reset: QuotaReset::BillingPeriod,
            },
            archived: false,
            created_at: created,
            updated_at: created,
        };
        let mut tenant = TenantTerms {
            id: TenantId::generate(),
            external_id: None,
            plan_id: plan.id,
            status: TenantStatus::Active,
            trial_end: None,
            anchor: created,
            period_end: None,
        };
        let at = datetime!(2026-11-20 0:00 UTC);
        // Without a subscription: months from the tenant's creation.
        assert_eq!(
            tenant_period(&plan, &tenant, at).start,
            datetime!(2026-11-03 9:00 UTC)
        );
        // With one: its own period, whatever its length.
        let period = Period {
            start: datetime!(2026-11-10 14:30 UTC),
            end: datetime!(2026-12-10 14:30 UTC),
        };
        (tenant.anchor, tenant.period_end) = (period.start, Some(period.end));
        assert_eq!(tenant_period(&plan, &tenant, at), period);
        // After it, months stepping on from its start.
        assert_eq!(
            tenant_period(&plan, &tenant, datetime!(2026-12-15 0:00 UTC)).start,
            datetime!(2026-12-10 14:30 UTC)
        );
        // A calendar-month plan ignores it.
        let mut calendar = plan.clone();
        calendar.spec.quota_reset = QuotaReset::CalendarMonth { day: 1 };
        assert_eq!(
            tenant_period(&calendar, &tenant, at).start,
            datetime!(2026-11-01 0:00 UTC)
        );
    }
}
