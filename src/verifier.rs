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
        credits::CreditType,
        key::ApiKey,
        key::KeyEnvironment,
        now,
        plan::{Plan, RateLimit},
        secret::{SecretHash, Shape, UncheckedSecrets, shape},
        tenant::Tenant,
        verify::{
            BucketOutcome, Period, VerifyCode, VerifyInput, billed_overage, gate, hard_cap,
            has_features, quota_for, rate_limit_for, tenant_period,
        },
    },
    limiter::{Admission, Decision, Limiter, QuotaCharge, UsageKey},
    store::{CatalogStore, CreditStore},
    telemetry::metrics::CacheMetrics,
};

/// Everything a verification needs about a secret, loaded together.
pub struct Entitlement {
    key: ApiKey,
    /// When this secret stops verifying (a rotated-out secret's grace end).
    secret_until: Option<Timestamp>,
    tenant: Tenant,
    plan: Plan,
}

impl Entitlement {
    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

struct Entry {
    /// `None`: no key has this secret (remembered too, so a flood of made-up
    /// secrets does not become a flood of SQL).
    entitlement: Option<Arc<Entitlement>>,
    loaded: Instant,
    /// A caller is reloading this expired entry; the others keep using it.
    refreshing: bool,
}

const MAX_ENTRIES: usize = 100_000;

/// Entitlements by secret hash, forgotten on change or after `ttl`.
pub struct EntitlementCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    metrics: CacheMetrics,
}

impl EntitlementCache {
    pub fn new(ttl: Duration, metrics: CacheMetrics) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
            metrics,
        }
    }

    /// A fresh entry; or, for an expired one, `None` to the first caller
    /// (who reloads it) and the expired entry to everyone else meanwhile, so
    /// an expiry under load costs one reload rather than one per call in
    /// flight. The TTL is only the backstop: changes remove entries at once.
    fn get(&self, hash: &SecretHash) -> Option<Option<Arc<Entitlement>>> {
        let found = self.lookup(hash);
        match found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        };
        found
    }

    fn lookup(&self, hash: &SecretHash) -> Option<Option<Arc<Entitlement>>> {
        let mut entries = self.entries.lock().expect("cache lock");
        let entry = entries.get_mut(hash.as_bytes())?;
        let age = entry.loaded.elapsed();
        if age < self.ttl || (entry.refreshing && age < self.ttl * 2) {
            return Some(entry.entitlement.clone());
        }
        entry.refreshing = true;
        None
    }

    fn put(&self, hash: &SecretHash, entitlement: Option<Arc<Entitlement>>) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            *hash.as_bytes(),
            Entry {
                entitlement,
                loaded: Instant::now(),
                refreshing: false,
            },
        );
    }
}

impl EntitlementCache {
    /// Forgets everything (after changes may have been missed).
    pub fn clear(&self) {
        self.entries.lock().expect("cache lock").clear();
    }
}

impl ChangeListener for EntitlementCache {
    fn changed(&self, change: Change) {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.retain(|_, e| {
            let Some(e) = &e.entitlement else {
                // A new or changed key may now own a secret remembered as
                // unknown; forget those on any key change.
                return !matches!(change, Change::Key(_));
            };
            match change {
                Change::Key(id) => e.key.id != id,
                Change::Tenant(id) => e.tenant.id != id,
                Change::Plan(id) => e.plan.id != id,
            }
        });
    }
}

/// The answer to one Verify call.
#[derive(Clone)]
pub struct Verdict {
    pub code: VerifyCode,
    /// The key the secret matched, with its tenant and plan, shared with the
    /// cache: the edge copies out only what its answer shows.
    pub matched: Option<Arc<Entitlement>>,
    pub rate: Option<(RateLimit, BucketOutcome)>,
    pub quota: Option<QuotaView>,
    /// The credit type checked, its balance, and the credits asked for.
    pub credits: Option<(CreditType, i64, i64)>,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct QuotaView {
    pub resource: String,
    /// Included units; 0 for an unmetered resource.
    pub limit: i64,
    pub used: i64,
    /// Billed units past the included ones.
    pub overage: i64,
    pub period: Period,
}

pub struct Verifier {
    store: Arc<dyn CatalogStore>,
    cache: Arc<EntitlementCache>,
    limiter: Arc<dyn Limiter>,
    credits: Arc<dyn CreditStore>,
    unchecked: UncheckedSecrets,
}

impl Verifier {
    pub fn new(
        store: Arc<dyn CatalogStore>,
        cache: Arc<EntitlementCache>,
        limiter: Arc<dyn Limiter>,
        credits: Arc<dyn CreditStore>,
    ) -> Self {
        Self {
            store,
            cache,
            limiter,
            credits,
            unchecked: UncheckedSecrets::Accept,
        }
    }

    /// What to do with keys issued before checksums (accepted by default).
    pub fn with_unchecked_secrets(mut self, unchecked: UncheckedSecrets) -> Self {
        self.unchecked = unchecked;
        self
    }

    /// Whether `secret` is worth a lookup: a made-up one (no prefix of ours,
    /// a wrong checksum, a shape never issued) is refused unread.
    fn worth_looking_up(&self, secret: &str) -> bool {
        let shape = [KeyEnvironment::Live, KeyEnvironment::Test]
            .into_iter()
            .find(|env| secret.starts_with(env.secret_prefix()))
            .map_or(Shape::Malformed, |env| shape(secret, env.secret_prefix()));
        match shape {
            Shape::Checked => true,
            Shape::Unchecked => self.unchecked == UncheckedSecrets::Accept,
            Shape::BadChecksum | Shape::Malformed => false,
        }
    }

    async fn entitlement(
        &self,
        hash: SecretHash,
        at: Timestamp,
    ) -> Result<Option<Arc<Entitlement>>> {
        if let Some(e) = self.cache.get(&hash) {
            return Ok(e);
        }
        let Some((key, secret_until)) = self.store.find_secret(hash, at).await? else {
            self.cache.put(&hash, None);
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
        let entry = Arc::new(Entitlement {
            key,
            secret_until,
            tenant,
            plan,
        });
        self.cache.put(&hash, Some(entry.clone()));
        Ok(Some(entry))
    }

    pub async fn verify(&self, input: &VerifyInput) -> Result<Verdict> {
        let at = now();
        let mut verdict = Verdict {
            code: VerifyCode::KeyNotFound,
            matched: None,
            rate: None,
            quota: None,
            credits: None,
            at,
        };
        if !self.worth_looking_up(&input.secret) {
            return Ok(verdict);
        }
        let hash = SecretHash::of(&input.secret);
        let Some(e) = self.entitlement(hash, at).await? else {
            return Ok(verdict);
        };
        if e.secret_until.is_some_and(|until| until <= at) {
            // A rotated-out secret past its grace period.
            return Ok(verdict);
        }
        verdict.matched = Some(e.clone());
        if let Some(code) = gate(&e.key, &e.tenant, at) {
            verdict.code = code;
            return Ok(verdict);
        }
        if !has_features(&e.plan, &input.required_features) {
            verdict.code = VerifyCode::FeatureNotInPlan;
            return Ok(verdict);
        }
        // Before the limiter, so a call refused for credits consumes no
        // token and no unit. Only calls that name a credit type read SQL.
        if let Some((credit_type, needed)) = &input.credits {
            let balance = self.credits.balance(e.tenant.id, credit_type, at).await?;
            verdict.credits = Some((credit_type.clone(), balance, *needed));
            if balance < *needed {
                verdict.code = VerifyCode::InsufficientCredits;
                return Ok(verdict);
            }
        }
        let (rate, bucket) = rate_limit_for(&e.key, &e.plan);
        // The quota in force on the resource charged; none: unmetered.
        let quota = input
            .resource
            .as_ref()
            .and_then(|resource| quota_for(&e.key, &e.plan, resource));
        let admission = Admission {
            tenant_id: e.tenant.id,
            bucket,
            rate,
            units: input.units,
            quota: input.resource.as_ref().map(|resource| QuotaCharge {
                key: UsageKey {
                    tenant_id: e.tenant.id,
                    resource: resource.clone(),
                    period: tenant_period(&e.plan, &e.tenant, at),
                },
                hard_cap: quota.and_then(hard_cap),
            }),
        };
        let admitted = self.limiter.admit(&admission, at).await?;
        verdict.rate = Some((rate, admitted.bucket));
        if let (Some(charge), Some(used)) = (admission.quota, admitted.used) {
            verdict.quota = Some(QuotaView {
                resource: charge.key.resource.as_str().to_owned(),
                limit: quota.map_or(0, |q| q.included_units),
                used,
                overage: billed_overage(quota, used),
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
