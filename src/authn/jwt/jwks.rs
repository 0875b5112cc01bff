//! Key sets by `kid` (JWKS): from a file (`jwks_file`) or over HTTPS
//! (`jwks_url`, or `oidc_issuer` discovery, see `remote.rs`). RS256 / ES256 /
//! EdDSA public keys, swapped whole so that readers never block.
//!
//! A file is read at start-up, reread when a token names a kid the set lacks
//! (at most once per interval), on a timer and on demand (SIGHUP). A remote
//! set is fetched by its own task ([`JwksSource::run_refresh`]): at start
//! (retried until it succeeds; until then the issuer's tokens cannot be
//! decided), then again when `Cache-Control: max-age`, clamped to the
//! configured bounds, runs out, and when a token names an unknown kid (at
//! most once per interval, one fetch at a time, waiters sharing it). A failed
//! fetch keeps the last good set, counted and logged.
//!
//! Every reload that changes the set bumps its generation, and each key keeps
//! the generation since which its kid has had this key material. A result
//! verified against generation `g` with kid `k` stays good exactly while `k`
//! is in the set with the same material since `g` or earlier
//! ([`JwksSource::still_holds`]): that is how a removed or replaced key stops
//! cached verifications, at the next read, without scanning the cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::Uri;
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::keys::{
    VerifyKey, b64url_decode, check_public_key, check_rsa_components, parse_alg, read_small_file,
};
use super::remote::{FetchError, HttpsClient, display_url};

/// `last_load_ms` of a remote set never fetched: the first unknown-kid
/// fetch is not rate-limited.
const NEVER: u64 = u64::MAX;

/// First retry delay of a failed remote fetch; doubled up to the minimum
/// refresh period.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// A key set and where it comes from.
pub(super) struct JwksSource {
    /// The file or the HTTPS endpoint.
    pub(super) origin: Origin,
    /// The current key set; readers never block, a reload swaps it whole.
    pub(super) set: ArcSwap<KeySet>,
    /// Kids of the static keys, which a JWKS key must not shadow.
    static_kids: Vec<String>,
    /// One reload at a time, so generations are assigned in order (readers
    /// never take it).
    reloading: Mutex<()>,
    /// Origin of the millisecond clock below.
    started: Instant,
    /// When the set was last read or fetched (ms since `started`, [`NEVER`]
    /// before a remote set's first attempt): the unknown-kid rate limit.
    last_load_ms: AtomicU64,
    /// `jwks_reload_min_interval_secs` in milliseconds.
    min_interval_ms: u64,
}

/// Where a key set is read.
pub(super) enum Origin {
    /// `jwks_file`.
    File(PathBuf),
    /// `jwks_url` or `oidc_issuer`.
    Remote(Box<Remote>),
}

/// A key set over HTTPS and its fetch state.
pub(super) struct Remote {
    /// The configured URL, or the issuer whose discovery document names it.
    location: RemoteLocation,
    /// The HTTPS client all issuers share.
    client: Arc<HttpsClient>,
    /// The key set URL in use: the configured one, or the last discovered
    /// (forgotten after a failed fetch, so discovery runs again).
    jwks_uri: Mutex<Option<Uri>>,
    /// One fetch at a time; an unknown-kid request that finds it taken waits
    /// for that fetch instead of starting another.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches finished (either way), so a waiter knows one ended meanwhile.
    attempts: AtomicU64,
    /// True once a key set has been fetched: the issuer's tokens can be
    /// decided, and readiness no longer waits for it.
    ready: AtomicBool,
    /// The issuer as configured, for logs and the metric label.
    pub(super) label: String,
    /// How long a fetched set is kept before the next fetch.
    refresh: RefreshBounds,
    /// Fetch results, keys held, last success.
    metrics: JwksMetrics,
}

/// Where a remote key set is.
pub(super) enum RemoteLocation {
    /// `jwks_url`.
    JwksUrl(Uri),
    /// `oidc_issuer`: `jwks_uri` of its discovery document.
    Discovery(String),
}

/// `Cache-Control: max-age` is honoured within these bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct RefreshBounds {
    /// `jwks_refresh_min_secs`: also the period without `max-age`, and with
    /// `no-cache` / `no-store`.
    pub(super) min: Duration,
    /// `jwks_refresh_max_secs`: a removed key stops verifying within this.
    pub(super) max: Duration,
}

/// What a fetch brought.
pub(super) struct FetchOutcome {
    /// How the set changed.
    pub(super) reload: JwksReload,
    /// The server's `max-age`, if any.
    max_age: Option<u64>,
}

/// The JWKS metrics, labelled by the configured issuer (a bounded set).
#[derive(Clone)]
pub struct JwksMetrics {
    /// `velro_authz_jwks_fetches_total{issuer, result}`.
    fetches: IntCounterVec,
    /// `velro_authz_jwks_keys{issuer}`: keys in the current set.
    keys: IntGaugeVec,
    /// `velro_authz_jwks_last_success_timestamp_seconds{issuer}`.
    last_success: IntGaugeVec,
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

impl RefreshBounds {
    /// `max-age` clamped into the bounds; none → the minimum.
    pub(super) fn period(&self, max_age: Option<u64>) -> Duration {
        Duration::from_secs(max_age.unwrap_or(0)).clamp(self.min, self.max)
    }
}

impl JwksMetrics {
    /// Unregistered; [`JwksMetrics::register`] adds them to a registry.
    pub(super) fn new() -> JwksMetrics {
        JwksMetrics {
            fetches: IntCounterVec::new(
                Opts::new(
                    "velro_authz_jwks_fetches_total",
                    "Key set fetches over HTTPS by issuer and result (ok, or why not).",
                ),
                &["issuer", "result"],
            )
            .expect("metric"),
            keys: IntGaugeVec::new(
                Opts::new(
                    "velro_authz_jwks_keys",
                    "Keys in the issuer's current key set.",
                ),
                &["issuer"],
            )
            .expect("metric"),
            last_success: IntGaugeVec::new(
                Opts::new(
                    "velro_authz_jwks_last_success_timestamp_seconds",
                    "Unix time of the issuer's last successful key set fetch.",
                ),
                &["issuer"],
            )
            .expect("metric"),
        }
    }

    /// Adds the three metrics to `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.fetches.clone()))?;
        registry.register(Box::new(self.keys.clone()))?;
        registry.register(Box::new(self.last_success.clone()))
    }
}

impl Remote {
    /// A remote set at `location`, not fetched yet.
    pub(super) fn new(
        location: RemoteLocation,
        client: Arc<HttpsClient>,
        label: String,
        refresh: RefreshBounds,
        metrics: JwksMetrics,
    ) -> Remote {
        let jwks_uri = match &location {
            RemoteLocation::JwksUrl(uri) => Some(uri.clone()),
            RemoteLocation::Discovery(_) => None,
        };
        Remote {
            location,
            client,
            jwks_uri: Mutex::new(jwks_uri),
            fetching: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            label,
            refresh,
            metrics,
        }
    }
}

impl JwksSource {
    /// Reads the file at start-up. Problems are prefixed with `at` (the
    /// setting); a file without one usable key is one of them.
    pub(super) fn open(
        path: &Path,
        at: &str,
        static_kids: Vec<String>,
        min_interval_secs: u64,
    ) -> Result<JwksSource, Vec<String>> {
        match load_jwks_file(path, &static_kids) {
            Ok(set) if set.is_empty() => Err(vec![format!(
                "{at}: {}: no usable signing key (RS256, ES256 or EdDSA, with a kid)",
                path.display()
            )]),
            Ok(set) => Ok(JwksSource {
                origin: Origin::File(path.to_path_buf()),
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
            Err(problems) => Err(problems.into_iter().map(|p| format!("{at}: {p}")).collect()),
        }
    }

    /// A remote set, empty until its first fetch ([`JwksSource::run_refresh`]).
    pub(super) fn remote(
        remote: Remote,
        static_kids: Vec<String>,
        min_interval_secs: u64,
    ) -> JwksSource {
        JwksSource {
            origin: Origin::Remote(Box::new(remote)),
            set: ArcSwap::from_pointee(KeySet {
                generation: 0,
                keys: Vec::new(),
            }),
            static_kids,
            reloading: Mutex::new(()),
            started: Instant::now(),
            last_load_ms: AtomicU64::new(NEVER),
            min_interval_ms: min_interval_secs.saturating_mul(1000),
        }
    }

    /// The file, for a file source.
    pub(super) fn path(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File(path) => Some(path),
            Origin::Remote(_) => None,
        }
    }

    /// Whether tokens can be checked against this set: a file always, a
    /// remote set once fetched.
    pub(super) fn ready(&self) -> bool {
        match &self.origin {
            Origin::File(_) => true,
            Origin::Remote(remote) => remote.ready.load(Ordering::Acquire),
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

    /// Claims the unknown-kid reread if the last read is at least
    /// `min_interval_ms` old (or there was none) and no other thread just
    /// claimed it.
    fn claim_due(&self) -> bool {
        let now_ms = self.elapsed_ms();
        let last = self.last_load_ms.load(Ordering::Acquire);
        if last != NEVER && now_ms.saturating_sub(last) < self.min_interval_ms {
            return false;
        }
        self.last_load_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A file source: rereads the file if [`JwksSource::claim_due`]; true if
    /// the set was replaced. A remote source: false (see
    /// [`JwksSource::refetch_for_unknown_kid`]).
    ///
    /// This blocks the calling request on a small local file read, at most
    /// once per interval across all requests, which is cheaper than a
    /// background task for a rare event.
    pub(super) fn reload_if_due(&self) -> bool {
        let Origin::File(path) = &self.origin else {
            return false;
        };
        if !self.claim_due() {
            return false;
        }
        match self.load() {
            Ok(reload) => {
                if reload.changed() {
                    tracing::info!(
                        path = %path.display(),
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
                    path = %path.display(),
                    problems = ?problems,
                    "JWKS reload failed; keeping the previous key set"
                );
                false
            }
        }
    }

    /// A remote source, for a token whose kid the set lacks: fetches the set
    /// again if the rate limit allows, or waits for the fetch already under
    /// way (single flight). True if a fetch ended meanwhile, so the kid is
    /// worth looking up again.
    pub(super) async fn refetch_for_unknown_kid(&self) -> bool {
        let Origin::Remote(remote) = &self.origin else {
            return false;
        };
        let seen = remote.attempts.load(Ordering::Acquire);
        let guard = match remote.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                let _wait = remote.fetching.lock().await;
                return remote.attempts.load(Ordering::Acquire) != seen;
            }
        };
        if !self.claim_due() {
            return false;
        }
        self.fetch_holding(remote, guard, "unknown_kid")
            .await
            .is_ok()
    }

    /// A remote source's life: fetch now, then again when the server's
    /// `max-age` (within the bounds) runs out; after a failure retry sooner
    /// (0.5 s, doubling up to the minimum period), keeping the last good set.
    /// Returns at shutdown; at once for a file source.
    pub(super) async fn run_refresh(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Origin::Remote(remote) = &self.origin else {
            return;
        };
        let mut retry = FIRST_RETRY;
        let mut trigger = "startup";
        loop {
            let guard = remote.fetching.lock().await;
            self.last_load_ms
                .store(self.elapsed_ms(), Ordering::Release);
            let wait = match self.fetch_holding(remote, guard, trigger).await {
                Ok(outcome) => {
                    retry = FIRST_RETRY;
                    trigger = "refresh";
                    remote.refresh.period(outcome.max_age)
                }
                Err(_) => {
                    let wait = retry;
                    retry = (retry * 2).min(remote.refresh.min);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One fetch, `_guard` held (single flight): the set is replaced if it
    /// changed; on any error the last good set stays. Counted and logged
    /// either way (kids only, never key material; the URL without query).
    async fn fetch_holding(
        &self,
        remote: &Remote,
        _guard: tokio::sync::MutexGuard<'_, ()>,
        trigger: &'static str,
    ) -> Result<FetchOutcome, FetchError> {
        let result = self.fetch_unlogged(remote).await;
        remote.attempts.fetch_add(1, Ordering::AcqRel);
        let label = remote.label.as_str();
        match &result {
            Ok(outcome) => {
                remote.ready.store(true, Ordering::Release);
                remote
                    .metrics
                    .fetches
                    .with_label_values(&[label, "ok"])
                    .inc();
                remote
                    .metrics
                    .keys
                    .with_label_values(&[label])
                    .set(i64::try_from(outcome.reload.keys).unwrap_or(i64::MAX));
                remote
                    .metrics
                    .last_success
                    .with_label_values(&[label])
                    .set(chrono::Utc::now().timestamp());
                let r = &outcome.reload;
                if r.changed() {
                    tracing::info!(
                        issuer = label,
                        trigger,
                        keys = r.keys,
                        generation = r.generation,
                        added = ?r.added,
                        removed = ?r.removed,
                        replaced = ?r.replaced,
                        max_age = ?outcome.max_age,
                        "JWKS fetched"
                    );
                } else {
                    tracing::debug!(issuer = label, trigger, "JWKS fetched, unchanged");
                }
            }
            Err(e) => {
                remote
                    .metrics
                    .fetches
                    .with_label_values(&[label, e.reason()])
                    .inc();
                if let RemoteLocation::Discovery(_) = remote.location {
                    *remote.jwks_uri.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                let keys = self.set.load().keys.len();
                tracing::warn!(
                    issuer = label,
                    trigger,
                    result = e.reason(),
                    error = %e,
                    keys_kept = keys,
                    "JWKS fetch failed; keeping the last good key set"
                );
            }
        }
        result
    }

    async fn fetch_unlogged(&self, remote: &Remote) -> Result<FetchOutcome, FetchError> {
        let known = remote
            .jwks_uri
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let uri = match (known, &remote.location) {
            (Some(uri), _) => uri,
            (None, RemoteLocation::Discovery(issuer)) => {
                let uri = remote.client.discover(issuer).await?;
                *remote.jwks_uri.lock().unwrap_or_else(|p| p.into_inner()) = Some(uri.clone());
                uri
            }
            (None, RemoteLocation::JwksUrl(uri)) => uri.clone(),
        };
        let fetched = remote.client.get(&uri).await?;
        let read = parse_jwks(&fetched.body, &self.static_kids).map_err(|problems| {
            FetchError::Invalid(format!("{}: {}", display_url(&uri), problems.join("; ")))
        })?;
        if read.is_empty() {
            return Err(FetchError::Invalid(format!(
                "{}: no usable signing key (RS256, ES256 or EdDSA, with a kid)",
                display_url(&uri)
            )));
        }
        Ok(FetchOutcome {
            reload: self.apply(read),
            max_age: fetched.max_age,
        })
    }

    /// Forced reread of a file (timer, SIGHUP), whatever the rate limit.
    pub(super) fn reload(&self) -> Result<JwksReload, Vec<String>> {
        if !matches!(self.origin, Origin::File(_)) {
            return Err(vec![
                "fetched over HTTPS on its own schedule, not reread on demand".to_owned(),
            ]);
        }
        self.last_load_ms
            .store(self.elapsed_ms(), Ordering::Release);
        self.load()
    }

    /// Reads the file and applies it; on error (unreadable, not a JWKS
    /// document, a broken entry) the old set stays. A valid document without
    /// keys empties the set: removing every key is a removal like any other.
    fn load(&self) -> Result<JwksReload, Vec<String>> {
        let Origin::File(path) = &self.origin else {
            return Err(vec!["not a file".to_owned()]);
        };
        let read = load_jwks_file(path, &self.static_kids)?;
        Ok(self.apply(read))
    }

    /// If the keys read differ from the set's, swaps in a new generation.
    fn apply(&self, read: Vec<ReadKey>) -> JwksReload {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
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
            return reload;
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
        reload
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
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
