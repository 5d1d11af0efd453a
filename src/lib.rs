//! Tollgate: a self-hosted gRPC entitlement service.
//!
//! Layout: `domain` holds the rules and types (no tonic, no sqlx), `store`
//! the storage traits and their backends, `catalog` the use cases over them,
//! `grpc` the edge, and `startup`/`cli`/`config`/`telemetry` the process.
pub mod catalog;
pub mod cli;
pub mod config;
pub mod credits;
pub mod domain;
pub mod grpc;
pub mod invoicing;
pub mod limiter;
pub mod listener;
pub mod metering;
pub mod polar;
pub mod replicas;
pub mod revenue;
pub mod shared_redis;
pub mod startup;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod verifier;
