//! Service credentials in SQL, found by their token's SHA-256.
use async_trait::async_trait;

use crate::domain::{
    Result, Timestamp,
    credential::{Credential, Scope},
    ids::CredentialId,
    secret::SecretHash,
    to_micros,
};
use crate::store::CredentialStore;

use super::{SqlStore, db, rows::*};

const COLUMNS: &str = "id, name, scope, created_at, expires_at, revoked_at, seeded";

const INSERT: &str = "INSERT INTO credentials \
     (id, name, scope, token_hash, created_at, expires_at, revoked_at, seeded) \
     VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)";

fn insert<'q>(
    c: &Credential,
    token: SecretHash,
    sql: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(c.id.to_string())
        .bind(c.name.clone())
        .bind(c.scope.as_str())
        .bind(token.to_hex())
        .bind(to_micros(c.created_at))
        .bind(c.expires_at.map(to_micros))
        .bind(i32::from(c.seeded))
}

#[async_trait]
impl CredentialStore for SqlStore {
    async fn create_credential(&self, c: &Credential, token: SecretHash) -> Result<()> {
        insert(c, token, INSERT)
            .execute(&self.pool)
            .await
            .map_err(db("creating a credential", "this token is in use already"))?;
        Ok(())
    }

    async fn seed_credential(
        &self,
        c: &Credential,
        token: SecretHash,
    ) -> Result<Vec<CredentialId>> {
        const WHAT: &str = "seeding a credential";
        let mut tx = self.pool.begin().await.map_err(db(WHAT, ""))?;
        let replaced = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 \
             WHERE seeded = 1 AND revoked_at IS NULL AND token_hash <> $2 RETURNING id",
        )
        .bind(to_micros(c.created_at))
        .bind(token.to_hex())
        .fetch_all(&mut *tx)
        .await
        .map_err(db(WHAT, ""))?
        .iter()
        .map(|row| parsed("id", CredentialId::parse("", &text(row, "id")?)))
        .collect::<Result<Vec<_>>>()?;
        let insert_new = format!("{INSERT} ON CONFLICT (token_hash) DO NOTHING");
        insert(c, token, &insert_new)
            .execute(&mut *tx)
            .await
            .map_err(db(WHAT, ""))?;
        tx.commit().await.map_err(db(WHAT, ""))?;
        Ok(replaced)
    }

    async fn find_credential(&self, token: SecretHash) -> Result<Option<Credential>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("finding a credential", ""))?
        .as_ref()
        .map(credential_from_row)
        .transpose()
    }

    async fn list_credentials(&self) -> Result<Vec<Credential>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing credentials", ""))?
        .iter()
        .map(credential_from_row)
        .collect()
    }

    async fn revoke_credential(
        &self,
        id: CredentialId,
        at: Timestamp,
    ) -> Result<Option<Credential>> {
        const WHAT: &str = "revoking a credential";
        let mut tx = self.pool.begin().await.map_err(db(WHAT, ""))?;
        sqlx::query("UPDATE credentials SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(to_micros(at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db(WHAT, ""))?;
        let credential = sqlx::query(&format!("SELECT {COLUMNS} FROM credentials WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(WHAT, ""))?
            .as_ref()
            .map(credential_from_row)
            .transpose()?;
        tx.commit().await.map_err(db(WHAT, ""))?;
        Ok(credential)
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
