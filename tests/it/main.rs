//! Integration tests: the storage conformance suite (every case on PostgreSQL
//! and SQLite), the Verify conformance suite (embedded, PostgreSQL, Redis),
//! replicas sharing Redis or a Redis Cluster, catalog rules, bad input,
//! end-to-end runs of the real binary with grpcurl and Python grpcio clients,
//! and what operators rely on: the Helm chart, health checks, metrics and
//! traces.
mod bad_input;
mod catalog_rules;
mod chart;
mod cluster;
mod credits;
mod e2e_grpcurl;
mod e2e_python;
mod hardening;
mod health;
mod helpers;
mod idle_connections;
mod invoices;
mod leases;
mod made_up_secrets;
mod metrics;
mod polar;
mod postgres_down;
mod readme;
mod replicas;
mod restart;
mod revenue;
mod service_credentials;
mod signup;
mod store;
mod subscriptions;
mod timestamps;
mod tls;
mod traces;
mod usage_store;
mod verify;
mod views;
