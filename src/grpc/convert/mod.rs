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

mod billing;
mod keys;
mod plans;
mod tenants;

pub use billing::*;
pub use keys::*;
pub use plans::*;
pub use tenants::*;

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

fn display_name(v: &mut Violations, field: &str, s: &str) -> Option<String> {
    v.check("", bounded(field, s, 200, true))
}

fn metadata(v: &mut Violations, field: &str, m: &HashMap<String, String>) -> Option<Metadata> {
    v.check("", Metadata::parse(field, m.clone()))
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

/// Parses an optional timestamp field: `Some(None)` when unset; `None`, with
/// a violation naming `field`, when outside the accepted range.
pub fn opt_timestamp(
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
