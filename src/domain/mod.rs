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

/// The timestamps a caller may send: from the Unix epoch to the end of year
/// 9998, so that a period computed from one (a year at most) still ends
/// within the years a timestamp holds (to 9999).
pub const ACCEPTED_MICROS: std::ops::RangeInclusive<i64> = 0..=253_370_764_799_999_999;
/// [`ACCEPTED_MICROS`] as a caller reads it.
pub const ACCEPTED_RANGE: &str = "between 1970-01-01T00:00:00Z and 9998-12-31T23:59:59Z";

/// The inverse of [`to_micros`]; `None` when out of range.
pub fn from_micros(micros: i64) -> Option<Timestamp> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}
