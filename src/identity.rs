//! The signed identity for the upstream (`x-velro-identity`): on every allow
//! that names a user, a short-lived JWS (EdDSA over Ed25519) saying who the
//! user is, how they authenticated, their role on the resource and which
//! decision let them through. An application that verifies it with the
//! published public key ([`IdentitySigner::jwks`]) cannot be fooled by a
//! forged identity header, even when something other than the proxy can reach
//! it.
//!
//! Off unless `identity_token.key_file` is configured. Only an Ed25519 private
//! key is accepted: a shared (HS) secret would let every application that
//! verifies the token mint one as well, and RSA / ECDSA keys are refused so
//! there is one algorithm for the applications to pin.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::answer::Identity;

/// Shortest lifetime accepted for `identity_token.ttl_secs`.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest lifetime accepted: the token is a per-request proof, not a session.
pub const MAX_TTL: Duration = Duration::from_secs(600);
/// `identity_token.ttl_secs` when unset.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// `identity_token.issuer` when unset.
pub const DEFAULT_ISSUER: &str = "velro-authz";
/// Where the ops HTTP listeners publish the public key.
pub const JWKS_PATH: &str = "/.well-known/velro-identity-jwks.json";

/// The `identity_token` settings as configured (before the key is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// PEM (PKCS#8) Ed25519 private key.
    pub key_file: PathBuf,
    /// `aud`: the application(s) the token is for; they check it.
    pub audience: String,
    /// `iss`.
    pub issuer: String,
    /// `exp - iat`.
    pub ttl: Duration,
}

/// Signs identity tokens with one Ed25519 key.
pub struct IdentitySigner {
    /// The private key; never printed.
    key: EncodingKey,
    /// `alg: EdDSA`, `typ: JWT`, `kid`: the same for every token.
    header: Header,
    /// `iss`.
    issuer: String,
    /// `aud`.
    audience: String,
    /// Lifetime in whole seconds.
    ttl_secs: u64,
    /// The public key as a JWKS document, rendered once.
    jwks: String,
}

/// The claims of one identity token.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    /// The user id (`x-velro-user-id`).
    sub: String,
    /// The effective role (`x-velro-role`), on resource routes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// How the user authenticated (`x-velro-auth`).
    auth: &'static str,
    iat: u64,
    exp: u64,
    /// The decision id (`x-velro-decision-id`): unique per token.
    jti: &'a str,
}

impl fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("kid", &self.kid())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// Reads and checks the key. Errors name the setting and never quote the
    /// file's content.
    pub fn load(settings: &IdentitySettings) -> Result<IdentitySigner, String> {
        let pem = std::fs::read(&settings.key_file).map_err(|e| {
            format!(
                "identity_token.key_file {}: {}",
                settings.key_file.display(),
                e.kind()
            )
        })?;
        IdentitySigner::from_pem(&pem, settings)
    }

    /// From the key's PEM text (the file's content).
    pub fn from_pem(pem: &[u8], settings: &IdentitySettings) -> Result<IdentitySigner, String> {
        let file = settings.key_file.display();
        let problem = |what: &str| format!("identity_token.key_file {file}: {what}");
        if settings.audience.trim().is_empty() {
            return Err(
                "identity_token.audience: required when identity_token.key_file is set \
                 (the applications check that the token was made for them)"
                    .to_owned(),
            );
        }
        if settings.issuer.trim().is_empty() {
            return Err("identity_token.issuer: must not be empty".to_owned());
        }
        if !(MIN_TTL..=MAX_TTL).contains(&settings.ttl) {
            return Err(format!(
                "identity_token.ttl_secs: between {} and {} (got {})",
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs(),
                settings.ttl.as_secs()
            ));
        }
        let text = String::from_utf8_lossy(pem);
        if !text.trim_start().starts_with("-----BEGIN ") {
            return Err(problem(
                "not a PEM private key; shared secrets (HS256) are refused: the applications \
                 must hold only a public key, or any of them could mint identities",
            ));
        }
        if !text.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(problem(
                "not a PKCS#8 Ed25519 private key (`openssl genpkey -algorithm ed25519`); \
                 public keys, RSA and EC keys are refused",
            ));
        }
        let key = EncodingKey::from_ed_pem(pem).map_err(|_| {
            problem(
                "not an Ed25519 private key (`openssl genpkey -algorithm ed25519`); \
                 RSA and EC keys are refused",
            )
        })?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA)
            .map_err(|_| problem("not an Ed25519 private key"))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| problem("not an Ed25519 private key"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] })
            .map_err(|e| problem(&format!("cannot render the public key: {e}")))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(kid);
        let signer = IdentitySigner {
            key,
            header,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl_secs: settings.ttl.as_secs(),
            jwks,
        };
        // Sign once now, so a key the library cannot use fails start-up
        // rather than the first allowed request.
        signer
            .sign_at(&probe_identity(), "startup-probe", 0)
            .map_err(|_| problem("the key cannot sign"))?;
        Ok(signer)
    }

    /// The token for `identity`, allowed by decision `decision_id`, issued now.
    pub fn sign(&self, identity: &Identity, decision_id: &str) -> Result<String, SignError> {
        self.sign_at(identity, decision_id, unix_now())
    }

    /// The token issued at `iat` (seconds since the epoch).
    pub fn sign_at(
        &self,
        identity: &Identity,
        decision_id: &str,
        iat: u64,
    ) -> Result<String, SignError> {
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: identity.user_id.to_string(),
            role: identity.role.map(|r| r.as_str()),
            auth: identity.auth.as_str(),
            iat,
            exp: iat.saturating_add(self.ttl_secs),
            jti: decision_id,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|_| SignError)
    }

    /// The key id every token carries: the RFC 7638 SHA-256 thumbprint of the
    /// public key, stable across restarts and the same on every sidecar that
    /// holds the key.
    pub fn kid(&self) -> &str {
        self.header.kid.as_deref().unwrap_or_default()
    }

    /// The public key as a JWKS document (`{"keys":[…]}`), for the applications.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `aud`.
    pub fn audience(&self) -> &str {
        &self.audience
    }
}

/// Signing failed with a key that signed at start-up: "cannot decide", never
/// an allow without the token the applications expect.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("identity token could not be signed")]
pub struct SignError;

fn probe_identity() -> Identity {
    Identity {
        user_id: uuid::Uuid::nil(),
        auth: crate::answer::AuthKind::Jwt,
        role: None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
