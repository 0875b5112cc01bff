//! JWT bearer tokens (SPEC §4 step 2, §9 "Credentials"): configured keys,
//! key sets (a JWKS file, or over HTTPS: a `jwks_url` or an `oidc_issuer`'s
//! discovery document), one or several issuers, verification, and minting of
//! dev tokens.
//!
//! Signatures are checked by `jsonwebtoken` with its pure-Rust RustCrypto
//! backend (`rust_crypto` feature): chosen deliberately over `aws_lc_rs` so the
//! build needs no C toolchain or CMake and cross-compiles to a static image.
//! Everything the spec makes precise (key selection by `kid`, the claim rules,
//! which error means what) is decided here rather than left to the library's
//! `Validation`, whose defaults differ (e.g. it rejects any `aud` when none is
//! configured and reads the system clock, which tests cannot move).
//!
//! Several issuers: each entry has its own `iss`, audience and keys. With more
//! than one, the token's unverified `iss` only picks the entry whose keys and
//! audience then decide; an `iss` no entry names is `invalid_token`. Nothing
//! read before the signature is trusted.
//!
//! This file verifies and mints; the configured keys are built in `jwt/keys.rs`,
//! key sets are kept in `jwt/jwks.rs` and fetched over HTTPS in
//! `jwt/remote.rs`. A verification records which key made it
//! ([`VerifiedToken::kid`], the issuer entry and, for a key set's key, the
//! set's generation), so that a cached result can be dropped once its key
//! leaves the set ([`JwtVerifier::still_trusted`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, Header};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::authn::AuthnError;
use crate::ids::parse_canonical_uuid;
use crate::model::Scopes;

mod claims;
mod jwks;
mod keys;
mod remote;

use claims::{
    Claim, RawClaims, audience_matches, decode_with, has_compact_jws_shape, normalize_typ,
    numeric_date,
};
pub use jwks::{JwksMetrics, JwksReload};
use jwks::{JwksSource, RefreshBounds, Remote, RemoteLocation};
pub use keys::{DEMO_SECRET, JwtKeyConfig, estimated_entropy_bits};
use keys::{SigningKey, StaticKeys, VerifyKey, b64url_decode};
use remote::{HttpsClient, https_uri};

/// Tokens longer than this are refused before any parsing: no legitimate
/// token comes near it, and it bounds the work an attacker can cause.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The largest accepted `leeway_secs`: leeway covers clock skew, not policy.
const MAX_LEEWAY_SECS: u64 = 300;

/// The `issuer` / `audience` value that switches the check off, by name.
pub const ANY: &str = "any";

/// Default `max_lifetime_secs`: 24 h, the longest access-token lifetime the
/// common issuers use by default (Auth0's; Okta, Google, Entra ID and Keycloak
/// issue 1 h or less), so no stock issuer is refused while a token minted to
/// live for months is.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// JWT settings (`auth.jwt` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss` value. Must be set: a key shared by several issuers or
    /// services would otherwise let their tokens in; `any` (by name) switches
    /// the check off.
    pub issuer: Option<String>,
    /// Required `aud` value (or member of an `aud` array). Must be set, for
    /// the same reason; `any` switches the check off.
    pub audience: Option<String>,
    /// When set, the header `typ` must equal it, case-insensitively, with or
    /// without an `application/` prefix (e.g. `JWT`, `at+jwt`), so an ID token
    /// or another kind of JWT signed by the same key is not taken for an
    /// access token. `None` = `typ` not checked.
    pub typ: Option<String>,
    /// Longest token lifetime accepted: `exp - iat`, and `exp - now` (beyond
    /// the leeway), must not exceed it, so a token minted (or leaked) to live
    /// for months is refused. 0 = no cap.
    #[serde(default = "default_max_lifetime_secs")]
    pub max_lifetime_secs: u64,
    /// Clock-skew allowance for `exp` and `nbf`, at most 300 s.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Statically configured keys.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS document with RS256 / ES256 / EdDSA public keys, selected by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// An unknown `kid` rereads `jwks_file`, at most once per this many seconds.
    #[serde(default = "default_jwks_reload_min_interval_secs")]
    pub jwks_reload_min_interval_secs: u64,
    /// `jwks_file` is reread every this many seconds (and on SIGHUP), so a
    /// removed key stops working within one period; 0 = only on SIGHUP and
    /// unknown kids.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Keys over HTTPS: a JWKS URL (`https` only), fetched at start, then
    /// by `Cache-Control` within the refresh bounds and on an unknown kid.
    pub jwks_url: Option<String>,
    /// An OpenID provider: its key set URL is the `jwks_uri` of
    /// `{oidc_issuer}/.well-known/openid-configuration`, whose `issuer` must
    /// equal this. Also the default of `issuer`.
    pub oidc_issuer: Option<String>,
    /// More issuers, each with its own `iss`, audience and keys; the token's
    /// `iss` picks one.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// A PEM file of CA certificates trusted for key set fetches, besides the
    /// system's roots (a private CA, or a test's).
    pub jwks_ca_file: Option<PathBuf>,
    /// Bound on one key set fetch (connect, TLS, redirects, body), ms.
    #[serde(default = "default_jwks_fetch_timeout_ms")]
    pub jwks_fetch_timeout_ms: u64,
    /// A fetched key set is fetched again after the server's
    /// `Cache-Control: max-age`, but never sooner than this (also the period
    /// without `max-age`, and after `no-cache`)...
    #[serde(default = "default_jwks_refresh_min_secs")]
    pub jwks_refresh_min_secs: u64,
    /// ...and never later than this: a key the provider removed stops
    /// verifying within it.
    #[serde(default = "default_jwks_refresh_max_secs")]
    pub jwks_refresh_max_secs: u64,
    /// Accept the demo's published HS256 secret ([`DEMO_SECRET`]).
    /// Only the shipped demo config sets it; anywhere else that secret (or a
    /// placeholder, or a guessable secret) fails start-up.
    #[serde(default)]
    pub allow_demo_secret: bool,
}

/// One more issuer (`auth.jwt.issuers[i]`): its `iss`, audience and keys
/// (exactly one source: `keys`, `jwks_file`, `jwks_url` or `oidc_issuer`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Required `iss`, which picks this entry (defaults to `oidc_issuer`).
    pub issuer: Option<String>,
    /// Required `aud` value, or `any`.
    pub audience: Option<String>,
    /// Statically configured keys.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https`).
    pub jwks_url: Option<String>,
    /// An OpenID provider, found by discovery.
    pub oidc_issuer: Option<String>,
}

/// Verifies bearer tokens against the configured keys; built once from
/// [`JwtConfig`], shared by every request (`Send + Sync`).
pub struct JwtVerifier {
    /// One per issuer: the top-level settings (when they have keys) first,
    /// then `auth.jwt.issuers` in order.
    entries: Vec<Entry>,
    /// Required header `typ`, normalized by [`normalize_typ`], if configured.
    typ: Option<String>,
    /// `typ` as configured, written into minted tokens.
    typ_configured: Option<String>,
    /// `max_lifetime_secs`; `None` = no cap.
    max_lifetime: Option<i64>,
    /// `leeway_secs` as a signed number for timestamp arithmetic.
    leeway: i64,
    /// Keys able to sign, in config order, with their entry's index, for
    /// [`JwtVerifier::mint`].
    signers: Vec<(usize, SigningKey)>,
    /// `jwks_refresh_secs`, when there is a JWKS file and it is not 0.
    jwks_refresh: Option<Duration>,
    /// Fetch results and key counts of the remote key sets.
    metrics: JwksMetrics,
}

/// One issuer: what its tokens must say and the keys that verify them.
struct Entry {
    /// Required `iss`; `None` only when configured as `any` (then the only
    /// entry).
    issuer: Option<String>,
    /// Required `aud` member; `None` only when configured as `any`.
    audience: Option<String>,
    /// Statically configured keys, fixed for the life of the verifier.
    keys: Vec<VerifyKey>,
    /// A key set (file or HTTPS), swapped whole on reload.
    jwks: Option<Arc<JwksSource>>,
    /// The setting prefix (`auth.jwt` or `auth.jwt.issuers[i]`), for errors.
    at: String,
}

/// Why a token was not verified by what is at hand.
enum Miss {
    /// A 401: the token is refused.
    Denied(AuthnError),
    /// The kid is not in entry `.0`'s remote key set (or it has none yet):
    /// worth a fetch.
    UnknownKid(usize),
}

/// The keys of a configured issuer have never been fetched, so its tokens
/// cannot be decided yet ("cannot decide", not a deny).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the key set of issuer {issuer:?} has not been fetched yet")]
pub struct KeysUnavailable {
    /// The issuer as configured.
    pub issuer: String,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// `sub`: the user id.
    pub subject: Uuid,
    /// `sid`, if present: the session to check with [`crate::authn::check_session`].
    pub session_id: Option<Uuid>,
    /// `scope`, if present; `None` = no narrowing of the five actions.
    pub scopes: Option<Scopes>,
    /// `exp` as unix seconds, e.g. to bound how long a result may be cached.
    pub expires_at: i64,
    /// The `kid` of the key that verified the token (`None`: a lone key
    /// without one).
    pub kid: Option<String>,
    /// For a key from a key set: the generation of the set it was verified
    /// against; `None` for `auth.jwt.keys`, which never change.
    pub jwks_generation: Option<u64>,
    /// The issuer entry that verified it (0: the top-level one, or the first).
    pub issuer: usize,
}

/// Which key verified a token (see [`VerifiedToken::kid`]).
struct KeyUse {
    kid: Option<String>,
    jwks_generation: Option<u64>,
}

/// What to put in a minted token; `iss` and `aud` come from the config.
#[derive(Debug, Clone, Default)]
pub struct MintClaims {
    /// `sub`, written as given (normally a user UUID).
    pub subject: String,
    /// `sid`, if any.
    pub session_id: Option<Uuid>,
    /// `scope` (space-separated), if any.
    pub scope: Option<String>,
    /// Lifetime: `exp = now + ttl`.
    pub ttl: Duration,
    /// Sign with the key of this `kid`; `None` = the first key that can sign.
    pub kid: Option<String>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No configured key has an HS256 secret or a `private_key_file`.
    #[error("no configured JWT key can sign (an HS256 secret or a private_key_file is needed)")]
    NoSigningKey,
    /// The requested `kid` names no key that can sign.
    #[error("no JWT key with kid {0:?} can sign (an HS256 secret or a private_key_file is needed)")]
    UnknownKid(String),
    /// `now + ttl` does not fit a timestamp.
    #[error("the token lifetime is too large")]
    TtlOutOfRange,
    /// The lifetime is above `auth.jwt.max_lifetime_secs`: the token would be
    /// refused.
    #[error("the token lifetime is above auth.jwt.max_lifetime_secs ({0} s)")]
    TtlAboveMaxLifetime(i64),
    /// The signing library failed (its message names no key material).
    #[error("signing the token failed: {0}")]
    Signing(String),
}

impl Default for JwtConfig {
    /// No keys, issuer or audience (so not valid as is), no `typ` check, 24 h
    /// lifetime cap, 30 s leeway, 10 s JWKS reload interval.
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: None,
            typ: None,
            max_lifetime_secs: default_max_lifetime_secs(),
            leeway_secs: default_leeway_secs(),
            keys: Vec::new(),
            jwks_file: None,
            jwks_reload_min_interval_secs: default_jwks_reload_min_interval_secs(),
            jwks_refresh_secs: default_jwks_refresh_secs(),
            jwks_url: None,
            oidc_issuer: None,
            issuers: Vec::new(),
            jwks_ca_file: None,
            jwks_fetch_timeout_ms: default_jwks_fetch_timeout_ms(),
            jwks_refresh_min_secs: default_jwks_refresh_min_secs(),
            jwks_refresh_max_secs: default_jwks_refresh_max_secs(),
            allow_demo_secret: false,
        }
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<_> = self
            .entries
            .iter()
            .map(|e| {
                let keys: Vec<String> = e.keys.iter().map(VerifyKey::describe).collect();
                let jwks = e.jwks.as_ref().map(|j| {
                    let set = j.set.load();
                    (
                        set.generation,
                        set.keys
                            .iter()
                            .map(|k| k.key.describe())
                            .collect::<Vec<_>>(),
                    )
                });
                (e.issuer.clone(), e.audience.clone(), keys, jwks)
            })
            .collect();
        f.debug_struct("JwtVerifier")
            .field("entries", &entries)
            .field("typ", &self.typ)
            .field("max_lifetime", &self.max_lifetime)
            .field("leeway", &self.leeway)
            .field("signers", &self.signers.len())
            .finish()
    }
}

/// What every entry shares while being built.
struct Shared<'a> {
    config: &'a JwtConfig,
    /// Built on first need (only with a remote key set).
    client: Option<Result<Arc<HttpsClient>, ()>>,
    metrics: JwksMetrics,
    refresh: RefreshBounds,
}

/// One entry's settings, from the top level or from `issuers[i]`.
struct EntrySettings<'a> {
    at: String,
    issuer: Option<&'a str>,
    audience: Option<&'a str>,
    keys: &'a [JwtKeyConfig],
    jwks_file: Option<&'a PathBuf>,
    jwks_url: Option<&'a str>,
    oidc_issuer: Option<&'a str>,
}

impl EntrySettings<'_> {
    fn has_keys(&self) -> bool {
        !self.keys.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
            || self.oidc_issuer.is_some()
    }
}

impl Shared<'_> {
    /// The shared HTTPS client, built once; its problem reported once.
    fn client(&mut self, errors: &mut Vec<String>) -> Option<Arc<HttpsClient>> {
        if self.client.is_none() {
            let built = HttpsClient::new(
                self.config.jwks_ca_file.as_deref(),
                Duration::from_millis(self.config.jwks_fetch_timeout_ms),
            )
            .map(Arc::new)
            .map_err(|e| errors.push(format!("auth.jwt.jwks_ca_file: {e}")));
            self.client = Some(built);
        }
        self.client.as_ref().and_then(|c| c.as_ref().ok().cloned())
    }
}

/// Builds one issuer entry; problems go to `errors`, naming the setting.
fn build_entry(
    settings: &EntrySettings<'_>,
    shared: &mut Shared<'_>,
    signers: &mut Vec<(usize, SigningKey)>,
    index: usize,
    errors: &mut Vec<String>,
) -> Option<Entry> {
    let at = settings.at.as_str();
    let issuer = settings.issuer.or(settings.oidc_issuer);
    for (name, claim, value) in [
        ("issuer", "iss", issuer),
        ("audience", "aud", settings.audience),
    ] {
        match value {
            None => errors.push(format!(
                "{at}.{name}: required: the `{claim}` your tokens carry \
                 (or `{ANY}` to accept tokens for any {name})"
            )),
            Some("") => errors.push(format!(
                "{at}.{name}: must not be empty (`{ANY}` switches the check off)"
            )),
            Some(_) => {}
        }
    }
    let sources = [
        settings.jwks_file.is_some(),
        settings.jwks_url.is_some(),
        settings.oidc_issuer.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        errors.push(format!(
            "{at}: set one of jwks_file, jwks_url and oidc_issuer, not several"
        ));
        return None;
    }
    let has_set = sources.iter().any(|s| *s);
    let kid_required = settings.keys.len() > 1 || has_set;
    let static_keys = StaticKeys::build(
        &format!("{at}.keys"),
        settings.keys,
        kid_required,
        shared.config.allow_demo_secret,
        errors,
    );
    let min_interval = shared.config.jwks_reload_min_interval_secs;
    let label = issuer.unwrap_or(ANY).to_owned();
    let jwks = if let Some(path) = settings.jwks_file {
        JwksSource::open(
            path,
            &format!("{at}.jwks_file"),
            static_keys.kids,
            min_interval,
        )
        .map_err(|problems| errors.extend(problems))
        .ok()
    } else {
        let location = match (settings.jwks_url, settings.oidc_issuer) {
            (Some(url), _) => match https_uri(url) {
                Some(uri) => Some(RemoteLocation::JwksUrl(uri)),
                None => {
                    errors.push(format!(
                        "{at}.jwks_url: {:?} is not an https:// URL with a host (no user info)",
                        url.split('?').next().unwrap_or_default()
                    ));
                    None
                }
            },
            (None, Some(oidc)) => {
                if remote::discovery_url(oidc).is_none() {
                    errors.push(format!(
                        "{at}.oidc_issuer: {oidc:?} is not an https:// URL with a host"
                    ));
                    None
                } else {
                    Some(RemoteLocation::Discovery(oidc.to_owned()))
                }
            }
            (None, None) => None,
        };
        match location {
            Some(location) => shared.client(errors).map(|client| {
                JwksSource::remote(
                    Remote::new(
                        location,
                        client,
                        label,
                        shared.refresh,
                        shared.metrics.clone(),
                    ),
                    static_keys.kids,
                    min_interval,
                )
            }),
            None => None,
        }
    };
    signers.extend(static_keys.signers.into_iter().map(|s| (index, s)));
    Some(Entry {
        issuer: issuer.filter(|i| *i != ANY).map(str::to_owned),
        audience: settings.audience.filter(|a| *a != ANY).map(str::to_owned),
        keys: static_keys.verify,
        jwks: jwks.map(Arc::new),
        at: at.to_owned(),
    })
}

impl JwtVerifier {
    /// Builds the keys (reading key and JWKS files) and checks the settings.
    ///
    /// Returns every problem at once, each naming its setting, e.g.
    /// `auth.jwt.keys[1].alg: unsupported algorithm "HS512" ...`. At least one
    /// key or key set is required; HS256 secrets must be 32 bytes or
    /// more, no placeholder or (unless allowed) the demo's, and not guessable
    /// ([`estimated_entropy_bits`]); RSA keys 2048 to 4096 bits; a
    /// `private_key_file` must match its public key; kids must be unique, and
    /// present when more than one key or a key set is configured. With
    /// several issuers, each names its own (no `any`), and no two the same.
    /// Remote key sets are not fetched here: see
    /// [`JwtVerifier::spawn_key_refresh`].
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, Vec<String>> {
        let mut errors = Vec::new();
        if config.leeway_secs > MAX_LEEWAY_SECS {
            errors.push(format!(
                "auth.jwt.leeway_secs: must be at most {MAX_LEEWAY_SECS} (got {})",
                config.leeway_secs
            ));
        }
        if config
            .typ
            .as_deref()
            .is_some_and(|t| normalize_typ(t).is_empty())
        {
            errors.push("auth.jwt.typ: must not be empty (omit it to skip the check)".to_owned());
        }
        if config.jwks_fetch_timeout_ms == 0 {
            errors.push("auth.jwt.jwks_fetch_timeout_ms: must be at least 1".to_owned());
        }
        if config.jwks_refresh_min_secs == 0
            || config.jwks_refresh_min_secs > config.jwks_refresh_max_secs
        {
            errors.push(
                "auth.jwt.jwks_refresh_min_secs: must be at least 1 and at most jwks_refresh_max_secs"
                    .to_owned(),
            );
        }

        let top = EntrySettings {
            at: "auth.jwt".to_owned(),
            issuer: config.issuer.as_deref(),
            audience: config.audience.as_deref(),
            keys: &config.keys,
            jwks_file: config.jwks_file.as_ref(),
            jwks_url: config.jwks_url.as_deref(),
            oidc_issuer: config.oidc_issuer.as_deref(),
        };
        let mut all = Vec::new();
        if top.has_keys() || config.issuers.is_empty() {
            all.push(top);
        } else if config.issuer.is_some() || config.audience.is_some() {
            errors.push(
                "auth.jwt.issuer / audience: with auth.jwt.issuers and no keys here, set them in \
                 each issuers entry"
                    .to_owned(),
            );
        }
        for (i, issuer) in config.issuers.iter().enumerate() {
            let settings = EntrySettings {
                at: format!("auth.jwt.issuers[{i}]"),
                issuer: issuer.issuer.as_deref(),
                audience: issuer.audience.as_deref(),
                keys: &issuer.keys,
                jwks_file: issuer.jwks_file.as_ref(),
                jwks_url: issuer.jwks_url.as_deref(),
                oidc_issuer: issuer.oidc_issuer.as_deref(),
            };
            if !settings.has_keys() {
                errors.push(format!(
                    "{}: keys, jwks_file, jwks_url or oidc_issuer is required",
                    settings.at
                ));
            }
            all.push(settings);
        }
        if all.len() == 1 && !all[0].has_keys() {
            errors.push(
                "auth.jwt: at least one key (auth.jwt.keys), a JWKS file (auth.jwt.jwks_file), \
                 a JWKS URL (auth.jwt.jwks_url) or an OpenID issuer (auth.jwt.oidc_issuer) is required"
                    .to_owned(),
            );
        }
        if all.len() > 1 {
            for (i, entry) in all.iter().enumerate() {
                let Some(name) = entry.issuer.or(entry.oidc_issuer) else {
                    continue;
                };
                if name == ANY {
                    errors.push(format!(
                        "{}.issuer: `{ANY}` cannot be used with several issuers (the token's `iss` \
                         picks the issuer)",
                        entry.at
                    ));
                } else if let Some(first) = all[..i]
                    .iter()
                    .find(|e| e.issuer.or(e.oidc_issuer) == Some(name))
                {
                    errors.push(format!(
                        "{}.issuer: {name:?} is also {}.issuer",
                        entry.at, first.at
                    ));
                }
            }
        }

        let metrics = JwksMetrics::new();
        let mut shared = Shared {
            config,
            client: None,
            metrics: metrics.clone(),
            refresh: RefreshBounds {
                min: Duration::from_secs(config.jwks_refresh_min_secs),
                max: Duration::from_secs(config.jwks_refresh_max_secs),
            },
        };
        let mut signers = Vec::new();
        let mut entries = Vec::new();
        for (index, settings) in all.iter().enumerate() {
            if let Some(entry) =
                build_entry(settings, &mut shared, &mut signers, index, &mut errors)
            {
                entries.push(entry);
            }
        }
        if config.jwks_ca_file.is_some() && shared.client.is_none() {
            errors.push(
                "auth.jwt.jwks_ca_file: only used to fetch jwks_url / oidc_issuer key sets, and \
                 none is configured"
                    .to_owned(),
            );
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        let has_file = entries
            .iter()
            .any(|e| e.jwks.as_ref().is_some_and(|j| j.path().is_some()));
        Ok(JwtVerifier {
            entries,
            typ: config.typ.as_deref().map(normalize_typ),
            typ_configured: config.typ.clone(),
            max_lifetime: (config.max_lifetime_secs > 0)
                .then(|| i64::try_from(config.max_lifetime_secs).unwrap_or(i64::MAX)),
            leeway: i64::try_from(config.leeway_secs).unwrap_or(i64::MAX),
            signers,
            jwks_refresh: (has_file && config.jwks_refresh_secs > 0)
                .then(|| Duration::from_secs(config.jwks_refresh_secs)),
            metrics,
        })
    }

    /// Verifies a bearer token now; see [`JwtVerifier::verify_at`].
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthnError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// Verifies a bearer token as of `now` (unix seconds), in this order:
    ///
    /// 1. over 8 KiB, not three base64url segments, an unreadable header, a
    ///    `crit` header, or a `typ` other than the configured one (when one is)
    ///    → `InvalidToken` (`alg: none` cannot even be parsed);
    /// 2. issuer entry: the only one; with several, the one whose issuer is
    ///    the (unverified) payload's `iss` → else `InvalidToken`;
    /// 3. key, of that entry: the one whose `kid` the header names — if none,
    ///    a JWKS file is reread (rate-limited) and looked up once more; no
    ///    try-every-key fallback. Without `kid` only when the entry has
    ///    exactly one key. Not found → `InvalidToken` (a remote key set is
    ///    fetched again only by [`JwtVerifier::verify_fetching`]);
    /// 4. header `alg` must equal the key's algorithm, signature must verify →
    ///    else `InvalidToken`;
    /// 5. `exp` present and numeric, `nbf` / `iat` numeric if present, `iss` /
    ///    `aud` present and matching the entry unless configured as `any`
    ///    (`aud` may be an array holding ours), `scope` a string if present,
    ///    and with a lifetime cap neither `exp - iat` above it nor `exp - now`
    ///    above it plus the leeway (so a future `iat` does not stretch the
    ///    cap) → else `InvalidToken`;
    /// 6. `nbf` later than `now + leeway` → `InvalidToken`; `now >= exp +
    ///    leeway` → `TokenExpired`;
    /// 7. `sub` a canonical UUID → else `UnknownUser`; `sid`, if present, a
    ///    canonical UUID → else `SessionRevoked`.
    ///
    /// Header `jku`, `jwk`, `x5u` and `x5c` are ignored: keys never come from
    /// the token itself.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedToken, AuthnError> {
        self.try_verify(token, now).map_err(|miss| match miss {
            Miss::Denied(e) => e,
            Miss::UnknownKid(_) => AuthnError::InvalidToken,
        })
    }

    /// [`JwtVerifier::verify`], and for a kid its issuer's remote key set
    /// lacks: that set fetched again (at most once per
    /// `jwks_reload_min_interval_secs`, one fetch at a time: a request that
    /// finds one under way waits for it) and the token checked once more.
    /// `Err` only when the issuer's key set has never been fetched: no key
    /// of that issuer is known, so the token can be neither accepted nor
    /// refused.
    pub async fn verify_fetching(
        &self,
        token: &str,
    ) -> Result<Result<VerifiedToken, AuthnError>, KeysUnavailable> {
        let entry = match self.try_verify(token, Utc::now().timestamp()) {
            Ok(verified) => return Ok(Ok(verified)),
            Err(Miss::Denied(e)) => return Ok(Err(e)),
            Err(Miss::UnknownKid(entry)) => entry,
        };
        let Some(jwks) = self.entries[entry].jwks.as_ref() else {
            return Ok(Err(AuthnError::InvalidToken));
        };
        if jwks.refetch_for_unknown_kid().await {
            match self.try_verify(token, Utc::now().timestamp()) {
                Ok(verified) => return Ok(Ok(verified)),
                Err(Miss::Denied(e)) => return Ok(Err(e)),
                Err(Miss::UnknownKid(_)) => {}
            }
        }
        if jwks.ready() {
            Ok(Err(AuthnError::InvalidToken))
        } else {
            Err(KeysUnavailable {
                issuer: self.entries[entry]
                    .issuer
                    .clone()
                    .unwrap_or_else(|| ANY.to_owned()),
            })
        }
    }

    /// Whether a verification made earlier may still be used: true unless it
    /// was made with a key set's key that has since left the set or been
    /// replaced. Cheap (one atomic load when the key set has not changed), so
    /// the token cache calls it on every hit.
    pub fn still_trusted(&self, verified: &VerifiedToken) -> bool {
        let jwks = self
            .entries
            .get(verified.issuer)
            .and_then(|e| e.jwks.as_ref());
        match (jwks, verified.jwks_generation, &verified.kid) {
            (Some(jwks), Some(generation), Some(kid)) => jwks.still_holds(kid, generation),
            (_, None, _) => true,
            _ => false,
        }
    }

    /// Rereads every JWKS file now (timer, SIGHUP), whatever the rate limit.
    /// On error the previous key set stays in use. Says which kids came,
    /// went or changed; verifications made with a key that went or changed
    /// stop being trusted at once ([`JwtVerifier::still_trusted`]). Key sets
    /// fetched over HTTPS keep their own schedule.
    pub fn reload_jwks(&self) -> Result<JwksReload, Vec<String>> {
        let mut total: Option<JwksReload> = None;
        let mut problems = Vec::new();
        for entry in &self.entries {
            let Some(jwks) = entry.jwks.as_ref().filter(|j| j.path().is_some()) else {
                continue;
            };
            match jwks.reload() {
                Ok(r) => {
                    let t = total.get_or_insert_with(JwksReload::default);
                    t.keys += r.keys;
                    t.generation = t.generation.max(r.generation);
                    t.added.extend(r.added);
                    t.removed.extend(r.removed);
                    t.replaced.extend(r.replaced);
                }
                Err(p) => problems.extend(
                    p.into_iter()
                        .map(|p| format!("{}.jwks_file: {p}", entry.at)),
                ),
            }
        }
        match (total, problems.is_empty()) {
            (Some(total), true) => Ok(total),
            (None, true) => Err(vec!["auth.jwt.jwks_file: not configured".to_owned()]),
            (_, false) => Err(problems),
        }
    }

    /// The JWKS file, when configured (the first, with several issuers).
    pub fn jwks_file(&self) -> Option<&std::path::Path> {
        self.entries
            .iter()
            .find_map(|e| e.jwks.as_ref().and_then(|j| j.path()))
    }

    /// How often the JWKS file is reread on a timer (`None`: no file, or
    /// `jwks_refresh_secs: 0`).
    pub fn jwks_refresh(&self) -> Option<Duration> {
        self.jwks_refresh
    }

    /// Starts one task per key set fetched over HTTPS: its first fetch now
    /// (retried until it succeeds), then its refreshes, until `shutdown`.
    /// Must be called within a Tokio runtime; none without remote key sets.
    pub fn spawn_key_refresh(
        &self,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.entries
            .iter()
            .filter_map(|e| e.jwks.as_ref())
            .filter(|j| j.path().is_none())
            .map(|j| tokio::spawn(j.clone().run_refresh(shutdown.clone())))
            .collect()
    }

    /// The issuers whose key sets are fetched over HTTPS and have not been
    /// yet (readiness waits for them; their tokens cannot be decided).
    pub fn issuers_without_keys(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.jwks.as_ref().is_some_and(|j| !j.ready()))
            .map(|e| e.issuer.clone().unwrap_or_else(|| ANY.to_owned()))
            .collect()
    }

    /// The key set metrics, to register on the sidecar's registry.
    pub fn metrics(&self) -> &JwksMetrics {
        &self.metrics
    }

    /// Mints a token with the first key that can sign (an HS256 secret or a
    /// `private_key_file`), or the key of `claims.kid`: `sub`, `iat`, `exp`,
    /// `iss` / `aud` of that key's issuer, header `typ` from the config, and
    /// `sid` / `scope` when given. A lifetime above the configured cap is
    /// refused (such a token would not verify). For the `token` CLI and tests.
    pub fn mint(&self, claims: &MintClaims) -> Result<String, MintError> {
        let (entry, signer) = match &claims.kid {
            Some(kid) => self
                .signers
                .iter()
                .find(|(_, s)| s.kid.as_deref() == Some(kid))
                .ok_or_else(|| MintError::UnknownKid(kid.clone()))?,
            None => self.signers.first().ok_or(MintError::NoSigningKey)?,
        };
        let entry = &self.entries[*entry];
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(claims.ttl.as_secs()).map_err(|_| MintError::TtlOutOfRange)?;
        let exp = now.checked_add(ttl).ok_or(MintError::TtlOutOfRange)?;
        if let Some(cap) = self.max_lifetime
            && ttl > cap
        {
            return Err(MintError::TtlAboveMaxLifetime(cap));
        }

        let mut body = serde_json::Map::new();
        body.insert("sub".to_owned(), Value::from(claims.subject.clone()));
        body.insert("iat".to_owned(), Value::from(now));
        body.insert("exp".to_owned(), Value::from(exp));
        if let Some(iss) = &entry.issuer {
            body.insert("iss".to_owned(), Value::from(iss.clone()));
        }
        if let Some(aud) = &entry.audience {
            body.insert("aud".to_owned(), Value::from(aud.clone()));
        }
        if let Some(sid) = claims.session_id {
            body.insert("sid".to_owned(), Value::from(sid.hyphenated().to_string()));
        }
        if let Some(scope) = &claims.scope {
            body.insert("scope".to_owned(), Value::from(scope.clone()));
        }
        let mut header = Header::new(signer.alg);
        header.kid = signer.kid.clone();
        if let Some(typ) = &self.typ_configured {
            header.typ = Some(typ.clone());
        }
        jsonwebtoken::encode(&header, &Value::Object(body), &signer.key)
            .map_err(|e| MintError::Signing(e.to_string()))
    }

    /// Steps 1 to 7, with what is at hand.
    fn try_verify(&self, token: &str, now: i64) -> Result<VerifiedToken, Miss> {
        let denied = |e| Miss::Denied(e);
        if token.len() > MAX_TOKEN_LEN || !has_compact_jws_shape(token) {
            return Err(denied(AuthnError::InvalidToken));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| denied(AuthnError::InvalidToken))?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not understand must be refused.
            return Err(denied(AuthnError::InvalidToken));
        }
        if let Some(want) = &self.typ
            && header.typ.as_deref().map(normalize_typ).as_ref() != Some(want)
        {
            return Err(denied(AuthnError::InvalidToken));
        }
        let index = self
            .select_entry(token)
            .ok_or(denied(AuthnError::InvalidToken))?;
        let (claims, key) = match header.kid.as_deref() {
            Some(kid) => self.decode_with_kid(index, token, header.alg, kid)?,
            None => self.decode_without_kid(index, token, header.alg)?,
        };
        self.check_claims(index, &claims, key, now)
            .map_err(Miss::Denied)
    }

    /// Step 2: the only entry, or the one named by the payload's `iss`. Read
    /// without verifying, only to choose whose keys and rules then decide.
    fn select_entry(&self, token: &str) -> Option<usize> {
        if self.entries.len() == 1 {
            return Some(0);
        }
        #[derive(Deserialize)]
        struct Peek {
            iss: Option<String>,
        }
        let payload = token.split('.').nth(1)?;
        let peek: Peek = serde_json::from_slice(&b64url_decode(payload)?).ok()?;
        let iss = peek.iss?;
        self.entries
            .iter()
            .position(|e| e.issuer.as_deref() == Some(iss.as_str()))
    }

    /// Step 3 with a `kid`: the entry's static keys, then its key set, then
    /// a JWKS file reread once if the rate limit allows; a remote set's miss
    /// is left to [`JwtVerifier::verify_fetching`].
    fn decode_with_kid(
        &self,
        index: usize,
        token: &str,
        alg: Algorithm,
        kid: &str,
    ) -> Result<(RawClaims, KeyUse), Miss> {
        let entry = &self.entries[index];
        let attempt = |key: &VerifyKey| decode_with(key, token, alg);
        let from_jwks = |(result, generation): (Result<RawClaims, AuthnError>, u64)| {
            result
                .map(|claims| {
                    let key = KeyUse {
                        kid: Some(kid.to_owned()),
                        jwks_generation: Some(generation),
                    };
                    (claims, key)
                })
                .map_err(Miss::Denied)
        };
        if let Some(key) = entry.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            let used = KeyUse {
                kid: key.kid.clone(),
                jwks_generation: None,
            };
            return attempt(key)
                .map(|claims| (claims, used))
                .map_err(Miss::Denied);
        }
        let Some(jwks) = &entry.jwks else {
            return Err(Miss::Denied(AuthnError::InvalidToken));
        };
        if let Some(found) = jwks.with_key(kid, attempt) {
            return from_jwks(found);
        }
        if jwks.path().is_none() {
            return Err(Miss::UnknownKid(index));
        }
        if jwks.reload_if_due()
            && let Some(found) = jwks.with_key(kid, attempt)
        {
            return from_jwks(found);
        }
        Err(Miss::Denied(AuthnError::InvalidToken))
    }

    /// Step 3 without a `kid`: only when the entry has exactly one key.
    fn decode_without_kid(
        &self,
        index: usize,
        token: &str,
        alg: Algorithm,
    ) -> Result<(RawClaims, KeyUse), Miss> {
        let entry = &self.entries[index];
        let set = entry.jwks.as_ref().map(|j| j.set.load_full());
        let jwks_keys = set.as_ref().map_or(&[][..], |s| s.keys.as_slice());
        match (entry.keys.as_slice(), jwks_keys) {
            ([only], []) => decode_with(only, token, alg)
                .map(|claims| {
                    let used = KeyUse {
                        kid: only.kid.clone(),
                        jwks_generation: None,
                    };
                    (claims, used)
                })
                .map_err(Miss::Denied),
            ([], [only]) => decode_with(&only.key, token, alg)
                .map(|claims| {
                    let used = KeyUse {
                        kid: only.key.kid.clone(),
                        jwks_generation: set.as_ref().map(|s| s.generation),
                    };
                    (claims, used)
                })
                .map_err(Miss::Denied),
            ([], []) if entry.jwks.as_ref().is_some_and(|j| !j.ready()) => {
                Err(Miss::UnknownKid(index))
            }
            _ => Err(Miss::Denied(AuthnError::InvalidToken)),
        }
    }

    /// Steps 5 to 7.
    fn check_claims(
        &self,
        index: usize,
        claims: &RawClaims,
        key: KeyUse,
        now: i64,
    ) -> Result<VerifiedToken, AuthnError> {
        let entry = &self.entries[index];
        let exp = numeric_date(&claims.exp)?.ok_or(AuthnError::InvalidToken)?;
        let nbf = numeric_date(&claims.nbf)?;
        let iat = numeric_date(&claims.iat)?;
        if let Some(cap) = self.max_lifetime {
            let stated = iat.map(|iat| exp.saturating_sub(iat));
            let left = exp.saturating_sub(now);
            if stated.is_some_and(|l| l > cap) || left > cap.saturating_add(self.leeway) {
                return Err(AuthnError::InvalidToken);
            }
        }
        if let Some(issuer) = &entry.issuer {
            match &claims.iss {
                Claim::Present(Value::String(iss)) if iss == issuer => {}
                _ => return Err(AuthnError::InvalidToken),
            }
        }
        if let Some(audience) = &entry.audience
            && !audience_matches(&claims.aud, audience)
        {
            return Err(AuthnError::InvalidToken);
        }
        let scopes = match &claims.scope {
            Claim::Absent => None,
            Claim::Present(Value::String(scope)) => Some(Scopes::from_claim(scope)),
            Claim::Present(_) => return Err(AuthnError::InvalidToken),
        };

        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthnError::InvalidToken);
        }
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthnError::TokenExpired);
        }

        let subject = match &claims.sub {
            Claim::Present(Value::String(sub)) => parse_canonical_uuid(sub.as_bytes()),
            _ => None,
        }
        .ok_or(AuthnError::UnknownUser)?;
        let session_id = match &claims.sid {
            Claim::Absent => None,
            Claim::Present(Value::String(sid)) => {
                Some(parse_canonical_uuid(sid.as_bytes()).ok_or(AuthnError::SessionRevoked)?)
            }
            Claim::Present(_) => return Err(AuthnError::SessionRevoked),
        };
        Ok(VerifiedToken {
            subject,
            session_id,
            scopes,
            expires_at: exp,
            kid: key.kid,
            jwks_generation: key.jwks_generation,
            issuer: index,
        })
    }
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_max_lifetime_secs() -> u64 {
    DEFAULT_MAX_LIFETIME_SECS
}

fn default_jwks_reload_min_interval_secs() -> u64 {
    10
}

fn default_jwks_refresh_secs() -> u64 {
    60
}

fn default_jwks_fetch_timeout_ms() -> u64 {
    5_000
}

fn default_jwks_refresh_min_secs() -> u64 {
    30
}

fn default_jwks_refresh_max_secs() -> u64 {
    300
}

#[cfg(test)]
pub(crate) mod tests;
