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

use serde::Deserialize;

use crate::authn::jwt::{JwtConfig, JwtKeyConfig, JwtVerifier};
use crate::authz::DecisionSettings;
use crate::breaker::BreakerConfig;
use crate::facts::CacheSettings;
use crate::facts::freshness::FreshnessSettings;
use crate::facts::l2::{L2Key, L2Settings};
use crate::grpc::admin::{AdminSettings, AdminToken};
use crate::http::ForwardAuthSettings;
use crate::invalidate::ListenerSettings;
use crate::ratelimit::RateLimitConfig;
use crate::redis::RedisSettings;
use crate::routes::RouteTable;
use crate::store::DatabaseSettings;
use crate::telemetry::LogFormat;

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
/// Where the admin service listens when enabled without an address.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9192";

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
    /// HTTP forward-auth (`/v1/auth`): where nginx puts the original request.
    pub forward_auth: ForwardAuthSettings,
}

/// All configuration problems found, each naming its setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The YAML file as written; every field optional so defaults apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    metrics_addr: Option<String>,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    cache: FileCache,
    #[serde(default)]
    decision: FileDecision,
    #[serde(default)]
    auth: FileAuth,
    routes_file: Option<PathBuf>,
    #[serde(default)]
    listener: FileListener,
    #[serde(default)]
    freshness: FileFreshness,
    log_format: Option<LogFormat>,
    #[serde(default)]
    redis: FileRedis,
    #[serde(default)]
    breaker: FileBreaker,
    rate_limit: Option<FileRateLimit>,
    #[serde(default)]
    forward_auth: FileForwardAuth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
    key_prefix: Option<String>,
    timeout_ms: Option<u64>,
    ttl_secs: Option<u64>,
    negative_ttl_secs: Option<u64>,
    hmac_key: Option<String>,
    hmac_key_file: Option<PathBuf>,
    allow_unauthenticated_values: Option<bool>,
    allow_insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    addr: Option<String>,
    token_file: Option<PathBuf>,
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBreaker {
    failures: Option<u32>,
    open_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    per_second: f64,
    burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForwardAuth {
    original_method_header: Option<String>,
    original_uri_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
    acquire_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    max_facts: Option<u64>,
    ttl_secs: Option<u64>,
    negative_ttl_secs: Option<u64>,
    max_credentials: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDecision {
    deadline_ms: Option<u64>,
    dry_run: Option<bool>,
    allow_log_sample: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    jwt: Option<JwtConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFreshness {
    max_silence_ms: Option<u64>,
    serve_stale_on_outage_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
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
        };
        if decision.deadline.is_zero() {
            errors.push("decision.deadline_ms: must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&decision.allow_log_sample) {
            errors.push("decision.allow_log_sample: must be between 0 and 1".to_owned());
        }

        let mut jwt = file.auth.jwt.unwrap_or_else(dev_jwt_defaults);
        if let Some(secret) = env(ENV_JWT_SECRET) {
            // The env var supplies the secret of the HS256 key, so the file can be
            // committed without it; add such a key when the file names none.
            match jwt.keys.iter_mut().find(|k| k.alg == "HS256") {
                Some(key) => key.secret = Some(secret),
                None => jwt.keys.push(hs256_key(secret)),
            }
        }
        let jwt = match JwtVerifier::new(&jwt) {
            Ok(verifier) => Some(Arc::new(verifier)),
            Err(problems) => {
                errors.extend(problems);
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

        let rate_limit = file.rate_limit.map(|r| {
            let config = RateLimitConfig {
                per_second: r.per_second,
                burst: r
                    .burst
                    .unwrap_or_else(|| r.per_second.ceil().clamp(1.0, 1e6) as u32),
            };
            if !(r.per_second.is_finite() && r.per_second > 0.0 && r.per_second <= 1e6) {
                errors.push(
                    "rate_limit.per_second: must be a number above 0 and at most 1000000"
                        .to_owned(),
                );
            }
            if config.burst == 0 {
                errors.push("rate_limit.burst: must be at least 1".to_owned());
            }
            config
        });
        let forward_auth = forward_auth(file.forward_auth, &mut errors);

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
            forward_auth,
        })
    }
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
    DatabaseSettings {
        url,
        max_connections,
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

/// With no `auth.jwt` section: HS256 with issuer/audience `velro`, the secret
/// coming from `VELRO_AUTHZ_JWT_SECRET` (validation fails if it is not set).
fn dev_jwt_defaults() -> JwtConfig {
    JwtConfig {
        issuer: Some("velro".to_owned()),
        audience: Some("velro-api".to_owned()),
        leeway_secs: 30,
        keys: Vec::new(),
        jwks_file: None,
        jwks_reload_min_interval_secs: 10,
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
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const HMAC_KEY: &str = "l2-hmac-key-for-tests-0123456789abcdef";

    fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn config_defaults_with_env_are_valid() {
        let cfg = Config::from_yaml(
            "",
            env(&[
                ("DATABASE_URL", "postgres://u:pw@localhost/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ]),
        )
        .expect("valid");
        assert_eq!(cfg.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(cfg.http_addr.to_string(), "127.0.0.1:8181");
        assert_eq!(cfg.cache.ttl, Duration::from_secs(300));
        assert_eq!(cfg.cache.negative_ttl, Duration::from_secs(30));
        assert!(!cfg.decision.dry_run);
    }

    #[test]
    fn config_metrics_addr_is_off_by_default_and_set_by_file_or_env() {
        let base = [
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ];
        let off = Config::from_yaml("", env(&base)).expect("valid");
        assert_eq!(off.metrics_addr, None);
        let file = Config::from_yaml("metrics_addr: 0.0.0.0:9464\n", env(&base)).expect("valid");
        assert_eq!(
            file.metrics_addr,
            Some("0.0.0.0:9464".parse().expect("addr"))
        );
        let mut with = base.to_vec();
        with.push(("VELRO_AUTHZ_METRICS_ADDR", "127.0.0.1:9465"));
        let over = Config::from_yaml("metrics_addr: 0.0.0.0:9464\n", env(&with)).expect("valid");
        assert_eq!(
            over.metrics_addr,
            Some("127.0.0.1:9465".parse().expect("addr"))
        );
    }

    #[test]
    fn config_metrics_addr_must_be_an_address_of_its_own() {
        let base = [
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ];
        for yaml in ["metrics_addr: nope\n", "metrics_addr: 127.0.0.1:8181\n"] {
            let err = Config::from_yaml(yaml, env(&base)).expect_err(yaml);
            assert!(
                err.to_string()
                    .contains("metrics_addr / VELRO_AUTHZ_METRICS_ADDR"),
                "{err}"
            );
        }
    }

    #[test]
    fn config_reports_every_error_at_once() {
        let yaml = "grpc_addr: nope\ncache:\n  max_facts: 0\ndecision:\n  allow_log_sample: 2\n";
        let err = Config::from_yaml(yaml, env(&[])).expect_err("invalid");
        let text = err.to_string();
        for setting in [
            "grpc_addr",
            "DATABASE_URL",
            "cache.max_facts",
            "decision.allow_log_sample",
            "auth.jwt",
        ] {
            assert!(text.contains(setting), "{setting} missing from {text}");
        }
    }

    #[test]
    fn config_redis_is_off_without_url_and_on_with_redis_url() {
        let base = [
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ];
        let off = Config::from_yaml("", env(&base)).expect("valid");
        assert!(off.redis.is_none());
        assert!(off.rate_limit.is_none());
        let mut with = base.to_vec();
        with.push(("REDIS_URL", "redis://:hunter2@cache:6379/0"));
        with.push(("VELRO_AUTHZ_REDIS_HMAC_KEY", HMAC_KEY));
        let on = Config::from_yaml("redis:\n  key_prefix: \"{v}:\"\n", env(&with)).expect("valid");
        let redis = on.redis.as_ref().expect("redis on");
        assert_eq!(redis.key_prefix, "{v}:");
        assert_eq!(redis.timeout, Duration::from_millis(100));
        assert_eq!(on.l2.ttl, Duration::from_secs(900));
        assert_eq!(on.l2.negative_ttl, Duration::from_secs(30));
        assert!(!format!("{on:?}").contains("hunter2"), "password redacted");
        assert!(on.l2.hmac_key.is_some());
        assert!(!format!("{on:?}").contains(HMAC_KEY), "hmac key redacted");
    }

    #[test]
    fn config_redis_needs_an_hmac_key_unless_values_are_trusted_by_name() {
        let base = [
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ];
        let err = Config::from_yaml("", env(&base)).expect_err("no key");
        assert!(err.to_string().contains("redis.hmac_key"), "{err}");
        let trusted =
            Config::from_yaml("redis:\n  allow_unauthenticated_values: true\n", env(&base))
                .expect("Redis trusted by name");
        assert!(trusted.l2.hmac_key.is_none());
        let short = Config::from_yaml("redis:\n  hmac_key: too-short\n", env(&base))
            .expect_err("short key");
        assert!(short.to_string().contains("at least 32 bytes"), "{short}");
        assert!(!short.to_string().contains("too-short"), "{short}");
        let both = Config::from_yaml(
            &format!("redis:\n  hmac_key: {HMAC_KEY}\n  allow_unauthenticated_values: true\n"),
            env(&base),
        )
        .expect_err("contradiction");
        assert!(both.to_string().contains("contradicts"), "{both}");
        // No Redis, no key needed.
        let no_redis = [base[0], base[1]];
        assert!(Config::from_yaml("", env(&no_redis)).is_ok());
    }

    #[test]
    fn config_redis_hmac_key_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("velro-hmac-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, format!("{HMAC_KEY}\n")).expect("write");
        let file = path.display().to_string();
        let cfg = Config::from_yaml(
            "",
            env(&[
                ("DATABASE_URL", "postgres://x@h/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
                ("VELRO_AUTHZ_REDIS_HMAC_KEY_FILE", &file),
            ]),
        )
        .expect("valid");
        assert_eq!(cfg.l2.hmac_key.expect("key").len(), HMAC_KEY.len());
        std::fs::remove_file(&path).expect("remove");
        let err = Config::from_yaml(
            &format!("redis:\n  hmac_key_file: {file}\n"),
            env(&[
                ("DATABASE_URL", "postgres://x@h/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
            ]),
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("redis.hmac_key_file"), "{err}");
    }

    #[test]
    fn config_remote_redis_without_password_is_refused_unless_allowed() {
        let load = |yaml: &str, url: &str| {
            Config::from_yaml(
                yaml,
                env(&[
                    ("DATABASE_URL", "postgres://x@h/db"),
                    ("VELRO_AUTHZ_JWT_SECRET", SECRET),
                    ("VELRO_AUTHZ_REDIS_HMAC_KEY", HMAC_KEY),
                    ("REDIS_URL", url),
                ]),
            )
        };
        let err = load("", "redis://cache:6379/0").expect_err("refused");
        assert!(err.to_string().contains("no password"), "{err}");
        assert!(err.to_string().contains("rediss://"), "{err}");
        assert!(load("redis:\n  allow_insecure: true\n", "redis://cache:6379").is_ok());
        for ok in [
            "redis://:pw@cache:6379/0",
            "rediss://:pw@cache:6380",
            "redis://127.0.0.1:6379",
            "redis://localhost:6379",
        ] {
            assert!(load("", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn config_admin_is_off_unless_configured_and_needs_a_token_file() {
        let base = [
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ];
        assert!(
            Config::from_yaml("", env(&base))
                .expect("valid")
                .admin
                .is_none()
        );
        let err = Config::from_yaml("admin:\n  addr: 127.0.0.1:9192\n", env(&base))
            .expect_err("no token file");
        assert!(err.to_string().contains("admin.token_file"), "{err}");

        let path = std::env::temp_dir().join(format!("velro-admin-{}", uuid::Uuid::new_v4()));
        let token = "admin-token-0123456789abcdef0123456789";
        std::fs::write(&path, format!("{token}\n")).expect("write");
        let yaml = format!("admin:\n  token_file: {}\n", path.display());
        let cfg = Config::from_yaml(&yaml, env(&base)).expect("valid");
        let admin = cfg.admin.as_ref().expect("on");
        assert_eq!(
            admin.addr.to_string(),
            DEFAULT_ADMIN_ADDR,
            "loopback by default"
        );
        assert!(admin.token.verify(token.as_bytes()), "newline trimmed");
        assert!(!format!("{cfg:?}").contains(token), "token never printed");
        let clash = format!("{yaml}  addr: 127.0.0.1:9191\n");
        let err = Config::from_yaml(&clash, env(&base)).expect_err("the Check port");
        assert!(err.to_string().contains("admin.addr"), "{err}");

        std::fs::write(&path, "short\n").expect("write");
        let err = Config::from_yaml(&yaml, env(&base)).expect_err("short token");
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        assert!(!err.to_string().contains("short\n"), "{err}");
        std::fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn config_redis_breaker_and_rate_limit_errors_name_their_settings() {
        let yaml = "redis:\n  url: http://cache\n  timeout_ms: 0\nbreaker:\n  failures: 0\nrate_limit:\n  per_second: -1\n  burst: 0\n";
        let err = Config::from_yaml(
            yaml,
            env(&[
                ("DATABASE_URL", "postgres://x@h/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ]),
        )
        .expect_err("invalid");
        let text = err.to_string();
        for setting in [
            "redis.url / REDIS_URL",
            "redis.timeout_ms",
            "breaker.failures",
            "rate_limit.per_second",
            "rate_limit.burst",
        ] {
            assert!(text.contains(setting), "{setting} missing from {text}");
        }
    }

    #[test]
    fn config_rate_limit_burst_defaults_to_one_second_of_rate() {
        let cfg = Config::from_yaml(
            "rate_limit:\n  per_second: 20.5\n",
            env(&[
                ("DATABASE_URL", "postgres://x@h/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ]),
        )
        .expect("valid");
        let rl = cfg.rate_limit.expect("on");
        assert_eq!((rl.per_second, rl.burst), (20.5, 21));
    }

    #[test]
    fn config_load_database_needs_no_jwt_secret() {
        let db = Config::load_database(None, env(&[("DATABASE_URL", "postgres://x@h/db")]))
            .expect("migrate needs only the database");
        assert_eq!(db.url, "postgres://x@h/db");
        let err = Config::load_database(None, env(&[])).expect_err("no url");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn config_forward_auth_headers_default_and_override() {
        let env = env(&[
            ("DATABASE_URL", "postgres://u@localhost/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ]);
        let cfg = Config::from_yaml("", &env).expect("valid");
        assert_eq!(cfg.forward_auth, ForwardAuthSettings::default());
        assert_eq!(cfg.forward_auth.original_uri_header, "x-original-uri");
        let yaml = "forward_auth:\n  original_method_header: X-Orig-Method\n  original_uri_header: X-Orig-Uri\n";
        let cfg = Config::from_yaml(yaml, &env).expect("valid");
        assert_eq!(cfg.forward_auth.original_method_header, "x-orig-method");
        assert_eq!(cfg.forward_auth.original_uri_header, "x-orig-uri");
    }

    #[test]
    fn config_forward_auth_bad_header_names_are_reported_by_setting() {
        let yaml =
            "forward_auth:\n  original_method_header: \"X Method\"\n  original_uri_header: \"\"\n";
        let err = Config::from_yaml(yaml, env(&[])).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("forward_auth.original_method_header"),
            "{text}"
        );
        assert!(text.contains("forward_auth.original_uri_header"), "{text}");
    }

    #[test]
    fn config_unknown_field_is_rejected() {
        let err = Config::from_yaml("grpc_adr: 1.2.3.4:1\n", env(&[])).expect_err("invalid");
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }

    #[test]
    fn config_debug_never_prints_secrets() {
        let cfg = Config::from_yaml(
            "",
            env(&[
                ("DATABASE_URL", "postgres://u:hunter2hunter2@localhost/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ]),
        )
        .expect("valid");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2hunter2"), "{debug}");
        assert!(!debug.contains(SECRET), "{debug}");
    }

    proptest::proptest! {
        /// Whatever the file says, loading it answers Ok or a config error.
        #[test]
        fn config_from_arbitrary_yaml_never_panics(text in ".{0,400}") {
            let _ = Config::from_yaml(&text, env(&[("VELRO_AUTHZ_JWT_SECRET", SECRET)]));
        }

        #[test]
        fn config_from_yamlish_text_never_panics(
            key in "(grpc_addr|database|cache|decision|auth|routes_file|listener|log_format)",
            value in "[ -~]{0,60}",
        ) {
            let _ = Config::from_yaml(&format!("{key}: {value}\n"), env(&[]));
        }
    }

    #[test]
    fn redact_url_hides_password_only() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
