//! The catalog in SQL: plans, tenants (with their plan history), keys and
//! their secrets, and product mappings.
use async_trait::async_trait;

use crate::domain::{
    Result, Timestamp,
    ids::{KeyId, PlanId, TenantId},
    key::ApiKey,
    page::PageRequest,
    plan::{Plan, ProductId, ProductMapping, Provider, Slug},
    secret::SecretHash,
    tenant::{ExternalId, Tenant, TenantStatus},
    to_micros,
};
use crate::store::{CatalogStore, TenantFilter};

use super::{SqlStore, db, rows::*};

fn key_update_sql() -> String {
    "UPDATE api_keys SET name = $2, prefix = $3, disabled = $4, expires_at = $5, \
     rate_limit_override = $6, quota_overrides = $7, metadata = $8, updated_at = $9, \
     last_used_at = $10, revoked_at = $11 WHERE id = $1 AND updated_at = $12"
        .to_owned()
}

fn bind_key_update<'q>(
    key: &'q ApiKey,
    expected: Timestamp,
    sql: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(key.id.to_string())
        .bind(key.settings.name.clone())
        .bind(key.prefix.clone())
        .bind(i64::from(key.settings.disabled))
        .bind(key.settings.expires_at.map(to_micros))
        .bind(key.settings.rate_limit_override.as_ref().map(json))
        .bind(json(&key.settings.quota_overrides))
        .bind(json(&key.settings.metadata))
        .bind(to_micros(key.updated_at))
        .bind(key.last_used_at.map(to_micros))
        .bind(key.revoked_at.map(to_micros))
        .bind(to_micros(expected))
}

/// `sql` with a tenant's columns bound as $1-$15, in `TENANT_COLUMNS` order.
fn bind_tenant<'q>(
    sql: &'q str,
    t: &'q Tenant,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(t.id.to_string())
        .bind(
            t.profile
                .external_id
                .as_ref()
                .map(|e| e.as_str().to_owned()),
        )
        .bind(t.profile.email.as_ref().map(|e| e.as_str().to_owned()))
        .bind(t.profile.name.clone())
        .bind(t.profile.company.clone())
        .bind(t.plan_id.to_string())
        .bind(t.status.as_str())
        .bind(t.trial_end.map(to_micros))
        .bind(json(&t.profile.metadata))
        .bind(to_micros(t.created_at))
        .bind(to_micros(t.updated_at))
        .bind(t.billing_period.map(|p| to_micros(p.start)))
        .bind(t.billing_period.map(|p| to_micros(p.end)))
        .bind(t.trial_started_at.map(to_micros))
        .bind(t.converted_at.map(to_micros))
}

/// Inserts the tenant and the first entry of its plan history.
pub(super) async fn insert_tenant(conn: &mut sqlx::AnyConnection, t: &Tenant) -> Result<()> {
    let sql = format!(
        "INSERT INTO tenants ({TENANT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    );
    bind_tenant(&sql, t).execute(&mut *conn).await.map_err(db(
        "creating a tenant",
        "a tenant with this external id exists already",
    ))?;
    record_plan(conn, t).await
}

async fn insert_key(
    conn: &mut sqlx::AnyConnection,
    key: &ApiKey,
    secret: SecretHash,
) -> Result<()> {
    let s = &key.settings;
    sqlx::query(&format!(
        "INSERT INTO api_keys ({KEY_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(key.id.to_string())
    .bind(key.tenant_id.to_string())
    .bind(s.name.clone())
    .bind(key.environment.as_str())
    .bind(key.prefix.clone())
    .bind(i64::from(s.disabled))
    .bind(s.expires_at.map(to_micros))
    .bind(s.rate_limit_override.as_ref().map(json))
    .bind(json(&s.quota_overrides))
    .bind(json(&s.metadata))
    .bind(to_micros(key.created_at))
    .bind(to_micros(key.updated_at))
    .bind(key.last_used_at.map(to_micros))
    .bind(key.revoked_at.map(to_micros))
    .execute(&mut *conn)
    .await
    .map_err(db("creating a key", ""))?;
    insert_secret(conn, key.id, secret, key.created_at).await
}

/// Adds a secret to a key, valid until rotated out.
async fn insert_secret(
    conn: &mut sqlx::AnyConnection,
    key_id: KeyId,
    secret: SecretHash,
    created_at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_key_secrets (secret_hash, key_id, created_at, expires_at) \
         VALUES ($1, $2, $3, NULL)",
    )
    .bind(secret.to_hex())
    .bind(key_id.to_string())
    .bind(to_micros(created_at))
    .execute(&mut *conn)
    .await
    .map_err(db("storing a key's secret", ""))?;
    Ok(())
}

/// Writes the tenant if its row still has `updated_at = expected`, and
/// records a plan change in its history.
pub(super) async fn update_tenant(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    expected: Timestamp,
) -> Result<bool> {
    let sql = format!(
        "UPDATE tenants SET ({TENANT_COLUMNS}) = \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         WHERE id = $1 AND updated_at = $16"
    );
    let done = bind_tenant(&sql, t)
        .bind(to_micros(expected))
        .execute(&mut *conn)
        .await
        .map_err(db(
            "updating a tenant",
            "a tenant with this external id exists already",
        ))?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    record_plan(conn, t).await?;
    Ok(true)
}

/// Adds the tenant's plan to its history as of `updated_at`, unless it is
/// the plan the history already ends with.
async fn record_plan(conn: &mut sqlx::AnyConnection, t: &Tenant) -> Result<()> {
    sqlx::query(
        "INSERT INTO tenant_plans (tenant_id, since, plan_id) SELECT $1, $2, $3 \
         WHERE COALESCE((SELECT plan_id FROM tenant_plans WHERE tenant_id = $1 \
         ORDER BY since DESC LIMIT 1), '') <> $3 \
         ON CONFLICT (tenant_id, since) DO UPDATE SET plan_id = excluded.plan_id",
    )
    .bind(t.id.to_string())
    .bind(to_micros(t.updated_at))
    .bind(t.plan_id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(db("recording a plan change", ""))?;
    Ok(())
}

#[async_trait]
impl CatalogStore for SqlStore {
    async fn create_plan(&self, plan: &Plan) -> Result<()> {
        let s = &plan.spec;
        sqlx::query(&format!(
            "INSERT INTO plans ({PLAN_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(plan.id.to_string())
        .bind(plan.slug.to_string())
        .bind(s.display_name.clone())
        .bind(s.price.amount_minor)
        .bind(s.price.currency.code())
        .bind(s.billing_interval.as_str())
        .bind(i64::from(s.trial_days))
        .bind(json(&s.rate_limit))
        .bind(json(&s.quotas))
        .bind(json(&s.features))
        .bind(reset_day(s.quota_reset))
        .bind(i64::from(plan.archived))
        .bind(to_micros(plan.created_at))
        .bind(to_micros(plan.updated_at))
        .execute(&self.pool)
        .await
        .map_err(db(
            "creating a plan",
            "a plan with this slug exists already",
        ))?;
        Ok(())
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<Plan>> {
        sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a plan", ""))?
            .as_ref()
            .map(plan_from_row)
            .transpose()
    }

    async fn get_plan_by_slug(&self, slug: &Slug) -> Result<Option<Plan>> {
        sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE slug = $1"))
            .bind(slug.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a plan", ""))?
            .as_ref()
            .map(plan_from_row)
            .transpose()
    }

    async fn list_plans(&self, show_archived: bool, page: &PageRequest) -> Result<Vec<Plan>> {
        sqlx::query(&format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE id > $1 AND ($2 = 1 OR archived = 0) \
             ORDER BY id LIMIT $3"
        ))
        .bind(after(page))
        .bind(i64::from(show_archived))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing plans", ""))?
        .iter()
        .map(plan_from_row)
        .collect()
    }

    async fn replace_plan(&self, plan: &Plan, expected: Timestamp) -> Result<bool> {
        let s = &plan.spec;
        let done = sqlx::query(
            "UPDATE plans SET display_name = $2, price_amount_minor = $3, price_currency = $4, \
             billing_interval = $5, trial_days = $6, rate_limit = $7, quotas = $8, \
             features = $9, quota_reset_day = $10, archived = $11, updated_at = $12 \
             WHERE id = $1 AND updated_at = $13",
        )
        .bind(plan.id.to_string())
        .bind(s.display_name.clone())
        .bind(s.price.amount_minor)
        .bind(s.price.currency.code())
        .bind(s.billing_interval.as_str())
        .bind(i64::from(s.trial_days))
        .bind(json(&s.rate_limit))
        .bind(json(&s.quotas))
        .bind(json(&s.features))
        .bind(reset_day(s.quota_reset))
        .bind(i64::from(plan.archived))
        .bind(to_micros(plan.updated_at))
        .bind(to_micros(expected))
        .execute(&self.pool)
        .await
        .map_err(db("updating a plan", ""))?;
        Ok(done.rows_affected() == 1)
    }

    async fn map_product(&self, m: &ProductMapping) -> Result<()> {
        sqlx::query(
            "INSERT INTO product_mappings (provider, product_id, plan_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(m.provider.as_str())
        .bind(m.product_id.as_str().to_owned())
        .bind(m.plan_id.to_string())
        .bind(to_micros(m.created_at))
        .execute(&self.pool)
        .await
        .map_err(db("mapping a product", "this product is mapped already"))?;
        Ok(())
    }

    async fn get_product_mapping(
        &self,
        provider: Provider,
        product_id: &ProductId,
    ) -> Result<Option<ProductMapping>> {
        sqlx::query(
            "SELECT provider, product_id, plan_id, created_at FROM product_mappings \
             WHERE provider = $1 AND product_id = $2",
        )
        .bind(provider.as_str())
        .bind(product_id.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a product mapping", ""))?
        .as_ref()
        .map(mapping_from_row)
        .transpose()
    }

    async fn unmap_product(
        &self,
        provider: Provider,
        product_id: &ProductId,
    ) -> Result<Option<ProductMapping>> {
        sqlx::query(
            "DELETE FROM product_mappings WHERE provider = $1 AND product_id = $2 \
             RETURNING provider, product_id, plan_id, created_at",
        )
        .bind(provider.as_str())
        .bind(product_id.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("unmapping a product", ""))?
        .as_ref()
        .map(mapping_from_row)
        .transpose()
    }

    async fn list_product_mappings(
        &self,
        plan_id: Option<PlanId>,
        page: &PageRequest,
    ) -> Result<Vec<ProductMapping>> {
        // Paged by "provider/product_id", the mapping's natural key.
        sqlx::query(
            "SELECT provider, product_id, plan_id, created_at FROM product_mappings \
             WHERE provider || '/' || product_id > $1 AND ($2 = '' OR plan_id = $2) \
             ORDER BY provider || '/' || product_id LIMIT $3",
        )
        .bind(after(page))
        .bind(plan_id.map(|p| p.to_string()).unwrap_or_default())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing product mappings", ""))?
        .iter()
        .map(mapping_from_row)
        .collect()
    }

    async fn create_tenant(&self, t: &Tenant) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("creating a tenant", ""))?;
        insert_tenant(&mut tx, t).await?;
        tx.commit().await.map_err(db("creating a tenant", ""))
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a tenant", ""))?
        .as_ref()
        .map(tenant_from_row)
        .transpose()
    }

    async fn get_tenant_by_external_id(&self, external_id: &ExternalId) -> Result<Option<Tenant>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE external_id = $1"
        ))
        .bind(external_id.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a tenant", ""))?
        .as_ref()
        .map(tenant_from_row)
        .transpose()
    }

    async fn list_tenants(&self, filter: &TenantFilter, page: &PageRequest) -> Result<Vec<Tenant>> {
        sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants \
             WHERE id > $1 AND ($2 = '' OR plan_id = $2) AND ($3 = '' OR status = $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(after(page))
        .bind(filter.plan_id.map(|p| p.to_string()).unwrap_or_default())
        .bind(filter.status.map(TenantStatus::as_str).unwrap_or_default())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing tenants", ""))?
        .iter()
        .map(tenant_from_row)
        .collect()
    }

    async fn replace_tenant(&self, t: &Tenant, expected: Timestamp) -> Result<bool> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("updating a tenant", ""))?;
        if !update_tenant(&mut tx, t, expected).await? {
            return Ok(false);
        }
        tx.commit().await.map_err(db("updating a tenant", ""))?;
        Ok(true)
    }

    async fn create_key(&self, key: &ApiKey, secret: SecretHash) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("creating a key", ""))?;
        insert_key(&mut tx, key, secret).await?;
        tx.commit().await.map_err(db("creating a key", ""))
    }

    async fn create_tenant_with_key(
        &self,
        tenant: &Tenant,
        key: &ApiKey,
        secret: SecretHash,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("signing up", ""))?;
        insert_tenant(&mut tx, tenant).await?;
        insert_key(&mut tx, key, secret).await?;
        tx.commit().await.map_err(db("signing up", ""))
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<ApiKey>> {
        sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a key", ""))?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn list_keys(&self, tenant_id: TenantId, page: &PageRequest) -> Result<Vec<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(tenant_id.to_string())
        .bind(after(page))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing keys", ""))?
        .iter()
        .map(key_from_row)
        .collect()
    }

    async fn find_secret(
        &self,
        secret: SecretHash,
        at: Timestamp,
    ) -> Result<Option<(ApiKey, Option<Timestamp>)>> {
        let columns = KEY_COLUMNS
            .split(", ")
            .map(|c| format!("k.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "SELECT {columns}, s.expires_at AS secret_expires_at \
             FROM api_key_secrets s JOIN api_keys k ON k.id = s.key_id \
             WHERE s.secret_hash = $1 AND (s.expires_at IS NULL OR s.expires_at > $2)"
        ))
        .bind(secret.to_hex())
        .bind(to_micros(at))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("finding a key", ""))?;
        row.map(|r| Ok((key_from_row(&r)?, opt_time(&r, "secret_expires_at")?)))
            .transpose()
    }

    async fn replace_key(&self, key: &ApiKey, expected: Timestamp) -> Result<bool> {
        let sql = key_update_sql();
        let done = bind_key_update(key, expected, &sql)
            .execute(&self.pool)
            .await
            .map_err(db("updating a key", ""))?;
        Ok(done.rows_affected() == 1)
    }

    async fn rotate_key(
        &self,
        key: &ApiKey,
        expected: Timestamp,
        new_secret: SecretHash,
        old_valid_until: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db("rotating a key", ""))?;
        let sql = key_update_sql();
        let done = bind_key_update(key, expected, &sql)
            .execute(&mut *tx)
            .await
            .map_err(db("rotating a key", ""))?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // Shorten, never lengthen, the life of older secrets.
        sqlx::query(
            "UPDATE api_key_secrets SET expires_at = $2 \
             WHERE key_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(key.id.to_string())
        .bind(to_micros(old_valid_until))
        .execute(&mut *tx)
        .await
        .map_err(db("expiring a key's old secret", ""))?;
        insert_secret(&mut tx, key.id, new_secret, key.updated_at).await?;
        tx.commit().await.map_err(db("rotating a key", ""))?;
        Ok(true)
    }
}
