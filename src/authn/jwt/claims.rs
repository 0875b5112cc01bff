//! Reading a token's payload: the claims this service checks, in the shapes
//! RFC 7519 allows, and the checks done before the library sees a token.

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;

use super::keys::VerifyKey;
use crate::authn::AuthnError;

/// A claim as found in the payload: absent is not the same as `null`.
#[derive(Debug, Default)]
pub(super) enum Claim {
    /// Not in the payload.
    #[default]
    Absent,
    /// In the payload with this value (possibly `null`).
    Present(Value),
}

/// The claims this service reads; others are ignored. A duplicated claim makes
/// the payload invalid (serde rejects duplicate fields).
#[derive(Debug, Deserialize)]
pub(super) struct RawClaims {
    #[serde(default)]
    pub(super) exp: Claim,
    #[serde(default)]
    pub(super) nbf: Claim,
    #[serde(default)]
    pub(super) iat: Claim,
    #[serde(default)]
    pub(super) iss: Claim,
    #[serde(default)]
    pub(super) aud: Claim,
    #[serde(default)]
    pub(super) sub: Claim,
    #[serde(default)]
    pub(super) sid: Claim,
    #[serde(default)]
    pub(super) scope: Claim,
}

impl<'de> Deserialize<'de> for Claim {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Claim::Present)
    }
}

/// A `typ` value as compared: lower case, without the `application/` prefix
/// (RFC 7515 §4.1.9 lets a producer omit it), surrounding spaces ignored.
pub(super) fn normalize_typ(typ: &str) -> String {
    let typ = typ.trim().to_ascii_lowercase();
    match typ.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => typ,
    }
}

/// Exactly three non-empty base64url segments (header, payload, signature).
/// Checked before the library sees the token: it splits from the right and
/// would read `a.b.c.d` as header `a.b`.
pub(super) fn has_compact_jws_shape(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// Checks the signature with `key`, whose algorithm the header must name.
pub(super) fn decode_with(
    key: &VerifyKey,
    token: &str,
    header_alg: Algorithm,
) -> Result<RawClaims, AuthnError> {
    if header_alg != key.alg {
        // Algorithm confusion (e.g. HS256 with an RSA public key as secret).
        return Err(AuthnError::InvalidToken);
    }
    jsonwebtoken::decode::<RawClaims>(token, &key.key, &key.validation)
        .map(|data| data.claims)
        .map_err(|_| AuthnError::InvalidToken)
}

/// A NumericDate claim (RFC 7519 §2): an integer or a finite number of
/// seconds, floored. Absent → `None`; anything else → `InvalidToken`.
pub(super) fn numeric_date(claim: &Claim) -> Result<Option<i64>, AuthnError> {
    let Claim::Present(value) = claim else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(AuthnError::InvalidToken);
    };
    if let Some(seconds) = number.as_i64() {
        return Ok(Some(seconds));
    }
    match number.as_f64() {
        // `i64::MAX as f64` rounds up to 2^63, so `<` keeps the cast in range.
        Some(f) if f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            Ok(Some(f.floor() as i64))
        }
        _ => Err(AuthnError::InvalidToken),
    }
}

/// `aud` is our audience, or an array of strings containing it.
pub(super) fn audience_matches(claim: &Claim, ours: &str) -> bool {
    match claim {
        Claim::Present(Value::String(aud)) => aud == ours,
        Claim::Present(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.iter().any(|v| v.as_str() == Some(ours))
        }
        _ => false,
    }
}
