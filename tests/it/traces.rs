//! Traces across services: both real binaries export to an OTLP receiver
//! in this test (OpenTelemetry's own `TraceService`); a caller's W3C
//! `traceparent` becomes the parent of the server's span, the Polar
//! adapter's delivery span the parent of the server call it makes, and no
//! span attribute holds a secret.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use tollgate::grpc::pb::{VerifyCode, verify_client::VerifyClient};
use tonic::{Request, Response, Status};

use crate::{
    helpers::{Server, tollgate, with_token},
    polar::{Adapter, SECRET, unknown_customer_update},
    verify::{call, setup_on},
};

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Clone)]
struct Received {
    service: String,
    span: Span,
    resource: Vec<KeyValue>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            let service = attribute(&resource, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Listens on a free port; its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    /// The first span `matches` accepts, waiting for the exporters' batches.
    async fn find(&self, what: &str, matches: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(found) = self.spans.lock().unwrap().iter().find(|r| matches(r)) {
                return found.clone();
            }
            assert!(Instant::now() < deadline, "no span {what} was exported");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every string value in every span, event and resource received.
    fn all_values(&self) -> Vec<String> {
        let spans = self.spans.lock().unwrap();
        let mut values = Vec::new();
        for r in spans.iter() {
            values.push(r.span.name.clone());
            let attributes = r
                .span
                .attributes
                .iter()
                .chain(r.resource.iter())
                .chain(r.span.events.iter().flat_map(|e| e.attributes.iter()));
            values.extend(attributes.map(|kv| format!("{}={:?}", kv.key, kv.value)));
        }
        values
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The exporters' batches leave every 100 ms instead of every 5 s.
fn quick_export() -> (&'static str, String) {
    ("OTEL_BSP_SCHEDULE_DELAY", "100".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_continues_through_the_adapter_and_the_server() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = "trace-test-admin-token-0123456789abcdef".to_owned();
    let mut cmd = tollgate();
    cmd.current_dir(dir.path())
        .env("TOLLGATE_ADMIN_TOKEN", &admin)
        .env("TOLLGATE_OTLP_ENDPOINT", &endpoint)
        .envs([quick_export()]);
    let server = Server::spawn(cmd, &[]);
    let channel = server.channel().await;
    let (secret, _, _) = setup_on(channel.clone(), &admin, 6000, 100, 1000, 2).await;

    // A gateway's call, inside a trace of its own.
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let parent_id = &uuid::Uuid::now_v7().simple().to_string()[16..];
    let mut request = with_token(call(&secret, None, &[]), &admin);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let answer = VerifyClient::new(channel.clone())
        .verify(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.code, VerifyCode::Valid as i32);

    let verify = receiver
        .find("for the traced Verify", |r| {
            hex(&r.span.trace_id) == trace_id && r.span.name == "tollgate.v1.Verify/Verify"
        })
        .await;
    assert_eq!(verify.service, "tollgate");
    assert_eq!(hex(&verify.span.parent_span_id), parent_id);
    assert_eq!(verify.span.kind, SpanKind::Server as i32);
    let attributes = &verify.span.attributes;
    assert_eq!(attribute(attributes, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(attributes, "rpc.service").as_deref(),
        Some("tollgate.v1.Verify")
    );
    assert_eq!(
        attribute(attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    // Calls without a traceparent start traces of their own.
    let create = receiver
        .find("for CreatePlan", |r| {
            r.span.name == "tollgate.v1.Plans/CreatePlan"
        })
        .await;
    assert!(create.span.parent_span_id.is_empty());
    assert_ne!(hex(&create.span.trace_id), trace_id);

    // A Polar delivery: the adapter's span is the parent of the server's.
    let adapter = Adapter::start_env(
        &server.target(),
        &admin,
        SECRET,
        &[
            ("TOLLGATE_POLAR_OTLP_ENDPOINT", endpoint.clone()),
            quick_export(),
        ],
    );
    let customer = unknown_customer_update("pc_traced");
    assert_eq!(adapter.deliver("msg_t1", &customer).accepted(), "ignored");
    let delivery = receiver
        .find("for the delivery", |r| {
            r.service == "tollgate-polar" && r.span.name == "POST /webhooks/polar"
        })
        .await;
    assert_eq!(delivery.span.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&delivery.span.attributes, "webhook_id").as_deref(),
        Some("msg_t1")
    );
    let applied = receiver
        .find("for ApplyCustomer", |r| {
            r.span.name == "tollgate.v1.Billing/ApplyCustomer"
        })
        .await;
    assert_eq!(applied.service, "tollgate");
    assert_eq!(applied.span.trace_id, delivery.span.trace_id);
    assert_eq!(applied.span.parent_span_id, delivery.span.span_id);
    assert_eq!(
        attribute(&applied.span.attributes, "rpc.grpc.status_code").as_deref(),
        Some("5"),
        "NOT_FOUND: no tenant for this customer"
    );

    // Ids may be in spans; no secret is.
    let values = receiver.all_values();
    for secret in [secret.as_str(), admin.as_str(), SECRET] {
        let leaked: Vec<&String> = values.iter().filter(|v| v.contains(secret)).collect();
        assert!(leaked.is_empty(), "a secret in a span: {leaked:?}");
    }
    // The value printed for a string attribute is its Debug form: make sure
    // the check above could see one.
    let probe = AnyValue {
        value: Some(any_value::Value::StringValue(secret.clone())),
    };
    assert!(format!("{:?}", Some(probe)).contains(&secret));
    server.stop();
}
