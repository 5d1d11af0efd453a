//! Bounded strings and string maps shared by several entities.
use std::collections::BTreeMap;

use super::FieldViolation;

/// Checks a free-text field: trimmed of nothing, at most `max` characters, no
/// control characters, and not empty when `required`.
pub fn bounded(
    field: &str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<String, FieldViolation> {
    if required && value.trim().is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Free-form labels: at most 64 entries, keys 1-64 characters, values ≤ 512.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    pub const MAX_ENTRIES: usize = 64;

    pub fn parse<I>(field: &str, entries: I) -> Result<Self, FieldViolation>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let map: BTreeMap<String, String> = entries.into_iter().collect();
        if map.len() > Self::MAX_ENTRIES {
            return Err(FieldViolation::new(
                field,
                format!("must have at most {} entries", Self::MAX_ENTRIES),
            ));
        }
        for (k, v) in &map {
            bounded(field, k, 64, true).map_err(|_| {
                FieldViolation::new(
                    field,
                    format!("key {k:?} must be 1-64 characters without control characters"),
                )
            })?;
            bounded(field, v, 512, false).map_err(|_| {
                FieldViolation::new(
                    format!("{field}[{k}]"),
                    "must be at most 512 characters without control characters",
                )
            })?;
        }
        Ok(Self(map))
    }

    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}
