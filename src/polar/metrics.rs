//! `tollgate-polar`'s metrics: deliveries by event type, outcome and HTTP
//! status, and how long the server took to answer.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::telemetry::metrics::{LatencyFamily, grpc_code_name, latency_family};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    event_type: &'static str,
    outcome: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone)]
pub struct PolarMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    server_calls: LatencyFamily<CallLabels>,
}

impl PolarMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            deliveries: Family::default(),
            server_calls: latency_family(),
        };
        registry.register(
            "tollgate_polar_deliveries",
            "Webhook deliveries answered, by event type, outcome and HTTP status",
            m.deliveries.clone(),
        );
        registry.register(
            "tollgate_polar_server_call_seconds",
            "Time the Tollgate server took to answer a call, by method and gRPC code",
            m.server_calls.clone(),
        );
        m
    }

    /// One delivery answered; `event_type` is a bounded label (see
    /// `event::event_type`).
    pub fn delivery(&self, event_type: &'static str, outcome: &'static str, status: u16) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event_type,
                outcome,
                status,
            })
            .inc();
    }

    pub fn server_call(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.server_calls
            .get_or_create(&CallLabels {
                method,
                code: grpc_code_name(code),
            })
            .observe(seconds);
    }
}
