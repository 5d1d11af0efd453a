//! `tollgate.v1.Keys`. Secrets leave only in Create/Rotate responses.
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{
    convert::{id, key_patch, key_to_pb, new_key},
    credentials::{credential_to_pb, new_credential},
    pb::{self, keys_server},
};
use crate::{
    catalog::{Catalog, Credentials},
    domain::{
        Error,
        ids::{CredentialId, KeyId, TenantId},
        now,
        page::PageRequest,
    },
};

pub struct KeysService {
    catalog: Catalog,
    credentials: Credentials,
}

impl KeysService {
    pub fn new(catalog: Catalog, credentials: Credentials) -> Self {
        Self {
            catalog,
            credentials,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn grace_period(d: Option<&prost_types::Duration>) -> Result<Duration, Error> {
    let Some(d) = d else {
        return Ok(Duration::ZERO);
    };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(
            "grace_period",
            "must be a non-negative duration",
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[tonic::async_trait]
impl keys_server::Keys for KeysService {
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Reply<pb::CreateKeyResponse> {
        let issued = self.catalog.create_key(new_key(req.into_inner())?).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key_to_pb(&issued.key, now())),
            secret: issued.secret.into_exposed(),
        }))
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Reply<pb::Key> {
        let key_id = id("id", &req.into_inner().id, KeyId::parse)?;
        let key = self.catalog.get_key(key_id).await?;
        Ok(Response::new(key_to_pb(&key, now())))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Reply<pb::ListKeysResponse> {
        let req = req.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id, TenantId::parse)?;
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            format!("keys;tenant={tenant_id}"),
        )
        .map_err(Error::from)?;
        let page = self.catalog.list_keys(tenant_id, page).await?;
        let at = now();
        Ok(Response::new(pb::ListKeysResponse {
            keys: page.items.iter().map(|k| key_to_pb(k, at)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_key(&self, req: Request<pb::UpdateKeyRequest>) -> Reply<pb::Key> {
        let (key_id, patch) = key_patch(req.into_inner())?;
        let key = self.catalog.update_key(key_id, patch).await?;
        Ok(Response::new(key_to_pb(&key, now())))
    }

    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> Reply<pb::Key> {
        let key_id = id("id", &req.into_inner().id, KeyId::parse)?;
        let key = self.catalog.revoke_key(key_id).await?;
        Ok(Response::new(key_to_pb(&key, now())))
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Reply<pb::RotateKeyResponse> {
        let req = req.into_inner();
        let key_id = id("id", &req.id, KeyId::parse)?;
        let grace = grace_period(req.grace_period.as_ref())?;
        let issued = self.catalog.rotate_key(key_id, grace).await?;
        Ok(Response::new(pb::RotateKeyResponse {
            key: Some(key_to_pb(&issued.key, now())),
            secret: issued.secret.into_exposed(),
        }))
    }

    async fn create_credential(
        &self,
        req: Request<pb::CreateCredentialRequest>,
    ) -> Reply<pb::CreateCredentialResponse> {
        let new = new_credential(&req.into_inner())?;
        let issued = self
            .credentials
            .create(new.scope, new.name, new.expires_at)
            .await?;
        Ok(Response::new(pb::CreateCredentialResponse {
            credential: Some(credential_to_pb(&issued.credential, now())),
            token: issued.token.into_exposed(),
        }))
    }

    async fn list_credentials(
        &self,
        _req: Request<pb::ListCredentialsRequest>,
    ) -> Reply<pb::ListCredentialsResponse> {
        let at = now();
        let credentials = self.credentials.list().await?;
        Ok(Response::new(pb::ListCredentialsResponse {
            credentials: credentials
                .iter()
                .map(|c| credential_to_pb(c, at))
                .collect(),
        }))
    }

    async fn revoke_credential(
        &self,
        req: Request<pb::RevokeCredentialRequest>,
    ) -> Reply<pb::Credential> {
        let credential_id = id("id", &req.into_inner().id, CredentialId::parse)?;
        let credential = self.credentials.revoke(credential_id).await?;
        Ok(Response::new(credential_to_pb(&credential, now())))
    }
}
