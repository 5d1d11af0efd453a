//! Tenants: the paying customers.
use super::{
    FieldViolation, Timestamp,
    ids::{PlanId, TenantId},
    text::{Metadata, bounded},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    Trialing,
    Active,
    PastDue,
    Canceled,
    Revoked,
    /// The subscription is paused: no access until it resumes.
    Paused,
}

impl TenantStatus {
    pub const ALL: [Self; 6] = [
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Canceled,
        Self::Revoked,
        Self::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Revoked => "revoked",
            Self::Paused => "paused",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The customer's id elsewhere (payment provider or the caller's system).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        bounded(field, s, 200, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plausible email address: one `@` with text on both sides, ≤ 254 chars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let s = bounded(field, s, 254, true)?;
        let ok = matches!(s.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
            && !s.contains(char::is_whitespace);
        if ok {
            Ok(Self(s))
        } else {
            Err(FieldViolation::new(field, "must be an email address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A name or company name: at most 200 characters, may be empty, never
/// whitespace alone (it would show as blank: empty says none).
pub fn parse_name(field: &str, s: &str) -> Result<String, FieldViolation> {
    if !s.is_empty() && s.trim().is_empty() {
        return Err(FieldViolation::new(
            field,
            "must not be whitespace alone (leave it empty for none)",
        ));
    }
    bounded(field, s, 200, false)
}

/// The parts of a tenant its owner edits directly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantProfile {
    pub external_id: Option<ExternalId>,
    pub email: Option<Email>,
    pub name: String,
    pub company: String,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub profile: TenantProfile,
    pub plan_id: PlanId,
    pub status: TenantStatus,
    pub trial_end: Option<Timestamp>,
    /// The current billing period, as the tenant's subscription reports it;
    /// `None` for tenants without one.
    pub billing_period: Option<super::verify::Period>,
    /// When the tenant first started a trial.
    pub trial_started_at: Option<Timestamp>,
    /// When it went from a trial to active.
    pub converted_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What Verify applies of a tenant (and the external id its answer shows),
/// shared by the cached keys of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTerms {
    pub id: TenantId,
    pub external_id: Option<ExternalId>,
    pub plan_id: PlanId,
    pub status: TenantStatus,
    pub trial_end: Option<Timestamp>,
    /// The start of the subscription's current period, or without one the
    /// tenant's creation: what quota periods are anchored at.
    pub anchor: Timestamp,
    /// The end of the subscription's current period, if one is known. Not
    /// a `Period` beside `created_at`: 16 bytes less puts the shared terms
    /// (with their `Arc`) in the 128-byte class, not the 160-byte one.
    pub period_end: Option<Timestamp>,
}

impl TenantTerms {
    /// The subscription's current period, if one is known.
    pub fn billing_period(&self) -> Option<super::verify::Period> {
        self.period_end.map(|end| super::verify::Period {
            start: self.anchor,
            end,
        })
    }
}

impl Tenant {
    /// What Verify applies of this tenant.
    pub fn terms(&self) -> TenantTerms {
        TenantTerms {
            id: self.id,
            external_id: self.profile.external_id.clone(),
            plan_id: self.plan_id,
            status: self.status,
            trial_end: self.trial_end,
            anchor: self.billing_period.map_or(self.created_at, |p| p.start),
            period_end: self.billing_period.map(|p| p.end),
        }
    }

    /// Moves the tenant to `status` at `at`, noting a trial's start and its
    /// conversion to active.
    pub fn set_status(&mut self, status: TenantStatus, at: Timestamp) {
        if status == TenantStatus::Trialing && self.trial_started_at.is_none() {
            self.trial_started_at = Some(at);
        }
        if self.status == TenantStatus::Trialing
            && status == TenantStatus::Active
            && self.converted_at.is_none()
        {
            self.converted_at = Some(at);
        }
        self.status = status;
    }
}
