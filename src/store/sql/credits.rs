//! Credit ledgers in SQL. Every grant and debit of a tenant's credit type
//! first locks that type's `credit_accounts` row (PostgreSQL; SQLite runs
//! one transaction at a time anyway), so concurrent debits apply one after
//! another against the balance the previous one left.
use async_trait::async_trait;
use sqlx::any::AnyRow;

use super::{Backend, SqlStore, after, db, int, opt_time, parsed, text, time};
use crate::{
    domain::{
        Error, Result, Shortfall, Timestamp,
        credits::{
            Applied, Balance, CreditChange, CreditType, EntryKind, IdempotencyKey, LedgerEntry,
            Unspent, allocate,
        },
        ids::{LedgerEntryId, TenantId},
        page::PageRequest,
        to_micros,
    },
    store::CreditStore,
};

const ENTRY_COLUMNS: &str = "id, tenant_id, credit_type, kind, amount, balance_after, \
    idempotency_key, expires_at, created_at";

fn entry_from_row(row: &AnyRow) -> Result<LedgerEntry> {
    Ok(LedgerEntry {
        id: parsed("id", LedgerEntryId::parse("", &text(row, "id")?))?,
        tenant_id: parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
        credit_type: parsed(
            "credit_type",
            CreditType::parse("", &text(row, "credit_type")?),
        )?,
        kind: parsed("kind", EntryKind::from_name(&text(row, "kind")?).ok_or(()))?,
        amount: int(row, "amount")?,
        balance_after: int(row, "balance_after")?,
        idempotency_key: parsed(
            "idempotency_key",
            IdempotencyKey::parse("", &text(row, "idempotency_key")?),
        )?,
        expires_at: opt_time(row, "expires_at")?,
        created_at: time(row, "created_at")?,
    })
}

async fn entry_by_key<'e, E>(executor: E, change: &CreditChange) -> Result<Option<LedgerEntry>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM credit_ledger WHERE tenant_id = $1 AND idempotency_key = $2"
    ))
    .bind(change.tenant_id.to_string())
    .bind(change.idempotency_key.as_str().to_owned())
    .fetch_optional(executor)
    .await
    .map_err(db("reading a ledger entry", ""))?
    .as_ref()
    .map(entry_from_row)
    .transpose()
}

impl SqlStore {
    /// One attempt; `None` when a concurrent call with the same key (for
    /// another credit type, so not serialized with this one) committed first.
    async fn try_apply_credit(&self, c: &CreditChange, at: Timestamp) -> Result<Option<Applied>> {
        let context = "applying a credit change";
        let mut tx = self.pool.begin().await.map_err(db(context, ""))?;
        let tenant = c.tenant_id.to_string();
        let credit_type = c.credit_type.as_str().to_owned();
        sqlx::query(
            "INSERT INTO credit_accounts (tenant_id, credit_type) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.clone())
        .bind(credit_type.clone())
        .execute(&mut *tx)
        .await
        .map_err(db(context, ""))?;
        if self.backend == Backend::Postgres {
            sqlx::query(
                "SELECT tenant_id FROM credit_accounts \
                 WHERE tenant_id = $1 AND credit_type = $2 FOR UPDATE",
            )
            .bind(tenant.clone())
            .bind(credit_type.clone())
            .fetch_one(&mut *tx)
            .await
            .map_err(db(context, ""))?;
        }
        if let Some(entry) = entry_by_key(&mut *tx, c).await? {
            entry.replay_of(c)?;
            return Ok(Some(Applied {
                entry,
                replayed: true,
            }));
        }
        c.check_new(at)?;
        let grants = sqlx::query(
            "SELECT id, remaining, expires_at FROM credit_grants \
             WHERE tenant_id = $1 AND credit_type = $2 AND remaining > 0 \
             AND (expires_at IS NULL OR expires_at > $3) ORDER BY id",
        )
        .bind(tenant.clone())
        .bind(credit_type.clone())
        .bind(to_micros(at))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(context, ""))?;
        let unspent = grants
            .iter()
            .map(|row| {
                Ok(Unspent {
                    remaining: int(row, "remaining")?,
                    expires_at: opt_time(row, "expires_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let balance: i64 = unspent.iter().map(|g| g.remaining).sum();
        let balance_after = match c.kind {
            EntryKind::Grant => balance
                .checked_add(c.amount)
                .ok_or_else(|| Error::invalid("amount", "would overflow the balance"))?,
            EntryKind::Debit => {
                let takes = allocate(&unspent, c.amount).ok_or_else(|| {
                    Error::InsufficientCredits(Shortfall {
                        credit_type: credit_type.clone(),
                        balance,
                        requested: c.amount,
                    })
                })?;
                for (i, take) in takes {
                    sqlx::query(
                        "UPDATE credit_grants SET remaining = remaining - $2 WHERE id = $1",
                    )
                    .bind(text(&grants[i], "id")?)
                    .bind(take)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(context, ""))?;
                }
                balance - c.amount
            }
        };
        let entry = LedgerEntry {
            id: LedgerEntryId::generate(),
            tenant_id: c.tenant_id,
            credit_type: c.credit_type.clone(),
            kind: c.kind,
            amount: c.amount,
            balance_after,
            idempotency_key: c.idempotency_key.clone(),
            expires_at: c.expires_at,
            created_at: at,
        };
        let inserted = sqlx::query(&format!(
            "INSERT INTO credit_ledger ({ENTRY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(entry.id.to_string())
        .bind(tenant.clone())
        .bind(credit_type.clone())
        .bind(entry.kind.as_str())
        .bind(entry.amount)
        .bind(entry.balance_after)
        .bind(entry.idempotency_key.as_str().to_owned())
        .bind(entry.expires_at.map(to_micros))
        .bind(to_micros(entry.created_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(None),
            other => other.map_err(db(context, ""))?,
        };
        if c.kind == EntryKind::Grant {
            sqlx::query(
                "INSERT INTO credit_grants (id, tenant_id, credit_type, remaining, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(entry.id.to_string())
            .bind(tenant)
            .bind(credit_type)
            .bind(entry.amount)
            .bind(entry.expires_at.map(to_micros))
            .execute(&mut *tx)
            .await
            .map_err(db(context, ""))?;
        }
        tx.commit().await.map_err(db(context, ""))?;
        Ok(Some(Applied {
            entry,
            replayed: false,
        }))
    }
}

#[async_trait]
impl CreditStore for SqlStore {
    async fn apply_credit(&self, change: &CreditChange, at: Timestamp) -> Result<Applied> {
        if let Some(applied) = self.try_apply_credit(change, at).await? {
            return Ok(applied);
        }
        // The key was taken meanwhile; its entry decides (replay or conflict).
        let entry = entry_by_key(&self.pool, change)
            .await?
            .ok_or_else(|| Error::Aborted("a concurrent credit change; retry".into()))?;
        entry.replay_of(change)?;
        Ok(Applied {
            entry,
            replayed: true,
        })
    }

    async fn balances(&self, tenant_id: TenantId, at: Timestamp) -> Result<Vec<Balance>> {
        sqlx::query(
            "SELECT a.credit_type, CAST(COALESCE(SUM(g.remaining), 0) AS BIGINT) AS balance, \
             MIN(g.expires_at) AS next_expiry \
             FROM credit_accounts a LEFT JOIN credit_grants g \
             ON g.tenant_id = a.tenant_id AND g.credit_type = a.credit_type \
             AND g.remaining > 0 AND (g.expires_at IS NULL OR g.expires_at > $2) \
             WHERE a.tenant_id = $1 GROUP BY a.credit_type ORDER BY a.credit_type",
        )
        .bind(tenant_id.to_string())
        .bind(to_micros(at))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading balances", ""))?
        .iter()
        .map(|row| {
            Ok(Balance {
                credit_type: parsed(
                    "credit_type",
                    CreditType::parse("", &text(row, "credit_type")?),
                )?,
                balance: int(row, "balance")?,
                next_expiry: opt_time(row, "next_expiry")?,
            })
        })
        .collect()
    }

    async fn balance(
        &self,
        tenant_id: TenantId,
        credit_type: &CreditType,
        at: Timestamp,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) AS balance FROM credit_grants \
             WHERE tenant_id = $1 AND credit_type = $2 AND remaining > 0 \
             AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(tenant_id.to_string())
        .bind(credit_type.as_str().to_owned())
        .bind(to_micros(at))
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading a balance", ""))?;
        int(&row, "balance")
    }

    async fn list_ledger(
        &self,
        tenant_id: TenantId,
        credit_type: Option<&CreditType>,
        page: &PageRequest,
    ) -> Result<Vec<LedgerEntry>> {
        sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM credit_ledger \
             WHERE tenant_id = $1 AND ($2 = '' OR credit_type = $2) AND id > $3 \
             ORDER BY id LIMIT $4"
        ))
        .bind(tenant_id.to_string())
        .bind(credit_type.map_or("", CreditType::as_str).to_owned())
        .bind(after(page))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing the ledger", ""))?
        .iter()
        .map(entry_from_row)
        .collect()
    }
}
