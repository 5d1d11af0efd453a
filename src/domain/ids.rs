//! Typed, prefixed ids (`plan_…`, `ten_…`, `key_…`): a UUIDv7 in hex behind a
//! type prefix, so ids sort by creation and say what they name.
use std::fmt;

use super::FieldViolation;

macro_rules! id_type {
    ($name:ident, $prefix:literal, $kind:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const KIND: &'static str = $kind;

            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// Parses `prefix` + 32 hex digits, naming `field` when it fails.
            pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
                s.strip_prefix($prefix)
                    .filter(|hex| hex.len() == 32)
                    .and_then(|hex| uuid::Uuid::try_parse(hex).ok())
                    .map(Self)
                    .ok_or_else(|| {
                        FieldViolation::new(
                            field,
                            format!("must be a {} id: {}<32 hex digits>", $kind, $prefix),
                        )
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.simple())
            }
        }
    };
}

id_type!(PlanId, "plan_", "plan");
id_type!(TenantId, "ten_", "tenant");
id_type!(KeyId, "key_", "key");
id_type!(CredentialId, "cred_", "credential");
id_type!(LedgerEntryId, "led_", "ledger entry");
id_type!(InvoiceId, "inv_", "invoice");
