//! What metrics cost a call, measured where the cost is, in process and on
//! one thread (so the figure does not move with whatever else the machine
//! does, as a loaded server's throughput does):
//!
//! - a request through the observe layer to a service that answers at
//!   once, its body read to the trailers, with metrics off and on (the span
//!   is there in both; metrics on adds the `grpc_server_*` series);
//! - the counters an allowed Verify touches whatever the setting (decision,
//!   key cache hit, unwritten units, Redis round trip histogram).
//!
//!     cargo bench --bench observe [-- --calls 1000000]
//!
//! Compare with the server's CPU time per allowed Verify that
//! `cargo bench --bench loadgen` prints.
use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Body, Frame};
use prometheus_client::registry::Registry;
use prost::bytes::Bytes;
use tollgate::{
    grpc::{
        FILE_DESCRIPTOR_SET,
        observe::{ObserveLayer, Observer},
    },
    telemetry::metrics::ServerMetrics,
};
use tower::{Layer, Service};

/// A unary answer: one message, then trailers with `grpc-status: 0`.
struct Answer {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Answer {
    fn new() -> Self {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Self {
            message: Some(Bytes::from_static(&[0; 64])),
            trailers: Some(trailers),
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.message.take() {
            Some(m) => Some(Frame::data(m)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }
}

/// Time for `calls` requests through the layer, metrics on or off.
fn through_layer(metrics: bool, calls: u32) -> Duration {
    let mut registry = Registry::default();
    let server = ServerMetrics::register(&mut registry, true);
    let observer = Observer::new(
        &[FILE_DESCRIPTOR_SET],
        metrics.then(|| server.grpc.clone()),
        false,
    );
    let mut service =
        ObserveLayer::new(observer).layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(Answer::new()))
        }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..calls {
            let request = http::Request::builder()
                .uri("/tollgate.v1.Verify/Verify")
                .body(())
                .unwrap();
            let mut body = service.call(request).await.unwrap().into_body();
            while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_some()
            {}
        }
        started.elapsed()
    })
}

/// Time for `calls` rounds of the counters an allowed Verify touches.
fn counters(calls: u32) -> Duration {
    let mut registry = Registry::default();
    let m = ServerMetrics::register(&mut registry, true);
    let valid = m.decision("VALID");
    let started = Instant::now();
    for i in 0..calls {
        valid.inc();
        m.cache.hits.inc();
        m.usage.unflushed_units.inc_by(1);
        m.redis
            .call_seconds
            .observe(f64::from(i % 1000) * 0.000_001);
    }
    started.elapsed()
}

fn main() {
    let mut calls = 1_000_000u32;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--calls") {
        calls = args[i + 1].parse().expect("--calls needs a number");
    }
    let per_call = |d: Duration| d.as_nanos() as f64 / f64::from(calls);
    // Alternating, best of five: the least disturbed run of each.
    let (mut off, mut on, mut touched) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..5 {
        off = off.min(per_call(through_layer(false, calls)));
        on = on.min(per_call(through_layer(true, calls)));
        touched = touched.min(per_call(counters(calls)));
    }
    println!("observe layer, {calls} calls, best of 5, ns per call:");
    println!("  metrics off  {off:>7.0}   (the span and the answer's body watched)");
    println!(
        "  metrics on   {on:>7.0}   (+ grpc_server_handled_total, grpc_server_handling_seconds)"
    );
    println!("  metrics add  {:>7.0}", on - off);
    println!("counters every allowed Verify touches whatever the setting: {touched:.0} ns");
}
