//! The configured keys (`auth.jwt.keys`): settings into verification and
//! signing keys, PEM parsing, and the checks that make a bad key fail at
//! start-up rather than on the first request (HS256 secret length, RSA size and
//! exponent, curve points, a private key matching its public key). Also the
//! pieces the JWKS reader shares: algorithm names, base64url, bounded file reads.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::Deserialize;

/// HS256 secrets must carry at least the 256 bits of the hash (RFC 7518 §3.2).
const MIN_HS256_SECRET_LEN: usize = 32;

/// Least estimated entropy of an HS256 secret, in bits (see
/// [`estimated_entropy_bits`]): what a brute-force search must cover.
const MIN_HS256_SECRET_BITS: f64 = 128.0;

/// The demo's HS256 secret (`demo/config.yaml`, `scripts/demo.sh`): public,
/// so refused unless `auth.jwt.allow_demo_secret` is set, which only the
/// shipped demo config does.
pub const DEMO_SECRET: &str = "velro-demo-only-secret-0123456789abcdef";

/// Words that mark a value as a placeholder copied from an example rather than
/// a secret (`CHANGE-ME-...` in `k8s/secret.example.yaml`, and the usual
/// variants). Compared in lower case with `-`, `_`, `.` and spaces removed.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "changeme",
    "replaceme",
    "placeholder",
    "yoursecret",
    "insertsecret",
    "notasecret",
    "demoonly",
];

/// How to make a good secret, for the error messages.
const SECRET_ADVICE: &str = "generate one, e.g. `head -c 32 /dev/urandom | base64`";

/// RSA moduli accepted: at least 2048 bits (NIST), at most what `rsa` verifies.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// Key and JWKS files are small; refuse to read anything larger.
const MAX_KEY_FILE_LEN: u64 = 1024 * 1024;

/// One configured key (`auth.jwt.keys[i]`). `Debug` redacts `secret`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Key id matched against the token header's `kid`; required when more
    /// than one key (or a JWKS file) is configured.
    pub kid: Option<String>,
    /// `HS256`, `RS256`, `ES256` or `EdDSA`; a token's header `alg` must equal it.
    pub alg: String,
    /// HS256 only: the shared secret, at least 32 bytes.
    pub secret: Option<String>,
    /// RS256/ES256/EdDSA: the public key, PEM text (SPKI, or PKCS#1 for RSA).
    pub public_key_pem: Option<String>,
    /// RS256/ES256/EdDSA: a file holding the PEM public key (instead of `public_key_pem`).
    pub public_key_file: Option<PathBuf>,
    /// Optional PKCS#8 PEM private key, only for minting dev tokens (`token` CLI).
    pub private_key_file: Option<PathBuf>,
}

/// A verification key with the one algorithm it accepts.
pub(super) struct VerifyKey {
    /// `None` only for a lone static key (tokens then need no `kid`).
    pub(super) kid: Option<String>,
    /// The only algorithm accepted with this key (no family-wide acceptance).
    pub(super) alg: Algorithm,
    /// The public key or HMAC secret.
    pub(super) key: DecodingKey,
    /// Signature-only validation for `alg`; claims are checked by us.
    pub(super) validation: Validation,
}

/// A key that can sign, for dev tokens.
pub(super) struct SigningKey {
    /// Written into the token header so verification finds the key.
    pub(super) kid: Option<String>,
    /// The key's algorithm.
    pub(super) alg: Algorithm,
    /// Secret or private key.
    pub(super) key: EncodingKey,
}

/// The keys of `auth.jwt.keys`, built in config order.
pub(super) struct StaticKeys {
    /// One per configured key, for verification.
    pub(super) verify: Vec<VerifyKey>,
    /// The keys that can also sign (an HS256 secret or a `private_key_file`).
    pub(super) signers: Vec<SigningKey>,
    /// Every configured kid, which a JWKS key must not shadow.
    pub(super) kids: Vec<String>,
}

impl fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "public_key_pem",
                &self
                    .public_key_pem
                    .as_ref()
                    .map(|pem| format!("<{} bytes>", pem.len())),
            )
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

impl VerifyKey {
    /// A key usable with exactly `alg`.
    pub(super) fn new(kid: Option<String>, alg: Algorithm, key: DecodingKey) -> VerifyKey {
        // Signature (and header alg) only: every claim is checked by
        // `check_claims`, with the spec's error mapping and an injectable clock.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        VerifyKey {
            kid,
            alg,
            key,
            validation,
        }
    }

    /// `kid/alg`, for `Debug`.
    pub(super) fn describe(&self) -> String {
        format!(
            "{}/{:?}",
            self.kid.as_deref().unwrap_or("<no kid>"),
            self.alg
        )
    }
}

impl StaticKeys {
    /// Builds each key of `setting` (e.g. `auth.jwt.keys`) and checks the kids: unique, not empty, and present when
    /// `kid_required` (more than one key or a JWKS file, so a token must name
    /// its key). HS256 secrets are checked by [`check_hs256_secret`]; the demo
    /// secret passes only with `allow_demo_secret`. Problems go to `errors`,
    /// each naming its setting and never quoting a secret.
    pub(super) fn build(
        setting: &str,
        configs: &[JwtKeyConfig],
        kid_required: bool,
        allow_demo_secret: bool,
        errors: &mut Vec<String>,
    ) -> StaticKeys {
        let mut kids: Vec<String> = Vec::new();
        let mut verify = Vec::new();
        let mut signers = Vec::new();
        for (i, key_config) in configs.iter().enumerate() {
            let at = format!("{setting}[{i}]");
            match &key_config.kid {
                Some(kid) if kid.is_empty() => errors.push(format!("{at}.kid: must not be empty")),
                Some(kid) => match kids.iter().position(|k| k == kid) {
                    Some(j) => errors.push(format!(
                        "{at}.kid: duplicate kid {kid:?} (also {setting}[{j}])"
                    )),
                    None => kids.push(kid.clone()),
                },
                None if kid_required => errors.push(format!(
                    "{at}.kid: required when more than one key or a jwks_file is configured \
                     (a token names its key by kid)"
                )),
                None => {}
            }
            if let Some((verify_key, signer)) =
                build_key(key_config, &at, allow_demo_secret, errors)
            {
                verify.push(verify_key);
                signers.extend(signer);
            }
        }
        StaticKeys {
            verify,
            signers,
            kids,
        }
    }
}

/// The algorithms this service accepts, by their config / JOSE names.
pub(super) fn parse_alg(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Builds one static key; problems go to `errors`, prefixed with `at`.
fn build_key(
    config: &JwtKeyConfig,
    at: &str,
    allow_demo_secret: bool,
    errors: &mut Vec<String>,
) -> Option<(VerifyKey, Option<SigningKey>)> {
    let Some(alg) = parse_alg(&config.alg) else {
        errors.push(format!(
            "{at}.alg: unsupported algorithm {:?} (expected HS256, RS256, ES256 or EdDSA)",
            config.alg
        ));
        return None;
    };
    let kid = config.kid.clone();

    if alg == Algorithm::HS256 {
        for (field, set) in [
            ("public_key_pem", config.public_key_pem.is_some()),
            ("public_key_file", config.public_key_file.is_some()),
            ("private_key_file", config.private_key_file.is_some()),
        ] {
            if set {
                errors.push(format!("{at}.{field}: not used by HS256 keys (set secret)"));
            }
        }
        let Some(secret) = &config.secret else {
            errors.push(format!("{at}.secret: required for HS256"));
            return None;
        };
        if let Err(why) = check_hs256_secret(secret, allow_demo_secret) {
            errors.push(format!("{at}.secret: {why}"));
            return None;
        }
        let verify = VerifyKey::new(
            kid.clone(),
            alg,
            DecodingKey::from_secret(secret.as_bytes()),
        );
        let sign = SigningKey {
            kid,
            alg,
            key: EncodingKey::from_secret(secret.as_bytes()),
        };
        return Some((verify, Some(sign)));
    }

    if config.secret.is_some() {
        errors.push(format!("{at}.secret: only HS256 keys have a secret"));
    }
    let (field, pem) = match (&config.public_key_pem, &config.public_key_file) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{at}: set public_key_pem or public_key_file, not both"
            ));
            return None;
        }
        (None, None) => {
            errors.push(format!(
                "{at}.public_key_pem / public_key_file: one is required for {}",
                config.alg
            ));
            return None;
        }
        (Some(pem), None) => ("public_key_pem", pem.as_bytes().to_vec()),
        (None, Some(path)) => match read_small_file(path) {
            Ok(bytes) => ("public_key_file", bytes),
            Err(e) => {
                errors.push(format!(
                    "{at}.public_key_file: cannot read {}: {e}",
                    path.display()
                ));
                return None;
            }
        },
    };
    let public = match public_key_from_pem(alg, &pem) {
        Ok(key) => key,
        Err(why) => {
            errors.push(format!("{at}.{field}: {why}"));
            return None;
        }
    };
    let signer = match &config.private_key_file {
        None => None,
        Some(path) => match private_key_from_file(alg, path, &public) {
            Ok(key) => Some(SigningKey {
                kid: kid.clone(),
                alg,
                key,
            }),
            Err(why) => {
                errors.push(format!("{at}.private_key_file: {why}"));
                None
            }
        },
    };
    Some((VerifyKey::new(kid, alg, public), signer))
}

/// Whether `secret` may key HS256, and if not why (never quoting it):
///
/// - at least [`MIN_HS256_SECRET_LEN`] bytes;
/// - not [`DEMO_SECRET`], unless `allow_demo_secret`;
/// - no placeholder marker ([`PLACEHOLDER_MARKERS`]);
/// - at least [`MIN_HS256_SECRET_BITS`] by [`estimated_entropy_bits`].
pub(super) fn check_hs256_secret(secret: &str, allow_demo_secret: bool) -> Result<(), String> {
    if secret.len() < MIN_HS256_SECRET_LEN {
        return Err(format!(
            "must be at least {MIN_HS256_SECRET_LEN} bytes (got {}); {SECRET_ADVICE}",
            secret.len()
        ));
    }
    if secret == DEMO_SECRET {
        return if allow_demo_secret {
            Ok(())
        } else {
            Err(format!(
                "is the demo secret published in demo/config.yaml, which anyone can read; \
                 only the local demo may use it (auth.jwt.allow_demo_secret: true); {SECRET_ADVICE}"
            ))
        };
    }
    let folded: String = secret
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if PLACEHOLDER_MARKERS.iter().any(|m| folded.contains(m)) {
        return Err(format!(
            "is a placeholder from an example, not a secret; {SECRET_ADVICE}"
        ));
    }
    let bits = estimated_entropy_bits(secret.as_bytes());
    if bits < MIN_HS256_SECRET_BITS {
        return Err(format!(
            "too predictable: about {bits:.0} bits of entropy by our estimate (repeats, runs \
             like `abcd`/`0123`, or too few distinct characters), at least \
             {MIN_HS256_SECRET_BITS:.0} needed; {SECRET_ADVICE}"
        ));
    }
    Ok(())
}

/// A simple, deliberately conservative estimate of how many bits a secret
/// carries, to refuse the obviously guessable; it cannot see dictionary words
/// and is no proof of randomness.
///
/// The secret is cut to its shortest repeating unit (`abcabcabc` → `abc`);
/// the estimate is that unit's length times the smaller of two Shannon
/// entropies per symbol: of its bytes (few distinct characters score low) and
/// of the differences between neighbouring bytes (runs like `abcdef` or
/// `0123456789` score low). 32 random bytes in base64 (44 characters) come to
/// about 190 bits or more, 32 random bytes in hex to about 225.
pub fn estimated_entropy_bits(secret: &[u8]) -> f64 {
    let unit = &secret[..shortest_period(secret)];
    let deltas: Vec<u8> = unit.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let bytes_bits = shannon_per_symbol(unit) * unit.len() as f64;
    let deltas_bits = shannon_per_symbol(&deltas) * deltas.len() as f64;
    bytes_bits.min(deltas_bits)
}

/// Shannon entropy, in bits per symbol, of the symbols' own histogram.
fn shannon_per_symbol(symbols: &[u8]) -> f64 {
    if symbols.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in symbols {
        counts[usize::from(b)] += 1;
    }
    let n = symbols.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// The length of the shortest unit whose repetition (last copy possibly cut
/// short) is `s`: the KMP failure function of the whole string.
fn shortest_period(s: &[u8]) -> usize {
    let mut fail = vec![0usize; s.len() + 1];
    let mut k = 0;
    for i in 1..s.len() {
        while k > 0 && s[i] != s[k] {
            k = fail[k];
        }
        if s[i] == s[k] {
            k += 1;
        }
        fail[i + 1] = k;
    }
    s.len() - fail[s.len()]
}

/// Parses and checks a PEM public key for `alg`.
fn public_key_from_pem(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let parsed = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Err(format!("{alg:?} keys are not public keys")),
    };
    let key = parsed.map_err(|e| format!("not a PEM public key for {alg:?} ({e})"))?;
    check_public_key(alg, &key)?;
    Ok(key)
}

/// Makes sure a public key will work for `alg`, so a bad key fails at start-up
/// and not on the first request: RSA size and exponent, EC point on P-256,
/// Ed25519 point of 32 bytes (shorter would panic inside the library).
pub(super) fn check_public_key(alg: Algorithm, key: &DecodingKey) -> Result<(), String> {
    match alg {
        Algorithm::RS256 => {
            let jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(key, Some(alg))
                .map_err(|e| format!("not an RSA public key ({e})"))?;
            let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
                return Err("not an RSA public key".to_owned());
            };
            let n = b64url_decode(&rsa.n).ok_or("RSA modulus is not base64url")?;
            let e = b64url_decode(&rsa.e).ok_or("RSA exponent is not base64url")?;
            check_rsa_components(&n, &e)
        }
        Algorithm::ES256 | Algorithm::EdDSA => {
            if alg == Algorithm::EdDSA && !key.try_get_as_bytes().is_ok_and(|b| b.len() == 32) {
                return Err("not an Ed25519 public key (32 bytes)".to_owned());
            }
            // Building a verifier parses the point; an empty signature then
            // simply fails to verify.
            let curve = if alg == Algorithm::ES256 {
                "P-256"
            } else {
                "Ed25519"
            };
            jsonwebtoken::crypto::verify("", b"", key, alg)
                .map(|_| ())
                .map_err(|_| format!("not a valid {curve} public key (needed for {alg:?})"))
        }
        _ => Err(format!("{alg:?} keys are not public keys")),
    }
}

/// RSA modulus within [`RSA_BITS`], odd; exponent odd, 3 ..= 2^33-1 (what `rsa` accepts).
pub(super) fn check_rsa_components(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_leading_zeros(n);
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !RSA_BITS.contains(&bits) || n.last().is_some_and(|b| b % 2 == 0) {
        return Err(format!(
            "RSA modulus must be {} to {} bits (got {bits})",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    let e = strip_leading_zeros(e);
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        u64::MAX
    };
    if !(3..=(1u64 << 33) - 1).contains(&exponent) || exponent % 2 == 0 {
        return Err("RSA public exponent is not valid".to_owned());
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Loads a PKCS#8 PEM private key for `alg` and checks that it matches `public`.
fn private_key_from_file(
    alg: Algorithm,
    path: &Path,
    public: &DecodingKey,
) -> Result<EncodingKey, String> {
    let pem = read_small_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => return Err(format!("{alg:?} keys have no private key file")),
    };
    let key = parsed.map_err(|e| {
        format!(
            "{}: not a PEM private key for {alg:?} ({e})",
            path.display()
        )
    })?;
    let probe = b"velro-authz key pair check";
    let matches = jsonwebtoken::crypto::sign(probe, &key, alg)
        .and_then(|signature| jsonwebtoken::crypto::verify(&signature, probe, public, alg))
        .unwrap_or(false);
    if !matches {
        return Err(format!(
            "{}: does not match the key's public key",
            path.display()
        ));
    }
    Ok(key)
}

/// Reads a key or JWKS file, refusing anything over [`MAX_KEY_FILE_LEN`].
pub(super) fn read_small_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_KEY_FILE_LEN} bytes"
        )));
    }
    Ok(bytes)
}

/// Base64url with or without padding (JWKS publishers differ).
pub(super) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).ok()
}

#[cfg(test)]
mod tests;
