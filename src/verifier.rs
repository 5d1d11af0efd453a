//! The Verify use case: find the key (from a bounded in-process cache, so a
//! hit runs no SQL), apply the rules in order, and admit through the limiter.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    catalog::{Change, ChangeListener},
    domain::{
        Error, Result, Timestamp,
        ids::{KeyId, TenantId},
        key::ApiKey,
        now,
        plan::{Plan, RateLimit},
        secret::SecretHash,
        tenant::Tenant,
        verify::{
            BucketOutcome, Period, VerifyCode, VerifyInput, gate, hard_cap, has_features,
            quota_for, quota_period, rate_limit_for,
        },
    },
    limiter::{Admission, Decision, Limiter, QuotaCharge, UsageKey},
    store::CatalogStore,
};

/// Everything a verification needs about a secret, loaded together.
#[derive(Clone)]
struct Entitlement {
    key: ApiKey,
    /// When this secret stops verifying (a rotated-out secret's grace end).
    secret_until: Option<Timestamp>,
    tenant: Tenant,
    plan: Plan,
    loaded: Instant,
}

const MAX_ENTRIES: usize = 100_000;

/// Entitlements by secret hash, forgotten on change or after `ttl`.
pub struct EntitlementCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entitlement>>,
}

impl EntitlementCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, hash: &SecretHash) -> Option<Entitlement> {
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(hash.as_bytes())
            .filter(|e| e.loaded.elapsed() < self.ttl)
            .cloned()
    }

    fn put(&self, hash: &SecretHash, entry: Entitlement) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(*hash.as_bytes(), entry);
    }
}

impl ChangeListener for EntitlementCache {
    fn changed(&self, change: Change) {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.retain(|_, e| match change {
            Change::Key(id) => e.key.id != id,
            Change::Tenant(id) => e.tenant.id != id,
            Change::Plan(id) => e.plan.id != id,
        });
    }
}

/// The answer to one Verify call.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub code: VerifyCode,
    pub key_id: Option<KeyId>,
    pub tenant_id: Option<TenantId>,
    pub external_id: Option<String>,
    pub plan_slug: Option<String>,
    pub features: Vec<String>,
    pub rate: Option<(RateLimit, BucketOutcome)>,
    pub quota: Option<QuotaView>,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct QuotaView {
    pub resource: String,
    /// Included units; 0 for an unmetered resource.
    pub limit: i64,
    pub used: i64,
    pub period: Period,
}

impl QuotaView {
    pub fn overage(&self) -> i64 {
        (self.used - self.limit).max(0)
    }
}

pub struct Verifier {
    store: Arc<dyn CatalogStore>,
    cache: Arc<EntitlementCache>,
    limiter: Arc<dyn Limiter>,
}

impl Verifier {
    pub fn new(
        store: Arc<dyn CatalogStore>,
        cache: Arc<EntitlementCache>,
        limiter: Arc<dyn Limiter>,
    ) -> Self {
        Self {
            store,
            cache,
            limiter,
        }
    }

    async fn entitlement(&self, hash: SecretHash, at: Timestamp) -> Result<Option<Entitlement>> {
        if let Some(e) = self.cache.get(&hash) {
            return Ok(Some(e));
        }
        let Some((key, secret_until)) = self.store.find_secret(hash, at).await? else {
            return Ok(None);
        };
        let tenant = self
            .store
            .get_tenant(key.tenant_id)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("key {} has no tenant", key.id)))?;
        let plan =
            self.store.get_plan(tenant.plan_id).await?.ok_or_else(|| {
                Error::Internal(anyhow::anyhow!("tenant {} has no plan", tenant.id))
            })?;
        let entry = Entitlement {
            key,
            secret_until,
            tenant,
            plan,
            loaded: Instant::now(),
        };
        self.cache.put(&hash, entry.clone());
        Ok(Some(entry))
    }

    pub async fn verify(&self, input: &VerifyInput) -> Result<Verdict> {
        let at = now();
        let mut verdict = Verdict {
            code: VerifyCode::KeyNotFound,
            key_id: None,
            tenant_id: None,
            external_id: None,
            plan_slug: None,
            features: Vec::new(),
            rate: None,
            quota: None,
            at,
        };
        let hash = SecretHash::of(&input.secret);
        let Some(e) = self.entitlement(hash, at).await? else {
            return Ok(verdict);
        };
        if e.secret_until.is_some_and(|until| until <= at) {
            // A rotated-out secret past its grace period.
            return Ok(verdict);
        }
        verdict.key_id = Some(e.key.id);
        verdict.tenant_id = Some(e.tenant.id);
        verdict.external_id = e
            .tenant
            .profile
            .external_id
            .as_ref()
            .map(|x| x.as_str().to_owned());
        verdict.plan_slug = Some(e.plan.slug.to_string());
        verdict.features = e
            .plan
            .spec
            .features
            .iter()
            .map(|f| f.as_str().to_owned())
            .collect();
        if let Some(code) = gate(&e.key, &e.tenant, at) {
            verdict.code = code;
            return Ok(verdict);
        }
        if !has_features(&e.plan, &input.required_features) {
            verdict.code = VerifyCode::FeatureNotInPlan;
            return Ok(verdict);
        }
        let (rate, bucket) = rate_limit_for(&e.key, &e.plan);
        let quota = input.resource.as_ref().map(|resource| {
            let q = quota_for(&e.key, &e.plan, resource);
            let period = quota_period(
                e.plan.spec.quota_reset,
                e.plan.spec.billing_interval,
                e.tenant.created_at,
                at,
            );
            (
                QuotaCharge {
                    key: UsageKey {
                        tenant_id: e.tenant.id,
                        resource: resource.clone(),
                        period,
                    },
                    hard_cap: q.and_then(hard_cap),
                },
                q.map_or(0, |q| q.included_units),
            )
        });
        let admitted = self
            .limiter
            .admit(
                &Admission {
                    bucket,
                    rate,
                    units: input.units,
                    quota: quota.as_ref().map(|(c, _)| c.clone()),
                },
                at,
            )
            .await?;
        verdict.rate = Some((rate, admitted.bucket));
        if let (Some((charge, limit)), Some(used)) = (quota, admitted.used) {
            verdict.quota = Some(QuotaView {
                resource: charge.key.resource.as_str().to_owned(),
                limit,
                used,
                period: charge.key.period,
            });
        }
        verdict.code = match admitted.decision {
            Decision::Admitted => VerifyCode::Valid,
            Decision::RateLimited => VerifyCode::RateLimited,
            Decision::QuotaExceeded => VerifyCode::QuotaExceeded,
        };
        Ok(verdict)
    }
}
