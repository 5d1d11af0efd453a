//! The shared limiter's usage on its way to the database: units admitted
//! while Redis was away added back to it, and counters read from it and
//! written as absolute totals (this replica's, and every counter in a
//! sweep, so a replica that died before flushing loses nothing).
use redis::AsyncCommands;

use super::{RedisLimiter, unavailable};
use crate::{
    domain::{Error, Result},
    limiter::UsageKey,
    store::UsageTotal,
};

impl RedisLimiter {
    /// Usage admitted while Redis was away, added to its counters.
    pub(super) async fn replay_pending(&self) -> Result<()> {
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
    pub(super) async fn read(&self, keys: &[UsageKey]) -> Result<Vec<Option<i64>>> {
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
    pub(super) async fn persist(&self, keys: &[UsageKey]) -> Result<usize> {
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
    pub(super) async fn sweep(&self) -> Result<usize> {
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
