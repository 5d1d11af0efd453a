//! Rows read back into domain types (each value re-parsed through its
//! domain constructor), the column lists they read, and the page cursor.
use anyhow::{Context, anyhow};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{Row, any::AnyRow};

use crate::domain::{
    Error, Result, Timestamp,
    credential::{Credential, Scope},
    from_micros,
    ids::{CredentialId, KeyId, PlanId, TenantId},
    key::{ApiKey, KeyEnvironment, KeySettings},
    page::PageRequest,
    plan::{
        BillingInterval, Currency, Plan, PlanSpec, Price, ProductId, ProductMapping, Provider,
        QuotaReset, Resource, Slug,
    },
    tenant::{Email, ExternalId, Tenant, TenantProfile, TenantStatus},
    text::Metadata,
    verify::Period,
};
use crate::store::UsageTotal;

use super::db;

pub(super) fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialize")
}

pub(super) fn from_json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column).map_err(db("decoding a row", ""))?;
    serde_json::from_str(&text)
        .with_context(|| format!("column {column} holds invalid JSON"))
        .map_err(Error::Internal)
}

pub(super) fn time(row: &AnyRow, column: &str) -> Result<Timestamp> {
    opt_time(row, column)?
        .ok_or_else(|| Error::Internal(anyhow!("column {column} is unexpectedly NULL")))
}

pub(super) fn opt_time(row: &AnyRow, column: &str) -> Result<Option<Timestamp>> {
    let micros: Option<i64> = row.try_get(column).map_err(db("decoding a row", ""))?;
    micros
        .map(|m| from_micros(m).ok_or_else(|| corrupt(column)))
        .transpose()
}

pub(super) fn text(row: &AnyRow, column: &str) -> Result<String> {
    row.try_get(column).map_err(db("decoding a row", ""))
}

pub(super) fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    row.try_get(column).map_err(db("decoding a row", ""))
}

pub(super) fn int(row: &AnyRow, column: &str) -> Result<i64> {
    row.try_get(column).map_err(db("decoding a row", ""))
}

pub(super) fn corrupt(column: &str) -> Error {
    Error::Internal(anyhow!("column {column} holds a value the domain rejects"))
}

/// Re-parses a stored value through its domain constructor.
pub(super) fn parsed<T, E>(column: &str, value: std::result::Result<T, E>) -> Result<T> {
    value.map_err(|_| corrupt(column))
}

pub(super) fn plan_from_row(row: &AnyRow) -> Result<Plan> {
    let reset_day: Option<i64> = row.try_get("quota_reset_day").map_err(db("decoding", ""))?;
    Ok(Plan {
        id: parsed("id", PlanId::parse("id", &text(row, "id")?))?,
        slug: parsed("slug", Slug::parse("slug", &text(row, "slug")?))?,
        spec: PlanSpec {
            display_name: text(row, "display_name")?,
            price: Price {
                amount_minor: int(row, "price_amount_minor")?,
                currency: parsed(
                    "price_currency",
                    Currency::parse("", &text(row, "price_currency")?),
                )?,
            },
            billing_interval: BillingInterval::from_name(&text(row, "billing_interval")?)
                .ok_or_else(|| corrupt("billing_interval"))?,
            trial_days: parsed("trial_days", u16::try_from(int(row, "trial_days")?))?,
            rate_limit: from_json(row, "rate_limit")?,
            quotas: from_json(row, "quotas")?,
            features: from_json(row, "features")?,
            quota_reset: match reset_day {
                None => QuotaReset::BillingPeriod,
                Some(day) => parsed("quota_reset_day", QuotaReset::calendar_month("", day))?,
            },
        },
        archived: int(row, "archived")? != 0,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) fn reset_day(reset: QuotaReset) -> Option<i64> {
    match reset {
        QuotaReset::CalendarMonth { day } => Some(i64::from(day)),
        QuotaReset::BillingPeriod => None,
    }
}

pub(super) fn mapping_from_row(row: &AnyRow) -> Result<ProductMapping> {
    Ok(ProductMapping {
        provider: parsed("provider", Provider::parse("", &text(row, "provider")?))?,
        product_id: parsed(
            "product_id",
            ProductId::parse("", &text(row, "product_id")?),
        )?,
        plan_id: parsed("plan_id", PlanId::parse("", &text(row, "plan_id")?))?,
        created_at: time(row, "created_at")?,
    })
}

pub(super) fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: parsed("id", TenantId::parse("", &text(row, "id")?))?,
        profile: TenantProfile {
            external_id: opt_text(row, "external_id")?
                .map(|s| parsed("external_id", ExternalId::parse("", &s)))
                .transpose()?,
            email: opt_text(row, "email")?
                .map(|s| parsed("email", Email::parse("", &s)))
                .transpose()?,
            name: text(row, "name")?,
            company: text(row, "company")?,
            metadata: from_json::<Metadata>(row, "metadata")?,
        },
        plan_id: parsed("plan_id", PlanId::parse("", &text(row, "plan_id")?))?,
        status: TenantStatus::from_name(&text(row, "status")?).ok_or_else(|| corrupt("status"))?,
        trial_end: opt_time(row, "trial_end")?,
        billing_period: match (opt_time(row, "period_start")?, opt_time(row, "period_end")?) {
            (Some(start), Some(end)) => Some(Period { start, end }),
            _ => None,
        },
        trial_started_at: opt_time(row, "trial_started_at")?,
        converted_at: opt_time(row, "converted_at")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(super) fn usage_from_row(row: &AnyRow) -> Result<UsageTotal> {
    Ok(UsageTotal {
        tenant_id: parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
        resource: parsed("resource", Resource::parse("", &text(row, "resource")?))?,
        period_start: time(row, "period_start")?,
        period_end: time(row, "period_end")?,
        used: int(row, "used")?,
    })
}

pub(super) fn key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: parsed("id", KeyId::parse("", &text(row, "id")?))?,
        tenant_id: parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
        environment: KeyEnvironment::from_name(&text(row, "environment")?)
            .ok_or_else(|| corrupt("environment"))?,
        prefix: text(row, "prefix")?,
        settings: KeySettings {
            name: text(row, "name")?,
            disabled: int(row, "disabled")? != 0,
            expires_at: opt_time(row, "expires_at")?,
            rate_limit_override: match opt_text(row, "rate_limit_override")? {
                None => None,
                Some(s) => Some(parsed("rate_limit_override", serde_json::from_str(&s))?),
            },
            quota_overrides: from_json(row, "quota_overrides")?,
            metadata: from_json(row, "metadata")?,
        },
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        last_used_at: opt_time(row, "last_used_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

pub(super) fn credential_from_row(row: &AnyRow) -> Result<Credential> {
    Ok(Credential {
        id: parsed("id", CredentialId::parse("", &text(row, "id")?))?,
        name: text(row, "name")?,
        scope: Scope::from_name(&text(row, "scope")?).ok_or_else(|| corrupt("scope"))?,
        created_at: time(row, "created_at")?,
        expires_at: opt_time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        seeded: int(row, "seeded")? != 0,
    })
}

/// The cursor of a keyset page: rows after this id (empty string: from the start).
pub(super) fn after(page: &PageRequest) -> String {
    page.after.clone().unwrap_or_default()
}

pub(super) const PLAN_COLUMNS: &str = "id, slug, display_name, price_amount_minor, price_currency, \
    billing_interval, trial_days, rate_limit, quotas, features, quota_reset_day, archived, \
    created_at, updated_at";
pub(super) const TENANT_COLUMNS: &str = "id, external_id, email, name, company, plan_id, status, \
    trial_end, metadata, created_at, updated_at, period_start, period_end, trial_started_at, \
    converted_at";
pub(super) const KEY_COLUMNS: &str = "id, tenant_id, name, environment, prefix, disabled, expires_at, \
    rate_limit_override, quota_overrides, metadata, created_at, updated_at, last_used_at, \
    revoked_at";
