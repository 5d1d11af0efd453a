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
use redis::{AsyncCommands, Script, aio::ConnectionManager};

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
    store::{UsageStore, UsageTotal},
    telemetry::metrics::{RedisMetrics, UsageMetrics},
};

/// Every tenant has one hash (`<prefix>:{<tenant>}`): its buckets as
/// `<bucket>:t` (tokens) and `<bucket>:a` (as of, µs), its quota counters
/// as `q:<start µs>:<end µs>:<resource>`, and `e`, when its expiry is next
/// pushed back. One hash makes a call two commands inside the script (read
/// everything, write everything) instead of one per field.
///
/// ARGV: now µs, requests per minute, burst, units, hard cap (-1: none), the
/// durable total to restore a missing counter from (-1: not known yet), the
/// bucket, the counter field ('' when no quota is charged). Returns
/// {outcome, tokens, used}: outcome 0 admitted, 1 rate limited, 2 over the
/// cap, 3 counter missing (call again with the durable total).
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local burst = tonumber(ARGV[3])
local units = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local bt = ARGV[7] .. ':t'
local ba = ARGV[7] .. ':a'
local qf = ARGV[8]
local v
if qf == '' then
  v = redis.call('HMGET', KEYS[1], bt, ba, 'e')
else
  v = redis.call('HMGET', KEYS[1], bt, ba, 'e', qf)
end
local used = -1
local seeded = false
if qf ~= '' then
  if v[4] then
    used = tonumber(v[4])
  else
    used = tonumber(ARGV[6])
    if used < 0 then
      return {3, '0', -1}
    end
    seeded = true
  end
end
local per_micro = tonumber(ARGV[2]) / 60000000
local tokens = burst
if v[1] then
  tokens = math.min(burst, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * per_micro)
end
local need = math.max(units, 1)
local outcome = 0
if tokens < need then
  outcome = 1
elseif used >= 0 and cap >= 0 and used + need > cap then
  outcome = 2
end
local set = {}
if outcome == 0 and units > 0 then
  tokens = tokens - units
  set = {bt, tostring(tokens), ba, ARGV[1]}
  if used >= 0 then
    used = used + units
    table.insert(set, qf)
    table.insert(set, used)
  end
elseif seeded then
  set = {qf, used}
end
if #set > 0 then
  -- A hash in use lives on; an idle one goes after a day (its counters
  -- were written to the database long before).
  if not v[3] or now > tonumber(v[3]) then
    table.insert(set, 'e')
    table.insert(set, now + 3600000000)
    redis.call('PEXPIRE', KEYS[1], 86400000)
  end
  redis.call('HSET', KEYS[1], unpack(set))
end
return {outcome, tostring(tokens), used}
";

/// Adds usage admitted while Redis was away. KEYS[1]: the tenant's hash;
/// ARGV: counter field, units, durable total (-1: not known yet). Returns
/// the new total, or -1 when the counter is missing and the durable total
/// is needed.
const ADD: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
end
local seed = tonumber(ARGV[3])
if seed < 0 then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], seed + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 86400000)
return seed + tonumber(ARGV[2])
";

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
        let known = a.quota.as_ref().map(|q| {
            memory.spent.get(&q.key).map_or(0, |(used, _)| *used)
                + memory.pending.get(&q.key).copied().unwrap_or(0)
        });
        let decision = if !bucket.allowed {
            Decision::RateLimited
        } else if let (Some(q), Some(used)) = (&a.quota, known)
            && !fits(q.hard_cap, used, a.units)
        {
            Decision::QuotaExceeded
        } else {
            Decision::Admitted
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

    /// Usage admitted while Redis was away, added to its counters.
    async fn replay_pending(&self) -> Result<()> {
        // The connection first: taking the pending units and then failing to
        // reach Redis would drop them.
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let pending: Vec<(UsageKey, i64)> = self.memory().pending.drain().collect();
        let mut failed = Vec::new();
        for (key, units) in pending {
            match self.add_units(&mut conn, &key, units).await {
                Ok(()) => {
                    self.memory().touched.insert(key);
                }
                Err(_) => failed.push((key, units)),
            }
        }
        if !failed.is_empty() {
            let mut memory = self.memory();
            for (key, units) in failed {
                *memory.pending.entry(key).or_default() += units;
            }
            return Err(Error::Unavailable(
                "Redis: usage admitted while it was away not yet added".into(),
            ));
        }
        Ok(())
    }

    /// Adds `units` to a counter, restoring it from its durable total first
    /// when Redis does not have it.
    async fn add_units(
        &self,
        conn: &mut deadpool_redis::Connection,
        key: &UsageKey,
        units: i64,
    ) -> Result<()> {
        let (hash, field) = (self.tenant_key(key.tenant_id), Self::counter_field(key));
        let mut seed = -1;
        loop {
            let total: i64 = self
                .add
                .key(&hash)
                .arg(&field)
                .arg(units)
                .arg(seed)
                .invoke_async(&mut **conn)
                .await
                .map_err(unavailable)?;
            if total >= 0 {
                return Ok(());
            }
            if seed >= 0 {
                return Err(Error::Internal(anyhow::anyhow!(
                    "add script refused the durable total {seed}"
                )));
            }
            seed = key.durable_total(&*self.usage).await?;
        }
    }

    /// Reads the counters' current totals from Redis (`None`: not there).
    async fn read(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.hget(self.tenant_key(k.tenant_id), Self::counter_field(k));
            }
            let got: Vec<Option<i64>> = pipe.query_async(&mut *conn).await.map_err(unavailable)?;
            values.extend(got);
        }
        Ok(values)
    }

    /// Reads the counters and writes their totals durably.
    async fn persist(&self, keys: &[UsageKey]) -> Result<usize> {
        let totals: Vec<UsageTotal> = keys
            .iter()
            .zip(self.read(keys).await?)
            .filter_map(|(k, used)| {
                Some(UsageTotal {
                    tenant_id: k.tenant_id,
                    resource: k.resource.clone(),
                    period_start: k.period.start,
                    period_end: k.period.end,
                    used: used?,
                })
            })
            .collect();
        for chunk in totals.chunks(5000) {
            self.usage.upsert_usage(chunk).await?;
        }
        Ok(totals.len())
    }

    /// Every counter under our prefix, whoever charged it: a replica that
    /// died before flushing leaves its counts in Redis, and this writes them.
    async fn sweep(&self) -> Result<usize> {
        let pattern = format!("{}:{{*}}", self.settings.prefix);
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let mut tenants = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> =
                conn.scan_match(&pattern).await.map_err(unavailable)?;
            use futures_util::StreamExt;
            while let Some(key) = iter.next().await {
                let key = key.map_err(unavailable)?;
                if let Some(tenant) = self.parse_tenant_key(&key) {
                    tenants.push((key, tenant));
                }
            }
        }
        let mut found = Vec::new();
        for chunk in tenants.chunks(100) {
            let mut pipe = redis::pipe();
            for (key, _) in chunk {
                pipe.hkeys(key);
            }
            let fields: Vec<Vec<String>> =
                pipe.query_async(&mut *conn).await.map_err(unavailable)?;
            for ((_, tenant), fields) in chunk.iter().zip(fields) {
                found.extend(
                    fields
                        .iter()
                        .filter_map(|f| Self::parse_counter_field(*tenant, f)),
                );
            }
        }
        drop(conn);
        self.persist(&found).await
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
        let unavailable =
            || Error::Unavailable("the rate limiter's Redis is unavailable; retry shortly".into());
        if down {
            return match self.settings.failure {
                RedisFailure::Open => Ok(self.admit_fallback(a, at, true)),
                RedisFailure::Closed => Err(unavailable()),
            };
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
                return match self.settings.failure {
                    RedisFailure::Open => Ok(self.admit_fallback(a, at, trouble.not_run)),
                    RedisFailure::Closed => Err(unavailable()),
                };
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
