//! Plans: what a tenant buys. Every type here is valid once constructed.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{FieldViolation, Timestamp, ids::PlanId};

/// A plan's unique short name: 1-63 of `a-z 0-9 -`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let ok = (1..=63).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(FieldViolation::new(
                field,
                "must be 1-63 lowercase letters, digits or '-', starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(field: &str, code: &str) -> Result<Self, FieldViolation> {
        iso_currency::Currency::from_code(code)
            .map(Self)
            .ok_or_else(|| {
                FieldViolation::new(field, format!("{code:?} is not an ISO 4217 currency code"))
            })
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point of the minor unit (2 for USD, 0 for JPY).
    pub fn minor_digits(&self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }
}

/// A non-negative amount in a currency's minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Price {
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, Vec<FieldViolation>> {
        let mut errors = Vec::new();
        if amount_minor < 0 {
            errors.push(FieldViolation::new("amount_minor", "must not be negative"));
        }
        let currency = Currency::parse("currency", currency).map_err(|e| errors.push(e));
        match currency {
            Ok(currency) if errors.is_empty() => Ok(Self {
                amount_minor,
                currency,
            }),
            _ => Err(errors),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingInterval {
    Month,
    Year,
}

impl BillingInterval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "month" => Some(Self::Month),
            "year" => Some(Self::Year),
            _ => None,
        }
    }
}

/// Largest count accepted anywhere a number of requests or units is given;
/// keeps arithmetic on them far from overflow.
pub const MAX_COUNT: i64 = 1_000_000_000_000;

/// A token bucket: `requests_per_minute / 60` tokens a second, `burst` at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests_per_minute: i64,
    pub burst: i64,
}

impl RateLimit {
    pub fn parse(requests_per_minute: i64, burst: i64) -> Result<Self, Vec<FieldViolation>> {
        let mut errors = Vec::new();
        for (field, value) in [
            ("requests_per_minute", requests_per_minute),
            ("burst", burst),
        ] {
            if !(1..=MAX_COUNT).contains(&value) {
                errors.push(FieldViolation::new(
                    field,
                    format!("must be between 1 and {MAX_COUNT}"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                requests_per_minute,
                burst,
            })
        } else {
            Err(errors)
        }
    }
}

/// A metered resource's name, such as `chat_requests`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Resource(String);

impl Resource {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | ':')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(FieldViolation::new(
                field,
                "must be 1-64 of lowercase letters, digits, '_', '-', '.', ':', starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What happens past a quota's included units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Overage {
    HardCap,
    /// Billed per unit, in micros (millionths) of the currency unit.
    Billed {
        unit_price_micros: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub resource: Resource,
    pub included_units: i64,
    pub overage: Overage,
}

impl Quota {
    /// Checks a list of quotas: each valid, one per resource, at most 100.
    /// Violations name `[i].field`, relative to the list's own field.
    pub fn check_list(quotas: &[Quota]) -> Result<(), Vec<FieldViolation>> {
        let mut errors = Vec::new();
        if quotas.len() > 100 {
            errors.push(FieldViolation::new("", "must have at most 100 quotas"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, q) in quotas.iter().enumerate() {
            if !seen.insert(&q.resource) {
                errors.push(FieldViolation::new(
                    format!("[{i}].resource"),
                    format!("{} has more than one quota", q.resource.as_str()),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Parses one quota, naming fields relative to the quota.
    pub fn parse(
        resource: &str,
        included_units: i64,
        overage: Option<Overage>,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut errors = Vec::new();
        let resource = Resource::parse("resource", resource).map_err(|e| errors.push(e));
        if !(0..=MAX_COUNT).contains(&included_units) {
            errors.push(FieldViolation::new(
                "included_units",
                format!("must be between 0 and {MAX_COUNT}"),
            ));
        }
        match overage {
            None => errors.push(FieldViolation::new("overage_policy", "is required")),
            Some(Overage::Billed { unit_price_micros }) if unit_price_micros < 0 => errors.push(
                FieldViolation::new("overage_unit_price_micros", "must not be negative"),
            ),
            Some(_) => {}
        }
        match (resource, overage) {
            (Ok(resource), Some(overage)) if errors.is_empty() => Ok(Self {
                resource,
                included_units,
                overage,
            }),
            _ => Err(errors),
        }
    }
}

/// A feature a plan includes, such as `model:gpt-4o`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Feature(String);

impl Feature {
    pub fn parse_list(field: &str, values: &[String]) -> Result<Vec<Self>, FieldViolation> {
        if values.len() > 200 {
            return Err(FieldViolation::new(field, "must have at most 200 features"));
        }
        let mut seen = std::collections::BTreeSet::new();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ok = (1..=128).contains(&v.chars().count())
                    && !v.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    return Err(FieldViolation::new(
                        format!("{field}[{i}]"),
                        "must be 1-128 characters without spaces",
                    ));
                }
                if !seen.insert(v) {
                    return Err(FieldViolation::new(
                        format!("{field}[{i}]"),
                        format!("{v:?} is listed twice"),
                    ));
                }
                Ok(Self(v.clone()))
            })
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When quota counters start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaReset {
    /// On this day (1-28) of every calendar month, at 00:00 UTC.
    CalendarMonth { day: u8 },
    /// With the tenant's billing period.
    BillingPeriod,
}

impl QuotaReset {
    pub fn calendar_month(field: &str, day: i64) -> Result<Self, FieldViolation> {
        match u8::try_from(day) {
            Ok(day @ 1..=28) => Ok(Self::CalendarMonth { day }),
            _ => Err(FieldViolation::new(
                field,
                "must be between 1 and 28 (every month has those days)",
            )),
        }
    }
}

/// Days of trial a plan may give, at most.
pub const MAX_TRIAL_DAYS: i64 = 365;

/// Everything about a plan that its owner chooses (all but id, slug, state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    pub display_name: String,
    pub price: Price,
    pub billing_interval: BillingInterval,
    pub trial_days: u16,
    pub rate_limit: RateLimit,
    pub quotas: Vec<Quota>,
    pub features: Vec<Feature>,
    pub quota_reset: QuotaReset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub slug: Slug,
    pub spec: PlanSpec,
    pub archived: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A payment provider whose products map to plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Polar,
}

impl Provider {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        match s {
            "polar" => Ok(Self::Polar),
            _ => Err(FieldViolation::new(field, "must be \"polar\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Polar => "polar",
        }
    }
}

/// A provider's product id: 1-200 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProductId(String);

impl ProductId {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        super::text::bounded(field, s, 200, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductMapping {
    pub provider: Provider,
    pub product_id: ProductId,
    pub plan_id: PlanId,
    pub created_at: Timestamp,
}
