//! The shared limiter's usage on its way to the database, and leases on
//! their way back to Redis. Each replica writes the units it served as
//! numbered batches of increments (a batch retried after an unknown outcome
//! adds nothing twice), settles a lease only once its units are written,
//! and sweeps the records of leases whose replica died: their granted units
//! count as used, less those the replica wrote.
use std::{sync::Arc, time::Instant};

use futures_util::{StreamExt, stream};
use redis::AsyncCommands;

use super::{Cell, Shared, lease::Record, renew::Ask, unavailable};
use crate::{
    domain::{Error, Result, ids::TenantId, now},
    limiter::UsageKey,
    store::Increment,
};

/// How long after a record's expiry it may be claimed: its replica, if
/// alive, has stopped using it and written its units long before.
const CLAIM_GRACE_MICROS: i64 = 5_000_000;
/// The most a sweep may take before another replica may start one.
const SWEEP_LOCK_MILLIS: u64 = 30_000;
/// Leases settled at once at a flush, their calls pipelined.
const SETTLING_AT_ONCE: usize = 64;
/// How often a replica prunes the usage ledger (from an hour after start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// The ledger (batches and leases) is kept this long for retries and claims.
const KEEP_LEDGER: time::Duration = time::Duration::days(2);

/// A batch of increments and the leases whose units it carries.
pub(super) struct Batch {
    seq: i64,
    increments: Vec<Increment>,
    from: Vec<(Arc<Cell>, i64)>,
    /// Units served failing open.
    open: Vec<(UsageKey, i64)>,
    units: i64,
}

fn increment(key: &UsageKey, lease: i64, units: i64) -> Increment {
    Increment {
        tenant_id: key.tenant_id,
        resource: key.resource.clone(),
        period_start: key.period.start,
        period_end: key.period.end,
        lease,
        units,
    }
}

impl Shared {
    /// Writes served units, settles idle leases (every lease when
    /// `closing`), and sweeps dead replicas' leases when due.
    pub(super) async fn flush(&self, closing: bool) -> Result<usize> {
        let uncertain = std::mem::take(&mut self.memory().uncertain);
        if uncertain > 0 {
            tracing::warn!(
                calls = uncertain,
                "calls failed after reaching Redis; what they asked for is settled at the lease's next call"
            );
        }
        self.retire_idle(closing);
        // The database first, whatever Redis does: it is the record. Redis
        // is probed meanwhile, so an outage of either is noticed on time.
        let (written, up) = tokio::join!(self.write(), self.probe());
        let written = written?;
        if !up {
            return Err(Error::Unavailable("Redis: unavailable".into()));
        }
        self.settle_retired().await?;
        let sweep_due = {
            let mut memory = self.memory();
            let due = memory
                .last_sweep
                .is_none_or(|t| t.elapsed() >= self.settings.sweep_every);
            if due {
                memory.last_sweep = Some(Instant::now());
            }
            due
        };
        if sweep_due && !closing {
            self.sweep().await?;
        }
        Ok(written)
    }

    /// Takes idle leases (every lease when `all`) out of use: closed and
    /// out of the map together, so no call finds one closed and retries.
    fn retire_idle(&self, all: bool) {
        let now = Instant::now();
        let mut idle = Vec::new();
        self.leases().retain(|_, cell| {
            let mut l = cell.lease();
            if all || l.idle(now) {
                l.closed = true;
                idle.push(cell.clone());
                return false;
            }
            true
        });
        self.memory().retired.extend(idle);
    }

    /// Writes the batch in progress, or a new one of every unit served since.
    async fn write(&self) -> Result<usize> {
        let retried = self.memory().batch.take();
        let batch = match retried {
            Some(batch) => batch,
            None => self.collect(),
        };
        if batch.increments.is_empty() {
            return Ok(0);
        }
        // Bounded, so a database that stopped answering does not hold the
        // flusher: the batch is kept and sent again (its number makes a
        // write that did land add nothing twice).
        let written = tokio::time::timeout(
            self.settings.database_timeout,
            self.usage
                .add_usage(&self.replica, batch.seq, &batch.increments),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "the database did not answer the usage write in time".into(),
            ))
        });
        if let Err(e) = written {
            self.memory().batch = Some(batch);
            return Err(e);
        }
        for (cell, units) in &batch.from {
            cell.lease().durable += units;
        }
        let mut memory = self.memory();
        for (key, units) in &batch.open {
            if let Some(r) = memory.readd.get_mut(key) {
                let written = r.open.min(*units);
                r.open -= written;
                r.open_written += written;
            }
        }
        drop(memory);
        self.usage_metrics.unflushed_units.dec_by(batch.units);
        Ok(batch.increments.len())
    }

    fn collect(&self) -> Batch {
        let cells: Vec<Arc<Cell>> = {
            let leases = self.leases();
            let memory = self.memory();
            leases
                .values()
                .chain(memory.retired.iter())
                .cloned()
                .collect()
        };
        let mut batch = Batch {
            seq: 0,
            increments: Vec::new(),
            from: Vec::new(),
            open: Vec::new(),
            units: 0,
        };
        for cell in cells {
            let Some((key, _)) = &cell.key.quota else {
                continue;
            };
            let (no, units) = {
                let mut l = cell.lease();
                let units = l.served - l.collected;
                l.collected = l.served;
                (l.no, units)
            };
            if units > 0 {
                batch.increments.push(increment(key, no, units));
                batch.from.push((cell.clone(), units));
                batch.units += units;
            }
        }
        let mut memory = self.memory();
        let open: Vec<(UsageKey, i64)> = memory.open_served.drain().collect();
        for (key, units) in open {
            batch.increments.push(increment(&key, 0, units));
            batch.open.push((key, units));
            batch.units += units;
        }
        memory.next_seq += 1;
        batch.seq = memory.next_seq;
        batch
    }

    /// Hands back what retired leases hold and removes their records, once
    /// the units they served are written. A lease holding nothing, whose
    /// every answer arrived, only needs its record removed (one HDEL in a
    /// pipeline); the others run the script to hand back what Redis counts
    /// as theirs, concurrently.
    async fn settle_retired(&self) -> Result<()> {
        let retired = std::mem::take(&mut self.memory().retired);
        let (mut keep, mut plain, mut scripted) = (Vec::new(), Vec::new(), Vec::new());
        for cell in retired {
            let l = cell.lease();
            if l.durable < l.served || l.renewing {
                drop(l);
                keep.push(cell);
                continue;
            }
            let give_back = l.give_back + l.held;
            let recorded = cell.key.quota.is_some() && (l.record == Record::Known || l.doubt);
            if give_back == 0 && !l.doubt {
                if recorded {
                    let field = self.record_field(l.no);
                    drop(l);
                    plain.push((cell, field));
                }
                // Else nothing held and no record: nothing to settle.
                continue;
            }
            let ask = Ask {
                need: 0,
                want: 0,
                // Closing: what it used, so Redis hands back the rest.
                holding: l.served,
                give_back,
                close: true,
                record: l.record,
                push_expiry: false,
            };
            drop(l);
            scripted.push((cell, ask));
        }
        let mut closed = Vec::new();
        let mut failed = None;
        // One command each, sent together on the multiplexed connection
        // (a pipeline would have to stay within one hash slot).
        let deleted: Vec<(Arc<Cell>, redis::RedisResult<()>)> = stream::iter(plain)
            .map(|(cell, field)| async move {
                let mut conn = self.bulk.clone();
                let hash = self.tenant_key(cell.key.tenant_id);
                let done = conn.hdel(hash, field).await;
                (cell, done)
            })
            .buffer_unordered(SETTLING_AT_ONCE)
            .collect()
            .await;
        for (cell, done) in deleted {
            match done {
                Ok(()) => closed.push(cell),
                Err(e) => {
                    failed = Some(format!("Redis: {e}"));
                    keep.push(cell);
                }
            }
        }
        let settled: Vec<(Arc<Cell>, Option<String>)> = stream::iter(scripted)
            .map(|(cell, ask)| async move {
                // Settled, or Redis no longer has it (nothing to settle).
                let failed = self.run(&cell, &ask, -1, 0).await.err();
                (cell, failed.map(|t| t.message))
            })
            .buffer_unordered(SETTLING_AT_ONCE)
            .collect()
            .await;
        for (cell, trouble) in settled {
            match trouble {
                None => closed.push(cell),
                Some(message) => {
                    failed = Some(message);
                    keep.push(cell);
                }
            }
        }
        self.memory().retired.extend(keep);
        // A closed lease can no longer be claimed: its increments are done.
        let leases: Vec<i64> = closed
            .iter()
            .filter(|c| c.key.quota.is_some())
            .map(|c| c.lease().no)
            .collect();
        self.usage.forget_leases(&self.replica, &leases).await?;
        match failed {
            Some(message) => Err(Error::Unavailable(message)),
            None => Ok(()),
        }
    }

    /// Counters' current totals (`None`: not in Redis), less what this
    /// replica holds in leases, plus what it has yet to add.
    pub(super) async fn live_usage(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut live = self.read(keys).await?;
        let held: Vec<(UsageKey, i64)> = self
            .leases()
            .iter()
            .filter_map(|(k, cell)| Some((k.quota.as_ref()?.0.clone(), cell.lease().held)))
            .collect();
        let memory = self.memory();
        for (k, v) in keys.iter().zip(live.iter_mut()) {
            let mine: i64 = held.iter().filter(|(h, _)| h == k).map(|(_, n)| n).sum();
            let unadded = memory.readd.get(k).map_or(0, |r| r.all());
            if v.is_some() || unadded > 0 {
                *v = Some(v.unwrap_or(0) - mine + unadded);
            }
        }
        Ok(live)
    }

    /// Reads the counters' current totals from Redis (`None`: not there),
    /// once more if the first attempt finds the connection broken (it
    /// reconnects on its next use, as after a Redis restart).
    async fn read(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        match self.read_once(keys).await {
            Err(Error::Unavailable(_)) => self.read_once(keys).await,
            read => read,
        }
    }

    async fn read_once(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
        let fields: Vec<(String, String)> = keys
            .iter()
            .map(|k| (self.tenant_key(k.tenant_id), Self::counter_field(k)))
            .collect();
        stream::iter(fields)
            .map(|(hash, field)| {
                let mut conn = self.bulk.clone();
                async move { conn.hget(hash, field).await.map_err(unavailable) }
            })
            .buffered(SETTLING_AT_ONCE)
            .collect::<Vec<Result<Option<i64>>>>()
            .await
            .into_iter()
            .collect()
    }

    /// Claims the expired records of other replicas' leases, one replica
    /// at a time (a lock in Redis).
    async fn sweep(&self) -> Result<usize> {
        let mut conn = self.bulk.clone();
        let lock = format!("{}:sweep", self.settings.prefix);
        let locked: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.replica)
            .arg("NX")
            .arg("PX")
            .arg(SWEEP_LOCK_MILLIS)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if locked.is_none() {
            return Ok(0);
        }
        let swept = self.sweep_locked().await;
        let _: redis::RedisResult<()> = conn.del(&lock).await;
        swept
    }

    /// Every tenant's hash, on every master.
    async fn tenant_hashes(&self) -> Result<Vec<(String, TenantId)>> {
        let pattern = format!("{}:{{*}}", self.settings.prefix);
        let mut hashes = Vec::new();
        for mut master in self.redis.masters().await.map_err(unavailable)? {
            // A thousand keys a step: the default ten makes a round trip
            // per ten tenants.
            let options = redis::ScanOptions::default()
                .with_pattern(&pattern)
                .with_count(1000);
            let mut iter: redis::AsyncIter<String> =
                master.scan_options(options).await.map_err(unavailable)?;
            while let Some(key) = iter.next().await {
                let key = key.map_err(unavailable)?;
                if let Some(tenant) = self.parse_tenant_key(&key) {
                    hashes.push((key, tenant));
                }
            }
        }
        Ok(hashes)
    }

    async fn sweep_locked(&self) -> Result<usize> {
        let hashes = self.tenant_hashes().await?;
        let at = crate::domain::to_micros(now());
        let all: Vec<Result<Found>> = stream::iter(hashes)
            .map(|(hash, tenant)| async move {
                let mut conn = self.bulk.clone();
                let fields = conn.hgetall(&hash).await.map_err(unavailable)?;
                Ok(((hash, tenant), fields))
            })
            .buffered(SETTLING_AT_ONCE)
            .collect()
            .await;
        let mut conn = self.bulk.clone();
        let mut claimed = 0;
        for found in all {
            let ((hash, tenant), fields) = found?;
            for (field, value) in fields {
                let Some(record) = Claimable::parse(&field, &value, tenant) else {
                    continue;
                };
                if record.source == self.replica {
                    continue;
                }
                let marked = if record.marked {
                    true
                } else if record.expires + CLAIM_GRACE_MICROS < at {
                    let n: i64 = self
                        .claim
                        .key(&hash)
                        .arg(&field)
                        .arg(&value)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    n == 1
                } else {
                    false
                };
                if !marked {
                    continue;
                }
                let units = self
                    .usage
                    .claim_lease(
                        &record.source,
                        record.lease,
                        &increment(&record.counter, record.lease, record.granted),
                    )
                    .await?;
                tracing::info!(
                    replica = record.source,
                    lease = record.lease,
                    tenant_id = %record.counter.tenant_id,
                    units,
                    unused_at_most = record.held_after_grant,
                    "a dead replica's lease claimed: its units not yet written count as used"
                );
                let done = format!("c{}", &field[1..]);
                let _: () = conn.hdel(&hash, done).await.map_err(unavailable)?;
                claimed += 1;
            }
        }
        let prune_due = {
            let mut memory = self.memory();
            let due = memory.last_prune.elapsed() >= PRUNE_EVERY;
            if due {
                memory.last_prune = Instant::now();
            }
            due
        };
        if prune_due {
            self.usage.prune_ledger(now() - KEEP_LEDGER).await?;
        }
        Ok(claimed)
    }
}

/// A tenant's hash and its fields, as the sweep read them.
type Found = ((String, TenantId), Vec<(String, String)>);

/// A lease record found by the sweep (`l:` live, `c:` marked claimed).
struct Claimable {
    source: String,
    lease: i64,
    marked: bool,
    granted: i64,
    expires: i64,
    /// What the lease held after its last grant: the most its replica can
    /// have held unused when it died.
    held_after_grant: i64,
    counter: UsageKey,
}

impl Claimable {
    fn parse(field: &str, value: &str, tenant: TenantId) -> Option<Self> {
        let (marked, rest) = match field.split_at_checked(2)? {
            ("l:", rest) => (false, rest),
            ("c:", rest) => (true, rest),
            _ => return None,
        };
        let (source, lease) = rest.rsplit_once(':')?;
        let mut parts = value.splitn(4, '|');
        let granted = parts.next()?.parse().ok()?;
        let expires = parts.next()?.parse().ok()?;
        let held_after_grant = parts.next()?.parse().ok()?;
        let counter = Shared::parse_counter_field(tenant, parts.next()?)?;
        Some(Self {
            source: source.to_owned(),
            lease: lease.parse().ok()?,
            marked,
            granted,
            expires,
            held_after_grant,
            counter,
        })
    }
}
