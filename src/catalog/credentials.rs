//! Service credentials: issued with an optional expiry, listed, revoked (the
//! revocation told to every replica's credential cache), and the one of
//! `admin_token` replaced when that setting changes.
use std::sync::Arc;

use super::{Change, ChangeListener, Listeners};
use crate::{
    domain::{
        Error, Result, Timestamp,
        credential::{Credential, Scope, issue_token},
        ids::CredentialId,
        now,
        secret::{IssuedSecret, SecretHash},
    },
    store::CredentialStore,
};

/// A credential together with its token, which exists only in this value.
pub struct IssuedCredential {
    pub credential: Credential,
    pub token: IssuedSecret,
}

/// The name the credential of `admin_token` is given.
pub const SEEDED_NAME: &str = "admin_token setting";

#[derive(Clone)]
pub struct Credentials {
    store: Arc<dyn CredentialStore>,
    listeners: Arc<Listeners>,
}

impl Credentials {
    pub fn new(store: Arc<dyn CredentialStore>, listeners: Vec<Arc<dyn ChangeListener>>) -> Self {
        Self {
            store,
            listeners: Arc::new(Listeners(listeners)),
        }
    }

    /// `name` already checked; `expires_at`, if set, must be in the future.
    pub async fn create(
        &self,
        scope: Scope,
        name: String,
        expires_at: Option<Timestamp>,
    ) -> Result<IssuedCredential> {
        let at = now();
        if expires_at.is_some_and(|e| e <= at) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let token = issue_token();
        let credential = Credential {
            id: CredentialId::generate(),
            name,
            scope,
            created_at: at,
            expires_at,
            revoked_at: None,
            seeded: false,
        };
        self.store
            .create_credential(&credential, token.hash())
            .await?;
        Ok(IssuedCredential { credential, token })
    }

    pub async fn list(&self) -> Result<Vec<Credential>> {
        self.store.list_credentials().await
    }

    /// Revokes for good; revoking a revoked credential changes nothing.
    pub async fn revoke(&self, id: CredentialId) -> Result<Credential> {
        let credential = self
            .store
            .revoke_credential(id, now())
            .await?
            .ok_or_else(|| Error::not_found("credential", id))?;
        self.listeners.changed(Change::Credential(id));
        Ok(credential)
    }

    /// Makes `token` (the `admin_token` setting) an admin credential, and
    /// revokes the credential of the token set there before, if another.
    /// Returns whether the token is accepted (it is not if it was revoked).
    pub async fn seed_admin(&self, token: &str) -> Result<bool> {
        let hash = SecretHash::of(token);
        let credential = Credential {
            id: CredentialId::generate(),
            name: SEEDED_NAME.into(),
            scope: Scope::Admin,
            created_at: now(),
            expires_at: None,
            revoked_at: None,
            seeded: true,
        };
        let replaced = self.store.seed_credential(&credential, hash).await?;
        for id in replaced {
            tracing::info!(credential = %id, "admin_token changed: revoked the credential of the previous token");
            self.listeners.changed(Change::Credential(id));
        }
        Ok(self.store.find_credential(hash).await?.is_some())
    }
}
