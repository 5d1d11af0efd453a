//! Integration tests: the storage conformance suite (every case on PostgreSQL
//! and SQLite), the Verify conformance suite (embedded, PostgreSQL, Redis),
//! replicas sharing Redis, catalog rules, bad input, and end-to-end runs of
//! the real binary with grpcurl and Python grpcio clients.
mod bad_input;
mod catalog_rules;
mod credits;
mod e2e_grpcurl;
mod e2e_python;
mod helpers;
mod invoices;
mod polar;
mod readme;
mod replicas;
mod restart;
mod revenue;
mod signup;
mod store;
mod subscriptions;
mod verify;
