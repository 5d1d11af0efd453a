//! The SQL backend, one implementation for PostgreSQL (production) and SQLite
//! (the embedded default) through sqlx's `Any` driver. The schema in
//! `migrations/` is portable, so both run the same statements.
use std::{str::FromStr, time::Duration};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{
    AnyPool, Row,
    any::{AnyConnectOptions, AnyPoolOptions, AnyRow},
    migrate::Migrator,
};

use super::{CatalogStore, CredentialStore, TenantFilter, UsageTotal};
use crate::domain::{
    Error, Result, Timestamp,
    credential::{Credential, Scope},
    from_micros,
    ids::{CredentialId, KeyId, PlanId, TenantId},
    key::{ApiKey, KeyEnvironment, KeySettings},
    page::PageRequest,
    plan::{
        BillingInterval, Currency, Plan, PlanSpec, Price, ProductId, ProductMapping, Provider,
        QuotaReset, Resource, Slug,
    },
    secret::SecretHash,
    tenant::{Email, ExternalId, Tenant, TenantProfile, TenantStatus},
    text::Metadata,
    to_micros,
    verify::Period,
};

mod credits;
mod invoices;
mod revenue;
mod subscriptions;
mod usage;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }
}

#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// A typed PostgreSQL pool for the statements `Any` cannot express
    /// (array parameters, for the usage flush's `UNNEST` upsert).
    pg: Option<sqlx::PgPool>,
}

/// PostgreSQL only (SQLite has no fillfactor, so no migration can say it):
/// every flush updates the usage tables' rows in place, and half-empty pages
/// keep those updates HOT (no index entry written, the old version pruned on
/// its page). In the long tail that halves PostgreSQL's CPU per Verify (6.8
/// to 3.3 µs). Set once; pages written before keep theirs until rewritten.
async fn leave_room_for_updates(pg: &sqlx::PgPool) -> anyhow::Result<()> {
    const SETTING: &str = "fillfactor=50";
    for table in ["usage_counters", "usage_leases"] {
        let set: bool = sqlx::query_scalar(
            "SELECT COALESCE(reloptions, '{}') @> ARRAY[$2] FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(table)
        .bind(SETTING)
        .fetch_one(pg)
        .await
        .with_context(|| format!("reading {table}'s storage settings"))?;
        if !set {
            // Takes a lock autovacuum yields to, once.
            sqlx::query(&format!("ALTER TABLE {table} SET ({SETTING})"))
                .execute(pg)
                .await
                .with_context(|| format!("setting {table}'s fillfactor"))?;
        }
    }
    Ok(())
}

impl SqlStore {
    /// Connects without touching the schema.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)
            .ok_or_else(|| anyhow!("database_url must start with postgres:// or sqlite:"))?;
        let options = AnyConnectOptions::from_str(url).context("parsing database_url")?;
        let pool = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            // SQLite allows one writer; a single connection keeps transactions
            // from ever failing with "database is locked".
            .max_connections(match backend {
                Backend::Postgres => max_connections,
                Backend::Sqlite => 1,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        let pg = match backend {
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(5))
                    .max_connections(2)
                    .connect_lazy(url)
                    .context("parsing database_url")?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Self { pool, backend, pg })
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying database migrations")?;
        if let Some(pg) = &self.pg {
            leave_room_for_updates(pg).await?;
        }
        Ok(())
    }

    /// Fails, saying what to run, unless every migration has been applied
    /// (for servers that leave migrating to `tollgate migrate`).
    pub async fn ensure_migrated(&self) -> anyhow::Result<()> {
        // No table yet reads as nothing applied.
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        let pending: Vec<_> = MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .collect();
        if let Some(first) = pending.first() {
            anyhow::bail!(
                "the database schema is not up to date ({} migrations pending, from {} {}): run `tollgate migrate`, or set migrate_on_start = true",
                pending.len(),
                first.version,
                first.description
            );
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        if let Some(pg) = &self.pg {
            pg.close().await;
        }
        self.pool.close().await;
    }
}

/// Maps a database error: unique violations become `AlreadyExists(taken)`,
/// lost connections `Unavailable`, the rest internal errors with context.
fn db(context: &'static str, taken: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| match e {
        sqlx::Error::Database(ref d) if d.is_unique_violation() && !taken.is_empty() => {
            Error::AlreadyExists(taken.to_owned())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            Error::Unavailable(format!("database unavailable while {context}"))
        }
        other => Error::Internal(anyhow::Error::new(other).context(context)),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialize")
}

fn from_json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column).map_err(db("decoding a row", ""))?;
    serde_json::from_str(&text)
        .with_context(|| format!("column {column} holds invalid JSON"))
        .map_err(Error::Internal)
}

fn time(row: &AnyRow, column: &str) -> Result<Timestamp> {
    opt_time(row, column)?
        .ok_or_else(|| Error::Internal(anyhow!("column {column} is unexpectedly NULL")))
}

fn opt_time(row: &AnyRow, column: &str) -> Result<Option<Timestamp>> {
    let micros: Option<i64> = row.try_get(column).map_err(db("decoding a row", ""))?;
    micros
        .map(|m| from_micros(m).ok_or_else(|| corrupt(column)))
        .transpose()
}

fn text(row: &AnyRow, column: &str) -> Result<String> {
    row.try_get(column).map_err(db("decoding a row", ""))
}

fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    row.try_get(column).map_err(db("decoding a row", ""))
}

fn int(row: &AnyRow, column: &str) -> Result<i64> {
    row.try_get(column).map_err(db("decoding a row", ""))
}

fn corrupt(column: &str) -> Error {
    Error::Internal(anyhow!("column {column} holds a value the domain rejects"))
}

/// Re-parses a stored value through its domain constructor.
fn parsed<T, E>(column: &str, value: std::result::Result<T, E>) -> Result<T> {
    value.map_err(|_| corrupt(column))
}

fn plan_from_row(row: &AnyRow) -> Result<Plan> {
    let reset_day: Option<i64> = row.try_get("quota_reset_day").map_err(db("decoding", ""))?;
    Ok(Plan {
        id: parsed("id", PlanId::parse("id", &text(row, "id")?))?,
        slug: parsed("slug", Slug::parse("slug", &text(row, "slug")?))?,
        spec: PlanSpec {
            display_name: text(row, "display_name")?,
            price: Price {
                amount_minor: int(row, "price_amount_minor")?,
                currency: parsed(
                    "price_currency",
                    Currency::parse("", &text(row, "price_currency")?),
                )?,
            },
            billing_interval: BillingInterval::from_name(&text(row, "billing_interval")?)
                .ok_or_else(|| corrupt("billing_interval"))?,
            trial_days: parsed("trial_days", u16::try_from(int(row, "trial_days")?))?,
            rate_limit: from_json(row, "rate_limit")?,
            quotas: from_json(row, "quotas")?,
            features: from_json(row, "features")?,
            quota_reset: match reset_day {
                None => QuotaReset::BillingPeriod,
                Some(day) => parsed("quota_reset_day", QuotaReset::calendar_month("", day))?,
            },
        },
        archived: int(row, "archived")? != 0,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn reset_day(reset: QuotaReset) -> Option<i64> {
    match reset {
        QuotaReset::CalendarMonth { day } => Some(i64::from(day)),
        QuotaReset::BillingPeriod => None,
    }
}

fn mapping_from_row(row: &AnyRow) -> Result<ProductMapping> {
    Ok(ProductMapping {
        provider: parsed("provider", Provider::parse("", &text(row, "provider")?))?,
        product_id: parsed(
            "product_id",
            ProductId::parse("", &text(row, "product_id")?),
        )?,
        plan_id: parsed("plan_id", PlanId::parse("", &text(row, "plan_id")?))?,
        created_at: time(row, "created_at")?,
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: parsed("id", TenantId::parse("", &text(row, "id")?))?,
        profile: TenantProfile {
            external_id: opt_text(row, "external_id")?
                .map(|s| parsed("external_id", ExternalId::parse("", &s)))
                .transpose()?,
            email: opt_text(row, "email")?
                .map(|s| parsed("email", Email::parse("", &s)))
                .transpose()?,
            name: text(row, "name")?,
            company: text(row, "company")?,
            metadata: from_json::<Metadata>(row, "metadata")?,
        },
        plan_id: parsed("plan_id", PlanId::parse("", &text(row, "plan_id")?))?,
        status: TenantStatus::from_name(&text(row, "status")?).ok_or_else(|| corrupt("status"))?,
        trial_end: opt_time(row, "trial_end")?,
        billing_period: match (opt_time(row, "period_start")?, opt_time(row, "period_end")?) {
            (Some(start), Some(end)) => Some(Period { start, end }),
            _ => None,
        },
        trial_started_at: opt_time(row, "trial_started_at")?,
        converted_at: opt_time(row, "converted_at")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn usage_from_row(row: &AnyRow) -> Result<UsageTotal> {
    Ok(UsageTotal {
        tenant_id: parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
        resource: parsed("resource", Resource::parse("", &text(row, "resource")?))?,
        period_start: time(row, "period_start")?,
        period_end: time(row, "period_end")?,
        used: int(row, "used")?,
    })
}

fn key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: parsed("id", KeyId::parse("", &text(row, "id")?))?,
        tenant_id: parsed("tenant_id", TenantId::parse("", &text(row, "tenant_id")?))?,
        environment: KeyEnvironment::from_name(&text(row, "environment")?)
            .ok_or_else(|| corrupt("environment"))?,
        prefix: text(row, "prefix")?,
        settings: KeySettings {
            name: text(row, "name")?,
            disabled: int(row, "disabled")? != 0,
            expires_at: opt_time(row, "expires_at")?,
            rate_limit_override: match opt_text(row, "rate_limit_override")? {
                None => None,
                Some(s) => Some(parsed("rate_limit_override", serde_json::from_str(&s))?),
            },
            quota_overrides: from_json(row, "quota_overrides")?,
            metadata: from_json(row, "metadata")?,
        },
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        last_used_at: opt_time(row, "last_used_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

fn credential_from_row(row: &AnyRow) -> Result<Credential> {
    Ok(Credential {
        id: parsed("id", CredentialId::parse("", &text(row, "id")?))?,
        name: text(row, "name")?,
        scope: Scope::from_name(&text(row, "scope")?).ok_or_else(|| corrupt("scope"))?,
        created_at: time(row, "created_at")?,
    })
}

/// The cursor of a keyset page: rows after this id (empty string: from the start).
fn after(page: &PageRequest) -> String {
    page.after.clone().unwrap_or_default()
}

const PLAN_COLUMNS: &str = "id, slug, display_name, price_amount_minor, price_currency, \
    billing_interval, trial_days, rate_limit, quotas, features, quota_reset_day, archived, \
    created_at, updated_at";
const TENANT_COLUMNS: &str = "id, external_id, email, name, company, plan_id, status, \
    trial_end, metadata, created_at, updated_at, period_start, period_end, trial_started_at, \
    converted_at";
const KEY_COLUMNS: &str = "id, tenant_id, name, environment, prefix, disabled, expires_at, \
    rate_limit_override, quota_overrides, metadata, created_at, updated_at, last_used_at, \
    revoked_at";

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
async fn insert_tenant(conn: &mut sqlx::AnyConnection, t: &Tenant) -> Result<()> {
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
async fn update_tenant(
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

#[async_trait]
impl CredentialStore for SqlStore {
    async fn create_credential(&self, c: &Credential, token: SecretHash) -> Result<()> {
        sqlx::query(
            "INSERT INTO credentials (id, name, scope, token_hash, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(c.id.to_string())
        .bind(c.name.clone())
        .bind(c.scope.as_str())
        .bind(token.to_hex())
        .bind(to_micros(c.created_at))
        .execute(&self.pool)
        .await
        .map_err(db("creating a credential", "this token is in use already"))?;
        Ok(())
    }

    async fn ensure_credential(&self, c: &Credential, token: SecretHash) -> Result<()> {
        sqlx::query(
            "INSERT INTO credentials (id, name, scope, token_hash, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(c.id.to_string())
        .bind(c.name.clone())
        .bind(c.scope.as_str())
        .bind(token.to_hex())
        .bind(to_micros(c.created_at))
        .execute(&self.pool)
        .await
        .map_err(db("seeding a credential", ""))?;
        Ok(())
    }

    async fn find_credential(&self, token: SecretHash) -> Result<Option<Credential>> {
        sqlx::query(
            "SELECT id, name, scope, created_at FROM credentials \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("finding a credential", ""))?
        .as_ref()
        .map(credential_from_row)
        .transpose()
    }

    async fn count_credentials(&self, scope: Scope) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM credentials WHERE scope = $1 AND revoked_at IS NULL",
        )
        .bind(scope.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting credentials", ""))?;
        int(&row, "n")
    }
}
