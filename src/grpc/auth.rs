//! Service credentials on every call: a tower layer that reads
//! `authorization: Bearer <token>`, finds the credential by the token's
//! SHA-256, and checks its scope against the service called.
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use crate::{
    catalog::{Change, ChangeListener},
    domain::{
        Error,
        credential::{Credential, Scope, TOKEN_PREFIX},
        key::KeyEnvironment,
        now,
        secret::{SecretHash, Shape, shape},
    },
    store::CredentialStore,
};

/// Calls that need no credential: health checks and reflection.
const PUBLIC: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The scope a path needs; `None` for public paths. Anything unknown needs
/// `admin`, so a new service is closed until opened on purpose.
pub fn required_scope(path: &str) -> Option<Scope> {
    if PUBLIC.iter().any(|p| path.starts_with(p)) {
        None
    } else if path.starts_with("/tollgate.v1.Verify/") {
        Some(Scope::Verify)
    } else {
        Some(Scope::Admin)
    }
}

const MAX_CACHED: usize = 10_000;
/// How long a token no credential has is remembered as unknown.
const UNKNOWN_FOR: Duration = Duration::from_secs(5);

/// A credential (`None`: no credential has the token), the digest it was
/// found by, and when.
type Cached = (Option<Credential>, SecretHash, Instant);

/// Finds credentials, remembering found ones for a short while so that the
/// hot path does not read the database on every call.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    ttl: Duration,
    /// Bounded and scan-resistant (as the key cache): a flood of unknown
    /// tokens cannot push the credentials in use out.
    cache: Arc<quick_cache::sync::Cache<[u8; 32], Cached>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn CredentialStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Arc::new(quick_cache::sync::Cache::new(MAX_CACHED)),
        }
    }

    /// The credential behind the request's bearer token, if it may call a
    /// method that needs `needed`.
    pub async fn authorize(
        &self,
        headers: &http::HeaderMap,
        needed: Scope,
    ) -> Result<Credential, Error> {
        let token = bearer(headers)?;
        // A tenant's API key is never a credential, even if someone
        // registered one as such: refuse it without a lookup.
        if KeyEnvironment::of_secret(token).is_some() {
            return Err(unknown());
        }
        // A token issued with a checksum that does not hold is made up:
        // refused unread. Any other text may be a token issued before
        // checksums or the operator's TOLLGATE_ADMIN_TOKEN: looked up.
        if shape(token, TOKEN_PREFIX) == Shape::BadChecksum {
            return Err(unknown());
        }
        let credential = self.find(SecretHash::of(token)).await?;
        if credential.expires_at.is_some_and(|at| at <= now()) {
            return Err(Error::Unauthenticated(format!(
                "credential {} has expired",
                credential.id
            )));
        }
        match (needed, credential.scope) {
            (_, Scope::Admin) | (Scope::Verify, Scope::Verify) => Ok(credential),
            (Scope::Admin, Scope::Verify) => Err(Error::PermissionDenied(
                "this credential has scope verify; this method needs scope admin".into(),
            )),
        }
    }

    async fn find(&self, hash: SecretHash) -> Result<Credential, Error> {
        let key = *hash.as_bytes();
        if let Some((credential, stored, at)) = self.cache.get(&key) {
            let ttl = if credential.is_some() {
                self.ttl
            } else {
                UNKNOWN_FOR.min(self.ttl)
            };
            // The map lookup found it by digest; confirm in constant time.
            if at.elapsed() < ttl && stored == hash {
                return credential.ok_or_else(unknown);
            }
        }
        let credential = self.store.find_credential(hash).await?;
        self.cache
            .insert(key, (credential.clone(), hash, Instant::now()));
        credential.ok_or_else(unknown)
    }
}

/// A revoked credential is forgotten at once, on every replica (the change
/// comes through the change channel), rather than after the cache's TTL.
impl ChangeListener for Authenticator {
    fn changed(&self, change: Change) {
        if let Change::Credential(id) = change {
            self.cache
                .retain(|_, (credential, _, _)| credential.as_ref().is_some_and(|c| c.id != id));
        }
    }

    fn missed_changes(&self) {
        self.cache.clear();
    }
}

fn unknown() -> Error {
    Error::Unauthenticated("unknown credential".into())
}

fn bearer(headers: &http::HeaderMap) -> Result<&str, Error> {
    let missing =
        || Error::Unauthenticated("missing metadata: authorization: Bearer <token>".into());
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let Some(needed) = required_scope(&path) else {
                return inner.call(req).await;
            };
            match auth.authorize(req.headers(), needed).await {
                Ok(credential) => {
                    // The call's span comes from the observe layer outside.
                    tracing::Span::current()
                        .record("credential", tracing::field::display(credential.id));
                    inner.call(req).await
                }
                Err(error) => {
                    tracing::debug!(path = %path, error = %error, "call refused");
                    Ok(Status::from(error).into_http())
                }
            }
        })
    }
}
