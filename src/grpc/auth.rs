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
/// At most one reload of an expired credential this often; meanwhile (and
/// while the database does not answer) the others use what was found.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What a token was found to be (`None`: no credential has it), the digest
/// it was found by, when, and when a caller last set out to read it again.
#[derive(Clone)]
struct Cached {
    credential: Option<Credential>,
    hash: SecretHash,
    loaded: Instant,
    tried: Instant,
}

/// How long the database may take to find a credential, by the scope the
/// call needs, and how old a found credential may be used while it does
/// not answer (as the key cache's `key_stale_seconds`).
#[derive(Clone, Copy)]
pub struct Outage {
    pub stale: Duration,
    pub verify_budget: Duration,
    pub admin_budget: Duration,
}

/// Finds credentials, remembering found ones for a short while so that the
/// hot path does not read the database on every call.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    ttl: Duration,
    outage: Outage,
    /// Bounded and scan-resistant (as the key cache): a flood of unknown
    /// tokens cannot push the credentials in use out.
    cache: Arc<quick_cache::sync::Cache<[u8; 32], Cached>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn CredentialStore>, ttl: Duration, outage: Outage) -> Self {
        Self {
            store,
            ttl,
            outage: Outage {
                stale: outage.stale.max(ttl),
                ..outage
            },
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
        let budget = match needed {
            Scope::Verify => self.outage.verify_budget,
            Scope::Admin => self.outage.admin_budget,
        };
        let credential = self.find(SecretHash::of(token), budget).await?;
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

    /// The credential with the token's digest: remembered, or read within
    /// `budget` (one caller reads an absent token, the others wait for it);
    /// while the database does not answer, one found before, until stale.
    async fn find(&self, hash: SecretHash, budget: Duration) -> Result<Credential, Error> {
        let key = *hash.as_bytes();
        let mut stale = None;
        let read = async {
            let placeholder = match self.cache.get_value_or_guard_async(&key).await {
                Err(placeholder) => Some(placeholder),
                // The map lookup found it by digest; confirm in constant time.
                Ok(cached) if cached.hash == hash => {
                    let age = cached.loaded.elapsed();
                    let ttl = if cached.credential.is_some() {
                        self.ttl
                    } else {
                        UNKNOWN_FOR.min(self.ttl)
                    };
                    if age < ttl {
                        return Ok(cached.credential);
                    }
                    if cached.credential.is_some() && age < self.outage.stale {
                        if cached.tried.elapsed() < RELOAD_EVERY {
                            return Ok(cached.credential);
                        }
                        stale.clone_from(&cached.credential);
                        self.cache.insert(
                            key,
                            Cached {
                                tried: Instant::now(),
                                ..cached
                            },
                        );
                    }
                    None
                }
                Ok(_) => None,
            };
            let credential = self.store.find_credential(hash).await?;
            let at = Instant::now();
            let cached = Cached {
                credential: credential.clone(),
                hash,
                loaded: at,
                tried: at,
            };
            match placeholder {
                // Err: a revocation removed the placeholder meanwhile; what
                // was read may predate it, so it is not kept.
                Some(placeholder) => drop(placeholder.insert(cached)),
                None => self.cache.insert(key, cached),
            }
            Ok(credential)
        };
        let found = tokio::time::timeout(budget, read)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "the database did not answer within {} ms while finding the credential; retry shortly",
                    budget.as_millis()
                )))
            });
        match found {
            Ok(credential) => credential.ok_or_else(unknown),
            Err(Error::Unavailable(reason)) if stale.is_some() => {
                tracing::debug!(%reason, "using a credential found earlier");
                stale.ok_or_else(unknown)
            }
            Err(e) => Err(e),
        }
    }
}

/// A revoked credential is forgotten at once, on every replica (the change
/// comes through the change channel), rather than after the cache's TTL.
impl ChangeListener for Authenticator {
    fn changed(&self, change: Change) {
        if let Change::Credential(id) = change {
            self.cache
                .retain(|_, cached| cached.credential.as_ref().is_some_and(|c| c.id != id));
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
