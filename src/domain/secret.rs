//! Secrets (API keys, service credentials): generated here, shown once, and
//! kept only as SHA-256 hashes compared in constant time.
use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a secret: the only form in which secrets are stored.
#[derive(Clone, Copy, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A freshly generated secret: `prefix` + base58 of 32 random bytes. It has no
/// `Debug` or `Display`, so it cannot end up in a log line by accident.
pub struct IssuedSecret {
    secret: String,
}

impl IssuedSecret {
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            secret: format!("{prefix}{}", bs58::encode(bytes).into_string()),
        }
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.secret)
    }

    /// The secret itself, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    pub fn into_exposed(self) -> String {
        self.secret
    }
}
