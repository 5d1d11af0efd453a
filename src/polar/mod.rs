//! `tollgate-polar`: receives Polar's webhook deliveries, verifies them
//! (Standard Webhooks), and turns each into one call to the Tollgate server.
//! It keeps no state: what must last (the update, the delivery ids applied)
//! lives in the server, so any number of adapters may run.
//!
//! Polar redelivers anything not answered 2xx within a few seconds, so the
//! answer says whether a redelivery could change anything: 202 once the
//! server has the update (applied, known already, stale, or pending until
//! its product is mapped); 503 only while the server is away, slow, busy or
//! refuses the adapter's own credential, so Polar tries again; 403 for a
//! delivery that fails verification (not Polar's, or a wrong secret). Any
//! other answer (a verified body that cannot be read, an update the server
//! refuses) is logged and acknowledged with 200, as no redelivery would
//! mend it: a redelivery loop cannot happen.
mod config;
pub mod event;
pub mod metrics;

pub use config::{Config, signing_key};

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus_client::registry::Registry;
use standardwebhooks::Webhook;
use tonic::{metadata::MetadataValue, transport::Channel};
use tracing::{Instrument, field::Empty};

use crate::{
    grpc::pb::{self, billing_client::BillingClient},
    listener::{GuardedListener, HTTP1_REQUEST_LINE, Limits},
    telemetry::{metrics::Endpoint, propagation::send_trace},
};
use event::{Action, PROVIDER};
use metrics::PolarMetrics;

/// Polar's deliveries are a few KiB; anything near this is not one.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

struct App {
    webhook: Webhook,
    /// One channel for every call; tonic reconnects it as needed.
    billing: BillingClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    deadline: Duration,
    metrics: PolarMetrics,
}

/// The adapter, bound and ready to serve.
pub struct Adapter {
    listener: GuardedListener,
    router: Router,
    /// `/metrics`, on a listener of its own when configured.
    metrics: Option<(tokio::net::TcpListener, Registry)>,
}

impl Adapter {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let webhook = Webhook::from_bytes(signing_key(&config.webhook_secret)?)
            .context("the webhook secret")?;
        anyhow::ensure!(!config.admin_token.is_empty(), "the admin token is empty");
        anyhow::ensure!(
            config.max_connections > 0 && config.handshake_timeout_millis > 0,
            "--max-connections and --handshake-timeout-millis must be at least 1"
        );
        anyhow::ensure!(
            config.idle_timeout_millis > config.deadline_millis,
            "--idle-timeout-millis must be more than --deadline-millis, or a slow answer would be cut off"
        );
        let authorization = format!("Bearer {}", config.admin_token)
            .parse()
            .context("the admin token is not valid in a header")?;
        let deadline = Duration::from_millis(config.deadline_millis);
        // An https:// server over TLS only: the admin token never in clear.
        let channel = crate::tls::client::endpoint(&config.server, &config.client_tls())
            .context("--server")?
            .connect_timeout(deadline)
            .connect_lazy();
        let mut registry = Registry::default();
        let app = Arc::new(App {
            webhook,
            billing: BillingClient::new(channel.clone()),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
            authorization,
            deadline,
            metrics: PolarMetrics::register(&mut registry),
        });
        let router = Router::new()
            .route("/webhooks/polar", post(deliver))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let listener = GuardedListener::new(
            listener,
            Limits {
                max_connections: config.max_connections,
                handshake: Duration::from_millis(config.handshake_timeout_millis),
                handshake_bytes: HTTP1_REQUEST_LINE,
                idle: Some(Duration::from_millis(config.idle_timeout_millis)),
            },
        );
        let metrics = match config.metrics_listen {
            None => None,
            Some(addr) => Some((
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?,
                registry,
            )),
        };
        Ok(Self {
            listener,
            router,
            metrics,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub async fn run_until_stopped(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let metrics = self
            .metrics
            .map(|(listener, registry)| Endpoint::start(listener, registry));
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(signal)
            .await
            .context("serving");
        if let Some(metrics) = metrics {
            metrics.stop().await;
        }
        served
    }
}

/// `POST /webhooks/polar`: one span, one answer, one count per delivery.
async fn deliver(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!(
        "delivery",
        otel.name = "POST /webhooks/polar",
        otel.kind = "server",
        webhook_id = Empty,
        event_type = Empty,
        outcome = Empty,
        http.response.status_code = Empty,
    );
    let answer = handle(&app, &headers, body).instrument(span.clone()).await;
    span.record("event_type", answer.event_type);
    span.record("outcome", answer.outcome);
    span.record("http.response.status_code", answer.status.as_u16());
    app.metrics
        .delivery(answer.event_type, answer.outcome, answer.status.as_u16());
    if answer.status == StatusCode::OK {
        return respond_acknowledged(answer.outcome, &answer.message);
    }
    respond(answer.status, &answer.message)
}

/// `{"outcome": ...}` for a success, `{"error": ...}` otherwise.
fn respond(status: StatusCode, message: &str) -> Response {
    let key = if status.is_success() {
        "outcome"
    } else {
        "error"
    };
    (status, Json(serde_json::json!({ key: message }))).into_response()
}

/// An acknowledged delivery: `{"outcome": ..., "error": ...}`.
fn respond_acknowledged(outcome: &str, error: &str) -> Response {
    (
        StatusCode::OK,
        Json(serde_json::json!({ "outcome": outcome, "error": error })),
    )
        .into_response()
}

/// How a delivery was answered: the status, the outcome (the labels of its
/// metric) and the message of the JSON answer.
struct Answer {
    status: StatusCode,
    event_type: &'static str,
    outcome: &'static str,
    message: Cow<'static, str>,
}

impl Answer {
    fn accepted(event_type: &'static str, outcome: &'static str) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            event_type,
            outcome,
            message: outcome.into(),
        }
    }

    /// Not applied, and never will be: acknowledged so that Polar stops.
    fn acknowledged(
        event_type: &'static str,
        outcome: &'static str,
        error: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status: StatusCode::OK,
            event_type,
            outcome,
            message: error.into(),
        }
    }

    fn refused(
        status: StatusCode,
        event_type: &'static str,
        outcome: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            event_type,
            outcome,
            message: message.into(),
        }
    }
}

async fn handle(app: &App, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Answer {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            tracing::warn!(reason = %rejection, "delivery refused: its body could not be read");
            return Answer::refused(
                rejection.status(),
                "unread",
                "unread",
                rejection.body_text(),
            );
        }
    };
    // Nothing is read before the signature holds; the log names neither the
    // secret nor the signature.
    if let Err(e) = app.webhook.verify(&body, headers) {
        tracing::warn!(reason = %e, "delivery refused: it failed verification");
        return Answer::refused(
            StatusCode::FORBIDDEN,
            "unverified",
            "refused",
            "verification failed",
        );
    }
    // Present: verification needs it.
    let delivery = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    tracing::Span::current().record("webhook_id", delivery.as_str());
    let (event_type, action) = event::read(&body, &delivery);
    let action = match action {
        Ok(action) => action,
        Err(e) => {
            tracing::error!(%delivery, error = %e, "delivery acknowledged, not applied: it cannot be read");
            return Answer::acknowledged(event_type, "invalid", e.to_string());
        }
    };
    let outcome = match action {
        Action::Ignore { kind } => {
            tracing::info!(%delivery, kind, "delivery ignored: Tollgate does not follow this event type");
            return Answer::accepted(event_type, "ignored");
        }
        Action::Subscription(request) => {
            let product = request.product_id.clone();
            let subscription = request.subscription_id.clone();
            let mut billing = app.billing.clone();
            let reply = app
                .call(
                    "ApplySubscription",
                    billing.apply_subscription(app.request(request)),
                )
                .await
                .map(|r| r.outcome);
            if matches!(reply, Ok(o) if o == pb::ApplyOutcome::Pending as i32) {
                tracing::warn!(
                    %delivery, %subscription, provider = PROVIDER, product_id = %product,
                    "subscription kept pending: map this product to a plan with Plans/MapProduct"
                );
            }
            reply
        }
        Action::Customer(request) => {
            let mut billing = app.billing.clone();
            match app
                .call(
                    "ApplyCustomer",
                    billing.apply_customer(app.request(request)),
                )
                .await
            {
                // A customer with no tenant yet: nothing to update, and
                // nothing a redelivery would change.
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tracing::info!(%delivery, "customer update ignored: no tenant for this customer yet");
                    return Answer::accepted(event_type, "ignored");
                }
                reply => reply.map(|r| r.outcome),
            }
        }
    };
    match outcome {
        Ok(outcome) => {
            let name = outcome_name(outcome);
            tracing::info!(%delivery, outcome = name, "delivery applied");
            Answer::accepted(event_type, name)
        }
        Err(status) if worth_redelivering(status.code()) => {
            tracing::error!(
                %delivery, code = ?status.code(), error = %status.message(),
                "delivery not applied: the server did not take it; Polar will redeliver"
            );
            Answer::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                event_type,
                "unavailable",
                "server unavailable",
            )
        }
        Err(status) => {
            tracing::error!(
                %delivery, code = ?status.code(), error = %status.message(),
                "delivery acknowledged, not applied: the server refused it"
            );
            let outcome = if status.code() == tonic::Code::InvalidArgument {
                "invalid"
            } else {
                "refused"
            };
            Answer::acknowledged(event_type, outcome, status.message().to_owned())
        }
    }
}

/// The server's refusals a later delivery may not meet: it is away, slow or
/// busy, a concurrent change came first, or it does not take the adapter's
/// credential (an operator fixes that; acknowledging would drop every
/// delivery until then). Any other refusal is the same the next time.
fn worth_redelivering(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | DeadlineExceeded
            | Aborted
            | ResourceExhausted
            | Cancelled
            | Unauthenticated
            | PermissionDenied
    )
}

/// The server's answer as the adapter's outcome.
fn outcome_name(outcome: i32) -> &'static str {
    match pb::ApplyOutcome::try_from(outcome) {
        Ok(pb::ApplyOutcome::Applied) => "applied",
        Ok(pb::ApplyOutcome::Pending) => "pending",
        Ok(pb::ApplyOutcome::Unchanged) => "unchanged",
        Ok(pb::ApplyOutcome::Stale) => "stale",
        Ok(pb::ApplyOutcome::Unspecified) | Err(_) => "unknown",
    }
}

/// `GET /readyz`: whether the server answers its health check in time.
async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut health = app.health.clone();
    let check = health.check(tonic_health::pb::HealthCheckRequest::default());
    match app.call("Check", check).await {
        Ok(r)
            if r.status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            respond(StatusCode::OK, "ready")
        }
        _ => respond(StatusCode::SERVICE_UNAVAILABLE, "server unavailable"),
    }
}

impl App {
    /// A request with the admin token, the delivery's trace context, and
    /// the deadline sent along so the server gives up when the adapter does.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        send_trace(&tracing::Span::current(), request.metadata_mut());
        request.set_timeout(self.deadline);
        request
    }

    /// A call bounded by the deadline, connecting included, and timed.
    async fn call<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let started = Instant::now();
        let reply = match tokio::time::timeout(self.deadline, call).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the server did not answer in time",
            )),
        };
        let code = reply
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics
            .server_call(method, code, started.elapsed().as_secs_f64());
        reply
    }
}

/// Runs the adapter until SIGTERM or Ctrl-C.
pub fn run() -> std::process::ExitCode {
    use clap::Parser;
    let config = Config::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-polar: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let otlp = &config.otlp_endpoint;
        let _guard = match crate::telemetry::init(
            "tollgate-polar",
            config.log_format,
            &config
                .log_filter
                .clone()
                .or_else(crate::config::rust_log)
                .unwrap_or_else(|| "info".to_owned()),
            otlp,
        ) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("tollgate-polar: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let started = async {
            let adapter = Adapter::build(&config).await?;
            tracing::info!(
                addr = %adapter.local_addr()?,
                metrics_addr = adapter.metrics_addr().map(tracing::field::display),
                server = %config.server,
                "tollgate-polar listening"
            );
            adapter
                .run_until_stopped(crate::startup::shutdown_signal())
                .await
        };
        match started.await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "tollgate-polar stopped");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::signing_key;

    #[test]
    fn polar_secrets_are_their_bytes_and_whsec_secrets_their_decoding() {
        assert_eq!(signing_key("polar_whs_abc").unwrap(), b"polar_whs_abc");
        assert_eq!(signing_key("whsec_aGVsbG8=").unwrap(), b"hello");
        assert_eq!(signing_key("whsec_aGVsbG8").unwrap(), b"hello");
        assert!(signing_key("whsec_not base64!").is_err());
        assert!(signing_key("").is_err());
        assert!(signing_key("whsec_").is_err());
    }
}
