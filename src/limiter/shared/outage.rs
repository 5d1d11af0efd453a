//! When Redis is away: noticing it (a failed call, or the flusher's probe),
//! timing it, and deciding calls without it, open or closed.
use std::{sync::atomic::Ordering, time::Instant};

use super::{Memory, Shared};
use crate::{
    config::RedisFailure,
    domain::{Error, Result, verify::take_tokens},
    limiter::{Admission, Admitted, Decision},
};

impl Shared {
    pub(super) fn went_down(&self, error: &str) {
        let mut memory = self.memory();
        if !self.down.swap(true, Ordering::Relaxed) {
            if self.settings.failure == RedisFailure::Open {
                memory.failing_open_since = Some(Instant::now());
            }
            drop(memory);
            tracing::warn!(error, failure = ?self.settings.failure, "Redis unavailable");
        }
    }

    /// Adds the time failing open since it was last added; every probe
    /// does, so the metric moves during an outage, not only after it.
    fn count_fail_open(&self, memory: &mut Memory) {
        if let Some(since) = memory.failing_open_since.take() {
            let now = Instant::now();
            self.metrics
                .fail_open_seconds
                .inc_by(now.duration_since(since).as_secs_f64());
            if self.down.load(Ordering::Relaxed) {
                memory.failing_open_since = Some(now);
            }
        }
    }

    /// The flusher probes Redis on the Verify path's own connection (which
    /// reconnects on use) at every tick: an outage is noticed without a user
    /// call, and calls return to Redis only once it answers again.
    pub(super) async fn probe(&self) -> bool {
        let mut conn = self.hot.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let up = matches!(
            tokio::time::timeout(self.settings.budget, ping).await,
            Ok(Ok(_))
        );
        if !up {
            self.went_down("Redis: PING failed");
        }
        let mut memory = self.memory();
        let back = up && self.down.swap(false, Ordering::Relaxed);
        self.count_fail_open(&mut memory);
        drop(memory);
        if back {
            self.slow_streak.store(0, Ordering::Relaxed);
            tracing::info!("Redis available again");
        }
        up
    }

    /// Admits on the in-process bucket while Redis is away (failing open).
    /// The units are kept for the database and to add to Redis later.
    fn admit_fallback(&self, a: &Admission, at: i64) -> Admitted {
        self.metrics.fail_open_calls.inc();
        let mut memory = self.memory();
        let (taken, bucket) =
            take_tokens(memory.fallback.get(&a.bucket).copied(), a.rate, a.units, at);
        if !bucket.allowed {
            let (_, untouched) =
                take_tokens(memory.fallback.get(&a.bucket).copied(), a.rate, 0, at);
            return Admitted {
                decision: Decision::RateLimited,
                bucket: untouched,
                used: None,
            };
        }
        memory.fallback.insert(a.bucket, taken);
        if let Some(q) = &a.quota
            && a.units > 0
        {
            *memory.open_served.entry(q.key.clone()).or_default() += a.units;
            memory.readd.entry(q.key.clone()).or_default().open += a.units;
            self.usage_metrics.unflushed_units.inc_by(a.units);
        }
        Admitted {
            decision: Decision::Admitted,
            bucket,
            // Only what this replica knows: the shared total is in Redis.
            used: None,
        }
    }

    /// A call decided while Redis cannot be reached and its lease holds
    /// nothing: failing closed, or charging a hard-capped quota (whose
    /// shared count is in Redis, so no replica alone can keep the cap), it
    /// is refused as unavailable; otherwise it fails open.
    pub(super) fn without_redis(&self, a: &Admission, at: i64) -> Result<Admitted> {
        let hard_capped = a.quota.as_ref().is_some_and(|q| q.hard_cap.is_some());
        match self.settings.failure {
            RedisFailure::Open if !hard_capped => Ok(self.admit_fallback(a, at)),
            RedisFailure::Open => Err(Error::Unavailable(
                "the quota's hard cap cannot be checked while the rate limiter's Redis is unavailable; retry shortly"
                    .into(),
            )),
            RedisFailure::Closed => Err(Error::Unavailable(
                "the rate limiter's Redis is unavailable; retry shortly".into(),
            )),
        }
    }
}
