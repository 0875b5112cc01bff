//! The JWKS file (`auth.jwt.jwks_file`): RS256 / ES256 / EdDSA public keys
//! selected by `kid`, read at start-up, reread when a token names a kid the set
//! lacks (at most once per interval), on a timer and on demand (SIGHUP), and
//! swapped whole so that readers never block.
//!
//! Every reload that changes the set bumps its generation, and each key keeps
//! the generation since which its kid has had this key material. A result
//! verified against generation `g` with kid `k` stays good exactly while `k`
//! is in the set with the same material since `g` or earlier
//! ([`JwksSource::still_holds`]): that is how a removed or replaced key stops
//! cached verifications, at the next read, without scanning the cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::{
    VerifyKey, b64url_decode, check_public_key, check_rsa_components, parse_alg, read_small_file,
};

/// The JWKS file and the key set last read from it.
pub(super) struct JwksSource {
    /// Where to (re)read the key set.
    pub(super) path: PathBuf,
    /// The current key set; readers never block, a reload swaps it whole.
    pub(super) set: ArcSwap<KeySet>,
    /// Kids of the static keys, which a JWKS key must not shadow.
    static_kids: Vec<String>,
    /// One reload at a time, so generations are assigned in order (readers
    /// never take it).
    reloading: Mutex<()>,
    /// Origin of the millisecond clock below.
    started: Instant,
    /// When the file was last read (ms since `started`): the rate limit.
    last_load_ms: AtomicU64,
    /// `jwks_reload_min_interval_secs` in milliseconds.
    min_interval_ms: u64,
}

/// One version of the key set.
pub(super) struct KeySet {
    /// Bumped by every reload that adds, removes or replaces a key.
    pub(super) generation: u64,
    /// The keys, in file order.
    pub(super) keys: Vec<JwksKey>,
}

/// A key of the set with what it takes to tell whether it changed.
pub(super) struct JwksKey {
    /// The verification key (its kid is always set).
    pub(super) key: VerifyKey,
    /// SHA-256 over the members that make the key (kty, alg, crv, n, e, x,
    /// y): the same kid with other material is another key.
    fingerprint: [u8; 32],
    /// The generation since which this kid has had this material.
    since: u64,
}

/// What a reload changed, by kid (kids are names, not secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksReload {
    /// Keys in the set now.
    pub keys: usize,
    /// The set's generation now.
    pub generation: u64,
    /// Kids that appeared.
    pub added: Vec<String>,
    /// Kids that left: their cached verifications are void.
    pub removed: Vec<String>,
    /// Kids whose key material changed: their cached verifications are void.
    pub replaced: Vec<String>,
}

impl JwksReload {
    /// Whether the set changed at all.
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.replaced.is_empty())
    }
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
                set: ArcSwap::from_pointee(KeySet {
                    generation: 0,
                    keys: set
                        .into_iter()
                        .map(|(key, fingerprint)| JwksKey {
                            key,
                            fingerprint,
                            since: 0,
                        })
                        .collect(),
                }),
                static_kids,
                reloading: Mutex::new(()),
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

    /// Runs `f` on the key named `kid` in the current set, if there is one,
    /// with the generation of that set.
    pub(super) fn with_key<R>(
        &self,
        kid: &str,
        f: impl FnOnce(&VerifyKey) -> R,
    ) -> Option<(R, u64)> {
        let set = self.set.load();
        set.keys
            .iter()
            .find(|k| k.key.kid.as_deref() == Some(kid))
            .map(|k| (f(&k.key), set.generation))
    }

    /// Whether a verification made with `kid` against generation `generation`
    /// still holds: the kid is in the set with the material it had then.
    pub(super) fn still_holds(&self, kid: &str, generation: u64) -> bool {
        let set = self.set.load();
        set.generation == generation
            || set
                .keys
                .iter()
                .any(|k| k.key.kid.as_deref() == Some(kid) && k.since <= generation)
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
            Ok(reload) => {
                if reload.changed() {
                    tracing::info!(
                        path = %self.path.display(),
                        trigger = "unknown_kid",
                        keys = reload.keys,
                        added = ?reload.added,
                        removed = ?reload.removed,
                        replaced = ?reload.replaced,
                        "JWKS reloaded"
                    );
                }
                reload.changed()
            }
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

    /// Forced reload (timer, SIGHUP), whatever the rate limit.
    pub(super) fn reload(&self) -> Result<JwksReload, Vec<String>> {
        self.last_load_ms
            .store(self.elapsed_ms(), Ordering::Release);
        self.load()
    }

    /// Reads the file and, if the keys differ, swaps in a new generation; on
    /// error (unreadable, not a JWKS document, a broken entry) the old set
    /// stays. A valid document without keys empties the set: removing every
    /// key is a removal like any other.
    fn load(&self) -> Result<JwksReload, Vec<String>> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let read = load_jwks_file(&self.path, &self.static_kids)?;
        let old = self.set.load_full();
        let kid = |k: &JwksKey| k.key.kid.clone().unwrap_or_default();
        let old_of = |name: &str| old.keys.iter().find(|k| k.key.kid.as_deref() == Some(name));
        let mut reload = JwksReload {
            keys: read.len(),
            generation: old.generation,
            ..JwksReload::default()
        };
        for (key, fingerprint) in &read {
            let name = key.kid.as_deref().unwrap_or_default();
            match old_of(name) {
                None => reload.added.push(name.to_owned()),
                Some(k) if k.fingerprint != *fingerprint => reload.replaced.push(name.to_owned()),
                Some(_) => {}
            }
        }
        for k in old.keys.iter() {
            let name = kid(k);
            if !read
                .iter()
                .any(|(key, _)| key.kid.as_deref() == Some(&name))
            {
                reload.removed.push(name);
            }
        }
        if !reload.changed() {
            return Ok(reload);
        }
        let generation = old.generation + 1;
        let keys = read
            .into_iter()
            .map(|(key, fingerprint)| {
                let since = match old_of(key.kid.as_deref().unwrap_or_default()) {
                    Some(k) if k.fingerprint == fingerprint => k.since,
                    _ => generation,
                };
                JwksKey {
                    key,
                    fingerprint,
                    since,
                }
            })
            .collect();
        self.set.store(Arc::new(KeySet { generation, keys }));
        reload.generation = generation;
        Ok(reload)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A key read from the file with its fingerprint.
type ReadKey = (VerifyKey, [u8; 32]);

/// Reads and parses a JWKS file; problems are prefixed with the path.
fn load_jwks_file(path: &Path, static_kids: &[String]) -> Result<Vec<ReadKey>, Vec<String>> {
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
fn parse_jwks(bytes: &[u8], static_kids: &[String]) -> Result<Vec<ReadKey>, Vec<String>> {
    let document: JwksDocument =
        serde_json::from_slice(bytes).map_err(|e| vec![format!("not a JWKS document ({e})")])?;
    let mut problems = Vec::new();
    let mut keys: Vec<ReadKey> = Vec::new();
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
                } else if keys.iter().any(|(k, _)| k.kid.as_deref() == Some(kid)) {
                    problems.push(format!("{at}: duplicate kid {kid:?}"));
                } else {
                    keys.push((key, fingerprint(&entry)));
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

/// The members that make a key, hashed: same kid, other fingerprint = a
/// replaced key. Each member is length-prefixed so no two JWKs collide by
/// moving bytes between members.
fn fingerprint(entry: &JwkEntry) -> [u8; 32] {
    let mut hash = Sha256::new();
    for member in [
        Some(&entry.kty),
        entry.alg.as_ref(),
        entry.crv.as_ref(),
        entry.n.as_ref(),
        entry.e.as_ref(),
        entry.x.as_ref(),
        entry.y.as_ref(),
    ] {
        let bytes = member.map_or(&[][..], |m| m.as_bytes());
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    hash.finalize().into()
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
