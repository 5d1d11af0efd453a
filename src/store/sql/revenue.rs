//! The revenue summary's reads.
use async_trait::async_trait;

use super::{
    PLAN_COLUMNS, SqlStore, TENANT_COLUMNS, db, int, parsed, plan_from_row, tenant_from_row, text,
};
use crate::{
    domain::{
        Result, Timestamp, ids::TenantId, invoice::LineKind, plan::Plan, tenant::Tenant, to_micros,
    },
    store::RevenueStore,
};

#[async_trait]
impl RevenueStore for SqlStore {
    async fn all_tenants(&self) -> Result<Vec<Tenant>> {
        sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading tenants", ""))?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    async fn all_plans(&self) -> Result<Vec<Plan>> {
        sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading plans", ""))?
            .iter()
            .map(plan_from_row)
            .collect()
    }

    async fn usage_by_tenant(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(TenantId, i64)>> {
        sqlx::query(
            "SELECT tenant_id, CAST(SUM(used) AS BIGINT) AS used FROM usage_counters \
             WHERE period_start >= $1 AND period_start < $2 GROUP BY tenant_id",
        )
        .bind(to_micros(from))
        .bind(to_micros(to))
        .fetch_all(&self.pool)
        .await
        .map_err(db("summing usage", ""))?
        .iter()
        .map(|row| {
            Ok((
                parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
                int(row, "used")?,
            ))
        })
        .collect()
    }

    async fn invoice_totals(&self, month: &str) -> Result<Vec<(TenantId, String, i64, i64)>> {
        sqlx::query(
            "SELECT i.tenant_id, i.currency, i.total_minor, \
             CAST(COALESCE(SUM(l.amount_minor), 0) AS BIGINT) AS overage \
             FROM invoices i LEFT JOIN invoice_lines l \
             ON l.invoice_id = i.id AND l.kind = $2 \
             WHERE i.period = $1 GROUP BY i.id, i.tenant_id, i.currency, i.total_minor",
        )
        .bind(month.to_owned())
        .bind(LineKind::Overage.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("summing invoices", ""))?
        .iter()
        .map(|row| {
            Ok((
                parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
                text(row, "currency")?,
                int(row, "total_minor")?,
                int(row, "overage")?,
            ))
        })
        .collect()
    }
}
