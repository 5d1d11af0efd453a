//! The SQL backend, one implementation for PostgreSQL (production) and SQLite
//! (the embedded default) through sqlx's `Any` driver. The schema in
//! `migrations/` is portable, so both run the same statements.
use std::{str::FromStr, time::Duration};

use anyhow::{Context, anyhow};
use sqlx::{
    AnyPool,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};

use crate::domain::Error;

mod catalog;
mod credentials;
mod credits;
mod invoices;
mod revenue;
mod rows;
mod subscriptions;
mod usage;

use catalog::{insert_tenant, update_tenant};
use rows::{
    PLAN_COLUMNS, TENANT_COLUMNS, after, int, opt_text, opt_time, parsed, plan_from_row,
    tenant_from_row, text, time, usage_from_row,
};

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
    /// Connects without touching the schema. A call waits at most
    /// `acquire_timeout` for a connection (then: `Unavailable`).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)
            .ok_or_else(|| anyhow!("database_url must start with postgres:// or sqlite:"))?;
        let options = AnyConnectOptions::from_str(url).context("parsing database_url")?;
        let pool = AnyPoolOptions::new()
            .acquire_timeout(acquire_timeout)
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
                    .acquire_timeout(acquire_timeout)
                    .max_connections(2)
                    .connect_lazy(url)
                    .context("parsing database_url")?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Self { pool, backend, pg })
    }

    /// Connects (waiting up to 5 s for a connection) and applies pending
    /// migrations.
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let store = Self::connect(url, max_connections, Duration::from_secs(5)).await?;
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
