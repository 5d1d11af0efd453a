//! A tenant's API keys.
use super::{
    Timestamp,
    ids::{KeyId, TenantId},
    plan::{Quota, RateLimit},
    secret::IssuedSecret,
    text::Metadata,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEnvironment {
    Live,
    Test,
}

impl KeyEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }

    /// The fixed start of every secret of this environment.
    pub fn secret_prefix(self) -> &'static str {
        match self {
            Self::Live => "tg_live_",
            Self::Test => "tg_test_",
        }
    }

    /// The environment whose prefix `secret` starts with, if any.
    pub fn of_secret(secret: &str) -> Option<Self> {
        [Self::Live, Self::Test]
            .into_iter()
            .find(|env| secret.starts_with(env.secret_prefix()))
    }

    pub fn issue_secret(self) -> IssuedSecret {
        IssuedSecret::generate(self.secret_prefix())
    }
}

/// The visible start of a secret: its environment prefix and 4 more
/// characters, enough to tell keys apart and far too little to guess from.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take("tg_live_".len() + 4).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

/// The parts of a key its owner edits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySettings {
    pub name: String,
    pub disabled: bool,
    pub expires_at: Option<Timestamp>,
    pub rate_limit_override: Option<RateLimit>,
    pub quota_overrides: Vec<Quota>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub environment: KeyEnvironment,
    pub prefix: String,
    pub settings: KeySettings,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    pub fn status(&self, at: Timestamp) -> KeyStatus {
        status(self.revoked_at.is_some(), self.settings.expires_at, at)
    }

    /// What Verify applies of this key.
    pub fn terms(&self) -> KeyTerms {
        KeyTerms {
            id: self.id,
            revoked: self.revoked_at.is_some(),
            disabled: self.settings.disabled,
            expires_at: self.settings.expires_at,
            overrides: (self.settings.rate_limit_override.is_some()
                || !self.settings.quota_overrides.is_empty())
            .then(|| {
                Box::new(Overrides {
                    rate_limit: self.settings.rate_limit_override,
                    quotas: self.settings.quota_overrides.clone().into_boxed_slice(),
                })
            }),
        }
    }
}

/// What Verify applies of a key. The key cache holds this rather than the
/// key: its name, prefix, metadata and times answer no Verify, and a million
/// cached keys should not each carry them (nor its tenant's id: the
/// entitlement holding these terms holds the tenant's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTerms {
    pub id: KeyId,
    pub revoked: bool,
    pub disabled: bool,
    pub expires_at: Option<Timestamp>,
    /// Boxed: most keys have none, and then it costs 8 bytes, not 40.
    overrides: Option<Box<Overrides>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Overrides {
    rate_limit: Option<RateLimit>,
    quotas: Box<[Quota]>,
}

impl KeyTerms {
    pub fn status(&self, at: Timestamp) -> KeyStatus {
        status(self.revoked, self.expires_at, at)
    }

    pub fn rate_limit_override(&self) -> Option<RateLimit> {
        self.overrides.as_ref().and_then(|o| o.rate_limit)
    }

    pub fn quota_overrides(&self) -> &[Quota] {
        self.overrides.as_ref().map_or(&[], |o| &o.quotas)
    }
}

fn status(revoked: bool, expires_at: Option<Timestamp>, at: Timestamp) -> KeyStatus {
    if revoked {
        KeyStatus::Revoked
    } else if expires_at.is_some_and(|e| e <= at) {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    }
}
