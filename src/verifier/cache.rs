//! Entitlements by secret hash, in a bounded quick_cache (S3-FIFO: a new
//! entry starts on probation and only one asked for again is kept, so a
//! scan of one-off secrets cannot evict the hot ones); each entry used until
//! it is changed or `ttl` old.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, LazyLock, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use quick_cache::sync::Cache;

use super::Entitlement;
use crate::{
    catalog::{Change, ChangeListener},
    domain::{
        ids::{PlanId, TenantId},
        plan::Plan,
        secret::SecretHash,
        tenant::TenantTerms,
    },
    telemetry::metrics::CacheMetrics,
};

/// When an entry was loaded, and whether a caller is reloading it: 8 bytes
/// (an `Instant` is 16), as a million cached keys each carry one.
pub(super) struct Loaded {
    /// Tenths of a second since `EPOCH` (a u32 lasts 13 years).
    at: u32,
    /// A caller is reloading this expired entry; the others keep using it.
    refreshing: AtomicBool,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn tenths_now() -> u32 {
    u32::try_from(EPOCH.elapsed().as_millis() / 100).unwrap_or(u32::MAX)
}

impl Loaded {
    pub(super) fn now() -> Self {
        Self {
            at: tenths_now(),
            refreshing: AtomicBool::new(false),
        }
    }

    fn age(&self) -> Duration {
        Duration::from_millis(u64::from(tenths_now().saturating_sub(self.at)) * 100)
    }
}

/// What a secret was found to be. The entitlement carries its own `Loaded`,
/// so a cached key costs one allocation besides the cache's slot.
#[derive(Clone)]
enum Entry {
    Known(Arc<Entitlement>),
    /// No key has this secret (remembered too, so a flood of made-up secrets
    /// of the old shape does not become a flood of SQL).
    Unknown(Arc<Loaded>),
}

impl Entry {
    fn loaded(&self) -> &Loaded {
        match self {
            Entry::Known(e) => &e.loaded,
            Entry::Unknown(loaded) => loaded,
        }
    }

    fn entitlement(&self) -> Option<Arc<Entitlement>> {
        match self {
            Entry::Known(e) => Some(e.clone()),
            Entry::Unknown(_) => None,
        }
    }
}

/// Entitlements by secret hash, forgotten on change or after `ttl`.
pub struct EntitlementCache {
    ttl: Duration,
    /// By the first 128 bits of the secret's SHA-256: 16 bytes less per entry,
    /// and to be served another key's entry a secret would need a 128-bit
    /// second preimage of a hash it does not know.
    entries: Cache<u128, Entry>,
    tenants: Shared<TenantId, TenantTerms>,
    plans: Shared<PlanId, Plan>,
    metrics: CacheMetrics,
}

/// The cache's key for a secret: the first 128 bits of its hash.
fn cache_key(hash: &SecretHash) -> u128 {
    let bytes = hash.as_bytes();
    u128::from_le_bytes(bytes[..16].try_into().expect("16 of 32 bytes"))
}

/// One copy of each value among the cached entries that hold it: a million
/// keys of a thousand tenants hold a thousand tenants' terms. Only weak
/// references are kept here, so a value goes with its last entry.
struct Shared<K, V> {
    live: Mutex<SharedMap<K, V>>,
}

struct SharedMap<K, V> {
    values: HashMap<K, Weak<V>>,
    /// Dead references are dropped when the map grows past this.
    purge_at: usize,
}

impl<K: Eq + Hash, V: PartialEq> Shared<K, V> {
    fn new() -> Self {
        Self {
            live: Mutex::new(SharedMap {
                values: HashMap::new(),
                purge_at: 1024,
            }),
        }
    }

    /// The copy already shared if it equals `value` (a changed value gets a
    /// new copy; entries holding the old one are forgotten by the change).
    fn share(&self, id: K, value: V) -> Arc<V> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = live.values.get(&id).and_then(Weak::upgrade)
            && *existing == value
        {
            return existing;
        }
        let value = Arc::new(value);
        live.values.insert(id, Arc::downgrade(&value));
        if live.values.len() > live.purge_at {
            live.values.retain(|_, v| v.strong_count() > 0);
            live.purge_at = (live.values.len() * 2).max(1024);
        }
        value
    }
}

impl EntitlementCache {
    /// At most `capacity` entries (`key_cache_entries`).
    pub fn new(ttl: Duration, capacity: usize, metrics: CacheMetrics) -> Self {
        let entries = Cache::new(capacity);
        Self {
            ttl,
            entries,
            tenants: Shared::new(),
            plans: Shared::new(),
            metrics,
        }
    }

    /// The tenant's terms, shared with the cached keys of the same tenant.
    pub(super) fn share_tenant(&self, terms: TenantTerms) -> Arc<TenantTerms> {
        self.tenants.share(terms.id, terms)
    }

    /// The plan, shared with the cached keys on the same plan.
    pub(super) fn share_plan(&self, plan: Plan) -> Arc<Plan> {
        self.plans.share(plan.id, plan)
    }

    /// A fresh entry; or, for an expired one, `None` to the first caller
    /// (who reloads it) and the expired entry to everyone else meanwhile, so
    /// an expiry under load costs one reload rather than one per call in
    /// flight. The TTL is only the backstop: changes remove entries at once.
    pub(super) fn get(&self, hash: &SecretHash) -> Option<Option<Arc<Entitlement>>> {
        let found = self.lookup(hash);
        match found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        };
        found
    }

    fn lookup(&self, hash: &SecretHash) -> Option<Option<Arc<Entitlement>>> {
        let entry = self.entries.get(&cache_key(hash))?;
        let loaded = entry.loaded();
        let age = loaded.age();
        if age < self.ttl {
            return Some(entry.entitlement());
        }
        if loaded.refreshing.swap(true, Ordering::AcqRel) && age < self.ttl * 2 {
            return Some(entry.entitlement());
        }
        None
    }

    pub(super) fn put(&self, hash: &SecretHash, entitlement: Option<Arc<Entitlement>>) {
        let entry = match entitlement {
            Some(e) => Entry::Known(e),
            None => Entry::Unknown(Arc::new(Loaded::now())),
        };
        self.entries.insert(cache_key(hash), entry);
    }

    /// Forgets everything (after changes may have been missed).
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChangeListener for EntitlementCache {
    fn changed(&self, change: Change) {
        if let Change::Credential(_) = change {
            return; // not worth a pass over every entry
        }
        // Under each shard's lock: once this returns, no entry matching the
        // change is returned again.
        self.entries.retain(|_, entry: &Entry| match entry {
            // A new or changed key may now own a secret remembered as
            // unknown; forget those on any key change.
            Entry::Unknown(_) => !matches!(change, Change::Key(_)),
            Entry::Known(e) => match change {
                Change::Key(id) => e.key.id != id,
                Change::Tenant(id) => e.tenant.id != id,
                Change::Plan(id) => e.plan.id != id,
                Change::Credential(_) => true,
            },
        });
    }

    fn missed_changes(&self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> SecretHash {
        SecretHash::of(&format!("secret {i}"))
    }

    /// 1,000 hot secrets stay cached while 100,000 one-off ones go through
    /// a cache of 10,000: over 99% of the hot lookups hit.
    #[test]
    fn a_scan_of_one_off_secrets_does_not_evict_the_hot_ones() {
        let cache =
            EntitlementCache::new(Duration::from_secs(600), 10_000, CacheMetrics::default());
        let hot: Vec<SecretHash> = (0..1_000).map(hash).collect();
        for h in &hot {
            cache.put(h, None);
        }
        // Hot keys are asked for all the time; one-off keys once each.
        for h in &hot {
            for _ in 0..3 {
                cache.get(h);
            }
        }
        let (mut hits, mut asked) = (0u64, 0u64);
        for i in 0..100_000u64 {
            let one_off = hash(1_000_000 + i);
            if cache.get(&one_off).is_none() {
                cache.put(&one_off, None);
            }
            if i % 1_000 == 0 {
                for h in &hot {
                    asked += 1;
                    if cache.get(h).is_some() {
                        hits += 1;
                    } else {
                        cache.put(h, None);
                    }
                }
            }
        }
        let rate = hits as f64 / asked as f64;
        println!("hot hit rate {rate:.4} ({hits} of {asked})");
        assert!(rate > 0.99, "hot hit rate {rate:.4} ({hits} of {asked})");
        assert!(cache.len() <= 10_000, "bounded: {}", cache.len());
    }
}
