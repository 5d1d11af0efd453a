//! Subscriptions bought through a payment provider: the state the provider
//! reports, and what it means for the tenant.
use super::{
    FieldViolation, Timestamp,
    ids::{PlanId, TenantId},
    plan::{ProductId, Provider},
    tenant::{Email, ExternalId, TenantStatus},
    text::bounded,
    verify::Period,
};

/// The provider's id of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionId(String);

impl SubscriptionId {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        bounded(field, s, 200, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The provider's id of one event (a webhook delivery), remembered once
/// applied so a redelivery is applied once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId(String);

impl EventId {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        bounded(field, s, 200, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The provider's id of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        bounded(field, s, 200, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The customer a subscription belongs to. Its tenant is the one with its
/// `external_id` when set, else the one linked to its provider id: never
/// found by email, which the customer may change or share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub external_id: Option<ExternalId>,
    pub provider_id: Option<CustomerId>,
    pub email: Option<Email>,
    pub name: String,
}

/// Which tenant a provider's customer is, and the modification time of the
/// last customer update applied (`None` until one is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerLink {
    pub tenant_id: TenantId,
    pub modified_at: Option<Timestamp>,
}

/// A provider's update of a customer: its tenant takes the email and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerUpdate {
    pub provider: Provider,
    /// The customer's provider id: its updates are ordered per id.
    pub id: CustomerId,
    pub external_id: Option<ExternalId>,
    pub email: Option<Email>,
    pub name: String,
    /// The provider's modification time: what orders updates.
    pub modified_at: Timestamp,
}

impl CustomerUpdate {
    pub fn customer(&self) -> Customer {
        Customer {
            external_id: self.external_id.clone(),
            provider_id: Some(self.id.clone()),
            email: self.email.clone(),
            name: self.name.clone(),
        }
    }
}

/// One report of a subscription's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionUpdate {
    pub provider: Provider,
    pub id: SubscriptionId,
    pub customer: Customer,
    pub product_id: ProductId,
    /// The subscription's status, in the words of the tenant's (a
    /// provider's own statuses are mapped onto these at the edge).
    pub status: TenantStatus,
    pub period: Option<Period>,
    pub cancel_at_period_end: bool,
    pub trial_end: Option<Timestamp>,
    /// The provider's modification time: what orders updates.
    pub modified_at: Timestamp,
    /// The event that carried it, when it came from one.
    pub event_id: Option<EventId>,
}

impl SubscriptionUpdate {
    /// The tenant's status under this update. A subscription set to cancel
    /// at its period's end is still active at the provider until then; the
    /// tenant is canceled now, which keeps its access until the period ends
    /// even if no later update ever arrives. Revoked and paused stay as
    /// they are: access is gone already.
    pub fn tenant_status(&self) -> TenantStatus {
        match self.status {
            TenantStatus::Revoked | TenantStatus::Paused => self.status,
            _ if self.cancel_at_period_end => TenantStatus::Canceled,
            _ => self.status,
        }
    }
}

/// A subscription as stored: the latest update, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub provider: Provider,
    pub id: SubscriptionId,
    pub customer: Customer,
    pub product_id: ProductId,
    /// `None` while the product is not mapped to a plan (pending).
    pub plan_id: Option<PlanId>,
    /// `None` while pending for a customer Tollgate does not know yet.
    pub tenant_id: Option<TenantId>,
    /// The subscription's status, in the words of the tenant's (a
    /// provider's own statuses are mapped onto these at the edge).
    pub status: TenantStatus,
    pub period: Option<Period>,
    pub cancel_at_period_end: bool,
    pub trial_end: Option<Timestamp>,
    pub modified_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Subscription {
    pub fn pending(&self) -> bool {
        self.plan_id.is_none()
    }

    /// Whether `update` says the same as this subscription already does.
    pub fn same_as(&self, u: &SubscriptionUpdate) -> bool {
        self.customer == u.customer
            && self.product_id == u.product_id
            && self.status == u.status
            && self.period == u.period
            && self.cancel_at_period_end == u.cancel_at_period_end
            && self.trial_end == u.trial_end
            && self.modified_at == u.modified_at
    }
}

/// What applying an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The tenant now follows the update.
    Applied,
    /// Kept; it applies by itself once its product is mapped to a plan.
    Pending,
    /// Nothing changed: this update (or this event) was applied before.
    Unchanged,
    /// Ignored: a newer update was applied already.
    Stale,
}
