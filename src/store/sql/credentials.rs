//! Service credentials in SQL, found by their token's SHA-256.
use async_trait::async_trait;

use crate::domain::{
    Result,
    credential::{Credential, Scope},
    secret::SecretHash,
    to_micros,
};
use crate::store::CredentialStore;

use super::{SqlStore, db, rows::*};

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
