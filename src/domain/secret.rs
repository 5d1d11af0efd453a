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

/// Characters of a secret's random part: base58 of 32 bytes, padded with
/// leading `1`s (base58's zero) to a fixed length.
const RANDOM_LEN: usize = 44;
/// Characters of its checksum: base58 of the CRC-32 of the prefix and the
/// random part, padded alike, as GitHub's token formats do.
const CHECK_LEN: usize = 6;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn base58_padded(bytes: &[u8], len: usize) -> String {
    let encoded = bs58::encode(bytes).into_string();
    format!("{}{encoded}", "1".repeat(len.saturating_sub(encoded.len())))
}

/// The checksum's characters, on the stack: every Verify computes one.
fn checksum(prefix: &str, random: &str) -> [u8; CHECK_LEN] {
    let mut digest = CRC.digest();
    digest.update(prefix.as_bytes());
    digest.update(random.as_bytes());
    let mut encoded = [0u8; CHECK_LEN];
    let len = bs58::encode(digest.finalize().to_be_bytes())
        .onto(&mut encoded[..])
        .expect("a CRC-32 is at most 6 base58 characters");
    let mut padded = [b'1'; CHECK_LEN];
    padded[CHECK_LEN - len..].copy_from_slice(&encoded[..len]);
    padded
}

/// What a presented secret can be, told from its text alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Issued with a checksum, and the checksum holds: worth a lookup.
    Checked,
    /// Shaped like a secret issued before checksums (the prefix, then 32
    /// random bytes in base58): only a lookup can tell.
    Unchecked,
    /// Shaped as issued with a checksum, but it does not hold: made up (or
    /// mistyped), refused with no lookup at all.
    BadChecksum,
    /// Not shaped like anything issued with `prefix`.
    Malformed,
}

/// What Verify does with an API key shaped like those issued before keys had
/// a checksum (the prefix and 32 random bytes in base58).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UncheckedSecrets {
    /// Look it up (once: an unknown one is remembered as unknown).
    Accept,
    /// Refuse it with no lookup: every made-up key costs nothing. Set once
    /// every key issued before checksums is rotated or revoked.
    Refuse,
}

/// The shape of `secret`, issued (if at all) with `prefix`.
pub fn shape(secret: &str, prefix: &str) -> Shape {
    let Some(body) = secret.strip_prefix(prefix) else {
        return Shape::Malformed;
    };
    let base58 = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'));
    if !base58 {
        return Shape::Malformed;
    }
    if body.len() == RANDOM_LEN + CHECK_LEN {
        let (random, check) = body.split_at(RANDOM_LEN);
        return if checksum(prefix, random) == check.as_bytes() {
            Shape::Checked
        } else {
            Shape::BadChecksum
        };
    }
    // Base58 of 32 random bytes is 44 characters, rarely 43, and shorter
    // only by leading zero bytes (each a `1`): 40 covers all but 2^-64.
    if (40..=RANDOM_LEN).contains(&body.len()) {
        Shape::Unchecked
    } else {
        Shape::Malformed
    }
}

/// A freshly generated secret: `prefix`, base58 of 32 random bytes and a
/// checksum of both (so a made-up secret is refused without a lookup). It
/// has no `Debug` or `Display`, so it cannot end up in a log line by
/// accident.
pub struct IssuedSecret {
    secret: String,
}

impl IssuedSecret {
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let random = base58_padded(&bytes, RANDOM_LEN);
        let check = checksum(prefix, &random);
        let check = std::str::from_utf8(&check).expect("base58 is ASCII");
        Self {
            secret: format!("{prefix}{random}{check}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_secrets_are_checked_and_any_change_forges_them() {
        for _ in 0..200 {
            let issued = IssuedSecret::generate("tg_live_");
            let secret = issued.expose();
            assert_eq!(secret.len(), "tg_live_".len() + RANDOM_LEN + CHECK_LEN);
            assert_eq!(shape(secret, "tg_live_"), Shape::Checked);
            assert_eq!(shape(secret, "tg_test_"), Shape::Malformed);
            // One character changed anywhere in the body: caught.
            let body = &secret["tg_live_".len()..];
            for (i, c) in body.char_indices().step_by(7) {
                let other = if c == '2' { '3' } else { '2' };
                let changed = format!("tg_live_{}{other}{}", &body[..i], &body[i + 1..]);
                assert_eq!(shape(&changed, "tg_live_"), Shape::BadChecksum, "{i}");
            }
        }
    }

    #[test]
    fn secrets_issued_before_checksums_are_unchecked_and_junk_forged() {
        // The format before: the prefix and base58 of 32 bytes.
        let old = format!("tg_live_{}", bs58::encode([7u8; 32]).into_string());
        assert_eq!(shape(&old, "tg_live_"), Shape::Unchecked);
        for junk in [
            "tg_live_",
            "tg_live_unknownsecret",
            "tg_live_0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl",
            "someone_else's_token",
            &format!("tg_live_{}", "x".repeat(300)),
        ] {
            assert_eq!(shape(junk, "tg_live_"), Shape::Malformed, "{junk}");
        }
    }
}
