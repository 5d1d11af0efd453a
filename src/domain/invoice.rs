//! Invoices: a calendar month of a tenant's plan prices (prorated by the
//! second across plan changes) and billed overage, in minor units, each line
//! rounded half-up.
use time::{Date, Month, Time};

use super::{
    FieldViolation, Timestamp,
    ids::{InvoiceId, PlanId, TenantId},
    plan::{BillingInterval, Currency, Overage, Plan, Resource},
    verify::Period,
};

/// A calendar month (`2026-11`), the period an invoice covers, in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingMonth {
    pub name: String,
    pub period: Period,
}

/// Parses `YYYY-MM`.
pub fn parse_month(field: &str, s: &str) -> Result<BillingMonth, FieldViolation> {
    let bad = || FieldViolation::new(field, "must be a month as YYYY-MM, e.g. 2026-11");
    let (y, m) = s.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let month = Month::try_from(month).map_err(|_| bad())?;
    let start = Date::from_calendar_date(year, month, 1).map_err(|_| bad())?;
    let (next_year, next_month) = match month {
        Month::December => (year + 1, Month::January),
        m => (year, m.next()),
    };
    let end = Date::from_calendar_date(next_year, next_month, 1).map_err(|_| bad())?;
    Ok(BillingMonth {
        name: s.to_owned(),
        period: Period {
            start: start.with_time(Time::MIDNIGHT).assume_utc(),
            end: end.with_time(Time::MIDNIGHT).assume_utc(),
        },
    })
}

/// The month containing `at`.
pub fn month_of(at: Timestamp) -> BillingMonth {
    let name = format!("{:04}-{:02}", at.year(), u8::from(at.month()));
    parse_month("", &name).expect("a real month")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Plan,
    Overage,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Overage => "overage",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Plan, Self::Overage]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    pub plan_id: Option<PlanId>,
    pub resource: Option<Resource>,
    /// Seconds of the plan, or overage units.
    pub quantity: i64,
    /// Overage lines: the price of one unit, in micros of the currency.
    pub unit_amount_micros: Option<i64>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    Draft,
    Finalized,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Finalized => "finalized",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Draft, Self::Finalized]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub id: InvoiceId,
    pub tenant_id: TenantId,
    pub month: BillingMonth,
    pub currency: Currency,
    pub lines: Vec<InvoiceLine>,
    pub total_minor: i64,
    pub status: InvoiceStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finalized_at: Option<Timestamp>,
}

/// `n / d` rounded half-up (away from zero at exactly one half), for n ≥ 0.
pub fn div_half_up(n: i128, d: i128) -> i64 {
    ((2 * n + d) / (2 * d)) as i64
}

/// The plan's price for `[from, to)` of `period`: its monthly price (a
/// twelfth of a yearly one) times the share of the period's seconds.
pub fn plan_line(plan: &Plan, from: Timestamp, to: Timestamp, period: Period) -> InvoiceLine {
    let seconds = (to - from).whole_seconds();
    let period_seconds = (period.end - period.start).whole_seconds();
    let months_per_interval = match plan.spec.billing_interval {
        BillingInterval::Month => 1,
        BillingInterval::Year => 12,
    };
    let amount = div_half_up(
        i128::from(plan.spec.price.amount_minor) * i128::from(seconds),
        i128::from(period_seconds) * months_per_interval,
    );
    InvoiceLine {
        kind: LineKind::Plan,
        description: format!("{} ({})", plan.spec.display_name, plan.slug),
        plan_id: Some(plan.id),
        resource: None,
        quantity: seconds,
        unit_amount_micros: None,
        from,
        to,
        amount_minor: amount,
    }
}

/// Billed overage on `resource`: the units past the plan's included ones
/// times the unit price, in the currency's minor units. `None` when the plan
/// does not bill overage on it or none was used.
pub fn overage_line(
    plan: &Plan,
    resource: &Resource,
    used: i64,
    period: Period,
) -> Option<InvoiceLine> {
    let quota = plan.spec.quotas.iter().find(|q| &q.resource == resource)?;
    let Overage::Billed { unit_price_micros } = quota.overage else {
        return None;
    };
    let units = (used - quota.included_units).max(0);
    if units == 0 {
        return None;
    }
    let minor_per_unit = 10_i128.pow(u32::from(plan.spec.price.currency.minor_digits()));
    let amount = div_half_up(
        i128::from(units) * i128::from(unit_price_micros) * minor_per_unit,
        1_000_000,
    );
    Some(InvoiceLine {
        kind: LineKind::Overage,
        description: format!("{} overage", resource.as_str()),
        plan_id: Some(plan.id),
        resource: Some(resource.clone()),
        quantity: units,
        unit_amount_micros: Some(unit_price_micros),
        from: period.start,
        to: period.end,
        amount_minor: amount,
    })
}

/// The stretches of `period` each plan covered, from the plan history
/// (`since` ascending): the plan in force at the period's start, then each
/// change inside it.
pub fn segments(
    history: &[(Timestamp, PlanId)],
    period: Period,
) -> Vec<(PlanId, Timestamp, Timestamp)> {
    let mut out: Vec<(PlanId, Timestamp, Timestamp)> = Vec::new();
    for (i, (since, plan)) in history.iter().enumerate() {
        let until = history.get(i + 1).map_or(period.end, |(next, _)| *next);
        let from = (*since).max(period.start);
        let to = until.min(period.end);
        if from < to {
            match out.last_mut() {
                // The same plan again (a change and its reversal): one stretch.
                Some(last) if last.0 == *plan && last.2 == from => last.2 = to,
                _ => out.push((*plan, from, to)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::{PlanSpec, Price, Quota, QuotaReset, RateLimit, Slug};

    fn plan(slug: &str, amount_minor: i64, currency: &str, interval: BillingInterval) -> Plan {
        let t = Timestamp::UNIX_EPOCH;
        Plan {
            id: PlanId::generate(),
            slug: Slug::parse("", slug).unwrap(),
            spec: PlanSpec {
                display_name: slug.to_uppercase(),
                price: Price {
                    amount_minor,
                    currency: Currency::parse("", currency).unwrap(),
                },
                billing_interval: interval,
                trial_days: 0,
                rate_limit: RateLimit {
                    requests_per_minute: 60,
                    burst: 10,
                },
                quotas: vec![],
                features: vec![],
                quota_reset: QuotaReset::CalendarMonth { day: 1 },
            },
            archived: false,
            created_at: t,
            updated_at: t,
        }
    }

    fn with_overage(mut p: Plan, included: i64, unit_price_micros: i64) -> Plan {
        p.spec.quotas = vec![Quota {
            resource: Resource::parse("", "calls").unwrap(),
            included_units: included,
            overage: Overage::Billed { unit_price_micros },
        }];
        p
    }

    fn november() -> Period {
        parse_month("", "2026-11").unwrap().period
    }

    #[test]
    fn overage_at_a_tenth_of_a_cent() {
        let p = with_overage(
            plan("pro", 4_900, "USD", BillingInterval::Month),
            50_000,
            1_000,
        );
        let calls = Resource::parse("", "calls").unwrap();
        let line = overage_line(&p, &calls, 173_457, november()).unwrap();
        assert_eq!(line.quantity, 123_457);
        // 123,457 × $0.001 = $123.457 → $123.46
        assert_eq!(line.amount_minor, 12_346);
    }

    #[test]
    fn overage_at_a_twentieth_of_a_cent_rounds_half_up() {
        let p = with_overage(plan("pro", 4_900, "USD", BillingInterval::Month), 0, 500);
        let calls = Resource::parse("", "calls").unwrap();
        // 1,001 × $0.0005 = $0.5005 → $0.50
        assert_eq!(
            overage_line(&p, &calls, 1_001, november())
                .unwrap()
                .amount_minor,
            50
        );
        // 1,010 × $0.0005 = $0.505 → $0.51
        assert_eq!(
            overage_line(&p, &calls, 1_010, november())
                .unwrap()
                .amount_minor,
            51
        );
        assert_eq!(overage_line(&p, &calls, 0, november()), None);
        // JPY has no minor unit: 1,001 × ¥0.0005 = ¥0.5005 → ¥1
        let yen = with_overage(plan("jp", 1_000, "JPY", BillingInterval::Month), 0, 500);
        assert_eq!(
            overage_line(&yen, &calls, 1_001, november())
                .unwrap()
                .amount_minor,
            1
        );
    }

    #[test]
    fn a_mid_month_switch_prorates_both_plans_to_the_second() {
        let basic = plan("basic", 4_900, "USD", BillingInterval::Month);
        let pro = plan("pro", 19_900, "USD", BillingInterval::Month);
        let period = november();
        // The switch: 2026-11-10 12:00:00 UTC, 9.5 of November's 30 days in.
        let switch = period.start + time::Duration::seconds(9 * 86_400 + 12 * 3_600);
        let history = [
            (period.start - time::Duration::days(40), basic.id),
            (switch, pro.id),
        ];
        let parts = segments(&history, period);
        assert_eq!(
            parts,
            vec![
                (basic.id, period.start, switch),
                (pro.id, switch, period.end)
            ]
        );
        let first = plan_line(&basic, parts[0].1, parts[0].2, period);
        let second = plan_line(&pro, parts[1].1, parts[1].2, period);
        assert_eq!(first.quantity, 820_800);
        assert_eq!(second.quantity, 1_771_200);
        // $49 × 9.5/30 = $15.5166… → $15.52; $199 × 20.5/30 = $135.9833… → $135.98
        assert_eq!(first.amount_minor, 1_552);
        assert_eq!(second.amount_minor, 13_598);
        // A whole month is the whole price; a yearly plan, a twelfth of it.
        assert_eq!(
            plan_line(&pro, period.start, period.end, period).amount_minor,
            19_900
        );
        let yearly = plan("annual", 120_000, "USD", BillingInterval::Year);
        assert_eq!(
            plan_line(&yearly, period.start, period.end, period).amount_minor,
            10_000
        );
    }

    #[test]
    fn months_parse_strictly() {
        let m = parse_month("period", "2026-12").unwrap();
        assert_eq!((m.period.end - m.period.start).whole_days(), 31);
        for bad in [
            "2026-13", "2026-1", "26-11", "2026/11", "", "2026-00", "abcd-ef",
        ] {
            assert!(parse_month("period", bad).is_err(), "{bad}");
        }
    }
}
