//! Subscriptions in SQL. A subscription, its tenant and the event that
//! carried it are written in one transaction, each guarded so a concurrent
//! change makes the whole write fail instead of half of it landing.
use async_trait::async_trait;
use sqlx::{AnyConnection, any::AnyRow};

use super::{
    SqlStore, after, db, insert_tenant, int, opt_text, opt_time, parsed, text, time, update_tenant,
};
use crate::{
    domain::{
        Result, Timestamp,
        ids::{PlanId, TenantId},
        page::PageRequest,
        plan::{ProductId, Provider},
        subscription::{Customer, CustomerId, CustomerLink, EventId, Subscription, SubscriptionId},
        tenant::{Email, ExternalId, Tenant, TenantStatus},
        to_micros,
        verify::Period,
    },
    store::{SubscriptionStore, TenantWrite},
};

const COLUMNS: &str = "provider, id, tenant_id, customer_external_id, customer_email, \
    customer_name, product_id, plan_id, status, period_start, period_end, \
    cancel_at_period_end, trial_end, modified_at, created_at, updated_at, \
    customer_provider_id";

fn from_row(row: &AnyRow) -> Result<Subscription> {
    Ok(Subscription {
        provider: parsed("provider", Provider::parse("", &text(row, "provider")?))?,
        id: parsed("id", SubscriptionId::parse("", &text(row, "id")?))?,
        customer: Customer {
            // Empty: the customer has none (the column predates the
            // provider's customer id, and stays NOT NULL).
            external_id: Some(text(row, "customer_external_id")?)
                .filter(|s| !s.is_empty())
                .map(|s| parsed("customer_external_id", ExternalId::parse("", &s)))
                .transpose()?,
            provider_id: opt_text(row, "customer_provider_id")?
                .map(|s| parsed("customer_provider_id", CustomerId::parse("", &s)))
                .transpose()?,
            email: opt_text(row, "customer_email")?
                .map(|s| parsed("customer_email", Email::parse("", &s)))
                .transpose()?,
            name: text(row, "customer_name")?,
        },
        product_id: parsed(
            "product_id",
            ProductId::parse("", &text(row, "product_id")?),
        )?,
        plan_id: opt_text(row, "plan_id")?
            .map(|s| parsed("plan_id", PlanId::parse("", &s)))
            .transpose()?,
        tenant_id: opt_text(row, "tenant_id")?
            .map(|s| parsed("tenant_id", TenantId::parse("", &s)))
            .transpose()?,
        status: parsed(
            "status",
            TenantStatus::from_name(&text(row, "status")?).ok_or(()),
        )?,
        period: match (opt_time(row, "period_start")?, opt_time(row, "period_end")?) {
            (Some(start), Some(end)) => Some(Period { start, end }),
            _ => None,
        },
        cancel_at_period_end: int(row, "cancel_at_period_end")? != 0,
        trial_end: opt_time(row, "trial_end")?,
        modified_at: time(row, "modified_at")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

#[async_trait]
impl SubscriptionStore for SqlStore {
    async fn get_subscription(
        &self,
        provider: Provider,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE provider = $1 AND id = $2"
        ))
        .bind(provider.as_str())
        .bind(id.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a subscription", ""))?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    async fn list_subscriptions(
        &self,
        tenant_id: Option<TenantId>,
        page: &PageRequest,
    ) -> Result<Vec<Subscription>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions \
             WHERE ($1 = '' OR tenant_id = $1) AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(tenant_id.map(|t| t.to_string()).unwrap_or_default())
        .bind(after(page))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing subscriptions", ""))?
        .iter()
        .map(from_row)
        .collect()
    }

    async fn pending_subscriptions(
        &self,
        provider: Provider,
        product_id: &ProductId,
    ) -> Result<Vec<Subscription>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions \
             WHERE provider = $1 AND product_id = $2 AND plan_id IS NULL ORDER BY id"
        ))
        .bind(provider.as_str())
        .bind(product_id.as_str().to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing pending subscriptions", ""))?
        .iter()
        .map(from_row)
        .collect()
    }

    async fn event_applied(
        &self,
        provider: Provider,
        event: &EventId,
    ) -> Result<Option<SubscriptionId>> {
        sqlx::query(
            "SELECT subscription_id FROM subscription_events WHERE provider = $1 AND event_id = $2",
        )
        .bind(provider.as_str())
        .bind(event.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading an event", ""))?
        .map(|row| {
            parsed(
                "subscription_id",
                SubscriptionId::parse("", &text(&row, "subscription_id")?),
            )
        })
        .transpose()
    }

    async fn save_subscription(
        &self,
        s: &Subscription,
        expected: Option<Timestamp>,
        tenant: Option<&TenantWrite>,
        event: Option<&EventId>,
    ) -> Result<bool> {
        let context = "saving a subscription";
        let mut tx = self.pool.begin().await.map_err(db(context, ""))?;
        // The tenant first: the subscription row refers to it.
        let tenant_written = match tenant {
            Some(TenantWrite::Create(t)) => match insert_tenant(&mut tx, t).await {
                Ok(()) => true,
                // Created meanwhile by a concurrent update: start over.
                Err(crate::domain::Error::AlreadyExists(_)) => false,
                Err(e) => return Err(e),
            },
            Some(TenantWrite::Replace { tenant, expected }) => {
                update_tenant(&mut tx, tenant, *expected).await?
            }
            None => true,
        };
        if !tenant_written {
            return Ok(false);
        }
        let values = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17";
        let sql = match expected {
            None => format!(
                "INSERT INTO subscriptions ({COLUMNS}) VALUES ({values}) ON CONFLICT DO NOTHING"
            ),
            Some(_) => format!(
                "UPDATE subscriptions SET ({COLUMNS}) = ({values}) \
                 WHERE provider = $1 AND id = $2 AND updated_at = $18"
            ),
        };
        let query = sqlx::query(&sql)
            .bind(s.provider.as_str())
            .bind(s.id.as_str().to_owned())
            .bind(s.tenant_id.map(|t| t.to_string()))
            .bind(
                s.customer
                    .external_id
                    .as_ref()
                    .map_or_else(String::new, |x| x.as_str().to_owned()),
            )
            .bind(s.customer.email.as_ref().map(|e| e.as_str().to_owned()))
            .bind(s.customer.name.clone())
            .bind(s.product_id.as_str().to_owned())
            .bind(s.plan_id.map(|p| p.to_string()))
            .bind(s.status.as_str())
            .bind(s.period.map(|p| to_micros(p.start)))
            .bind(s.period.map(|p| to_micros(p.end)))
            .bind(i64::from(s.cancel_at_period_end))
            .bind(s.trial_end.map(to_micros))
            .bind(to_micros(s.modified_at))
            .bind(to_micros(s.created_at))
            .bind(to_micros(s.updated_at))
            .bind(
                s.customer
                    .provider_id
                    .as_ref()
                    .map(|c| c.as_str().to_owned()),
            );
        let query = match expected {
            Some(expected) => query.bind(to_micros(expected)),
            None => query,
        };
        let written = query.execute(&mut *tx).await.map_err(db(context, ""))?;
        if written.rows_affected() != 1 {
            return Ok(false);
        }
        if let (Some(customer), Some(write)) = (&s.customer.provider_id, tenant) {
            let linked = match write {
                // A concurrent update may have made this customer's tenant
                // first: then this one must not be a second.
                TenantWrite::Create(t) => link_customer(&mut tx, s.provider, customer, t.id, false),
                TenantWrite::Replace { tenant: t, .. } => {
                    link_customer(&mut tx, s.provider, customer, t.id, true)
                }
            }
            .await?;
            if !linked {
                return Ok(false);
            }
        }
        if let Some(event) = event {
            let recorded = sqlx::query(
                "INSERT INTO subscription_events (provider, event_id, subscription_id, applied_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(s.provider.as_str())
            .bind(event.as_str().to_owned())
            .bind(s.id.as_str().to_owned())
            .bind(to_micros(s.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(db(context, ""))?;
            if recorded.rows_affected() != 1 {
                // The same event, applied concurrently.
                return Ok(false);
            }
        }
        tx.commit().await.map_err(db(context, ""))?;
        Ok(true)
    }

    async fn customer_link(
        &self,
        provider: Provider,
        id: &CustomerId,
    ) -> Result<Option<CustomerLink>> {
        let row = sqlx::query(
            "SELECT tenant_id, modified_at FROM provider_customers \
             WHERE provider = $1 AND customer_id = $2",
        )
        .bind(provider.as_str())
        .bind(id.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a customer", ""))?;
        row.map(|row| {
            Ok(CustomerLink {
                tenant_id: parsed("tenant_id", TenantId::parse("", &text(&row, "tenant_id")?))?,
                modified_at: opt_time(&row, "modified_at")?,
            })
        })
        .transpose()
    }

    async fn save_customer(
        &self,
        provider: Provider,
        id: &CustomerId,
        tenant: &Tenant,
        expected: Timestamp,
        modified_at: Timestamp,
    ) -> Result<bool> {
        let context = "saving a customer";
        let mut tx = self.pool.begin().await.map_err(db(context, ""))?;
        if !update_tenant(&mut tx, tenant, expected).await? {
            return Ok(false);
        }
        let linked = sqlx::query(
            "INSERT INTO provider_customers (provider, customer_id, tenant_id, modified_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider, customer_id) DO UPDATE \
             SET tenant_id = excluded.tenant_id, modified_at = excluded.modified_at \
             WHERE provider_customers.modified_at IS NULL \
                OR provider_customers.modified_at < excluded.modified_at",
        )
        .bind(provider.as_str())
        .bind(id.as_str().to_owned())
        .bind(tenant.id.to_string())
        .bind(to_micros(modified_at))
        .execute(&mut *tx)
        .await
        .map_err(db(context, ""))?;
        if linked.rows_affected() != 1 {
            // A newer update of this customer came first.
            return Ok(false);
        }
        tx.commit().await.map_err(db(context, ""))?;
        Ok(true)
    }
}

/// Links a provider's customer to a tenant: always when `relink`, else only
/// if the customer has no tenant yet. Whether it was written.
async fn link_customer(
    conn: &mut AnyConnection,
    provider: Provider,
    customer: &CustomerId,
    tenant_id: TenantId,
    relink: bool,
) -> Result<bool> {
    let on_conflict = if relink {
        "DO UPDATE SET tenant_id = excluded.tenant_id"
    } else {
        "DO NOTHING"
    };
    let written = sqlx::query(&format!(
        "INSERT INTO provider_customers (provider, customer_id, tenant_id) VALUES ($1, $2, $3) \
         ON CONFLICT (provider, customer_id) {on_conflict}"
    ))
    .bind(provider.as_str())
    .bind(customer.as_str().to_owned())
    .bind(tenant_id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(db("linking a customer", ""))?;
    Ok(written.rows_affected() == 1)
}
