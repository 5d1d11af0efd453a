//! Admission: the token bucket and the quota counter, checked and consumed
//! together so concurrent calls never admit more than a limit allows.
//! `local` keeps both in process (the embedded default), `shared` in Redis.
use async_trait::async_trait;

use crate::{
    domain::{
        Result, Timestamp,
        ids::TenantId,
        plan::{RateLimit, Resource},
        verify::{BucketId, BucketOutcome, Period},
    },
    store::UsageStore,
};

pub mod local;
pub mod shared;

/// Which counter a call charges: a tenant's resource in one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKey {
    pub tenant_id: TenantId,
    pub resource: Resource,
    pub period: Period,
}

/// One call to admit.
#[derive(Debug, Clone)]
pub struct Admission {
    pub tenant_id: TenantId,
    /// The bucket to take from (per tenant, or per key with an override).
    pub bucket: BucketId,
    pub rate: RateLimit,
    /// Units to take; 0 asks without taking.
    pub units: i64,
    pub quota: Option<QuotaCharge>,
}

#[derive(Debug, Clone)]
pub struct QuotaCharge {
    pub key: UsageKey,
    /// Under a hard cap, the most units the period may use.
    pub hard_cap: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    RateLimited,
    QuotaExceeded,
}

#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub decision: Decision,
    pub bucket: BucketOutcome,
    /// Units used in the period after the call, when a quota was charged.
    pub used: Option<i64>,
}

impl UsageKey {
    /// The counter's durable total (0 when none): where a counter starts
    /// when the limiter does not hold it, so a period never restarts at 0.
    pub async fn durable_total(&self, usage: &dyn UsageStore) -> Result<i64> {
        usage
            .get_usage(self.tenant_id, &self.resource, self.period.start)
            .await
    }
}

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Checks the bucket, then the quota; consumes both only if both allow.
    async fn admit(&self, admission: &Admission, now: Timestamp) -> Result<Admitted>;
    /// Writes admitted usage to durable storage; returns counters written.
    async fn flush(&self) -> Result<usize>;
    /// The live totals of `keys`, where the limiter holds them.
    async fn live_usage(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>>;
    /// The last flush, at shutdown: writes everything and hands back
    /// whatever the limiter holds of a shared budget.
    async fn shutdown(&self) -> Result<()> {
        self.flush().await.map(|_| ())
    }
}
