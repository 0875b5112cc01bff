//! The configuration file as written: every field optional, so defaults
//! apply; unknown fields are errors. `config.rs` turns it into settings.

use std::path::PathBuf;

use serde::Deserialize;

use crate::authn::jwt::JwtConfig;
use crate::telemetry::LogFormat;

/// The YAML file as written; every field optional so defaults apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) grpc_addr: Option<String>,
    pub(super) http_addr: Option<String>,
    pub(super) metrics_addr: Option<String>,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    #[serde(default)]
    pub(super) database: FileDatabase,
    #[serde(default)]
    pub(super) cache: FileCache,
    #[serde(default)]
    pub(super) decision: FileDecision,
    #[serde(default)]
    pub(super) auth: FileAuth,
    pub(super) routes_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) listener: FileListener,
    #[serde(default)]
    pub(super) freshness: FileFreshness,
    pub(super) log_format: Option<LogFormat>,
    #[serde(default)]
    pub(super) redis: FileRedis,
    #[serde(default)]
    pub(super) breaker: FileBreaker,
    #[serde(default)]
    pub(super) rate_limit: FileRateLimit,
    #[serde(default)]
    pub(super) forward_auth: FileForwardAuth,
    #[serde(default)]
    pub(super) explain: FileExplain,
    #[serde(default)]
    pub(super) tracing: FileTracing,
    #[serde(default)]
    pub(super) identity_token: FileIdentityToken,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileExplain {
    pub(super) recent_decisions: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTracing {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) sample_ratio: Option<f64>,
    pub(super) service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIdentityToken {
    pub(super) key_file: Option<PathBuf>,
    pub(super) audience: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedis {
    pub(super) url: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) ttl_secs: Option<u64>,
    pub(super) negative_ttl_secs: Option<u64>,
    pub(super) hmac_key: Option<String>,
    pub(super) hmac_key_file: Option<PathBuf>,
    pub(super) allow_unauthenticated_values: Option<bool>,
    pub(super) allow_insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBreaker {
    pub(super) failures: Option<u32>,
    pub(super) open_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRateLimit {
    pub(super) per_second: Option<f64>,
    pub(super) burst: Option<u32>,
    pub(super) lease: Option<u32>,
    pub(super) failed_auth_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileForwardAuth {
    pub(super) original_method_header: Option<String>,
    pub(super) original_uri_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDatabase {
    pub(super) url: Option<String>,
    pub(super) max_connections: Option<u32>,
    pub(super) min_connections: Option<u32>,
    pub(super) acquire_timeout_ms: Option<u64>,
    pub(super) statement_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCache {
    pub(super) max_facts: Option<u64>,
    pub(super) max_decisions: Option<u64>,
    pub(super) ttl_secs: Option<u64>,
    pub(super) negative_ttl_secs: Option<u64>,
    pub(super) max_credentials: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDecision {
    pub(super) deadline_ms: Option<u64>,
    pub(super) dry_run: Option<bool>,
    pub(super) allow_log_sample: Option<f64>,
    pub(super) max_in_flight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    pub(super) jwt: Option<JwtConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFreshness {
    pub(super) max_silence_ms: Option<u64>,
    pub(super) serve_stale_on_outage_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListener {
    pub(super) reconnect_min_ms: Option<u64>,
    pub(super) reconnect_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    pub(super) addr: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}
