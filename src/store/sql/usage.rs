//! Durable usage in SQL: absolute totals (the embedded limiter's flush) and
//! the replicas' ledger: batches of increments, each applied once however
//! often it is retried, and each lease's written total, which a claim on a
//! dead replica's lease completes once.
use async_trait::async_trait;

use super::{Backend, SqlStore, db, int, usage_from_row};
use crate::{
    domain::{Result, Timestamp, ids::TenantId, plan::Resource, to_micros},
    store::{Increment, UsageStore, UsageTotal},
};

/// PostgreSQL: every total in one statement whatever the batch size, the
/// columns bound as arrays. A total only ever grows, and an unchanged one
/// is not rewritten.
async fn upsert_usage_unnest(pg: &sqlx::PgPool, totals: &[UsageTotal]) -> Result<()> {
    if totals.is_empty() {
        return Ok(());
    }
    // One row per counter (a statement may not update a row twice): the largest.
    let mut largest: std::collections::HashMap<_, &UsageTotal> = Default::default();
    for t in totals {
        let slot = largest
            .entry((t.tenant_id, &t.resource, t.period_start))
            .or_insert(t);
        if t.used > slot.used {
            *slot = t;
        }
    }
    let totals: Vec<&UsageTotal> = largest.into_values().collect();
    let mut tenants = Vec::with_capacity(totals.len());
    let mut resources = Vec::with_capacity(totals.len());
    let mut starts = Vec::with_capacity(totals.len());
    let mut ends = Vec::with_capacity(totals.len());
    let mut used = Vec::with_capacity(totals.len());
    for t in totals {
        tenants.push(t.tenant_id.to_string());
        resources.push(t.resource.as_str().to_owned());
        starts.push(to_micros(t.period_start));
        ends.push(to_micros(t.period_end));
        used.push(t.used);
    }
    sqlx::query(
        "INSERT INTO usage_counters \
         (tenant_id, resource, period_start, period_end, used, updated_at) \
         SELECT t, r, s, e, u, $6 FROM UNNEST($1::text[], $2::text[], $3::bigint[], \
         $4::bigint[], $5::bigint[]) AS x(t, r, s, e, u) \
         ON CONFLICT (tenant_id, resource, period_start) DO UPDATE SET \
         used = excluded.used, updated_at = excluded.updated_at \
         WHERE usage_counters.used < excluded.used",
    )
    .bind(tenants)
    .bind(resources)
    .bind(starts)
    .bind(ends)
    .bind(used)
    .bind(to_micros(crate::domain::now()))
    .execute(pg)
    .await
    .map_err(db("writing usage", ""))?;
    Ok(())
}

/// PostgreSQL: a batch in one statement, the columns bound as arrays: the
/// batch's row first (nothing more happens if it was there), then each
/// lease's written total, then the counters, by the units of leases not
/// claimed meanwhile (and of none: served failing open).
async fn add_usage_unnest(
    pg: &sqlx::PgPool,
    source: &str,
    seq: i64,
    increments: &[Increment],
) -> Result<()> {
    let mut leases = Vec::with_capacity(increments.len());
    let mut tenants = Vec::with_capacity(increments.len());
    let mut resources = Vec::with_capacity(increments.len());
    let mut starts = Vec::with_capacity(increments.len());
    let mut ends = Vec::with_capacity(increments.len());
    let mut units = Vec::with_capacity(increments.len());
    for i in increments {
        leases.push(i.lease);
        tenants.push(i.tenant_id.to_string());
        resources.push(i.resource.as_str().to_owned());
        starts.push(to_micros(i.period_start));
        ends.push(to_micros(i.period_end));
        units.push(i.units);
    }
    sqlx::query(
        "WITH batch AS ( \
           INSERT INTO usage_batches (source, seq, at) VALUES ($1, $2, $9) \
           ON CONFLICT DO NOTHING RETURNING seq), \
         x AS ( \
           SELECT l, t, r, s, e, u FROM UNNEST($3::bigint[], $4::text[], $5::text[], \
           $6::bigint[], $7::bigint[], $8::bigint[]) AS x(l, t, r, s, e, u) \
           WHERE EXISTS (SELECT 1 FROM batch)), \
         leased AS ( \
           INSERT INTO usage_leases (source, lease, written, claimed, at) \
           SELECT $1, l, u, 0, $9 FROM x WHERE l <> 0 \
           ON CONFLICT (source, lease) DO UPDATE SET \
           written = usage_leases.written + excluded.written, at = excluded.at \
           WHERE usage_leases.claimed = 0 \
           RETURNING lease) \
         INSERT INTO usage_counters \
         (tenant_id, resource, period_start, period_end, used, updated_at) \
         SELECT t, r, s, MAX(e), SUM(u), $9 FROM x \
         WHERE l = 0 OR l IN (SELECT lease FROM leased) \
         GROUP BY t, r, s \
         ON CONFLICT (tenant_id, resource, period_start) DO UPDATE SET \
         used = usage_counters.used + excluded.used, updated_at = excluded.updated_at",
    )
    .bind(source)
    .bind(seq)
    .bind(leases)
    .bind(tenants)
    .bind(resources)
    .bind(starts)
    .bind(ends)
    .bind(units)
    .bind(to_micros(crate::domain::now()))
    .execute(pg)
    .await
    .map_err(db("adding usage", ""))?;
    Ok(())
}

/// Adds `i.units` to its counter.
async fn add_to_counter(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    i: &Increment,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO usage_counters \
         (tenant_id, resource, period_start, period_end, used, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, resource, period_start) DO UPDATE SET \
         used = usage_counters.used + excluded.used, updated_at = excluded.updated_at",
    )
    .bind(i.tenant_id.to_string())
    .bind(i.resource.as_str().to_owned())
    .bind(to_micros(i.period_start))
    .bind(to_micros(i.period_end))
    .bind(i.units)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(db("adding usage", ""))?;
    Ok(())
}

/// The other backends: the same steps as `add_usage_unnest`, a statement
/// each, in one transaction.
async fn add_usage_each(
    pool: &sqlx::AnyPool,
    source: &str,
    seq: i64,
    increments: &[Increment],
) -> Result<()> {
    let at = to_micros(crate::domain::now());
    let mut tx = pool.begin().await.map_err(db("adding usage", ""))?;
    let new = sqlx::query(
        "INSERT INTO usage_batches (source, seq, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(source.to_owned())
    .bind(seq)
    .bind(at)
    .execute(&mut *tx)
    .await
    .map_err(db("adding usage", ""))?
    .rows_affected()
        == 1;
    if !new {
        return tx.commit().await.map_err(db("adding usage", ""));
    }
    for i in increments {
        if i.lease != 0 {
            let open = sqlx::query(
                "INSERT INTO usage_leases (source, lease, written, claimed, at) \
                 VALUES ($1, $2, $3, 0, $4) \
                 ON CONFLICT (source, lease) DO UPDATE SET \
                 written = usage_leases.written + excluded.written, at = excluded.at \
                 WHERE usage_leases.claimed = 0",
            )
            .bind(source.to_owned())
            .bind(i.lease)
            .bind(i.units)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(db("adding usage", ""))?
            .rows_affected()
                == 1;
            if !open {
                // Claimed: the claim counted these units already.
                continue;
            }
        }
        add_to_counter(&mut tx, i, at).await?;
    }
    tx.commit().await.map_err(db("adding usage", ""))
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn add_usage(&self, source: &str, seq: i64, increments: &[Increment]) -> Result<()> {
        if increments.is_empty() {
            return Ok(());
        }
        match &self.pg {
            Some(pg) => add_usage_unnest(pg, source, seq, increments).await,
            None => add_usage_each(&self.pool, source, seq, increments).await,
        }
    }

    async fn claim_lease(&self, source: &str, lease: i64, granted: &Increment) -> Result<i64> {
        let at = to_micros(crate::domain::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("claiming a lease", ""))?;
        sqlx::query(
            "INSERT INTO usage_leases (source, lease, written, claimed, at) \
             VALUES ($1, $2, 0, 0, $3) ON CONFLICT DO NOTHING",
        )
        .bind(source.to_owned())
        .bind(lease)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db("claiming a lease", ""))?;
        // Only one claim turns it: a claim retried (by this sweeper or
        // another) finds it claimed and adds nothing.
        let row = sqlx::query(
            "UPDATE usage_leases SET claimed = 1, at = $3 \
             WHERE source = $1 AND lease = $2 AND claimed = 0 RETURNING written",
        )
        .bind(source.to_owned())
        .bind(lease)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("claiming a lease", ""))?;
        let Some(row) = row else {
            tx.commit().await.map_err(db("claiming a lease", ""))?;
            return Ok(0);
        };
        let claim = Increment {
            units: (granted.units - int(&row, "written")?).max(0),
            ..granted.clone()
        };
        if claim.units > 0 {
            add_to_counter(&mut tx, &claim, at).await?;
        }
        tx.commit().await.map_err(db("claiming a lease", ""))?;
        Ok(claim.units)
    }

    async fn forget_leases(&self, source: &str, leases: &[i64]) -> Result<()> {
        // Bounded lists keep the statement under both databases' limits.
        for chunk in leases.chunks(1000) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "DELETE FROM usage_leases WHERE source = $1 AND claimed = 0 AND lease IN ({list})"
            );
            let mut query = sqlx::query(&sql).bind(source.to_owned());
            for lease in chunk {
                query = query.bind(*lease);
            }
            query
                .execute(&self.pool)
                .await
                .map_err(db("forgetting settled leases", ""))?;
        }
        Ok(())
    }

    async fn prune_ledger(&self, before: Timestamp) -> Result<u64> {
        let mut pruned = 0;
        for sql in [
            "DELETE FROM usage_batches WHERE at < $1",
            "DELETE FROM usage_leases WHERE at < $1",
        ] {
            pruned += sqlx::query(sql)
                .bind(to_micros(before))
                .execute(&self.pool)
                .await
                .map_err(db("pruning the usage ledger", ""))?
                .rows_affected();
        }
        Ok(pruned)
    }

    async fn upsert_usage(&self, totals: &[UsageTotal]) -> Result<()> {
        if let Some(pg) = &self.pg {
            return upsert_usage_unnest(pg, totals).await;
        }
        // Bounded batches keep the statement under both databases' parameter
        // limits (SQLite: 32766, PostgreSQL: 65535).
        for chunk in totals.chunks(1000) {
            let mut sql = String::from(
                "INSERT INTO usage_counters \
                 (tenant_id, resource, period_start, period_end, used, updated_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 6;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                ));
            }
            let greatest = match self.backend {
                Backend::Postgres => "GREATEST",
                Backend::Sqlite => "MAX",
            };
            sql.push_str(&format!(
                " ON CONFLICT (tenant_id, resource, period_start) DO UPDATE SET \
                 used = {greatest}(usage_counters.used, excluded.used), \
                 updated_at = excluded.updated_at"
            ));
            let at = to_micros(crate::domain::now());
            let mut query = sqlx::query(&sql);
            for t in chunk {
                query = query
                    .bind(t.tenant_id.to_string())
                    .bind(t.resource.as_str().to_owned())
                    .bind(to_micros(t.period_start))
                    .bind(to_micros(t.period_end))
                    .bind(t.used)
                    .bind(at);
            }
            query
                .execute(&self.pool)
                .await
                .map_err(db("writing usage", ""))?;
        }
        Ok(())
    }

    async fn get_usage(
        &self,
        tenant_id: TenantId,
        resource: &Resource,
        period_start: Timestamp,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT used FROM usage_counters \
             WHERE tenant_id = $1 AND resource = $2 AND period_start = $3",
        )
        .bind(tenant_id.to_string())
        .bind(resource.as_str().to_owned())
        .bind(to_micros(period_start))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading usage", ""))?;
        row.map(|r| int(&r, "used"))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn usage_starting_in(
        &self,
        tenant_id: TenantId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<UsageTotal>> {
        sqlx::query(
            "SELECT tenant_id, resource, period_start, period_end, used FROM usage_counters \
             WHERE tenant_id = $1 AND period_start >= $2 AND period_start < $3 \
             ORDER BY resource, period_start",
        )
        .bind(tenant_id.to_string())
        .bind(to_micros(from))
        .bind(to_micros(to))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing usage", ""))?
        .iter()
        .map(usage_from_row)
        .collect()
    }

    async fn list_usage(&self, tenant_id: TenantId, at: Timestamp) -> Result<Vec<UsageTotal>> {
        sqlx::query(
            "SELECT tenant_id, resource, period_start, period_end, used FROM usage_counters \
             WHERE tenant_id = $1 AND period_start <= $2 AND period_end > $2 ORDER BY resource",
        )
        .bind(tenant_id.to_string())
        .bind(to_micros(at))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing usage", ""))?
        .iter()
        .map(usage_from_row)
        .collect()
    }
}
