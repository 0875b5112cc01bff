//! API keys (SPEC §3 `api_keys`, §9): generation, hashing, constant-time
//! comparison and the revoked/expired check. Only the hash is ever stored; the
//! plain key is shown once, at creation.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::authn::AuthnError;
use crate::model::ApiKey;

/// Every key starts with this, so leaked keys are recognisable by secret
/// scanners and by people.
pub const PREFIX: &str = "velro_";

/// Random bytes in a key.
const KEY_BYTES: usize = 32;

/// Length of every key [`generate`] makes: the prefix and 43 base64url
/// characters (32 bytes, no padding).
pub const KEY_LEN: usize = PREFIX.len() + (KEY_BYTES * 4).div_ceil(3);

/// How many characters of the plain key are kept for display ("which key is
/// this?"): the prefix plus 6 random characters, far too few to guess the rest.
const DISPLAY_PREFIX_LEN: usize = 12;

/// A freshly generated key: the plain text to show once, and what to store.
pub struct GeneratedKey {
    /// `velro_` + base64url (no padding) of 32 random bytes: 49 characters.
    pub plain: String,
    /// Hex SHA-256 of `plain`: the only form stored (`api_keys.key_hash`).
    pub hash: String,
    /// The first 12 characters of `plain`, safe to store and show in listings.
    pub display_prefix: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("plain", &"<redacted>")
            .field("hash", &self.hash)
            .field("display_prefix", &self.display_prefix)
            .finish()
    }
}

/// Generates a new key from 256 bits of randomness.
///
/// `rand::rng()` is the thread-local CSPRNG (ChaCha, seeded from the OS), which
/// is what a secret needs.
#[must_use]
pub fn generate() -> GeneratedKey {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let plain = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash(&plain);
    let display_prefix = plain.chars().take(DISPLAY_PREFIX_LEN).collect();
    GeneratedKey {
        plain,
        hash,
        display_prefix,
    }
}

/// Whether `value` can be a key [`generate`] made: [`PREFIX`], then exactly
/// the unpadded base64url encoding of 32 bytes (43 characters, the last one
/// with its two spare bits zero, as the encoder writes it). Checked before
/// any lookup, so a value that cannot be ours costs no hash, cache entry or
/// query; exact, so every generated key passes.
#[must_use]
pub fn is_well_formed(value: &str) -> bool {
    let Some(encoded) = value.strip_prefix(PREFIX) else {
        return false;
    };
    // One byte of room: the decoder's length estimate for 43 characters is 33.
    let mut bytes = [0u8; KEY_BYTES + 1];
    value.len() == KEY_LEN
        && URL_SAFE_NO_PAD
            .decode_slice(encoded, &mut bytes)
            .is_ok_and(|n| n == KEY_BYTES)
}

/// Hex (lowercase) SHA-256 of the plain key: the lookup key in `api_keys`.
///
/// A fast, unsalted hash is right here, unlike for passwords: keys are 256-bit
/// random values, so there is nothing to brute-force or look up in a table, and
/// a deterministic hash lets the row be found by an index on the hash. A slow
/// KDF would only add latency to every request.
#[must_use]
pub fn hash(plain: &str) -> String {
    hex::encode(Sha256::digest(plain.as_bytes()))
}

/// Compares a stored hash with a computed one in constant time (for equal
/// lengths; the length of a hex SHA-256 is no secret).
///
/// The row was found by its hash already; comparing again in constant time
/// guards against a lookup that matched loosely (collation, prefix index)
/// without leaking how many characters agreed.
#[must_use]
pub fn hashes_match(stored: &str, computed: &str) -> bool {
    stored.as_bytes().ct_eq(computed.as_bytes()).into()
}

/// Checks a found key's state (SPEC §9): `revoked_at` set → `ApiKeyRevoked`;
/// `expires_at <= now` → `ApiKeyExpired`; `expires_at` unset never expires.
/// Revocation is checked first: it is the stronger statement.
pub fn check_state(key: &ApiKey, now: DateTime<Utc>) -> Result<(), AuthnError> {
    if key.revoked_at.is_some() {
        return Err(AuthnError::ApiKeyRevoked);
    }
    match key.expires_at {
        Some(expires_at) if expires_at <= now => Err(AuthnError::ApiKeyExpired),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
