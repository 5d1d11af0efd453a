//! Entitlements by secret hash, in a bounded quick_cache (S3-FIFO: a new
//! entry starts on probation and only one asked for again is kept, so a
//! scan of one-off secrets cannot evict the hot ones); each entry used until
//! it is changed or `ttl` old.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use quick_cache::sync::Cache;

use super::Entitlement;
use crate::{
    catalog::{Change, ChangeListener},
    domain::secret::SecretHash,
    telemetry::metrics::CacheMetrics,
};

/// What a secret was found to be, and when.
struct Entry {
    /// `None`: no key has this secret (remembered too, so a flood of made-up
    /// secrets of the old shape does not become a flood of SQL).
    entitlement: Option<Arc<Entitlement>>,
    loaded: Instant,
    /// A caller is reloading this expired entry; the others keep using it.
    refreshing: AtomicBool,
}

/// Entitlements by secret hash, forgotten on change or after `ttl`.
pub struct EntitlementCache {
    ttl: Duration,
    entries: Cache<[u8; 32], Arc<Entry>>,
    metrics: CacheMetrics,
}

impl EntitlementCache {
    /// At most `capacity` entries (`key_cache_entries`).
    pub fn new(ttl: Duration, capacity: usize, metrics: CacheMetrics) -> Self {
        let entries = Cache::new(capacity);
        Self {
            ttl,
            entries,
            metrics,
        }
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
        let entry = self.entries.get(hash.as_bytes())?;
        let age = entry.loaded.elapsed();
        if age < self.ttl {
            return Some(entry.entitlement.clone());
        }
        if entry.refreshing.swap(true, Ordering::AcqRel) && age < self.ttl * 2 {
            return Some(entry.entitlement.clone());
        }
        None
    }

    pub(super) fn put(&self, hash: &SecretHash, entitlement: Option<Arc<Entitlement>>) {
        self.entries.insert(
            *hash.as_bytes(),
            Arc::new(Entry {
                entitlement,
                loaded: Instant::now(),
                refreshing: AtomicBool::new(false),
            }),
        );
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
        // Under each shard's lock: once this returns, no entry matching the
        // change is returned again.
        self.entries
            .retain(|_, entry: &Arc<Entry>| match &entry.entitlement {
                // A new or changed key may now own a secret remembered as
                // unknown; forget those on any key change.
                None => !matches!(change, Change::Key(_)),
                Some(e) => match change {
                    Change::Key(id) => e.key.id != id,
                    Change::Tenant(id) => e.tenant.id != id,
                    Change::Plan(id) => e.plan.id != id,
                },
            });
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
