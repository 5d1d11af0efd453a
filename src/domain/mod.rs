//! Domain types and rules. Nothing here knows about gRPC or SQL.
pub mod credential;
pub mod credits;
pub mod error;
pub mod ids;
pub mod invoice;
pub mod key;
pub mod page;
pub mod plan;
pub mod revenue;
pub mod secret;
pub mod subscription;
pub mod tenant;
pub mod text;
pub mod verify;

pub use error::{Error, FieldViolation, Result, Shortfall};

/// A point in time, always UTC and truncated to microseconds so that it
/// survives a round trip through either database unchanged.
pub type Timestamp = time::OffsetDateTime;

/// The current time, truncated to microseconds.
pub fn now() -> Timestamp {
    from_micros(to_micros(time::OffsetDateTime::now_utc())).expect("now is in range")
}

/// Microseconds since the Unix epoch: how timestamps are stored.
pub fn to_micros(t: Timestamp) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// The inverse of [`to_micros`]; `None` when out of range.
pub fn from_micros(micros: i64) -> Option<Timestamp> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}
