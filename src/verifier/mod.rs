//! The Verify use case: find the key (from a bounded in-process cache, so a
//! hit runs no SQL), apply the rules in order, and admit through the limiter.
mod cache;

use std::{future::Future, sync::Arc, time::Duration};

pub use cache::EntitlementCache;
use cache::Lookup;

use crate::{
    domain::{
        Error, Result, Timestamp,
        credits::CreditType,
        key::{KeyEnvironment, KeyTerms},
        now,
        plan::{Plan, RateLimit},
        secret::{SecretHash, Shape, UncheckedSecrets, shape},
        tenant::TenantTerms,
        to_micros,
        verify::{
            BucketOutcome, Period, VerifyCode, VerifyInput, billed_overage, gate, hard_cap,
            has_features, quota_for, rate_limit_for, tenant_period,
        },
    },
    limiter::{Admission, Decision, Limiter, QuotaCharge, UsageKey},
    store::{CatalogStore, CreditStore},
};

/// Everything a verification needs about a secret, loaded together: the
/// key's terms, and its tenant's and plan's shared with the other cached
/// keys of that tenant and plan.
pub struct Entitlement {
    key: KeyTerms,
    /// When this secret stops verifying (a rotated-out secret's grace end),
    /// in microseconds; `i64::MAX`: never. Not an `Option<Timestamp>`: 8
    /// bytes less, and with `KeyTerms` carrying no tenant id an entry (with
    /// its `Arc`) is in the allocator's 96-byte class, for every cached key.
    secret_until_micros: i64,
    tenant: Arc<TenantTerms>,
    plan: Arc<Plan>,
    loaded: cache::Loaded,
}

impl Entitlement {
    pub fn key(&self) -> &KeyTerms {
        &self.key
    }

    pub fn tenant(&self) -> &TenantTerms {
        &self.tenant
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
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
    /// The most a database read on the Verify path may take.
    read_budget: Duration,
}

/// What `read_budget` is unless set (`verify_read_budget_millis`).
const READ_BUDGET: Duration = Duration::from_millis(100);

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
            read_budget: READ_BUDGET,
        }
    }

    /// The most a database read on the Verify path may take: past it the
    /// call is UNAVAILABLE (or served from an expired cache entry), rather
    /// than waiting out the pool's timeout while the database is away.
    pub fn with_read_budget(mut self, budget: Duration) -> Self {
        self.read_budget = budget;
        self
    }

    /// Runs a database read within `read_budget`.
    async fn read<T>(&self, what: &str, read: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.read_budget, read)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "the database did not answer within {} ms while {what}; retry shortly",
                    self.read_budget.as_millis()
                )))
            })
    }

    /// What to do with keys issued before checksums (accepted by default).
    pub fn with_unchecked_secrets(mut self, unchecked: UncheckedSecrets) -> Self {
        self.unchecked = unchecked;
        self
    }

    /// Whether `secret` is worth a lookup: a made-up one (no prefix of ours,
    /// a wrong checksum, a shape never issued) is refused unread.
    fn worth_looking_up(&self, secret: &str) -> bool {
        let shape = KeyEnvironment::of_secret(secret)
            .map_or(Shape::Malformed, |env| shape(secret, env.secret_prefix()));
        match shape {
            Shape::Checked => true,
            Shape::Unchecked => self.unchecked == UncheckedSecrets::Accept,
            Shape::BadChecksum | Shape::Malformed => false,
        }
    }

    /// The secret's entitlement: cached, or read (and cached); while the
    /// database does not answer, an expired entry not yet stale. Waiting
    /// for another caller's read counts against the budget too.
    async fn entitlement(
        &self,
        hash: SecretHash,
        at: Timestamp,
    ) -> Result<Option<Arc<Entitlement>>> {
        let mut stale = None;
        let read = async {
            let reload = match self.cache.get(&hash).await {
                Lookup::Hit(e) => return Ok(e),
                Lookup::Miss(reload) => reload,
            };
            stale = reload.stale.clone();
            let found = self.load(hash, at).await?;
            reload.put(found.clone());
            Ok(found)
        };
        match self.read("reading the key", read).await {
            Err(Error::Unavailable(reason)) if stale.is_some() => {
                tracing::debug!(%reason, "serving a key's expired entitlement");
                self.cache.served_stale();
                Ok(stale.flatten())
            }
            answer => answer,
        }
    }

    /// Reads what a secret entitles to from the store (`None`: no key).
    async fn load(&self, hash: SecretHash, at: Timestamp) -> Result<Option<Arc<Entitlement>>> {
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
        Ok(Some(Arc::new(Entitlement {
            key: key.terms(),
            secret_until_micros: secret_until.map_or(i64::MAX, to_micros),
            tenant: self.cache.share_tenant(tenant.terms()),
            plan: self.cache.share_plan(plan),
            loaded: cache::Loaded::now(),
        })))
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
        if e.secret_until_micros <= to_micros(at) {
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
            let balance = self
                .read(
                    "reading the credit balance",
                    self.credits.balance(e.tenant.id, credit_type, at),
                )
                .await?;
            verdict.credits = Some((credit_type.clone(), balance, *needed));
            if balance < *needed {
                verdict.code = VerifyCode::InsufficientCredits;
                return Ok(verdict);
            }
        }
        let (rate, bucket) = rate_limit_for(&e.key, e.tenant.id, &e.plan);
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

#[cfg(test)]
mod tests {
    /// A million cached keys each hold one: with its `Arc`'s two counters
    /// it must stay within the allocator's 96-byte class.
    #[test]
    fn an_entitlement_fits_the_96_byte_class() {
        let with_counts = std::mem::size_of::<super::Entitlement>() + 16;
        assert!(with_counts <= 96, "{with_counts} bytes");
    }

    /// Shared by a tenant's cached keys, one per tenant: the 128-byte class.
    #[test]
    fn tenant_terms_fit_the_128_byte_class() {
        let with_counts = std::mem::size_of::<crate::domain::tenant::TenantTerms>() + 16;
        assert!(with_counts <= 128, "{with_counts} bytes");
    }
}
