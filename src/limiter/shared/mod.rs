//! The production limiter: buckets and quota counters live in Redis, shared
//! by every replica. One Lua script checks and consumes both in one round
//! trip on a multiplexed connection shared by all calls; every key of a
//! tenant carries the tenant as hash tag, so the script runs on Redis Cluster.
//! Counters are flushed to the database as absolute totals, restored from it
//! when Redis has lost them, and Redis trouble is bounded by a time budget.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use deadpool_redis::Pool;
use redis::{Script, aio::ConnectionManager};

use super::{Admission, Admitted, Decision, Limiter, UsageKey};
use crate::{
    config::RedisFailure,
    domain::{
        Error, Result, Timestamp, from_micros,
        ids::TenantId,
        now,
        plan::Resource,
        to_micros,
        verify::{Bucket, Period, bucket_outcome, fits, take_tokens},
    },
    store::UsageStore,
    telemetry::metrics::{RedisMetrics, UsageMetrics},
};

mod durable;
mod scripts;

use scripts::{ADD, ADMIT};

/// Calls in a row over the budget that count as Redis being down.
const SLOW_STREAK_DOWN: u32 = 8;
const MAX_MEMO: usize = 100_000;

pub struct RedisSettings {
    pub prefix: String,
    pub budget: Duration,
    pub failure: RedisFailure,
    pub sweep_every: Duration,
}

#[derive(Default)]
struct Memory {
    /// Counters this replica charged since its last flush, by Redis key.
    touched: HashSet<UsageKey>,
    /// Counters known to be at or past their hard cap: the total seen then
    /// and the bucket as it was, to answer repeated denials from memory.
    spent: HashMap<UsageKey, (i64, Bucket)>,
    /// Failing open: in-process buckets, and usage not yet in Redis.
    fallback: HashMap<String, Bucket>,
    pending: HashMap<UsageKey, i64>,
    /// Redis failed a call; Verify stays off it until a probe succeeds.
    down: bool,
    /// Failing open since then: the part not yet added to the metric.
    failing_open_since: Option<Instant>,
    /// Calls that failed after reaching Redis, which may have counted them.
    uncertain: u64,

    last_sweep: Option<Instant>,
}

pub struct RedisLimiter {
    hot: ConnectionManager,
    pool: Pool,
    usage: Arc<dyn UsageStore>,
    settings: RedisSettings,
    admit: Script,
    add: Script,
    memory: Mutex<Memory>,
    /// Calls in a row that were over the budget.
    slow_streak: AtomicU32,
    metrics: RedisMetrics,
    usage_metrics: UsageMetrics,
}

/// A failed script call; `not_run` when Redis certainly did not run it.
struct Trouble {
    message: String,
    not_run: bool,
    /// Only slow (over the budget), not disconnected or refusing.
    slow: bool,
}

struct Reply {
    outcome: i64,
    tokens: f64,
    used: i64,
}

impl RedisLimiter {
    pub fn new(
        hot: ConnectionManager,
        pool: Pool,
        usage: Arc<dyn UsageStore>,
        settings: RedisSettings,
        (metrics, usage_metrics): (RedisMetrics, UsageMetrics),
    ) -> Self {
        Self {
            hot,
            pool,
            usage,
            settings,
            admit: Script::new(ADMIT),
            add: Script::new(ADD),
            memory: Mutex::default(),
            slow_streak: AtomicU32::new(0),
            metrics,
            usage_metrics,
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().expect("limiter memory lock")
    }

    fn tenant_key(&self, tenant: TenantId) -> String {
        format!("{}:{{{tenant}}}", self.settings.prefix)
    }

    fn counter_field(k: &UsageKey) -> String {
        format!(
            "q:{}:{}:{}",
            to_micros(k.period.start),
            to_micros(k.period.end),
            k.resource.as_str()
        )
    }

    /// The tenant a hash belongs to; `None` for foreign keys.
    fn parse_tenant_key(&self, key: &str) -> Option<TenantId> {
        let tenant = key
            .strip_prefix(self.settings.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')?;
        TenantId::parse("", tenant).ok()
    }

    /// The usage key a counter field names; `None` for other fields.
    fn parse_counter_field(tenant_id: TenantId, field: &str) -> Option<UsageKey> {
        let mut parts = field.strip_prefix("q:")?.splitn(3, ':');
        let start = from_micros(parts.next()?.parse().ok()?)?;
        let end = from_micros(parts.next()?.parse().ok()?)?;
        Some(UsageKey {
            tenant_id,
            resource: Resource::parse("", parts.next()?).ok()?,
            period: Period { start, end },
        })
    }

    fn went_down(&self, error: &str) {
        let mut memory = self.memory();
        if !std::mem::replace(&mut memory.down, true) {
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
            if memory.down {
                memory.failing_open_since = Some(now);
            }
        }
    }

    /// The flusher probes Redis on the Verify path's own connection (which
    /// reconnects on use) at every tick: an outage is noticed without a user
    /// call, and calls return to Redis only once it answers again.
    async fn probe(&self) -> bool {
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
        let back = up && std::mem::replace(&mut memory.down, false);
        self.count_fail_open(&mut memory);
        drop(memory);
        if back {
            tracing::info!("Redis available again");
        }
        up
    }

    /// One run of the admit script within the budget.
    async fn run(
        &self,
        a: &Admission,
        counter: Option<&str>,
        seed: i64,
        at: i64,
    ) -> Result<Reply, Trouble> {
        let mut call = self.admit.key(self.tenant_key(a.tenant_id));
        call.arg(at)
            .arg(a.rate.requests_per_minute)
            .arg(a.rate.burst)
            .arg(a.units)
            .arg(a.quota.as_ref().and_then(|q| q.hard_cap).unwrap_or(-1))
            .arg(seed)
            .arg(&a.bucket)
            .arg(counter.unwrap_or(""));
        let mut conn = self.hot.clone();
        let started = Instant::now();
        let answer = tokio::time::timeout(self.settings.budget, call.invoke_async(&mut conn)).await;
        self.metrics
            .call_seconds
            .observe(started.elapsed().as_secs_f64());
        let reply: (i64, String, i64) = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) if !e.is_timeout() => {
                return Err(Trouble {
                    message: format!("Redis: {e}"),
                    not_run: e.is_connection_refusal(),
                    slow: false,
                });
            }
            // Our budget, or the connection's own response timeout (the
            // same budget): a slow answer, not a lost connection.
            _ => {
                self.metrics.over_budget.inc();
                return Err(Trouble {
                    message: "Redis: over the time budget".into(),
                    not_run: false,
                    slow: true,
                });
            }
        };
        Ok(Reply {
            outcome: reply.0,
            tokens: reply.1.parse().unwrap_or(0.0),
            used: reply.2,
        })
    }

    async fn admit_remote(&self, a: &Admission, at: i64) -> Result<Reply, Trouble> {
        let counter = a.quota.as_ref().map(|q| Self::counter_field(&q.key));
        let reply = self.run(a, counter.as_deref(), -1, at).await?;
        if reply.outcome != 3 {
            return Ok(reply);
        }
        // Redis has no counter for this period (first use, or Redis lost its
        // data): restore it from the durable total before charging it.
        let q = a.quota.as_ref().expect("only a counter can be missing");
        let stored = q
            .key
            .durable_total(&*self.usage)
            .await
            .map_err(|e| Trouble {
                message: format!("restoring a counter: {e}"),
                not_run: true,
                slow: false,
            })?;
        self.run(a, counter.as_deref(), stored, at).await
    }

    /// Admits on the in-process bucket while Redis is away (failing open).
    /// The units are kept to add to Redis later, unless `count` is false: a
    /// call that timed out may have been counted by Redis already, and
    /// counting it twice would bill it twice.
    fn admit_fallback(&self, a: &Admission, at: i64, count: bool) -> Admitted {
        self.metrics.fail_open_calls.inc();
        let mut memory = self.memory();
        let (taken, bucket) =
            take_tokens(memory.fallback.get(&a.bucket).copied(), a.rate, a.units, at);
        // Only what this replica counted meanwhile: the shared total is in
        // the Redis it cannot reach.
        let known = a
            .quota
            .as_ref()
            .map(|q| memory.pending.get(&q.key).copied().unwrap_or(0));
        let decision = if bucket.allowed {
            Decision::Admitted
        } else {
            Decision::RateLimited
        };
        if decision == Decision::Admitted {
            memory.fallback.insert(a.bucket.clone(), taken);
            if let Some(q) = &a.quota
                && a.units > 0
                && count
            {
                *memory.pending.entry(q.key.clone()).or_default() += a.units;
                self.usage_metrics.unflushed_units.inc_by(a.units);
            }
        }
        Admitted {
            decision,
            bucket: if decision == Decision::Admitted {
                bucket
            } else {
                take_tokens(memory.fallback.get(&a.bucket).copied(), a.rate, 0, at).1
            },
            used: known.map(|k| {
                k + if decision == Decision::Admitted {
                    a.units
                } else {
                    0
                }
            }),
        }
    }

    /// A call decided while Redis cannot be reached: failing closed, or
    /// charging a hard-capped quota (whose shared count is in Redis, so no
    /// replica alone can keep the cap), it is refused as unavailable;
    /// otherwise it fails open on the in-process bucket.
    fn without_redis(&self, a: &Admission, at: i64, count: bool) -> Result<Admitted> {
        let hard_capped = a.quota.as_ref().is_some_and(|q| q.hard_cap.is_some());
        match self.settings.failure {
            RedisFailure::Open if !hard_capped => Ok(self.admit_fallback(a, at, count)),
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

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("Redis: {e}"))
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(&self, a: &Admission, at: Timestamp) -> Result<Admitted> {
        let at = to_micros(at);
        let down = {
            let memory = self.memory();
            // A spent quota stays spent for its period: answer from memory.
            if let Some(q) = &a.quota
                && let Some((used, bucket)) = memory.spent.get(&q.key)
                && !fits(q.hard_cap, *used, a.units)
            {
                return Ok(Admitted {
                    decision: Decision::QuotaExceeded,
                    bucket: take_tokens(Some(*bucket), a.rate, 0, at).1,
                    used: Some(*used),
                });
            }
            memory.down
        };
        if down {
            return self.without_redis(a, at, true);
        }
        let reply = match self.admit_remote(a, at).await {
            Ok(reply) => {
                if self.slow_streak.load(Ordering::Relaxed) != 0 {
                    self.slow_streak.store(0, Ordering::Relaxed);
                }
                reply
            }
            Err(trouble) => {
                // A lost connection takes Verify off Redis at once; a slow
                // answer only when several in a row are, so one busy moment
                // does not trade exactness for the fallback.
                let slow_streak = if trouble.slow {
                    self.slow_streak.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    0
                };
                if !trouble.slow || slow_streak >= SLOW_STREAK_DOWN {
                    self.went_down(&trouble.message);
                }
                if !trouble.not_run {
                    // Logged as a count by the flusher, not once per call.
                    self.memory().uncertain += 1;
                }
                return self.without_redis(a, at, trouble.not_run);
            }
        };
        let decision = match reply.outcome {
            0 => Decision::Admitted,
            1 => Decision::RateLimited,
            2 => Decision::QuotaExceeded,
            other => {
                return Err(Error::Internal(anyhow::anyhow!(
                    "admit script answered {other}"
                )));
            }
        };
        let used = (reply.used >= 0).then_some(reply.used);
        if let Some(q) = &a.quota {
            let mut memory = self.memory();
            if decision == Decision::Admitted && a.units > 0 {
                self.usage_metrics.unflushed_units.inc_by(a.units);
            }
            match decision {
                // Cloned only the first time this flush interval.
                Decision::Admitted if a.units > 0 && !memory.touched.contains(&q.key) => {
                    memory.touched.insert(q.key.clone());
                }
                Decision::QuotaExceeded => {
                    if memory.spent.len() >= MAX_MEMO {
                        memory.spent.clear();
                    }
                    memory.spent.insert(
                        q.key.clone(),
                        (
                            reply.used,
                            Bucket {
                                tokens: reply.tokens,
                                at_micros: at,
                            },
                        ),
                    );
                }
                _ => {}
            }
        }
        Ok(Admitted {
            decision,
            bucket: bucket_outcome(
                a.rate,
                a.units,
                reply.tokens,
                decision != Decision::RateLimited,
            ),
            used,
        })
    }

    async fn live_usage(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut live = self.read(keys).await?;
        // Usage admitted while Redis was away is not in it yet.
        let memory = self.memory();
        for (k, v) in keys.iter().zip(live.iter_mut()) {
            if let Some(p) = memory.pending.get(k) {
                *v = Some(v.unwrap_or(0) + p);
            }
        }
        Ok(live)
    }

    async fn flush(&self) -> Result<usize> {
        let uncertain = std::mem::take(&mut self.memory().uncertain);
        if uncertain > 0 {
            tracing::warn!(
                calls = uncertain,
                "calls failed after reaching Redis; Redis may have counted them, so they were not counted again"
            );
        }
        if !self.probe().await {
            return Err(Error::Unavailable("Redis: unavailable".into()));
        }
        // Units admitted from here on may miss this flush's reads; they
        // stay counted as unwritten until the next one.
        let unflushed = self.usage_metrics.unflushed_units.get();
        if !self.memory().pending.is_empty() {
            self.replay_pending().await?;
        }
        let touched: Vec<UsageKey> = self.memory().touched.drain().collect();
        let written = match self.persist(&touched).await {
            Ok(n) => n,
            Err(e) => {
                // Try again at the next flush.
                let mut memory = self.memory();
                for k in touched {
                    memory.touched.insert(k);
                }
                return Err(e);
            }
        };
        self.usage_metrics.unflushed_units.dec_by(unflushed);
        let sweep_due = {
            let mut memory = self.memory();
            let due = memory
                .last_sweep
                .is_none_or(|t| t.elapsed() >= self.settings.sweep_every);
            if due {
                memory.last_sweep = Some(Instant::now());
            }
            // Spent quotas of ended periods are no longer asked about.
            let at = now();
            memory.spent.retain(|k, _| k.period.end > at);
            due
        };
        if sweep_due {
            return Ok(written + self.sweep().await?);
        }
        Ok(written)
    }
}
