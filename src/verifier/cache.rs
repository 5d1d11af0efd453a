//! Entitlements by secret hash, in a bounded quick_cache (S3-FIFO: a new
//! entry starts on probation and only one asked for again is kept, so a
//! scan of one-off secrets cannot evict the hot ones); each entry used until
//! it is changed or `ttl` old, and past that, while one caller reloads it
//! or the database cannot answer, until it is `stale` old.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, LazyLock, Mutex, PoisonError, Weak,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use quick_cache::{
    DefaultHashBuilder, UnitWeighter,
    sync::{Cache, DefaultLifecycle, PlaceholderGuard},
};

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

/// When an entry was loaded, and when a caller last set out to reload it:
/// 8 bytes (an `Instant` is 16), as a million cached keys each carry one.
pub(super) struct Loaded {
    /// Tenths of a second since `EPOCH` (a u32 lasts 13 years).
    at: u32,
    /// When a caller last took on reloading this expired entry (tenths, as
    /// `at`): one caller per `RELOAD_EVERY` reloads, the others use the
    /// entry meanwhile, and a reload that failed or was given up is tried
    /// again by the next caller after that.
    tried: AtomicU32,
}

/// At most one reload per expired entry this often (tenths of a second).
const RELOAD_EVERY: u32 = 10;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn tenths_now() -> u32 {
    u32::try_from(EPOCH.elapsed().as_millis() / 100).unwrap_or(u32::MAX)
}

impl Loaded {
    pub(super) fn now() -> Self {
        let at = tenths_now();
        Self {
            at,
            tried: AtomicU32::new(at),
        }
    }

    fn age(&self) -> Duration {
        Duration::from_millis(u64::from(tenths_now().saturating_sub(self.at)) * 100)
    }

    /// Whether this caller is the one to reload the entry now.
    fn take_reload(&self, every: u32) -> bool {
        let now = tenths_now();
        let last = self.tried.load(Ordering::Acquire);
        now.saturating_sub(last) >= every
            && self
                .tried
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// What the cache says of a secret: `None` inside means no key has it.
pub(super) enum Lookup<'a> {
    /// Use this.
    Hit(Option<Arc<Entitlement>>),
    /// Read the store, and `put` what it says.
    Miss(Reload<'a>),
}

/// The placeholder that the other callers asking for an absent secret wait
/// on, so a burst of calls with a new key costs one read, not one each.
type Placeholder<'a> = PlaceholderGuard<
    'a,
    CacheKey,
    Entry,
    UnitWeighter,
    DefaultHashBuilder,
    DefaultLifecycle<CacheKey, Entry>,
>;

/// A caller's charge to read a secret again.
pub(super) struct Reload<'a> {
    /// The expired entry, not yet `stale` old: what to serve should the
    /// store not answer.
    pub(super) stale: Option<Option<Arc<Entitlement>>>,
    key: CacheKey,
    placeholder: Option<Placeholder<'a>>,
    cache: &'a EntitlementCache,
}

impl Reload<'_> {
    /// Caches what the store said.
    pub(super) fn put(self, entitlement: Option<Arc<Entitlement>>) {
        let entry = match entitlement {
            Some(e) => Entry::Known(e),
            None => Entry::Unknown(Arc::new(Loaded::now())),
        };
        match self.placeholder {
            // Err: a change removed the placeholder meanwhile; what was
            // read may predate it, so it is not kept.
            Some(placeholder) => drop(placeholder.insert(entry)),
            None => self.cache.entries.insert(self.key, entry),
        }
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
    /// How old an entry may be served while it cannot be reloaded.
    stale: Duration,
    /// `RELOAD_EVERY`, or less for a `ttl` under a second.
    reload_every: u32,
    entries: Cache<CacheKey, Entry>,
    tenants: Shared<TenantId, TenantTerms>,
    plans: Shared<PlanId, Plan>,
    metrics: CacheMetrics,
}

/// The cache's key for a secret: the first 128 bits of its SHA-256, 16
/// bytes less per entry than the whole hash (to be served another key's
/// entry a secret would need a 128-bit second preimage of a hash it does
/// not know). Two `u64`s, not a `u128`: a `u128` is 16-aligned, which pads
/// quick_cache's slot from 48 bytes to 64.
type CacheKey = [u64; 2];

fn cache_key(hash: &SecretHash) -> CacheKey {
    let bytes = hash.as_bytes();
    let half = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 of 32 bytes"));
    [half(0), half(8)]
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
    /// At most `capacity` entries (`key_cache_entries`), each reloaded when
    /// `ttl` old (`key_cache_seconds`) and served while it cannot be until
    /// `stale` old (`key_stale_seconds`).
    pub fn new(ttl: Duration, stale: Duration, capacity: usize, metrics: CacheMetrics) -> Self {
        let entries = Cache::new(capacity);
        let ttl_tenths = u32::try_from(ttl.as_millis() / 100).unwrap_or(u32::MAX);
        Self {
            ttl,
            stale: stale.max(ttl),
            reload_every: RELOAD_EVERY.min(ttl_tenths),
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

    /// A fresh entry; or, for an expired one, a miss to one caller a second
    /// (who reloads it) and the expired entry to everyone else meanwhile, so
    /// an expiry under load costs one reload rather than one per call in
    /// flight, and a database outage one failed read a second per key; for
    /// an absent one, a miss to one caller while the others wait for what
    /// it reads. The TTL is only the backstop: changes remove entries at
    /// once.
    pub(super) async fn get(&self, hash: &SecretHash) -> Lookup<'_> {
        let found = self.lookup(hash).await;
        match found {
            Lookup::Hit(_) => self.metrics.hits.inc(),
            Lookup::Miss { .. } => self.metrics.misses.inc(),
        };
        found
    }

    async fn lookup(&self, hash: &SecretHash) -> Lookup<'_> {
        let key = cache_key(hash);
        let reload = |stale, placeholder| {
            Lookup::Miss(Reload {
                stale,
                key,
                placeholder,
                cache: self,
            })
        };
        let entry = match self.entries.get_value_or_guard_async(&key).await {
            Ok(entry) => entry,
            Err(placeholder) => return reload(None, Some(placeholder)),
        };
        let loaded = entry.loaded();
        let age = loaded.age();
        if age < self.ttl {
            return Lookup::Hit(entry.entitlement());
        }
        let usable = age < self.stale;
        if usable && !loaded.take_reload(self.reload_every) {
            return Lookup::Hit(entry.entitlement());
        }
        reload(usable.then(|| entry.entitlement()), None)
    }

    /// Counts an expired entry served because the database could not answer.
    pub(super) fn served_stale(&self) {
        self.metrics.stale.inc();
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

    /// Looks `h` up and, on a miss, caches it as unknown; whether it hit.
    async fn ask(cache: &EntitlementCache, h: &SecretHash) -> bool {
        match cache.get(h).await {
            Lookup::Hit(_) => true,
            Lookup::Miss(reload) => {
                reload.put(None);
                false
            }
        }
    }

    /// 1,000 hot secrets stay cached while 100,000 one-off ones go through
    /// a cache of 10,000: over 99% of the hot lookups hit.
    #[tokio::test]
    async fn a_scan_of_one_off_secrets_does_not_evict_the_hot_ones() {
        let ttl = Duration::from_secs(600);
        let cache = EntitlementCache::new(ttl, ttl, 10_000, CacheMetrics::default());
        let hot: Vec<SecretHash> = (0..1_000).map(hash).collect();
        // Hot keys are asked for all the time; one-off keys once each.
        for h in &hot {
            for _ in 0..4 {
                ask(&cache, h).await;
            }
        }
        let (mut hits, mut asked) = (0u64, 0u64);
        for i in 0..100_000u64 {
            ask(&cache, &hash(1_000_000 + i)).await;
            if i % 1_000 == 0 {
                for h in &hot {
                    asked += 1;
                    if ask(&cache, h).await {
                        hits += 1;
                    }
                }
            }
        }
        let rate = hits as f64 / asked as f64;
        println!("hot hit rate {rate:.4} ({hits} of {asked})");
        assert!(rate > 0.99, "hot hit rate {rate:.4} ({hits} of {asked})");
        assert!(cache.len() <= 10_000, "bounded: {}", cache.len());
    }

    /// Past its TTL an entry goes to one caller to reload (the others get it
    /// meanwhile, and the reloader may fall back on it) until it is stale.
    #[tokio::test]
    async fn an_expired_entry_is_reloaded_by_one_caller_and_served_until_stale() {
        let cache = EntitlementCache::new(
            Duration::from_millis(300),
            Duration::from_millis(1_000),
            10,
            CacheMetrics::default(),
        );
        let h = hash(1);
        ask(&cache, &h).await;
        assert!(ask(&cache, &h).await, "fresh");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let first = cache.get(&h).await;
        assert!(
            matches!(&first, Lookup::Miss(r) if matches!(r.stale, Some(None))),
            "the first caller reloads, with the expired entry to fall back on"
        );
        assert!(
            matches!(cache.get(&h).await, Lookup::Hit(None)),
            "the others use the expired entry meanwhile"
        );
        drop(first);
        tokio::time::sleep(Duration::from_millis(700)).await;
        for _ in 0..2 {
            assert!(
                matches!(cache.get(&h).await, Lookup::Miss(r) if r.stale.is_none()),
                "past the staleness every caller reads, with nothing to fall back on"
            );
        }
    }

    /// Callers asking for a secret not cached wait for the first one's read
    /// rather than each reading it.
    #[tokio::test]
    async fn callers_of_an_absent_secret_wait_for_one_read() {
        let ttl = Duration::from_secs(600);
        let cache = EntitlementCache::new(ttl, ttl, 10, CacheMetrics::default());
        let h = hash(7);
        let Lookup::Miss(first) = cache.get(&h).await else {
            panic!("absent");
        };
        let second = cache.get(&h);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "the second caller waits"
        );
        first.put(None);
        assert!(
            matches!(second.await, Lookup::Hit(None)),
            "and gets what was read"
        );
    }
}
