//! `tollgate-polar`: receives Polar's webhook deliveries, verifies them
//! (Standard Webhooks), and turns each into one call to the Tollgate server.
//! It keeps no state: what must last (the update, the delivery ids applied)
//! lives in the server, so any number of adapters may run.
//!
//! Polar redelivers anything not answered 2xx within a few seconds, so the
//! answer says whether the server has the update: 202 once it applied it (or
//! knew it already, or found it stale, or keeps it pending until its product
//! is mapped); 503 while the server is unreachable or slow, so Polar tries
//! again; 403 for a delivery that fails verification, 400 for a verified
//! one that cannot be read.
pub mod event;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use standardwebhooks::Webhook;
use tonic::{metadata::MetadataValue, transport::Channel};

use crate::{
    config::LogFormat,
    grpc::pb::{self, billing_client::BillingClient},
};
use event::{Action, PROVIDER};

/// Polar's deliveries are a few KiB; anything near this is not one.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, clap::Parser)]
#[command(
    name = "tollgate-polar",
    version,
    about = "Polar webhook adapter: verified deliveries in, Tollgate subscription updates out."
)]
pub struct Config {
    /// Address to listen on for Polar's deliveries (POST /webhooks/polar).
    #[arg(long, env = "TOLLGATE_POLAR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The Tollgate server's gRPC address.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// An admin token of the Tollgate server (`tollgate admin bootstrap`).
    /// Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "TOLLGATE_POLAR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// The endpoint's secret as Polar's dashboard shows it (its UTF-8 bytes
    /// are the key), or a Standard Webhooks `whsec_<base64>` secret.
    #[arg(long, env = "TOLLGATE_POLAR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: String,
    /// How long a delivery waits for the server before answering 503. Polar
    /// gives up on an answer after a few seconds.
    #[arg(long, env = "TOLLGATE_POLAR_DEADLINE_MILLIS", default_value_t = 1000)]
    pub deadline_millis: u64,
    /// `pretty` or `json` log lines on stderr.
    #[arg(
        long,
        env = "TOLLGATE_POLAR_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Which log lines to keep (`tracing` filter syntax).
    #[arg(long, env = "TOLLGATE_POLAR_LOG_FILTER", default_value = "info")]
    pub log_filter: String,
}

/// The key the secret stands for: a `whsec_` secret's decoded bytes (with
/// or without base64 padding, as the reference libraries accept), else the
/// secret's own UTF-8 bytes (as Polar signs).
pub fn signing_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const WHSEC: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => WHSEC
            .decode(b64)
            .context("the whsec_ webhook secret is not valid base64")?,
        None => secret.as_bytes().to_vec(),
    };
    anyhow::ensure!(!key.is_empty(), "the webhook secret is empty");
    Ok(key)
}

struct App {
    webhook: Webhook,
    /// One channel for every call; tonic reconnects it as needed.
    billing: BillingClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    deadline: Duration,
}

/// The adapter, bound and ready to serve.
pub struct Adapter {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Adapter {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let webhook = Webhook::from_bytes(signing_key(&config.webhook_secret)?)
            .context("the webhook secret")?;
        anyhow::ensure!(!config.admin_token.is_empty(), "the admin token is empty");
        let authorization = format!("Bearer {}", config.admin_token)
            .parse()
            .context("the admin token is not valid in a header")?;
        let deadline = Duration::from_millis(config.deadline_millis);
        let channel = tonic::transport::Endpoint::from_shared(config.server.clone())
            .with_context(|| format!("the server address {:?}", config.server))?
            .connect_timeout(deadline)
            .connect_lazy();
        let app = Arc::new(App {
            webhook,
            billing: BillingClient::new(channel.clone()),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
            authorization,
            deadline,
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
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(signal)
            .await
            .context("serving")
    }
}

/// `POST /webhooks/polar`.
async fn deliver(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    // Nothing is read before the signature holds; the log names neither the
    // secret nor the signature.
    if let Err(e) = app.webhook.verify(&body, &headers) {
        tracing::warn!(reason = %e, "delivery refused: it failed verification");
        return answer(StatusCode::FORBIDDEN, "verification failed");
    }
    // Present: verification needs it.
    let delivery = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let action = match event::action(&body, &delivery) {
        Ok(action) => action,
        Err(e) => {
            tracing::warn!(%delivery, error = %e, "delivery refused: it cannot be applied");
            return answer(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let outcome = match action {
        Action::Ignore { kind } => {
            tracing::info!(%delivery, kind, "delivery ignored: Tollgate does not follow this event type");
            return answer(StatusCode::ACCEPTED, "ignored");
        }
        Action::Subscription(request) => {
            let product = request.product_id.clone();
            let subscription = request.subscription_id.clone();
            let mut billing = app.billing.clone();
            let reply = app
                .call(billing.apply_subscription(app.request(request)))
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
            match app.call(billing.apply_customer(app.request(request))).await {
                // A customer with no tenant yet: nothing to update, and
                // nothing a redelivery would change.
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tracing::info!(%delivery, "customer update ignored: no tenant for this customer yet");
                    return answer(StatusCode::ACCEPTED, "ignored");
                }
                reply => reply.map(|r| r.outcome),
            }
        }
    };
    match outcome {
        Ok(outcome) => {
            let name = pb::ApplyOutcome::try_from(outcome)
                .map_or("unknown", |o| o.as_str_name())
                .trim_start_matches("APPLY_OUTCOME_")
                .to_ascii_lowercase();
            tracing::info!(%delivery, outcome = %name, "delivery applied");
            answer(StatusCode::ACCEPTED, &name)
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            tracing::warn!(%delivery, error = %status.message(), "delivery refused by the server");
            answer(StatusCode::BAD_REQUEST, status.message())
        }
        Err(status) => {
            tracing::error!(
                %delivery, code = ?status.code(), error = %status.message(),
                "delivery not applied: the server did not take it; Polar will redeliver"
            );
            answer(StatusCode::SERVICE_UNAVAILABLE, "server unavailable")
        }
    }
}

/// `GET /readyz`: whether the server answers its health check in time.
async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut health = app.health.clone();
    let check = health.check(tonic_health::pb::HealthCheckRequest::default());
    match app.call(check).await {
        Ok(r)
            if r.status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            answer(StatusCode::OK, "ready")
        }
        _ => answer(StatusCode::SERVICE_UNAVAILABLE, "server unavailable"),
    }
}

impl App {
    /// A request with the admin token, and the deadline sent along so the
    /// server gives up when the adapter does.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request.set_timeout(self.deadline);
        request
    }

    /// A call bounded by the deadline, connecting included.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the server did not answer in time",
            )),
        }
    }
}

fn answer(code: StatusCode, message: &str) -> Response {
    let key = if code.is_success() {
        "outcome"
    } else {
        "error"
    };
    (code, Json(serde_json::json!({ key: message }))).into_response()
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
        let _guard = match crate::telemetry::init(config.log_format, &config.log_filter, "") {
            Ok(g) => g,
            Err(e) => {
                eprintln!("tollgate-polar: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let started = async {
            let adapter = Adapter::build(&config).await?;
            tracing::info!(
                addr = %adapter.local_addr()?, server = %config.server,
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
