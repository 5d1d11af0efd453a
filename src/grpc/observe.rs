//! Every call observed at the edge: one span (the child of the caller's W3C
//! trace when spans are exported), and, with metrics on, the
//! `grpc_server_*` metrics with the code the call really answered. tonic
//! sends that code in the trailers (or in the headers of an answer that is
//! only trailers), so the answer's body is watched to its end.
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use prost::Message;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Span, field::Empty};

use crate::telemetry::{
    metrics::{GrpcMetrics, HandledLabels, MethodLabels, grpc_code_name},
    propagation::continue_trace,
};

/// The method table and what to record.
pub struct Observer {
    methods: Vec<Method>,
    by_path: HashMap<Box<str>, usize>,
    metrics: Option<GrpcMetrics>,
    traces: bool,
}

/// One method's labels and its series, created on first use so that only
/// the codes a method answered appear.
struct Method {
    /// `package.Service/Method`, the span's name.
    name: Box<str>,
    kind: &'static str,
    service: Arc<str>,
    method: Arc<str>,
    handled: [OnceLock<Counter>; CODES],
    seconds: OnceLock<Histogram>,
}

/// The gRPC codes, `OK` (0) to `Unauthenticated` (16).
const CODES: usize = 17;

impl Observer {
    /// The methods of the services in `descriptor_sets` (encoded
    /// `FileDescriptorSet`s); any other path is counted as `unknown`, so a
    /// caller cannot create series at will.
    pub fn new(descriptor_sets: &[&[u8]], metrics: Option<GrpcMetrics>, traces: bool) -> Self {
        let mut methods = Vec::new();
        let mut by_path = HashMap::new();
        for set in descriptor_sets {
            let files = prost_types::FileDescriptorSet::decode(*set)
                .map(|s| s.file)
                .unwrap_or_default();
            for file in files {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    let service_label: Arc<str> = full.as_str().into();
                    for m in &service.method {
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        by_path.insert(format!("/{full}/{}", m.name()).into(), methods.len());
                        methods.push(Method::new(
                            format!("{full}/{}", m.name()),
                            kind,
                            service_label.clone(),
                            m.name().into(),
                        ));
                    }
                }
            }
        }
        methods.push(Method::new(
            "unknown".into(),
            "unknown",
            "unknown".into(),
            "unknown".into(),
        ));
        Self {
            methods,
            by_path,
            metrics,
            traces,
        }
    }

    fn index(&self, path: &str) -> usize {
        self.by_path
            .get(path)
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    /// Whether anything is recorded once a call has its code.
    fn records(&self) -> bool {
        self.metrics.is_some() || self.traces
    }
}

impl Method {
    fn new(name: String, kind: &'static str, service: Arc<str>, method: Arc<str>) -> Self {
        Self {
            name: name.into(),
            kind,
            service,
            method,
            handled: Default::default(),
            seconds: OnceLock::new(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    observer: Arc<Observer>,
}

impl ObserveLayer {
    pub fn new(observer: Observer) -> Self {
        Self {
            observer: Arc::new(observer),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            observer: self.observer.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S, B, ResBody> Service<http::Request<B>> for ObserveService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let index = self.observer.index(req.uri().path());
        let method = &self.observer.methods[index];
        // The credential is recorded by the auth layer once it is known.
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method.name,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = Empty,
            rpc.service = Empty,
            rpc.method = Empty,
            rpc.grpc.status_code = Empty,
            credential = Empty,
        );
        if self.observer.traces {
            span.record("rpc.system", "grpc");
            span.record("rpc.service", &*method.service);
            span.record("rpc.method", &*method.method);
            continue_trace(&span, req.headers());
        }
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ObserveFuture {
            inner,
            call: Some(Call {
                observer: self.observer.clone(),
                index,
                started,
                span,
                done: false,
            }),
        }
    }
}

/// A call in progress: recorded once, when its code is known, or as
/// `Canceled` when its answer is dropped before the end.
struct Call {
    observer: Arc<Observer>,
    index: usize,
    started: Instant,
    span: Span,
    done: bool,
}

impl Call {
    fn finish(mut self, code: Code) {
        self.record(code);
        self.done = true;
    }

    /// Ends a call nothing is recorded for (metrics and traces off).
    fn discard(mut self) {
        self.done = true;
    }

    fn record(&self, code: Code) {
        let number = code as usize;
        if let Some(metrics) = &self.observer.metrics {
            let method = &self.observer.methods[self.index];
            let labels = || MethodLabels {
                grpc_type: method.kind,
                grpc_service: method.service.clone(),
                grpc_method: method.method.clone(),
            };
            method.handled[number.min(CODES - 1)]
                .get_or_init(|| {
                    let handled = HandledLabels {
                        method: labels(),
                        grpc_code: grpc_code_name(code),
                    };
                    metrics.handled.get_or_create(&handled).clone()
                })
                .inc();
            method
                .seconds
                .get_or_init(|| metrics.handling_seconds.get_or_create(&labels()).clone())
                .observe(self.started.elapsed().as_secs_f64());
        }
        if self.observer.traces {
            self.span.record("rpc.grpc.status_code", number as i64);
            // Server errors, as OpenTelemetry's gRPC conventions count them.
            if matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ) {
                self.span.record("otel.status_code", "error");
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.record(Code::Cancelled);
        }
    }
}

/// The `grpc-status` in a header map, if there is one.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let number: i32 = value.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(number))
}

/// tonic refuses a request past `max_decoding_message_size` with
/// OUT_OF_RANGE; gRPC's status table says RESOURCE_EXHAUSTED (what other
/// gRPC servers answer, and what clients expect for "too large"). It
/// answers before any handler, in the headers or the trailers.
fn oversized_as_resource_exhausted(headers: &mut http::HeaderMap) {
    if headers
        .get("grpc-status")
        .is_none_or(|v| v.as_bytes() != b"11")
    {
        return;
    }
    // The message as sent is percent-encoded: read it back decoded.
    let oversized = tonic::Status::from_header_map(headers).is_some_and(|s| {
        s.message()
            .starts_with("Error, decoded message length too large")
    });
    if oversized {
        // 8: RESOURCE_EXHAUSTED.
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<Observed<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.call.as_ref().map(|c| c.span.enter());
            ready!(this.inner.poll(cx))
        };
        let call = this.call.take().expect("polled after completion");
        Poll::Ready(match polled {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                oversized_as_resource_exhausted(&mut parts.headers);
                let call = if !call.observer.records() {
                    call.discard();
                    None
                } else if let Some(code) = status_in(&parts.headers) {
                    call.finish(code);
                    None
                } else {
                    Some(call)
                };
                Ok(http::Response::from_parts(
                    parts,
                    Observed { inner: body, call },
                ))
            }
            Err(error) => {
                call.finish(Code::Unknown);
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, watched for the trailers that carry its code.
    pub struct Observed<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut polled = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            oversized_as_resource_exhausted(trailers);
        }
        let code = match &polled {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| status_in(t).unwrap_or(Code::Unknown)),
            // A body that fails or ends without trailers broke the protocol.
            Some(Err(_)) | None => Some(Code::Unknown),
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
