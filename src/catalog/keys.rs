//! API keys: issued, changed, rotated and revoked.
use super::*;

impl Catalog {
    pub async fn create_key(&self, new: NewKey) -> Result<IssuedKey> {
        // The tenant must exist; the foreign key would catch it too, but
        // without naming what is missing.
        self.get_tenant(&TenantRef::Id(new.tenant_id)).await?;
        if new.settings.expires_at.is_some_and(|at| at <= now()) {
            return Err(Error::invalid("key.expire_time", "must be in the future"));
        }
        let IssuedKey { key, secret } = issue_key(new, now());
        self.store.create_key(&key, secret.hash()).await?;
        // Caches that remember unknown secrets must not outlive a new one.
        self.announce(Change::Key(key.id));
        Ok(IssuedKey { key, secret })
    }

    pub async fn get_key(&self, id: KeyId) -> Result<ApiKey> {
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::not_found("key", id))
    }

    pub async fn list_keys(&self, tenant_id: TenantId, page: PageRequest) -> Result<Page<ApiKey>> {
        // An unknown tenant is NOT_FOUND rather than an empty list.
        self.get_tenant(&TenantRef::Id(tenant_id)).await?;
        let rows = self.store.list_keys(tenant_id, &page).await?;
        Ok(Page::from_rows(&page, rows, |k| k.id.to_string()))
    }

    pub async fn update_key(&self, id: KeyId, patch: KeyPatch) -> Result<ApiKey> {
        if patch.expires_at.flatten().is_some_and(|at| at <= now()) {
            return Err(Error::invalid("key.expire_time", "must be in the future"));
        }
        self.modify_key(id, move |k| {
            let s = &mut k.settings;
            if let Some(v) = patch.name.clone() {
                s.name = v;
            }
            if let Some(v) = patch.disabled {
                s.disabled = v;
            }
            if let Some(v) = patch.expires_at {
                s.expires_at = v;
            }
            if let Some(v) = patch.rate_limit_override {
                s.rate_limit_override = v;
            }
            if let Some(v) = patch.quota_overrides.clone() {
                s.quota_overrides = v;
            }
            if let Some(v) = patch.metadata.clone() {
                s.metadata = v;
            }
            Ok(())
        })
        .await
    }

    /// Revokes a key; revoking it again changes nothing.
    pub async fn revoke_key(&self, id: KeyId) -> Result<ApiKey> {
        let key = self.get_key(id).await?;
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        self.modify_key(id, |k| {
            if k.revoked_at.is_none() {
                k.revoked_at = Some(k.updated_at);
            }
            Ok(())
        })
        .await
    }

    pub async fn rotate_key(&self, id: KeyId, grace: Duration) -> Result<IssuedKey> {
        if grace > MAX_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 30 days"));
        }
        let grace = time::Duration::try_from(grace)
            .map_err(|_| Error::invalid("grace_period", "is out of range"))?;
        for _ in 0..MAX_ATTEMPTS {
            let current = self.get_key(id).await?;
            if current.revoked_at.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "key {id} is revoked; create a new key instead"
                )));
            }
            let secret = current.environment.issue_secret();
            let mut key = current.clone();
            key.updated_at = next_stamp(current.updated_at);
            key.prefix = display_prefix(secret.expose());
            let old_until = key.updated_at + grace;
            if self
                .store
                .rotate_key(&key, current.updated_at, secret.hash(), old_until)
                .await?
            {
                self.announce(Change::Key(id));
                return Ok(IssuedKey { key, secret });
            }
        }
        Err(contended("key", id))
    }

    async fn modify_key(
        &self,
        id: KeyId,
        change: impl Fn(&mut ApiKey) -> Result<()> + Send + Sync,
    ) -> Result<ApiKey> {
        let store = &self.store;
        modify(
            "key",
            id,
            || Box::pin(async move { store.get_key(id).await }),
            |k| k.updated_at,
            |k, at| k.updated_at = at,
            change,
            |k, expected| {
                let store = Arc::clone(store);
                Box::pin(async move { store.replace_key(k, expected).await })
            },
        )
        .await
        .inspect(|_| self.announce(Change::Key(id)))
    }
}

/// A new key and its secret.
pub(super) fn issue_key(new: NewKey, at: Timestamp) -> IssuedKey {
    let secret = new.environment.issue_secret();
    IssuedKey {
        key: ApiKey {
            id: KeyId::generate(),
            tenant_id: new.tenant_id,
            environment: new.environment,
            prefix: display_prefix(secret.expose()),
            settings: new.settings,
            created_at: at,
            updated_at: at,
            last_used_at: None,
            revoked_at: None,
        },
        secret,
    }
}
