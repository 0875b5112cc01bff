//! The Redis client every Redis user shares (the fact cache's shared tier, the
//! rate limiter): connection and reconnection, a timeout on every call, and a
//! circuit breaker, so Redis trouble never reaches the proxy. Each user owns
//! its own keys and scripts; this module knows none of them.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{Config as RedisConfig, ReconnectPolicy, ServerConfig};
use fred::types::scripts::Script;
use fred::types::{FromValue, Value};

use crate::breaker::{Breaker, BreakerConfig, CircuitState};
use crate::metrics::Metrics;

/// Connection settings (`redis.*`).
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    /// `REDIS_URL` (may carry a password; never logged unredacted).
    pub url: String,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// The first host of `url` that is reached over the network with no password
/// (a sentinel setup always counts as reached over the network: the primary it
/// names may be anywhere). Whoever can connect to such a Redis can write to the
/// shared tier; the configuration refuses it unless `redis.allow_insecure`.
/// `None` for a URL with a password, or whose hosts are all loopback (or that
/// does not parse: [`Redis::new`] reports that).
pub fn unauthenticated_remote_host(url: &str) -> Option<String> {
    let config = RedisConfig::from_url(url).ok()?;
    if config.password.as_deref().is_some_and(|p| !p.is_empty()) {
        return None;
    }
    let sentinel = matches!(config.server, ServerConfig::Sentinel { .. });
    config
        .server
        .hosts()
        .into_iter()
        .map(|server| server.host.to_string())
        .find(|host| sentinel || !is_loopback(host))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A Redis failure (timeout, connection, protocol); logged, never sent to a client.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

/// One Redis connection (fred reconnects it), guarded by a breaker.
pub struct Redis {
    /// The fred client.
    client: Client,
    /// Prefix of every key, so sidecar fleets (and tests) can share a server.
    prefix: String,
    /// Per-call timeout; a call past it counts as a failure.
    timeout: Duration,
    /// Opens after consecutive failures: an open circuit means "do without Redis".
    breaker: Breaker,
    /// `dependency_up{dependency="redis"}`.
    metrics: Metrics,
    /// Calls made so far (each one round trip): what a benchmark or test
    /// reads to count the round trips of a decision.
    calls: std::sync::atomic::AtomicU64,
}

impl Redis {
    /// Builds the client. Connecting happens in the background
    /// ([`Redis::spawn_connection`]): start-up never waits for Redis.
    pub fn new(settings: &RedisSettings, metrics: Metrics) -> Result<Arc<Redis>, String> {
        let config = RedisConfig::from_url(&settings.url)
            .map_err(|e| format!("redis.url / REDIS_URL: {}", e.details()))?;
        let timeout = settings.timeout;
        let client = fred::types::Builder::from_config(config)
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.internal_command_timeout = Duration::from_secs(1);
                // A timed-out call is not retried: the breaker decides.
                c.max_command_attempts = 1;
                c.max_command_buffer_len = 10_000;
                // Small commands go out at once, not after the previous
                // one's ACK (Nagle against delayed ACKs: up to 40 ms).
                c.tcp.nodelay = Some(true);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| format!("redis.url / REDIS_URL: {}", e.details()))?;
        metrics.dependency_up.with_label_values(&["redis"]).set(0);
        Ok(Arc::new(Redis {
            client,
            prefix: settings.key_prefix.clone(),
            timeout,
            breaker: Breaker::new("redis", settings.breaker, metrics.clone()),
            metrics,
            calls: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Connects, then probes Redis while the circuit is open so it closes
    /// again without waiting for traffic. Runs until `stop`.
    pub fn spawn_connection(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Reconnects are fred's job from here on.
            let _connection = this.client.connect();
            loop {
                if this.breaker.state() != CircuitState::Closed && this.breaker.allow() {
                    let ping = this.client.ping::<Value>(None);
                    if let Err(e) = this.call(ping).await {
                        tracing::debug!(error = %e, "redis probe failed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => break,
                }
            }
            let _ = this.client.quit().await;
        })
    }

    /// Every (re)connection, as it happens.
    pub fn reconnects(&self) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
        self.client.reconnect_rx()
    }

    /// The breaker's state.
    pub fn circuit(&self) -> CircuitState {
        self.breaker.state()
    }

    /// True while the circuit is closed (Redis answering).
    pub fn up(&self) -> bool {
        self.breaker.state() == CircuitState::Closed
    }

    /// The configured key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full name of key `suffix` under the configured prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The underlying client, for commands (always run them through [`Redis::call`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Redis calls made so far through [`Redis::call`] (one round trip each).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one Redis call with the timeout, feeding the breaker.
    pub async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RedisError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisError(e.details().to_owned())),
            Err(_) => Err(RedisError(format!("timed out after {:?}", self.timeout))),
        };
        if result.is_ok() {
            self.breaker.success();
        } else {
            self.breaker.failure();
        }
        self.metrics
            .dependency_up
            .with_label_values(&["redis"])
            .set(i64::from(self.up()));
        result
    }

    /// Runs `script` (by SHA, loading it on first use) through [`Redis::call`].
    pub async fn eval<T: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<T, RedisError> {
        self.call(script.evalsha_with_reload::<T, _, _>(&self.client, keys, args))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_without_password_is_flagged_only_off_loopback() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://localhost:6379/0",
            "redis://[::1]:6379",
            "redis://:pw@cache:6379",
            "redis://user:pw@cache:6379/0",
            "rediss://:pw@cache.example.com:6380",
            "redis-cluster://:pw@10.0.0.1:7000?node=10.0.0.2:7000",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.2:7000",
        ] {
            assert_eq!(unauthenticated_remote_host(url), None, "{url}");
        }
        for (url, host) in [
            ("redis://cache:6379/0", "cache"),
            ("redis://user@10.1.2.3:6379", "10.1.2.3"),
            ("rediss://cache.example.com:6380", "cache.example.com"),
            (
                "redis-cluster://127.0.0.1:7000?node=10.0.0.2:7000",
                "10.0.0.2",
            ),
            (
                "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=m",
                "127.0.0.1",
            ),
        ] {
            assert_eq!(
                unauthenticated_remote_host(url).as_deref(),
                Some(host),
                "{url}"
            );
        }
    }
}
