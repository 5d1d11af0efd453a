//! The production limiter: buckets and quota counters live in Redis, shared
//! by every replica, and each replica admits calls from leases on them (see
//! `lease`), so most calls never wait on Redis. One script settles a lease
//! and grants it more in one round trip; every key of a tenant carries the
//! tenant as hash tag, so a call touches one hash slot.
//!
//! Redis is the shared budget, not the record of usage: each replica writes
//! the units it served to the database itself, as increments a retry cannot
//! count twice (`durable`).
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::Script;
use tokio::sync::Notify;

use super::{Admission, Admitted, Decision, Limiter, UsageKey};
use crate::{
    config::RedisFailure,
    domain::{
        Error, Result, Timestamp, from_micros,
        ids::TenantId,
        plan::Resource,
        to_micros,
        verify::{Bucket, BucketId, Period},
    },
    shared_redis::{RedisConn, SharedRedis},
    store::UsageStore,
    telemetry::metrics::{RedisMetrics, UsageMetrics},
};

mod batch;
mod durable;
mod lease;
mod outage;
mod renew;
mod scripts;

use lease::{Lease, LeaseKey, LeaseKeyRef, Take};
use renew::{Readd, Renewed};
use scripts::CLAIM;

/// Calls in a row over the budget that count as Redis being down.
const SLOW_STREAK_DOWN: u32 = 8;

pub struct RedisSettings {
    pub prefix: String,
    pub budget: Duration,
    /// The most a flush's write to the database may take.
    pub database_timeout: Duration,
    pub failure: RedisFailure,
    pub sweep_every: Duration,
}

impl Memory {
    fn new() -> Self {
        Self {
            fallback: HashMap::new(),
            open_served: HashMap::new(),
            readd: HashMap::new(),
            retired: Vec::new(),
            batch: None,
            next_seq: 0,
            failing_open_since: None,
            uncertain: 0,
            last_sweep: None,
            last_prune: Instant::now(),
        }
    }
}

/// One lease and the calls waiting for its renewal.
struct Cell {
    key: LeaseKey,
    fields: Arc<batch::Fields>,
    lease: Mutex<Lease>,
    renewed: Notify,
}

impl Cell {
    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().expect("lease lock")
    }
}

struct Memory {
    /// Failing open: in-process buckets.
    fallback: HashMap<BucketId, Bucket>,
    /// Units served while failing open, not from a lease: for the database.
    open_served: HashMap<UsageKey, i64>,
    /// Units Redis does not count yet: added at the counter's next call.
    readd: HashMap<UsageKey, Readd>,
    /// Leases closed, kept until their units are written and they are
    /// settled with Redis.
    retired: Vec<Arc<Cell>>,
    /// The batch being written, retried as it is until it is.
    batch: Option<durable::Batch>,
    next_seq: i64,
    /// Failing open since then: the part not yet added to the metric.
    failing_open_since: Option<Instant>,
    /// Calls that failed after reaching Redis, which may have counted them.
    uncertain: u64,
    last_sweep: Option<Instant>,
    last_prune: Instant,
}

struct Shared {
    /// `hot` for the Verify path, `bulk` for the rest.
    hot: RedisConn,
    bulk: RedisConn,
    redis: Arc<SharedRedis>,
    usage: Arc<dyn UsageStore>,
    settings: RedisSettings,
    /// Shares lease calls' round trips.
    batcher: Arc<batch::Batcher>,
    claim: Script,
    /// This process, in lease records and as the source of its increments.
    replica: String,
    next_lease: AtomicI64,
    leases: Mutex<hashbrown::HashMap<LeaseKey, Arc<Cell>>>,
    memory: Mutex<Memory>,
    /// Calls in a row that were over the budget.
    slow_streak: AtomicU32,
    /// Redis failed a call; Verify stays off it until a probe succeeds.
    down: AtomicBool,
    metrics: RedisMetrics,
    usage_metrics: UsageMetrics,
}

pub struct RedisLimiter {
    shared: Arc<Shared>,
}

/// What a call does once it has let go of its lease.
enum Next<'a> {
    Wait(tokio::sync::futures::Notified<'a>),
    WithoutRedis,
    Renew,
}

impl RedisLimiter {
    pub fn new(
        redis: Arc<SharedRedis>,
        usage: Arc<dyn UsageStore>,
        settings: RedisSettings,
        (metrics, usage_metrics): (RedisMetrics, UsageMetrics),
    ) -> Self {
        let batcher = Arc::new(batch::Batcher::new(redis.hot.clone()));
        Self {
            shared: Arc::new(Shared {
                hot: redis.hot.clone(),
                bulk: redis.bulk.clone(),
                redis,
                usage,
                settings,
                batcher,
                claim: Script::new(CLAIM),
                replica: uuid::Uuid::now_v7().simple().to_string(),
                next_lease: AtomicI64::new(1),
                leases: Mutex::default(),
                memory: Mutex::new(Memory::new()),
                slow_streak: AtomicU32::new(0),
                down: AtomicBool::new(false),
                metrics,
                usage_metrics,
            }),
        }
    }
}

impl Shared {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().expect("limiter memory lock")
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, hashbrown::HashMap<LeaseKey, Arc<Cell>>> {
        self.leases.lock().expect("leases lock")
    }

    fn tenant_key(&self, tenant: TenantId) -> String {
        format!("{}:{{{tenant}}}", self.settings.prefix)
    }

    fn record_field(&self, no: i64) -> String {
        format!("l:{}:{no}", self.replica)
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

    /// The lease for `key`, made on first use.
    fn cell(&self, key: &LeaseKeyRef) -> Arc<Cell> {
        let mut leases = self.leases();
        if let Some(cell) = leases.get(key) {
            return cell.clone();
        }
        let key = key.to_owned();
        let no = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let fields = batch::Fields {
            hash: self.tenant_key(key.tenant_id),
            bucket: format!("g:{}", key.bucket),
            counter: key
                .quota
                .as_ref()
                .map(|(k, _)| Self::counter_field(k))
                .unwrap_or_default(),
            record: self.record_field(no),
        };
        let cell = Arc::new(Cell {
            key: key.clone(),
            fields: Arc::new(fields),
            lease: Mutex::new(Lease::new(no, Instant::now())),
            renewed: Notify::new(),
        });
        leases.insert(key, cell.clone());
        cell
    }

    /// Takes a closed lease out of use, to be written and settled.
    fn retire(&self, cell: &Arc<Cell>) {
        let mut leases = self.leases();
        if leases.get(&cell.key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            leases.remove(&cell.key);
        }
        drop(leases);
        self.memory().retired.push(cell.clone());
    }

    async fn admit(self: &Arc<Self>, a: &Admission, at: Timestamp) -> Result<Admitted> {
        let key = LeaseKeyRef {
            tenant_id: a.tenant_id,
            bucket: a.bucket,
            rate: a.rate,
            quota: a.quota.as_ref().map(|q| (&q.key, q.hard_cap)),
        };
        let counted = a.quota.is_some();
        if self.settings.failure == RedisFailure::Closed && self.down.load(Ordering::Relaxed) {
            // Failing closed admits nothing Redis cannot see, leases included.
            return self.without_redis(a, to_micros(at));
        }
        loop {
            let cell = self.cell(&key);
            let now = Instant::now();
            // What to do once the lease's lock is let go: nothing is awaited
            // while it is held.
            let wait = {
                let mut l = cell.lease();
                match l.take(a.units, counted, now) {
                    Take::Admitted { renew } => {
                        let admitted = Admitted {
                            decision: Decision::Admitted,
                            bucket: l.bucket(a.rate, a.units, true, now),
                            used: counted.then(|| l.used()),
                        };
                        if counted && a.units > 0 {
                            self.usage_metrics.unflushed_units.inc_by(a.units);
                        }
                        if renew && !self.down.load(Ordering::Relaxed) {
                            l.renewing = true;
                            drop(l);
                            let (shared, cell) = (self.clone(), cell.clone());
                            tokio::spawn(async move {
                                let _ = shared.renew(&cell, None).await;
                            });
                        }
                        return Ok(admitted);
                    }
                    Take::Denied(decision) => {
                        return Ok(Admitted {
                            decision,
                            bucket: l.bucket(
                                a.rate,
                                a.units,
                                decision != Decision::RateLimited,
                                now,
                            ),
                            used: counted.then(|| l.used()),
                        });
                    }
                    Take::Closed => continue,
                    Take::Empty if self.down.load(Ordering::Relaxed) => Next::WithoutRedis,
                    // Shares the renewal in flight instead of sending another.
                    Take::Empty if l.renewing => Next::Wait(cell.renewed.notified()),
                    Take::Empty => {
                        l.renewing = true;
                        Next::Renew
                    }
                }
            };
            match wait {
                Next::Wait(renewed) => {
                    renewed.await;
                    continue;
                }
                Next::WithoutRedis => return self.without_redis(a, to_micros(at)),
                Next::Renew => {}
            }
            match self.renew(&cell, Some(a.units)).await {
                Ok(Renewed::Decided(admitted)) => {
                    if admitted.decision == Decision::Admitted && counted && a.units > 0 {
                        self.usage_metrics.unflushed_units.inc_by(a.units);
                    }
                    return Ok(admitted);
                }
                Ok(Renewed::Again) => continue,
                Err(_) => return self.without_redis(a, to_micros(at)),
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("Redis: {e}"))
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(&self, a: &Admission, at: Timestamp) -> Result<Admitted> {
        self.shared.admit(a, at).await
    }

    async fn live_usage(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        self.shared.live_usage(keys).await
    }

    async fn flush(&self) -> Result<usize> {
        self.shared.flush(false).await
    }

    async fn shutdown(&self) -> Result<()> {
        self.shared.flush(true).await.map(|_| ())
    }
}
