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
    domain::{Error, Result, now},
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
/// Increments are kept this long for retries and claims to find.
const KEEP_INCREMENTS: time::Duration = time::Duration::days(2);

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
        // The database first, whatever Redis does: it is the record.
        let written = self.write().await?;
        if !self.probe().await {
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

    fn retire_idle(&self, all: bool) {
        let now = Instant::now();
        let idle: Vec<Arc<Cell>> = self
            .leases()
            .values()
            .filter(|cell| {
                let mut l = cell.lease();
                let idle = all || l.idle(now);
                if idle {
                    l.closed = true;
                }
                idle
            })
            .cloned()
            .collect();
        for cell in idle {
            self.retire(&cell);
        }
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
        if let Err(e) = self
            .usage
            .add_usage(&self.replica, batch.seq, &batch.increments)
            .await
        {
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
            let mut l = cell.lease();
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
            l.request += 1;
            let ask = Ask {
                need: 0,
                want: 0,
                // Closing: what it used, so Redis hands back the rest.
                holding: l.served,
                give_back,
                close: true,
                record: l.record,
                request: l.request,
                no: l.no,
            };
            drop(l);
            scripted.push((cell, ask));
        }
        let mut closed = Vec::new();
        let mut failed = None;
        if !plain.is_empty() {
            let mut pipe = redis::pipe();
            for (cell, field) in &plain {
                pipe.hdel(self.tenant_key(cell.key.tenant_id), field)
                    .ignore();
            }
            let mut conn = self.hot.clone();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => closed.extend(plain.into_iter().map(|(cell, _)| cell)),
                Err(e) => {
                    failed = Some(format!("Redis: {e}"));
                    keep.extend(plain.into_iter().map(|(cell, _)| cell));
                }
            }
        }
        let settled: Vec<(Arc<Cell>, Option<String>)> = stream::iter(scripted)
            .map(|(cell, ask)| async move {
                // Settled, or Redis no longer has it (nothing to settle).
                let failed = self.run(&cell.key, &ask, -1, 0).await.err();
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

    /// Claims the expired records of other replicas' leases, one replica
    /// at a time (a lock in Redis).
    async fn sweep(&self) -> Result<usize> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let lock = format!("{}:sweep", self.settings.prefix);
        let locked: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.replica)
            .arg("NX")
            .arg("PX")
            .arg(SWEEP_LOCK_MILLIS)
            .query_async(&mut *conn)
            .await
            .map_err(unavailable)?;
        if locked.is_none() {
            return Ok(0);
        }
        let swept = self.sweep_locked(&mut conn).await;
        let _: redis::RedisResult<()> = conn.del(&lock).await;
        swept
    }

    async fn sweep_locked(&self, conn: &mut deadpool_redis::Connection) -> Result<usize> {
        let pattern = format!("{}:{{*}}", self.settings.prefix);
        let mut hashes = Vec::new();
        {
            // A thousand keys a step: the default ten makes a round trip
            // per ten tenants.
            let options = redis::ScanOptions::default()
                .with_pattern(&pattern)
                .with_count(1000);
            let mut iter: redis::AsyncIter<String> =
                conn.scan_options(options).await.map_err(unavailable)?;
            while let Some(key) = iter.next().await {
                let key = key.map_err(unavailable)?;
                if let Some(tenant) = self.parse_tenant_key(&key) {
                    hashes.push((key, tenant));
                }
            }
        }
        let at = crate::domain::to_micros(now());
        let mut claimed = 0;
        for chunk in hashes.chunks(100) {
            let mut pipe = redis::pipe();
            for (key, _) in chunk {
                pipe.hgetall(key);
            }
            let all: Vec<Vec<(String, String)>> =
                pipe.query_async(&mut **conn).await.map_err(unavailable)?;
            for ((hash, tenant), fields) in chunk.iter().zip(all) {
                for (field, value) in fields {
                    let Some(record) = Claimable::parse(&field, &value, *tenant) else {
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
                            .key(hash)
                            .arg(&field)
                            .arg(&value)
                            .invoke_async(&mut **conn)
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
                    let _: () = conn.hdel(hash, done).await.map_err(unavailable)?;
                    claimed += 1;
                }
            }
        }
        self.usage.prune_increments(now() - KEEP_INCREMENTS).await?;
        Ok(claimed)
    }
}

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
    fn parse(field: &str, value: &str, tenant: crate::domain::ids::TenantId) -> Option<Self> {
        let (marked, rest) = match field.split_at_checked(2)? {
            ("l:", rest) => (false, rest),
            ("c:", rest) => (true, rest),
            _ => return None,
        };
        let (source, lease) = rest.rsplit_once(':')?;
        let mut parts = value.splitn(6, '|');
        let granted = parts.next()?.parse().ok()?;
        let expires = parts.next()?.parse().ok()?;
        let held_after_grant = parts.nth(2)?.parse().ok()?;
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
