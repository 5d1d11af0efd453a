//! The in-process limiter of the embedded default: one mutex over buckets and
//! counters makes check-and-consume atomic; counters start from the durable
//! total and are flushed back to it.
use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{Admission, Admitted, Decision, Limiter, UsageKey};
use crate::{
    domain::{
        Result, Timestamp, now, to_micros,
        verify::{Bucket, BucketId, fits, take_tokens},
    },
    store::{UsageStore, UsageTotal},
    telemetry::metrics::UsageMetrics,
};

struct Counter {
    used: i64,
    /// The total durable storage holds (as far as we know).
    flushed: i64,
}

#[derive(Default)]
struct State {
    buckets: HashMap<BucketId, Bucket>,
    counters: HashMap<UsageKey, Counter>,
}

pub struct LocalLimiter {
    state: Mutex<State>,
    usage: Arc<dyn UsageStore>,
    metrics: UsageMetrics,
}

impl LocalLimiter {
    pub fn new(usage: Arc<dyn UsageStore>, metrics: UsageMetrics) -> Self {
        Self {
            state: Mutex::default(),
            usage,
            metrics,
        }
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn admit(&self, a: &Admission, at: Timestamp) -> Result<Admitted> {
        if let Some(q) = &a.quota {
            let known = self.state.lock().await.counters.contains_key(&q.key);
            if !known {
                // A counter starts from what durable storage holds, so a
                // restart never starts a period again from zero.
                let stored = q.key.durable_total(&*self.usage).await?;
                self.state
                    .lock()
                    .await
                    .counters
                    .entry(q.key.clone())
                    .or_insert(Counter {
                        used: stored,
                        flushed: stored,
                    });
            }
        }
        let mut state = self.state.lock().await;
        let (taken, bucket) = take_tokens(
            state.buckets.get(&a.bucket).copied(),
            a.rate,
            a.units,
            to_micros(at),
        );
        if !bucket.allowed {
            return Ok(Admitted {
                decision: Decision::RateLimited,
                bucket,
                used: a
                    .quota
                    .as_ref()
                    .and_then(|q| state.counters.get(&q.key))
                    .map(|c| c.used),
            });
        }
        let used = match &a.quota {
            None => None,
            Some(q) => {
                let counter = state.counters.get_mut(&q.key).expect("loaded above");
                if !fits(q.hard_cap, counter.used, a.units) {
                    let used = counter.used;
                    // Nothing consumed: the bucket keeps its tokens.
                    let (_, untouched) = take_tokens(
                        state.buckets.get(&a.bucket).copied(),
                        a.rate,
                        0,
                        to_micros(at),
                    );
                    return Ok(Admitted {
                        decision: Decision::QuotaExceeded,
                        bucket: untouched,
                        used: Some(used),
                    });
                }
                counter.used += a.units;
                self.metrics.unflushed_units.inc_by(a.units);
                Some(counter.used)
            }
        };
        state.buckets.insert(a.bucket, taken);
        Ok(Admitted {
            decision: Decision::Admitted,
            bucket,
            used,
        })
    }

    async fn live_usage(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        let state = self.state.lock().await;
        Ok(keys
            .iter()
            .map(|k| state.counters.get(k).map(|c| c.used))
            .collect())
    }

    async fn flush(&self) -> Result<usize> {
        // Snapshot the counters that moved, keyed as they are held.
        let (pending, unflushed): (Vec<(UsageKey, i64)>, i64) = {
            let state = self.state.lock().await;
            // Read under the lock admissions take, so it matches the totals.
            let unflushed = self.metrics.unflushed_units.get();
            let pending = state
                .counters
                .iter()
                .filter(|(_, c)| c.used > c.flushed)
                .map(|(k, c)| (k.clone(), c.used))
                .collect();
            (pending, unflushed)
        };
        if !pending.is_empty() {
            let totals: Vec<UsageTotal> = pending
                .iter()
                .map(|(k, used)| UsageTotal {
                    tenant_id: k.tenant_id,
                    resource: k.resource.clone(),
                    period_start: k.period.start,
                    period_end: k.period.end,
                    used: *used,
                })
                .collect();
            self.usage.upsert_usage(&totals).await?;
        }
        self.metrics.unflushed_units.dec_by(unflushed);
        let at = now();
        let mut state = self.state.lock().await;
        for (key, used) in &pending {
            if let Some(c) = state.counters.get_mut(key) {
                c.flushed = c.flushed.max(*used);
            }
        }
        // Counters of ended periods, once durable, are no longer needed.
        state
            .counters
            .retain(|k, c| k.period.end > at || c.used > c.flushed);
        Ok(pending.len())
    }
}
