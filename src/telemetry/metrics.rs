//! Prometheus metrics (OpenMetrics text, from the `prometheus-client` crate):
//! the server's metric families, and the `/metrics` endpoint both binaries
//! serve on a listener of their own. No metric carries a key, tenant or
//! other unbounded label.
use std::{future::Future, sync::Arc};

use anyhow::Context;
use axum::{Router, http::header, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Seconds, from 100 µs (a cached Verify) to 10 s (a slow admin call).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A family of histograms made with [`latency_histogram`].
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub fn latency_family<L: EncodeLabelSet + Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

/// A gRPC code as go-grpc-middleware's `grpc_code` label writes it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The registry as OpenMetrics text.
fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// `GET /metrics` served in the background until `stop`, which both
/// binaries call once their own server has stopped, so the last counts can
/// still be scraped during the drain.
pub struct Endpoint {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Endpoint {
    pub fn start(listener: tokio::net::TcpListener, registry: Registry) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::new(registry), async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "/metrics stopped"),
            Err(error) => tracing::warn!(%error, "/metrics stopped"),
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&registry),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving /metrics")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_type: &'static str,
    pub grpc_service: Arc<str>,
    pub grpc_method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    #[prometheus(flatten)]
    pub method: MethodLabels,
    pub grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

/// The gRPC server's families, under the names go-grpc-middleware uses, so
/// existing dashboards read them.
#[derive(Clone)]
pub struct GrpcMetrics {
    pub handled: Family<HandledLabels, Counter>,
    pub handling_seconds: LatencyFamily<MethodLabels>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        Self {
            handled: Family::default(),
            handling_seconds: latency_family(),
        }
    }
}

/// Where the usage admitted by Verify is on its way to the database.
#[derive(Clone)]
pub struct UsageMetrics {
    /// Units admitted but not yet written to the database.
    pub unflushed_units: Gauge,
    pub flush_seconds: Histogram,
    pub flush_failures: Counter,
}

impl Default for UsageMetrics {
    fn default() -> Self {
        Self {
            unflushed_units: Gauge::default(),
            flush_seconds: latency_histogram(),
            flush_failures: Counter::default(),
        }
    }
}

/// The shared limiter's Redis, seen from the Verify path.
#[derive(Clone)]
pub struct RedisMetrics {
    pub call_seconds: Histogram,
    pub over_budget: Counter,
    pub fail_open_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub fail_open_calls: Counter,
}

impl Default for RedisMetrics {
    fn default() -> Self {
        Self {
            call_seconds: latency_histogram(),
            over_budget: Counter::default(),
            fail_open_seconds: Counter::default(),
            fail_open_calls: Counter::default(),
        }
    }
}

#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub stale: Counter,
}

/// The catalog change channel between replicas.
#[derive(Clone, Default)]
pub struct ChangeMetrics {
    pub received: Counter,
    pub reconnects: Counter,
}

/// Every metric the server keeps. Handles are cheap clones of shared
/// atomics; those of a part the server does not run (Redis, without
/// redis_url) are not registered, so they are not shown.
#[derive(Clone, Default)]
pub struct ServerMetrics {
    pub grpc: GrpcMetrics,
    pub verify_decisions: Family<CodeLabels, Counter>,
    pub cache: CacheMetrics,
    pub usage: UsageMetrics,
    pub redis: RedisMetrics,
    pub changes: ChangeMetrics,
}

impl ServerMetrics {
    /// The server's metrics, registered in `registry`; the limiter's Redis
    /// and the change channel only `with_redis`.
    pub fn register(registry: &mut Registry, with_redis: bool) -> Self {
        let m = Self::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by the gRPC code they answered",
            m.grpc.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a call's arrival to its last byte (trailers)",
            m.grpc.handling_seconds.clone(),
        );
        registry.register(
            "tollgate_verify_decisions",
            "Verify answers by decision code",
            m.verify_decisions.clone(),
        );
        registry.register(
            "tollgate_key_cache_hits",
            "Verify calls whose key was found in the in-process cache (known or unknown)",
            m.cache.hits.clone(),
        );
        registry.register(
            "tollgate_key_cache_misses",
            "Verify calls whose key had to be read from the database",
            m.cache.misses.clone(),
        );
        registry.register(
            "tollgate_key_cache_stale_served",
            "Verify calls answered from an expired cache entry because the database did not answer in time",
            m.cache.stale.clone(),
        );
        registry.register(
            "tollgate_usage_unflushed_units",
            "Usage units admitted by this replica and not yet written to the database",
            m.usage.unflushed_units.clone(),
        );
        registry.register(
            "tollgate_usage_flush_seconds",
            "Time one usage flush to the database took",
            m.usage.flush_seconds.clone(),
        );
        registry.register(
            "tollgate_usage_flush_failures",
            "Usage flushes that failed (retried at the next tick)",
            m.usage.flush_failures.clone(),
        );
        if with_redis {
            registry.register(
                "tollgate_limiter_redis_call_seconds",
                "Round trip of one admission script call to Redis",
                m.redis.call_seconds.clone(),
            );
            registry.register(
                "tollgate_limiter_redis_over_budget",
                "Admission calls to Redis that took longer than redis_timeout_millis",
                m.redis.over_budget.clone(),
            );
            registry.register(
                "tollgate_limiter_fail_open_seconds",
                "Time spent admitting on the in-process fallback while Redis was away",
                m.redis.fail_open_seconds.clone(),
            );
            registry.register(
                "tollgate_limiter_fail_open_calls",
                "Calls decided on the in-process fallback while Redis was away",
                m.redis.fail_open_calls.clone(),
            );
            registry.register(
                "tollgate_changes_received",
                "Catalog change messages received from other replicas",
                m.changes.received.clone(),
            );
            registry.register(
                "tollgate_changes_reconnects",
                "Times the change channel was lost and subscribed again",
                m.changes.reconnects.clone(),
            );
        }
        m
    }

    /// The decision counter for a Verify code (its proto name).
    pub fn decision(&self, code: &'static str) -> Counter {
        self.verify_decisions
            .get_or_create(&CodeLabels { code })
            .clone()
    }
}
