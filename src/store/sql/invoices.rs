//! Invoices in SQL: a header per tenant and month, its lines, and the plan
//! history they are prorated from. A draft is rebuilt in one transaction
//! (header updated, lines replaced); a finalized one is never written again.
use async_trait::async_trait;
use sqlx::{Row, any::AnyRow};

use super::{Backend, SqlStore, after, db, int, opt_text, opt_time, parsed, text, time};
use crate::{
    domain::{
        Error, Result, Timestamp,
        ids::{InvoiceId, PlanId, TenantId},
        invoice::{Invoice, InvoiceLine, InvoiceStatus, LineKind, parse_month},
        page::PageRequest,
        plan::{Currency, Resource},
        to_micros,
    },
    store::InvoiceStore,
};

const COLUMNS: &str = "id, tenant_id, period, currency, total_minor, status, created_at, \
    updated_at, finalized_at";
const LINE_COLUMNS: &str = "invoice_id, position, kind, description, plan_id, resource, \
    quantity, unit_amount_micros, from_at, to_at, amount_minor";

fn line_from_row(row: &AnyRow) -> Result<InvoiceLine> {
    Ok(InvoiceLine {
        kind: parsed("kind", LineKind::from_name(&text(row, "kind")?).ok_or(()))?,
        description: text(row, "description")?,
        plan_id: opt_text(row, "plan_id")?
            .map(|s| parsed("plan_id", PlanId::parse("", &s)))
            .transpose()?,
        resource: opt_text(row, "resource")?
            .map(|s| parsed("resource", Resource::parse("", &s)))
            .transpose()?,
        quantity: int(row, "quantity")?,
        unit_amount_micros: row
            .try_get::<Option<i64>, _>("unit_amount_micros")
            .map_err(db("decoding a row", ""))?,
        from: time(row, "from_at")?,
        to: time(row, "to_at")?,
        amount_minor: int(row, "amount_minor")?,
    })
}

impl SqlStore {
    async fn invoice_from_row(
        &self,
        conn: &mut sqlx::AnyConnection,
        row: &AnyRow,
    ) -> Result<Invoice> {
        let id = parsed("id", InvoiceId::parse("", &text(row, "id")?))?;
        let lines = sqlx::query(&format!(
            "SELECT {LINE_COLUMNS} FROM invoice_lines WHERE invoice_id = $1 ORDER BY position"
        ))
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading invoice lines", ""))?
        .iter()
        .map(line_from_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(Invoice {
            id,
            tenant_id: parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
            month: parsed("period", parse_month("", &text(row, "period")?))?,
            currency: parsed("currency", Currency::parse("", &text(row, "currency")?))?,
            lines,
            total_minor: int(row, "total_minor")?,
            status: parsed(
                "status",
                InvoiceStatus::from_name(&text(row, "status")?).ok_or(()),
            )?,
            created_at: time(row, "created_at")?,
            updated_at: time(row, "updated_at")?,
            finalized_at: opt_time(row, "finalized_at")?,
        })
    }

    async fn invoice_where(
        &self,
        conn: &mut sqlx::AnyConnection,
        condition: &str,
        binds: &[String],
        lock: bool,
    ) -> Result<Option<Invoice>> {
        let lock = if lock && self.backend == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!("SELECT {COLUMNS} FROM invoices WHERE {condition}{lock}");
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b.clone());
        }
        let row = query
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("reading an invoice", ""))?;
        match row {
            Some(row) => Ok(Some(self.invoice_from_row(conn, &row).await?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl InvoiceStore for SqlStore {
    async fn plan_history(&self, tenant_id: TenantId) -> Result<Vec<(Timestamp, PlanId)>> {
        sqlx::query("SELECT since, plan_id FROM tenant_plans WHERE tenant_id = $1 ORDER BY since")
            .bind(tenant_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading a plan history", ""))?
            .iter()
            .map(|row| {
                Ok((
                    time(row, "since")?,
                    parsed("plan_id", PlanId::parse("", &text(row, "plan_id")?))?,
                ))
            })
            .collect()
    }

    async fn save_draft(&self, invoice: &Invoice) -> Result<Invoice> {
        let context = "saving an invoice";
        let mut tx = self.pool.begin().await.map_err(db(context, ""))?;
        let existing = self
            .invoice_where(
                &mut tx,
                "tenant_id = $1 AND period = $2",
                &[invoice.tenant_id.to_string(), invoice.month.name.clone()],
                true,
            )
            .await?;
        let mut saved = invoice.clone();
        match &existing {
            Some(old) if old.status == InvoiceStatus::Finalized => {
                return Err(Error::FailedPrecondition(format!(
                    "invoice {} for {} is finalized and never changes",
                    old.id, old.month.name
                )));
            }
            Some(old) => {
                saved.id = old.id;
                saved.created_at = old.created_at;
                sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
                    .bind(old.id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(db(context, ""))?;
                sqlx::query(
                    "UPDATE invoices SET currency = $2, total_minor = $3, updated_at = $4 \
                     WHERE id = $1",
                )
                .bind(old.id.to_string())
                .bind(saved.currency.code())
                .bind(saved.total_minor)
                .bind(to_micros(saved.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(db(context, ""))?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO invoices (id, tenant_id, period, period_start, period_end, \
                     currency, total_minor, status, created_at, updated_at, finalized_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
                )
                .bind(saved.id.to_string())
                .bind(saved.tenant_id.to_string())
                .bind(saved.month.name.clone())
                .bind(to_micros(saved.month.period.start))
                .bind(to_micros(saved.month.period.end))
                .bind(saved.currency.code())
                .bind(saved.total_minor)
                .bind(InvoiceStatus::Draft.as_str())
                .bind(to_micros(saved.created_at))
                .bind(to_micros(saved.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        Error::Aborted("the invoice was generated concurrently; retry".into())
                    }
                    other => db(context, "")(other),
                })?;
            }
        }
        for (position, l) in saved.lines.iter().enumerate() {
            sqlx::query(&format!(
                "INSERT INTO invoice_lines ({LINE_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .bind(saved.id.to_string())
            .bind(position as i64)
            .bind(l.kind.as_str())
            .bind(l.description.clone())
            .bind(l.plan_id.map(|p| p.to_string()))
            .bind(l.resource.as_ref().map(|r| r.as_str().to_owned()))
            .bind(l.quantity)
            .bind(l.unit_amount_micros)
            .bind(to_micros(l.from))
            .bind(to_micros(l.to))
            .bind(l.amount_minor)
            .execute(&mut *tx)
            .await
            .map_err(db(context, ""))?;
        }
        tx.commit().await.map_err(db(context, ""))?;
        Ok(saved)
    }

    async fn finalize_invoice(&self, id: InvoiceId, at: Timestamp) -> Result<Option<Invoice>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("finalizing an invoice", ""))?;
        sqlx::query(
            "UPDATE invoices SET status = $2, finalized_at = $3, updated_at = $3 \
             WHERE id = $1 AND status = $4",
        )
        .bind(id.to_string())
        .bind(InvoiceStatus::Finalized.as_str())
        .bind(to_micros(at))
        .bind(InvoiceStatus::Draft.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db("finalizing an invoice", ""))?;
        let invoice = self
            .invoice_where(&mut tx, "id = $1", &[id.to_string()], false)
            .await?;
        tx.commit().await.map_err(db("finalizing an invoice", ""))?;
        Ok(invoice)
    }

    async fn get_invoice(&self, id: InvoiceId) -> Result<Option<Invoice>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("reading an invoice", ""))?;
        self.invoice_where(&mut conn, "id = $1", &[id.to_string()], false)
            .await
    }

    async fn list_invoices(
        &self,
        tenant_id: Option<TenantId>,
        page: &PageRequest,
    ) -> Result<Vec<Invoice>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("listing invoices", ""))?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM invoices WHERE ($1 = '' OR tenant_id = $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(tenant_id.map(|t| t.to_string()).unwrap_or_default())
        .bind(after(page))
        .bind(page.fetch_limit())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing invoices", ""))?;
        let mut invoices = Vec::with_capacity(rows.len());
        for row in &rows {
            invoices.push(self.invoice_from_row(&mut conn, row).await?);
        }
        Ok(invoices)
    }
}
