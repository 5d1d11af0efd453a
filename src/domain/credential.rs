//! Service credentials: the bearer tokens callers of the gRPC API present.
use super::{Timestamp, ids::CredentialId, secret::IssuedSecret};

/// What a credential may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every RPC.
    Admin,
    /// The Verify service only.
    Verify,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Verify => "verify",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "verify" => Some(Self::Verify),
            _ => None,
        }
    }
}

/// Start of every credential token; API keys start with `tg_`, so the two can
/// never be mistaken for each other.
pub const TOKEN_PREFIX: &str = "tgc_";

pub fn issue_token() -> IssuedSecret {
    IssuedSecret::generate(TOKEN_PREFIX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: CredentialId,
    pub name: String,
    pub scope: Scope,
    pub created_at: Timestamp,
    /// When its token stops being accepted, if ever.
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// Seeded from `admin_token`: the next token set there replaces it.
    pub seeded: bool,
}

/// Whether a credential's token is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialStatus {
    Active,
    Expired,
    Revoked,
}

impl Credential {
    pub fn status(&self, at: Timestamp) -> CredentialStatus {
        if self.revoked_at.is_some() {
            CredentialStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= at) {
            CredentialStatus::Expired
        } else {
            CredentialStatus::Active
        }
    }
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}
