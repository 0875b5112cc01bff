//! The JWKS file (`auth.jwt.jwks_file`): RS256 / ES256 / EdDSA public keys
//! selected by `kid`, read at start-up, reread when a token names a kid the set
//! lacks (at most once per interval) or on demand, and swapped whole so that
//! readers never block.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use super::keys::{
    VerifyKey, b64url_decode, check_public_key, check_rsa_components, parse_alg, read_small_file,
};

/// The JWKS file and the key set last read from it.
pub(super) struct JwksSource {
    /// Where to (re)read the key set.
    pub(super) path: PathBuf,
    /// The current key set; readers never block, a reload swaps it whole.
    pub(super) keys: ArcSwap<Vec<VerifyKey>>,
    /// Kids of the static keys, which a JWKS key must not shadow.
    static_kids: Vec<String>,
    /// Origin of the millisecond clock below.
    started: Instant,
    /// When the file was last read (ms since `started`): the rate limit.
    last_load_ms: AtomicU64,
    /// `jwks_reload_min_interval_secs` in milliseconds.
    min_interval_ms: u64,
}

/// One entry of a JWKS document, only the members we use (RFC 7517/7518).
#[derive(Deserialize)]
struct JwkEntry {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// A JWKS document.
#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

impl JwksSource {
    /// Reads the file at start-up. Problems are prefixed with
    /// `auth.jwt.jwks_file`; a file without one usable key is one of them.
    pub(super) fn open(
        path: &Path,
        static_kids: Vec<String>,
        min_interval_secs: u64,
    ) -> Result<JwksSource, Vec<String>> {
        match load_jwks_file(path, &static_kids) {
            Ok(set) if set.is_empty() => Err(vec![format!(
                "auth.jwt.jwks_file: {}: no usable signing key (RS256, ES256 or EdDSA, with a kid)",
                path.display()
            )]),
            Ok(set) => Ok(JwksSource {
                path: path.to_path_buf(),
                keys: ArcSwap::from_pointee(set),
                static_kids,
                started: Instant::now(),
                last_load_ms: AtomicU64::new(0),
                min_interval_ms: min_interval_secs.saturating_mul(1000),
            }),
            Err(problems) => Err(problems
                .into_iter()
                .map(|p| format!("auth.jwt.jwks_file: {p}"))
                .collect()),
        }
    }

    /// Runs `f` on the key named `kid` in the current set, if there is one.
    pub(super) fn with_key<R>(&self, kid: &str, f: impl FnOnce(&VerifyKey) -> R) -> Option<R> {
        let set = self.keys.load();
        set.iter().find(|k| k.kid.as_deref() == Some(kid)).map(f)
    }

    /// Rereads the file if the last read is at least `min_interval_ms` old and
    /// no other thread just claimed the reload; true if the set was replaced.
    ///
    /// This blocks the calling request on a small local file read, at most
    /// once per interval across all requests, which is cheaper than a
    /// background task for a rare event.
    pub(super) fn reload_if_due(&self) -> bool {
        let now_ms = self.elapsed_ms();
        let last = self.last_load_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(last) < self.min_interval_ms {
            return false;
        }
        if self
            .last_load_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        match self.load() {
            Ok(_) => true,
            Err(problems) => {
                tracing::warn!(
                    path = %self.path.display(),
                    problems = ?problems,
                    "JWKS reload failed; keeping the previous key set"
                );
                false
            }
        }
    }

    /// Forced reload.
    pub(super) fn reload(&self) -> Result<usize, Vec<String>> {
        self.last_load_ms
            .store(self.elapsed_ms(), Ordering::Release);
        self.load()
    }

    /// Reads the file and swaps the set in; on error the old set stays.
    fn load(&self) -> Result<usize, Vec<String>> {
        let set = load_jwks_file(&self.path, &self.static_kids)?;
        let count = set.len();
        self.keys.store(Arc::new(set));
        Ok(count)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Reads and parses a JWKS file; problems are prefixed with the path.
fn load_jwks_file(path: &Path, static_kids: &[String]) -> Result<Vec<VerifyKey>, Vec<String>> {
    let bytes =
        read_small_file(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    parse_jwks(&bytes, static_kids).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect()
    })
}

/// Parses a JWKS document into verification keys.
///
/// Entries that are not for us are skipped: `use` other than `sig`, an `alg`
/// other than RS256/ES256/EdDSA (e.g. RSA-OAEP, PS256), an unknown `kty`, or a
/// curve we do not verify. Entries that claim to be ours but are broken are
/// errors, as are symmetric (`oct`) keys — a secret has no place in a key set
/// file — missing or duplicate kids, and kids that shadow a static key.
fn parse_jwks(bytes: &[u8], static_kids: &[String]) -> Result<Vec<VerifyKey>, Vec<String>> {
    let document: JwksDocument =
        serde_json::from_slice(bytes).map_err(|e| vec![format!("not a JWKS document ({e})")])?;
    let mut problems = Vec::new();
    let mut keys: Vec<VerifyKey> = Vec::new();
    for (i, value) in document.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        let entry: JwkEntry = match serde_json::from_value(value) {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(format!("{at}: not a JWK ({e})"));
                continue;
            }
        };
        match jwk_to_key(&entry) {
            Ok(None) => {}
            Ok(Some(key)) => {
                let kid = key.kid.as_deref().unwrap_or_default();
                if static_kids.iter().any(|k| k == kid) {
                    problems.push(format!("{at}: kid {kid:?} is also a key in auth.jwt.keys"));
                } else if keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                    problems.push(format!("{at}: duplicate kid {kid:?}"));
                } else {
                    keys.push(key);
                }
            }
            Err(why) => problems.push(format!("{at}: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// One JWK → a key, `None` if it is not for verifying our algorithms.
fn jwk_to_key(entry: &JwkEntry) -> Result<Option<VerifyKey>, String> {
    if entry.public_key_use.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if entry.kty == "oct" {
        return Err("symmetric (oct) keys are not accepted from a JWKS file".to_owned());
    }
    let alg = match entry.alg.as_deref() {
        Some(name) => match parse_alg(name) {
            Some(Algorithm::HS256) | None => return Ok(None),
            Some(alg) => alg,
        },
        None => match (entry.kty.as_str(), entry.crv.as_deref()) {
            ("RSA", _) => Algorithm::RS256,
            ("EC", Some("P-256")) => Algorithm::ES256,
            ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
            _ => return Ok(None),
        },
    };
    let expected_kty = match alg {
        Algorithm::RS256 => "RSA",
        Algorithm::ES256 => "EC",
        _ => "OKP",
    };
    if entry.kty != expected_kty {
        return Err(format!(
            "alg {alg:?} needs kty {expected_kty:?}, not {:?}",
            entry.kty
        ));
    }
    let kid = match entry.kid.as_deref() {
        Some(kid) if !kid.is_empty() => kid.to_owned(),
        _ => return Err("a kid is required (tokens name their key by kid)".to_owned()),
    };
    let member = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
        let text = value
            .as_deref()
            .ok_or_else(|| format!("member {name:?} is required"))?;
        b64url_decode(text).ok_or_else(|| format!("member {name:?} is not base64url"))
    };
    let key = match alg {
        Algorithm::RS256 => {
            let (n, e) = (member("n", &entry.n)?, member("e", &entry.e)?);
            check_rsa_components(&n, &e)?;
            DecodingKey::from_rsa_raw_components(&n, &e)
        }
        Algorithm::ES256 => {
            if entry.crv.as_deref() != Some("P-256") {
                return Err("ES256 needs crv \"P-256\"".to_owned());
            }
            let (x, y) = (member("x", &entry.x)?, member("y", &entry.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".to_owned());
            }
            // Uncompressed SEC1 point, the form the EC verifier parses.
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = DecodingKey::from_ec_der(&point);
            check_public_key(alg, &key)?;
            key
        }
        _ => {
            if entry.crv.as_deref() != Some("Ed25519") {
                return Err("EdDSA needs crv \"Ed25519\"".to_owned());
            }
            let key = DecodingKey::from_ed_der(&member("x", &entry.x)?);
            check_public_key(alg, &key)?;
            key
        }
    };
    Ok(Some(VerifyKey::new(Some(kid), alg, key)))
}

#[cfg(test)]
mod tests;
