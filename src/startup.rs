//! Building and running the server: open the store, bind, serve until told
//! to stop, then drain.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{
    catalog::{Catalog, ChangeListener, Credentials, Listeners},
    config::Config,
    credits::Credits,
    grpc::{
        FILE_DESCRIPTOR_SET,
        auth::{AuthLayer, Authenticator, Outage},
        billing::BillingService,
        keys::KeysService,
        observe::{ObserveLayer, Observer},
        pb::{
            billing_server::BillingServer, keys_server::KeysServer, plans_server::PlansServer,
            verify_server::VerifyServer,
        },
        plans::PlansService,
        verify::VerifyService,
    },
    invoicing::Invoicing,
    limiter::{
        Limiter,
        local::LocalLimiter,
        shared::{RedisLimiter, RedisSettings},
    },
    listener::{GuardedListener, HTTP2_PREFACE, Limits},
    metering::Metering,
    replicas::{self, ChangeBus},
    revenue::Revenue,
    shared_redis::SharedRedis,
    store::sql::SqlStore,
    subscriptions::Subscriptions,
    telemetry::metrics::{self, ServerMetrics, UsageMetrics},
    tls,
    verifier::{EntitlementCache, Verifier},
};

/// Opens the configured database (creating the embedded data directory when
/// needed), applying migrations when `migrate_on_start` says so and
/// otherwise checking that they were applied.
pub async fn open_store(config: &Config) -> anyhow::Result<SqlStore> {
    let store = connect_store(config).await?;
    if config.migrate_on_start {
        store.migrate().await?;
    } else {
        store.ensure_migrated().await?;
    }
    Ok(store)
}

/// Opens the configured database without touching its schema.
pub async fn connect_store(config: &Config) -> anyhow::Result<SqlStore> {
    if config.database_url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    }
    SqlStore::connect(
        &config.effective_database_url(),
        config.database_max_connections,
        Duration::from_millis(config.database_timeout_millis),
    )
    .await
}

/// The configured Redis, if any.
pub async fn connect_redis(config: &Config) -> anyhow::Result<Option<SharedRedis>> {
    if config.redis_url.is_empty() {
        return Ok(None);
    }
    let redis = SharedRedis::connect(
        &config.redis_urls(),
        config.redis_cluster,
        Duration::from_millis(config.redis_timeout_millis),
        (!config.redis_ca_file.as_os_str().is_empty()).then_some(config.redis_ca_file.as_path()),
    )
    .await?;
    Ok(Some(redis))
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The `/metrics` listener, when `metrics_listen` is set.
    metrics_listener: Option<TcpListener>,
    store: SqlStore,
    redis: Option<Arc<SharedRedis>>,
    /// The server's TLS, when `tls_cert_file` is set.
    tls: Option<TlsAcceptor>,
    config: Config,
}

impl Application {
    /// Opens the store and binds the listener, so `local_addr` is known
    /// (port 0 picks a free port) before serving starts.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let tls = config
            .tls_files()
            .map(|files| tls::server::acceptor(&files))
            .transpose()
            .context("the server's TLS (tls_cert_file, tls_key_file, tls_client_ca_file)")?;
        let store = open_store(&config).await?;
        let redis = connect_redis(&config).await?.map(Arc::new);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding listen address {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_addr()? {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics_listen address {addr}"))?,
            ),
        };
        Ok(Self {
            listener,
            local_addr,
            metrics_listener,
            store,
            redis,
            tls,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then reports NOT_SERVING, refuses
    /// new calls and lets in-flight calls finish within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let metrics_addr = self.metrics_addr();
        let mut registry = Registry::default();
        let metrics = ServerMetrics::register(&mut registry, self.redis.is_some());
        let store = Arc::new(self.store.clone());
        let cache = Arc::new(EntitlementCache::new(
            Duration::from_secs(self.config.key_cache_seconds),
            Duration::from_secs(self.config.key_stale_seconds),
            self.config.key_cache_entries,
            metrics.cache.clone(),
        ));
        let auth = Authenticator::new(
            store.clone(),
            Duration::from_secs(self.config.credential_cache_seconds),
            Outage {
                stale: Duration::from_secs(self.config.key_stale_seconds),
                verify_budget: Duration::from_millis(self.config.verify_read_budget_millis),
                admin_budget: Duration::from_millis(self.config.database_timeout_millis),
            },
        );
        let mut catalog = Catalog::new(store.clone()).with_listener(cache.clone());
        let mut credential_listeners: Vec<Arc<dyn ChangeListener>> = vec![Arc::new(auth.clone())];
        let mut follower = None;
        let limiter: Arc<dyn Limiter> = match self.redis {
            None => Arc::new(LocalLimiter::new(store.clone(), metrics.usage.clone())),
            Some(redis) => {
                let prefix = self.config.redis_key_prefix.clone();
                let bus = Arc::new(ChangeBus::new(redis.bulk.clone(), &prefix));
                catalog = catalog.with_listener(bus.clone());
                credential_listeners.push(bus);
                let caches = Listeners(vec![cache.clone(), Arc::new(auth.clone())]);
                follower = Some(tokio::spawn(replicas::follow(
                    redis.subscribers.clone(),
                    prefix.clone(),
                    Arc::new(caches),
                    metrics.changes.clone(),
                )));
                Arc::new(RedisLimiter::new(
                    redis,
                    store.clone(),
                    RedisSettings {
                        prefix,
                        budget: Duration::from_millis(self.config.redis_timeout_millis),
                        database_timeout: Duration::from_millis(
                            self.config.database_timeout_millis,
                        ),
                        failure: self.config.redis_failure,
                        sweep_every: Duration::from_secs(self.config.usage_sweep_seconds),
                    },
                    (metrics.redis.clone(), metrics.usage.clone()),
                ))
            }
        };
        let verifier = Arc::new(
            Verifier::new(store.clone(), cache, limiter.clone(), store.clone())
                .with_unchecked_secrets(self.config.unchecked_secrets)
                .with_read_budget(Duration::from_millis(self.config.verify_read_budget_millis)),
        );
        let flusher = tokio::spawn(flush_every(
            limiter.clone(),
            Duration::from_millis(self.config.usage_flush_millis),
            metrics.usage.clone(),
        ));
        let credentials = Credentials::new(store.clone(), credential_listeners);
        if !self.config.admin_token.is_empty()
            && !credentials
                .seed_admin(&self.config.admin_token)
                .await
                .context("seeding the admin credential from admin_token")?
        {
            tracing::warn!("admin_token is a revoked credential: calls presenting it are refused");
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<PlansServer<PlansService>>().await;
        health.set_serving::<BillingServer<BillingService>>().await;
        health.set_serving::<KeysServer<KeysService>>().await;
        health.set_serving::<VerifyServer<VerifyService>>().await;
        health.set_service_status("", ServingStatus::Serving).await;

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.BadRequest, so grpcurl can show error details.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building reflection v1alpha")?;

        let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
        let reporter = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new calls, finishing in-flight ones");
            reporter
                .set_not_serving::<PlansServer<PlansService>>()
                .await;
            reporter
                .set_not_serving::<BillingServer<BillingService>>()
                .await;
            reporter.set_not_serving::<KeysServer<KeysService>>().await;
            reporter
                .set_not_serving::<VerifyServer<VerifyService>>()
                .await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            let _ = stopping_tx.send(true);
        };

        let metrics_endpoint = self
            .metrics_listener
            .map(|listener| metrics::Endpoint::start(listener, registry));
        let observer = Observer::new(
            &[
                FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
            metrics_endpoint.is_some().then(|| metrics.grpc.clone()),
            !self.config.otlp_endpoint.is_empty(),
        );

        tracing::info!(
            addr = %self.local_addr,
            metrics_addr = metrics_addr.map(tracing::field::display),
            config = ?self.config,
            "tollgate serving"
        );
        let subscriptions = Subscriptions::new(catalog.clone(), store.clone());
        let incoming = GuardedListener::new(
            self.listener,
            Limits {
                max_connections: self.config.max_connections,
                handshake: Duration::from_millis(self.config.handshake_timeout_millis),
                handshake_bytes: HTTP2_PREFACE,
                idle: None,
            },
        );
        let server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(
                self.config.http2_keepalive_seconds,
            )))
            .http2_keepalive_timeout(Some(Duration::from_secs(
                self.config.http2_keepalive_timeout_seconds,
            )))
            .layer(ObserveLayer::new(observer))
            .layer(AuthLayer::new(auth))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(PlansServer::new(PlansService::new(
                catalog.clone(),
                subscriptions.clone(),
            )))
            .add_service(BillingServer::new(BillingService::new(
                catalog.clone(),
                Metering::new(catalog.clone(), store.clone(), limiter.clone()),
                Credits::new(catalog.clone(), store.clone()),
                subscriptions,
                Invoicing::new(catalog.clone(), store.clone(), store.clone()),
                Revenue::new(store.clone()),
            )))
            .add_service(KeysServer::new(KeysService::new(catalog, credentials)))
            .add_service(VerifyServer::new(VerifyService::new(verifier, &metrics)))
            .serve_with_incoming_shutdown(
                tls::server::incoming(
                    incoming,
                    self.tls,
                    Duration::from_millis(self.config.handshake_timeout_millis),
                ),
                signal,
            );

        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        let deadline = async move {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.context("serving gRPC")?,
            () = deadline => tracing::warn!("grace period over; cutting off calls still running"),
        }
        flusher.abort();
        if let Some(follower) = follower {
            follower.abort();
        }
        // Usage admitted until the end is written before the store closes.
        if let Err(error) = limiter.shutdown().await {
            tracing::error!(%error, "final usage flush failed");
        }
        self.store.close().await;
        // Scraped to the end, so the last counts are seen.
        if let Some(endpoint) = metrics_endpoint {
            endpoint.stop().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Writes admitted usage to the database every `interval`.
async fn flush_every(limiter: Arc<dyn Limiter>, interval: Duration, metrics: UsageMetrics) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let flushed = limiter.flush().await;
        metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = flushed {
            metrics.flush_failures.inc();
            tracing::warn!(%error, "usage flush failed; retrying at the next tick");
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed at once, not
/// when first polled: a SIGTERM just after the server says it is serving
/// (before it polls this) is a clean stop, not the default death.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
