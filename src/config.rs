//! Configuration: a YAML file plus environment overrides, parsed once into the
//! settings types each module owns, and built once (the JWT keys, the route
//! table). Every problem is collected and reported together, each naming the
//! setting, so an operator fixes a bad deployment in one round trip.
//!
//! The environment is read through a lookup function, so tests pass a map
//! instead of mutating the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::authn::jwt::{JwtConfig, JwtKeyConfig, JwtVerifier};
use crate::authz::DecisionSettings;
use crate::breaker::BreakerConfig;
use crate::facts::CacheSettings;
use crate::facts::freshness::FreshnessSettings;
use crate::facts::l2::{L2Key, L2Settings};
use crate::grpc::admin::{AdminSettings, AdminToken};
use crate::http::ForwardAuthSettings;
use crate::identity::{self, IdentitySettings, IdentitySigner};
use crate::invalidate::ListenerSettings;
use crate::ratelimit::{DEFAULT_FAILED_AUTH_PER_MINUTE, RateLimitConfig};
use crate::redis::RedisSettings;
use crate::routes::RouteTable;
use crate::store::DatabaseSettings;
use crate::telemetry::LogFormat;
use crate::telemetry::traces::TraceSettings;

/// `DATABASE_URL`: the Postgres URL, honoured as is.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
/// `REDIS_URL`: the Redis URL; unset = no shared tier.
pub const ENV_REDIS_URL: &str = "REDIS_URL";
/// The gRPC listen address.
pub const ENV_GRPC_ADDR: &str = "VELRO_AUTHZ_GRPC_ADDR";
/// The HTTP listen address.
pub const ENV_HTTP_ADDR: &str = "VELRO_AUTHZ_HTTP_ADDR";
/// The separate health/metrics listen address.
pub const ENV_METRICS_ADDR: &str = "VELRO_AUTHZ_METRICS_ADDR";
/// Dry-run (shadow) mode: `true` or `false`.
pub const ENV_DRY_RUN: &str = "VELRO_AUTHZ_DRY_RUN";
/// The HS256 secret, so the config file can be committed without it.
pub const ENV_JWT_SECRET: &str = "VELRO_AUTHZ_JWT_SECRET";
/// A route table file instead of the built-in one.
pub const ENV_ROUTES_FILE: &str = "VELRO_AUTHZ_ROUTES_FILE";
/// `json` or `text`.
pub const ENV_LOG_FORMAT: &str = "VELRO_AUTHZ_LOG_FORMAT";
/// The Redis key prefix.
pub const ENV_REDIS_PREFIX: &str = "VELRO_AUTHZ_REDIS_PREFIX";
/// The key that authenticates values in Redis.
pub const ENV_REDIS_HMAC_KEY: &str = "VELRO_AUTHZ_REDIS_HMAC_KEY";
/// A file holding that key (a mounted Secret).
pub const ENV_REDIS_HMAC_KEY_FILE: &str = "VELRO_AUTHZ_REDIS_HMAC_KEY_FILE";
/// The admin service's address.
pub const ENV_ADMIN_ADDR: &str = "VELRO_AUTHZ_ADMIN_ADDR";
/// The file holding the admin bearer token.
pub const ENV_ADMIN_TOKEN_FILE: &str = "VELRO_AUTHZ_ADMIN_TOKEN_FILE";
/// The OTLP/gRPC collector decision traces go to; unset = tracing off.
pub const ENV_OTLP_ENDPOINT: &str = "VELRO_AUTHZ_OTLP_ENDPOINT";
/// Where the admin service listens when enabled without an address.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9192";
/// `decision.max_in_flight` unless set: Checks decided at once before more are
/// refused with UNAVAILABLE / 503.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 20_000;

/// Exit code for bad configuration (`EX_CONFIG` is 78; linkerd and sysexits use 64 = usage).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// The validated configuration of one sidecar.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listener: ext_authz, health, reflection.
    pub grpc_addr: SocketAddr,
    /// HTTP listener: forward-auth, and /healthz, /readyz, /metrics.
    pub http_addr: SocketAddr,
    /// A second HTTP listener serving only /healthz, /readyz and /metrics, so
    /// probes and scrapes can reach them on an address where the decision
    /// endpoints are not served (e.g. the pod IP while `http_addr` stays on
    /// loopback). `None` = only on `http_addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin service (explain, cache stats, flush) on a listener of its
    /// own, behind a bearer token; `None` (the default) = not served at all.
    pub admin: Option<AdminSettings>,
    /// Postgres, the source of truth.
    pub database: DatabaseSettings,
    /// In-process cache bounds and safety-net TTLs.
    pub cache: CacheSettings,
    /// How many verified tokens are cached.
    pub max_credentials: u64,
    /// Per-decision behaviour.
    pub decision: DecisionSettings,
    /// JWT verification keys and claims, built and checked.
    pub jwt: Arc<JwtVerifier>,
    /// The route table (shipped default unless `routes_file` is set).
    pub routes: RouteTable,
    /// Where the routes came from, for logs.
    pub routes_source: String,
    /// LISTEN reconnect backoff.
    pub listener: ListenerSettings,
    /// How long a silent change feed is trusted; whether stale facts may
    /// answer while Postgres is unreachable.
    pub freshness: FreshnessSettings,
    /// `json` (default, for production) or `text` (for humans).
    pub log_format: LogFormat,
    /// The shared Redis tier; `None` (no `REDIS_URL`) = L1 + Postgres only.
    pub redis: Option<RedisSettings>,
    /// Fact TTLs in Redis (used when `redis` is set).
    pub l2: L2Settings,
    /// Circuit breaker settings, for Postgres and Redis.
    pub breaker: BreakerConfig,
    /// Per-principal rate limit; `None` = off.
    pub rate_limit: Option<RateLimitConfig>,
    /// Failed authentications allowed per client address and minute, checked
    /// before any credential lookup; 0 = off.
    pub failed_auth_per_minute: u32,
    /// HTTP forward-auth (`/v1/auth`): where nginx puts the original request.
    pub forward_auth: ForwardAuthSettings,
    /// How many recorded decisions (those the decision log writes) are kept
    /// for explaining later by decision id; 0 = none.
    pub recent_decisions: usize,
    /// Decision traces over OTLP; `None` (no `tracing.otlp_endpoint`) = off.
    pub tracing: Option<TraceSettings>,
    /// Signs `x-velro-identity` for the upstream on allows; `None` (the
    /// default) = no signed identity, only the plain identity headers.
    pub identity_token: Option<Arc<IdentitySigner>>,
}

/// Most `explain.recent_decisions`: a bound on the ring's memory (about
/// 1 KiB per decision, docs/performance.md).
pub const MAX_RECENT_DECISIONS: usize = 1_000_000;

/// All configuration problems found, each naming its setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

mod file;

use file::*;

/// Where `velro-authz admin` finds the admin service: the `admin` section and
/// its environment overrides, nothing else (a client needs no database, keys
/// or routes).
#[derive(Debug, Clone)]
pub struct AdminClientSettings {
    /// The admin address (`admin.addr`, else the default).
    pub addr: String,
    /// The token file (`admin.token_file`), if configured.
    pub token_file: Option<PathBuf>,
}

impl Config {
    /// Loads `path` (if any) and applies environment overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(vec![format!("--config {}: {e}", p.display())]))?,
            None => String::new(),
        };
        Config::from_yaml(&text, env)
    }

    /// Only the database settings, for `migrate`: a migration Job needs no
    /// JWT keys, routes or Redis.
    pub fn load_database(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseSettings, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(vec![format!("--config {}: {e}", p.display())]))?,
            None => String::new(),
        };
        let file = parse_file(&text)?;
        let mut errors = Vec::new();
        let database = database(file.database, &env, &mut errors);
        if errors.is_empty() {
            Ok(database)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Only where the admin service is, for the `admin` client commands.
    pub fn load_admin_client(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AdminClientSettings, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(vec![format!("--config {}: {e}", p.display())]))?,
            None => String::new(),
        };
        let file = parse_file(&text)?;
        Ok(AdminClientSettings {
            addr: env(ENV_ADMIN_ADDR)
                .or(file.admin.addr)
                .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.to_owned()),
            token_file: env(ENV_ADMIN_TOKEN_FILE)
                .map(PathBuf::from)
                .or(file.admin.token_file),
        })
    }

    /// Parses YAML text (empty = all defaults) plus environment overrides.
    pub fn from_yaml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = parse_file(text)?;
        let mut errors = Vec::new();

        let grpc_addr = addr(
            "grpc_addr / VELRO_AUTHZ_GRPC_ADDR",
            env(ENV_GRPC_ADDR).or(file.grpc_addr),
            "127.0.0.1:9191",
            &mut errors,
        );
        let http_addr = addr(
            "http_addr / VELRO_AUTHZ_HTTP_ADDR",
            env(ENV_HTTP_ADDR).or(file.http_addr),
            "127.0.0.1:8181",
            &mut errors,
        );
        let metrics_addr = env(ENV_METRICS_ADDR)
            .or(file.metrics_addr)
            .filter(|a| !a.is_empty())
            .map(|a| {
                addr(
                    "metrics_addr / VELRO_AUTHZ_METRICS_ADDR",
                    Some(a),
                    "",
                    &mut errors,
                )
            });
        if let Some(m) = metrics_addr
            && m.port() != 0
            && (m == http_addr || m == grpc_addr)
        {
            errors.push(format!(
                "metrics_addr / VELRO_AUTHZ_METRICS_ADDR: {m} is already grpc_addr or http_addr"
            ));
        }

        let admin = admin(file.admin, &env, &mut errors);
        if let Some(a) = &admin
            && a.addr.port() != 0
            && (a.addr == grpc_addr || a.addr == http_addr || Some(a.addr) == metrics_addr)
        {
            errors.push(format!(
                "admin.addr / VELRO_AUTHZ_ADMIN_ADDR: {} is already another listener's address; the admin service gets its own",
                a.addr
            ));
        }

        let database = database(file.database, &env, &mut errors);

        let cache = CacheSettings {
            max_facts: file.cache.max_facts.unwrap_or(200_000),
            ttl: Duration::from_secs(file.cache.ttl_secs.unwrap_or(300)),
            negative_ttl: Duration::from_secs(file.cache.negative_ttl_secs.unwrap_or(30)),
            max_decisions: file.cache.max_decisions.unwrap_or(10_000),
        };
        let max_credentials = file.cache.max_credentials.unwrap_or(100_000);
        if cache.max_facts == 0 {
            errors.push("cache.max_facts: must be at least 1".to_owned());
        }
        if cache.ttl.is_zero() || cache.negative_ttl.is_zero() {
            errors.push("cache.ttl_secs / cache.negative_ttl_secs: must be at least 1".to_owned());
        }

        let dry_run = match env(ENV_DRY_RUN) {
            Some(v) => match v.as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    errors.push(format!(
                        "VELRO_AUTHZ_DRY_RUN: expected true or false, got {v:?}"
                    ));
                    false
                }
            },
            None => file.decision.dry_run.unwrap_or(false),
        };
        let decision = DecisionSettings {
            deadline: ms(file.decision.deadline_ms, 500),
            dry_run,
            allow_log_sample: file.decision.allow_log_sample.unwrap_or(0.01),
            max_in_flight: file.decision.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        };
        if decision.max_in_flight == 0 {
            errors.push("decision.max_in_flight: must be at least 1".to_owned());
        }
        if decision.deadline.is_zero() {
            errors.push("decision.deadline_ms: must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&decision.allow_log_sample) {
            errors.push("decision.allow_log_sample: must be between 0 and 1".to_owned());
        }

        let mut jwt = file.auth.jwt.unwrap_or_else(dev_jwt_defaults);
        let mut env_secret_key = None;
        if let Some(secret) = env(ENV_JWT_SECRET) {
            // The env var supplies the secret of the HS256 key, so the file can be
            // committed without it; add such a key when the file names none.
            match jwt.keys.iter().position(|k| k.alg == "HS256") {
                Some(i) => {
                    jwt.keys[i].secret = Some(secret);
                    env_secret_key = Some(i);
                }
                None => {
                    jwt.keys.push(hs256_key(secret));
                    env_secret_key = Some(jwt.keys.len() - 1);
                }
            }
        }
        let jwt = match JwtVerifier::new(&jwt) {
            Ok(verifier) => Some(Arc::new(verifier)),
            Err(problems) => {
                // A problem with the secret names where it came from.
                let from_env = env_secret_key.map(|i| format!("auth.jwt.keys[{i}].secret"));
                errors.extend(problems.into_iter().map(|p| match &from_env {
                    Some(setting) if p.starts_with(&format!("{setting}:")) => {
                        format!("{ENV_JWT_SECRET} ({setting}){}", &p[setting.len()..])
                    }
                    _ => p,
                }));
                None
            }
        };

        let routes_file = env(ENV_ROUTES_FILE).map(PathBuf::from).or(file.routes_file);
        let (routes, routes_source) = match &routes_file {
            None => (
                RouteTable::velro_default(),
                "built-in Velro API table".to_owned(),
            ),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => match RouteTable::from_yaml(&text) {
                    Ok(t) => (t, p.display().to_string()),
                    Err(e) => {
                        errors.push(format!("routes_file {}: {e}", p.display()));
                        (RouteTable::velro_default(), String::new())
                    }
                },
                Err(e) => {
                    errors.push(format!("routes_file {}: {e}", p.display()));
                    (RouteTable::velro_default(), String::new())
                }
            },
        };

        let listener = ListenerSettings {
            reconnect_min: ms(file.listener.reconnect_min_ms, 100),
            reconnect_max: ms(file.listener.reconnect_max_ms, 5_000),
        };
        if listener.reconnect_min.is_zero() || listener.reconnect_min > listener.reconnect_max {
            errors.push(
                "listener.reconnect_min_ms: must be at least 1 and at most reconnect_max_ms"
                    .to_owned(),
            );
        }

        let freshness_defaults = FreshnessSettings::default();
        let freshness = FreshnessSettings {
            max_silence: file
                .freshness
                .max_silence_ms
                .map_or(freshness_defaults.max_silence, Duration::from_millis),
            serve_stale_on_outage: ms(file.freshness.serve_stale_on_outage_ms, 0),
        };
        if freshness.max_silence < Duration::from_millis(100) {
            errors.push(
                "freshness.max_silence_ms: must be at least 100 (heartbeats go out four times per period)"
                    .to_owned(),
            );
        }
        if freshness.max_silence > Duration::from_secs(60) {
            errors.push(
                "freshness.max_silence_ms: at most 60000; a longer silent feed is not a freshness bound"
                    .to_owned(),
            );
        }

        let log_format = match env(ENV_LOG_FORMAT).as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                errors.push(format!(
                    "VELRO_AUTHZ_LOG_FORMAT: expected json or text, got {other:?}"
                ));
                LogFormat::Json
            }
            None => file.log_format.unwrap_or(LogFormat::Json),
        };

        let breaker = BreakerConfig {
            failures: file.breaker.failures.unwrap_or(5),
            open_for: ms(file.breaker.open_ms, 1_000),
        };
        if breaker.failures == 0 || breaker.open_for.is_zero() {
            errors.push("breaker.failures / breaker.open_ms: must be at least 1".to_owned());
        }

        let redis_url = env(ENV_REDIS_URL)
            .or(file.redis.url)
            .filter(|u| !u.is_empty());
        let allow_insecure = file.redis.allow_insecure.unwrap_or(false);
        let hmac_key = l2_key(
            file.redis.hmac_key,
            file.redis.hmac_key_file,
            file.redis.allow_unauthenticated_values.unwrap_or(false),
            redis_url.is_some(),
            &env,
            &mut errors,
        );
        let redis = redis_url.map(|url| {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis-cluster://")
                || url.starts_with("redis-sentinel://"))
            {
                errors.push(
                    "redis.url / REDIS_URL: must be a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL"
                        .to_owned(),
                );
            } else if !allow_insecure
                && let Some(host) = crate::redis::unauthenticated_remote_host(&url)
            {
                errors.push(format!(
                    "redis.url / REDIS_URL: {host} is not a loopback address and the URL has no password, \
                     so anyone who can reach it can write the facts every sidecar trusts: add one \
                     (redis://:PASSWORD@host, rediss:// across hosts) or set redis.allow_insecure: true"
                ));
            }
            let settings = RedisSettings {
                url,
                key_prefix: env(ENV_REDIS_PREFIX)
                    .or(file.redis.key_prefix)
                    .unwrap_or_else(|| "velro-authz:".to_owned()),
                timeout: ms(file.redis.timeout_ms, 100),
                breaker,
            };
            if settings.timeout.is_zero() {
                errors.push("redis.timeout_ms: must be at least 1".to_owned());
            }
            settings
        });
        let l2 = L2Settings {
            ttl: Duration::from_secs(file.redis.ttl_secs.unwrap_or(900)),
            negative_ttl: Duration::from_secs(file.redis.negative_ttl_secs.unwrap_or(30)),
            hmac_key,
        };
        if l2.ttl.is_zero() || l2.negative_ttl.is_zero() {
            errors.push("redis.ttl_secs / redis.negative_ttl_secs: must be at least 1".to_owned());
        }

        let rate_limit = file.rate_limit.per_second.map(|per_second| {
            let burst = file
                .rate_limit
                .burst
                .unwrap_or_else(|| per_second.ceil().clamp(1.0, 1e6) as u32);
            let config = RateLimitConfig {
                per_second,
                burst,
                lease: file
                    .rate_limit
                    .lease
                    .unwrap_or_else(|| RateLimitConfig::default_lease(per_second, burst)),
            };
            if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e6) {
                errors.push(
                    "rate_limit.per_second: must be a number above 0 and at most 1000000"
                        .to_owned(),
                );
            }
            if config.burst == 0 {
                errors.push("rate_limit.burst: must be at least 1".to_owned());
            } else if !(1..=config.burst).contains(&config.lease) {
                errors.push(format!(
                    "rate_limit.lease: must be between 1 and rate_limit.burst ({})",
                    config.burst
                ));
            }
            config
        });
        if rate_limit.is_none() && file.rate_limit.burst.is_some() {
            errors.push("rate_limit.burst: needs rate_limit.per_second".to_owned());
        }
        if rate_limit.is_none() && file.rate_limit.lease.is_some() {
            errors.push("rate_limit.lease: needs rate_limit.per_second".to_owned());
        }
        let failed_auth_per_minute = file
            .rate_limit
            .failed_auth_per_minute
            .unwrap_or(DEFAULT_FAILED_AUTH_PER_MINUTE);
        let forward_auth = forward_auth(file.forward_auth, &mut errors);
        let recent_decisions = file
            .explain
            .recent_decisions
            .unwrap_or(crate::authz::recent::DEFAULT_RECENT_DECISIONS);
        if recent_decisions > MAX_RECENT_DECISIONS {
            errors.push(format!(
                "explain.recent_decisions: at most {MAX_RECENT_DECISIONS} (got {recent_decisions})"
            ));
        }
        let tracing = tracing(file.tracing, &env, &mut errors);
        let identity_token = identity_token(file.identity_token, &mut errors);

        let (Some(jwt), true) = (jwt, errors.is_empty()) else {
            return Err(ConfigError(errors));
        };
        Ok(Config {
            grpc_addr,
            http_addr,
            metrics_addr,
            admin,
            database,
            cache,
            max_credentials,
            decision,
            jwt,
            routes,
            routes_source,
            listener,
            freshness,
            log_format,
            redis,
            l2,
            breaker,
            rate_limit,
            failed_auth_per_minute,
            forward_auth,
            recent_decisions,
            tracing,
            identity_token,
        })
    }

    /// The settings that only a restart applies and that differ between this
    /// (running) configuration and `next`, by name. A reload applies routes,
    /// JWT keys, `decision.dry_run` and `decision.allow_log_sample`; anything
    /// else needs the process restarted: listeners, connections and caches
    /// are built once.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let same = [
            ("grpc_addr", self.grpc_addr == next.grpc_addr),
            ("http_addr", self.http_addr == next.http_addr),
            ("metrics_addr", self.metrics_addr == next.metrics_addr),
            ("admin", self.admin == next.admin),
            ("database", self.database == next.database),
            ("cache", self.cache == next.cache),
            (
                "cache.max_credentials",
                self.max_credentials == next.max_credentials,
            ),
            (
                "decision.deadline_ms",
                self.decision.deadline == next.decision.deadline,
            ),
            ("listener", self.listener == next.listener),
            ("freshness", self.freshness == next.freshness),
            ("log_format", self.log_format == next.log_format),
            ("redis", self.redis == next.redis && self.l2 == next.l2),
            ("breaker", self.breaker == next.breaker),
            ("rate_limit", self.rate_limit == next.rate_limit),
            (
                "rate_limit.failed_auth_per_minute",
                self.failed_auth_per_minute == next.failed_auth_per_minute,
            ),
            ("forward_auth", self.forward_auth == next.forward_auth),
            (
                "explain.recent_decisions",
                self.recent_decisions == next.recent_decisions,
            ),
        ];
        same.into_iter()
            .filter(|(_, same)| !same)
            .map(|(name, _)| name)
            .collect()
    }

    /// Only the identity token signer, for `velro-authz identity-jwks`: the
    /// `identity_token` section, nothing else.
    pub fn load_identity(path: Option<&Path>) -> Result<Option<IdentitySigner>, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(vec![format!("--config {}: {e}", p.display())]))?,
            None => String::new(),
        };
        let file = parse_file(&text)?;
        let Some(settings) = identity_settings(file.identity_token)? else {
            return Ok(None);
        };
        IdentitySigner::load(&settings)
            .map(Some)
            .map_err(|e| ConfigError(vec![e]))
    }
}

/// The `identity_token` section: off unless `key_file` is set, and then the
/// key is read and checked now, at start.
fn identity_token(
    file: FileIdentityToken,
    errors: &mut Vec<String>,
) -> Option<Arc<IdentitySigner>> {
    match identity_settings(file) {
        Ok(None) => None,
        Ok(Some(settings)) => match IdentitySigner::load(&settings) {
            Ok(signer) => Some(Arc::new(signer)),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Err(ConfigError(e)) => {
            errors.extend(e);
            None
        }
    }
}

fn identity_settings(file: FileIdentityToken) -> Result<Option<IdentitySettings>, ConfigError> {
    let Some(key_file) = file.key_file else {
        if file.audience.is_some() || file.issuer.is_some() || file.ttl_secs.is_some() {
            return Err(ConfigError(vec![
                "identity_token.key_file: required to sign identity tokens (the other \
                 identity_token settings do nothing without it)"
                    .to_owned(),
            ]));
        }
        return Ok(None);
    };
    Ok(Some(IdentitySettings {
        key_file,
        audience: file.audience.unwrap_or_default(),
        issuer: file
            .issuer
            .unwrap_or_else(|| identity::DEFAULT_ISSUER.to_owned()),
        ttl: file
            .ttl_secs
            .map_or(identity::DEFAULT_TTL, Duration::from_secs),
    }))
}

fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_saphyr::from_str(text).map_err(|e| ConfigError(vec![format!("config file: {e}")]))
}

fn database(
    file: FileDatabase,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> DatabaseSettings {
    let url = env(ENV_DATABASE_URL).or(file.url).unwrap_or_default();
    if url.is_empty() {
        errors.push("database.url / DATABASE_URL: required".to_owned());
    } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        errors.push("database.url / DATABASE_URL: must be a postgres:// URL".to_owned());
    }
    let max_connections = file.max_connections.unwrap_or(16);
    if max_connections == 0 {
        errors.push("database.max_connections: must be at least 1".to_owned());
    }
    let min_connections = file.min_connections.unwrap_or(4).min(max_connections);
    DatabaseSettings {
        url,
        max_connections,
        min_connections,
        acquire_timeout: ms(file.acquire_timeout_ms, 2_000),
        statement_timeout: ms(file.statement_timeout_ms, 2_000),
    }
}

/// The key that authenticates values in Redis: `VELRO_AUTHZ_REDIS_HMAC_KEY`,
/// `VELRO_AUTHZ_REDIS_HMAC_KEY_FILE`, `redis.hmac_key` or `redis.hmac_key_file`
/// (the environment first). Required with Redis unless the operator says by
/// name that Redis itself is trusted (`redis.allow_unauthenticated_values`).
fn l2_key(
    file_key: Option<String>,
    file_key_file: Option<PathBuf>,
    unauthenticated: bool,
    with_redis: bool,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<L2Key> {
    const SETTING: &str = "redis.hmac_key / VELRO_AUTHZ_REDIS_HMAC_KEY (or redis.hmac_key_file / VELRO_AUTHZ_REDIS_HMAC_KEY_FILE)";
    let inline = env(ENV_REDIS_HMAC_KEY).or(file_key);
    let from_file = env(ENV_REDIS_HMAC_KEY_FILE)
        .map(PathBuf::from)
        .or(file_key_file);
    let key = match (inline, from_file) {
        (Some(_), Some(_)) => {
            errors.push(format!("{SETTING}: set the key or its file, not both"));
            return None;
        }
        (Some(k), None) => k.into_bytes(),
        (None, Some(path)) => match read_secret_file(&path) {
            Ok(k) => k,
            Err(e) => {
                errors.push(format!(
                    "redis.hmac_key_file / VELRO_AUTHZ_REDIS_HMAC_KEY_FILE {}: {e}",
                    path.display()
                ));
                return None;
            }
        },
        (None, None) => {
            if with_redis && !unauthenticated {
                errors.push(format!(
                    "{SETTING}: required with Redis, the same on every sidecar sharing it \
                     (e.g. `head -c 32 /dev/urandom | base64`), so that whoever can write to \
                     Redis cannot plant a fact; or set redis.allow_unauthenticated_values: true \
                     to trust Redis as it is"
                ));
            }
            return None;
        }
    };
    if unauthenticated {
        errors.push(format!(
            "redis.allow_unauthenticated_values: true contradicts {SETTING}; keep one"
        ));
    }
    if key.len() < L2Key::MIN_LEN {
        errors.push(format!(
            "{SETTING}: at least {} bytes (got {})",
            L2Key::MIN_LEN,
            key.len()
        ));
    }
    Some(L2Key::new(key))
}

/// The `admin` section: off unless an address or a token file is configured;
/// then the token file is required and read now, at start.
fn admin(
    file: FileAdmin,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<AdminSettings> {
    let addr_text = env(ENV_ADMIN_ADDR).or(file.addr).filter(|a| !a.is_empty());
    let token_file = env(ENV_ADMIN_TOKEN_FILE)
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .or(file.token_file);
    if addr_text.is_none() && token_file.is_none() {
        return None;
    }
    let addr = addr(
        "admin.addr / VELRO_AUTHZ_ADMIN_ADDR",
        addr_text,
        DEFAULT_ADMIN_ADDR,
        errors,
    );
    let Some(path) = token_file else {
        errors.push(
            "admin.token_file / VELRO_AUTHZ_ADMIN_TOKEN_FILE: required when the admin service is on \
             (every call must carry the token in `authorization: Bearer …`)"
                .to_owned(),
        );
        return None;
    };
    let token = match read_secret_file(&path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!(
                "admin.token_file / VELRO_AUTHZ_ADMIN_TOKEN_FILE {}: {e}",
                path.display()
            ));
            return None;
        }
    };
    if token.len() < AdminToken::MIN_LEN {
        errors.push(format!(
            "admin.token_file / VELRO_AUTHZ_ADMIN_TOKEN_FILE {}: the token must be at least {} bytes (got {})",
            path.display(),
            AdminToken::MIN_LEN,
            token.len()
        ));
    }
    Some(AdminSettings {
        addr,
        token: AdminToken::new(&token),
        token_file: path,
    })
}

/// A secret's bytes from a file (a mounted Secret), without the trailing
/// newline editors and `echo` add. The content never appears in an error.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| e.kind().to_string())?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err("empty".to_owned());
    }
    Ok(bytes)
}

/// The `forward_auth` section: header names, validated and lower-cased.
fn forward_auth(file: FileForwardAuth, errors: &mut Vec<String>) -> ForwardAuthSettings {
    let defaults = ForwardAuthSettings::default();
    let mut name = |setting: &str, value: Option<String>, default: String| match value {
        None => default,
        Some(v) => match axum::http::HeaderName::from_bytes(v.as_bytes()) {
            Ok(h) => h.as_str().to_owned(),
            Err(_) => {
                errors.push(format!(
                    "forward_auth.{setting}: {v:?} is not an HTTP header name"
                ));
                default
            }
        },
    };
    ForwardAuthSettings {
        original_method_header: name(
            "original_method_header",
            file.original_method_header,
            defaults.original_method_header,
        ),
        original_uri_header: name(
            "original_uri_header",
            file.original_uri_header,
            defaults.original_uri_header,
        ),
    }
}

/// The `tracing` section: off unless an OTLP endpoint is configured. The
/// endpoint is plain `http://host:port` (a collector or agent on a trusted
/// network), with no credentials in it: it is logged.
fn tracing(
    file: FileTracing,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<TraceSettings> {
    const SETTING: &str = "tracing.otlp_endpoint / VELRO_AUTHZ_OTLP_ENDPOINT";
    let sample_ratio = file.sample_ratio.unwrap_or(0.01);
    if !(0.0..=1.0).contains(&sample_ratio) {
        errors.push("tracing.sample_ratio: must be between 0 and 1".to_owned());
    }
    let service_name = file
        .service_name
        .unwrap_or_else(|| "velro-authz".to_owned());
    if service_name.trim().is_empty() {
        errors.push("tracing.service_name: must not be empty".to_owned());
    }
    let endpoint = env(ENV_OTLP_ENDPOINT)
        .or(file.otlp_endpoint)
        .filter(|e| !e.is_empty())?;
    match endpoint.parse::<axum::http::Uri>() {
        Ok(uri)
            if uri.scheme_str() == Some("http")
                && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
                && uri.port_u16().is_some()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none() => {}
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            errors.push(format!(
                "{SETTING}: must not carry credentials (user:password@)"
            ));
        }
        Ok(uri) if uri.scheme_str() == Some("https") => errors.push(format!(
            "{SETTING}: https is not supported; export to a collector or agent on a trusted \
             network over http://host:port"
        )),
        _ => errors.push(format!(
            "{SETTING}: expected http://host:port (OTLP over gRPC, usually port 4317)"
        )),
    }
    Some(TraceSettings {
        otlp_endpoint: endpoint,
        sample_ratio,
        service_name,
    })
}

/// With no `auth.jwt` section: HS256 with issuer/audience `velro`, the secret
/// coming from `VELRO_AUTHZ_JWT_SECRET` (validation fails if it is not set).
fn dev_jwt_defaults() -> JwtConfig {
    JwtConfig {
        issuer: Some("velro".to_owned()),
        audience: Some("velro-api".to_owned()),
        ..JwtConfig::default()
    }
}

fn hs256_key(secret: String) -> JwtKeyConfig {
    JwtKeyConfig {
        kid: None,
        alg: "HS256".to_owned(),
        secret: Some(secret),
        public_key_pem: None,
        public_key_file: None,
        private_key_file: None,
    }
}

fn addr(name: &str, value: Option<String>, default: &str, errors: &mut Vec<String>) -> SocketAddr {
    let text = value.unwrap_or_else(|| default.to_owned());
    match text.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!(
                "{name}: {text:?} is not an address like 127.0.0.1:9191"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn ms(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}

pub use crate::secret::redact_url;

#[cfg(test)]
mod tests;
