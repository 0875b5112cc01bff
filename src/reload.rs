//! Configuration reload without a restart: SIGHUP (and `reload.watch_secs`)
//! reread the config file, the route table, the JWT keys and the JWKS file.
//!
//! The new configuration is read and validated in full first, exactly as at
//! start-up. Then either all of what a reload may change goes into force at
//! once — routes, JWT keys (a fresh verified-token cache with them), dry run
//! and log sampling, one [`Snapshot`] swapped in — or nothing does, and the
//! running configuration stays: when the new one has any error, or changes a
//! setting only a restart applies ([`Config::restart_only_changes`]:
//! listeners, Postgres, Redis, caches, deadlines, rate limits). Either way
//! the outcome is logged once and counted in
//! `velro_authz_config_reloads_total{result}`. A decision under way finishes
//! on the snapshot it started with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::authn::Authenticator;
use crate::authz::Authorizer;
pub use crate::authz::Snapshot;
use crate::config::{Config, ConfigError};
use crate::facts::FactSource;
use crate::metrics::Metrics;

/// An environment lookup: a variable's value, if set.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where a reload reads the configuration: the file `serve` was started
/// with and the process environment (which does not change).
#[derive(Clone)]
pub struct ConfigSource {
    /// `--config` / `VELRO_AUTHZ_CONFIG`; `None` = defaults and environment.
    pub path: Option<PathBuf>,
    /// Environment lookup (the process environment, or a test's map).
    pub env: EnvLookup,
}

impl ConfigSource {
    /// `path` and the process environment.
    pub fn process(path: Option<PathBuf>) -> ConfigSource {
        ConfigSource {
            path,
            env: Arc::new(|name| std::env::var(name).ok()),
        }
    }

    /// Reads and validates the configuration, as at start-up.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), |name| (self.env)(name))
    }
}

/// Why a reload left the running configuration in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is not valid (every problem, each naming its setting).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// It changes settings that only a restart applies (named).
    #[error("these settings change only with a restart: {}", .0.join(", "))]
    RestartRequired(Vec<&'static str>),
}

impl ReloadError {
    /// The `result` label of `velro_authz_config_reloads_total`.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) => "error",
            ReloadError::RestartRequired(_) => "restart_required",
        }
    }
}

/// What a reload put into force.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloaded {
    /// Where the routes came from.
    pub routes: String,
    /// `decision.dry_run` now.
    pub dry_run: bool,
    /// `decision.allow_log_sample` now.
    pub allow_log_sample: f64,
}

/// Reloads the configuration of one authorizer.
pub struct Reloader<S> {
    /// Whose snapshot is replaced.
    authorizer: Arc<Authorizer<S>>,
    /// Where the configuration is read.
    source: ConfigSource,
    /// The configuration in force: what a new one is compared with. The lock
    /// also keeps two reloads (a signal and a file watch) from interleaving.
    current: Mutex<Config>,
    /// `velro_authz_config_reloads_total`.
    metrics: Metrics,
}

impl<S: FactSource> Reloader<S> {
    /// For `authorizer`, running `current`, reading `source` on reload.
    pub fn new(
        authorizer: Arc<Authorizer<S>>,
        current: Config,
        source: ConfigSource,
        metrics: Metrics,
    ) -> Reloader<S> {
        Reloader {
            authorizer,
            source,
            current: Mutex::new(current),
            metrics,
        }
    }

    /// Rereads the configuration and puts it into force, or keeps the
    /// running one (logged and counted either way). `trigger` names the
    /// cause in the log (`signal`, `watch`, `admin`).
    pub fn reload(&self, trigger: &'static str) -> Result<Reloaded, ReloadError> {
        self.install(self.source.load(), trigger)
    }

    /// Puts `next` into force if it is valid and changes nothing that needs a
    /// restart; otherwise keeps the running configuration. Logged and counted.
    pub fn install(
        &self,
        next: Result<Config, ConfigError>,
        trigger: &'static str,
    ) -> Result<Reloaded, ReloadError> {
        let result = self.try_install(next);
        let label = match &result {
            Ok(_) => "applied",
            Err(e) => e.result(),
        };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(r) => tracing::info!(
                trigger,
                routes = %r.routes,
                dry_run = r.dry_run,
                allow_log_sample = r.allow_log_sample,
                "configuration reloaded"
            ),
            Err(ReloadError::Invalid(e)) => tracing::warn!(
                trigger,
                problems = ?e.0,
                "configuration reload failed; the running configuration stays"
            ),
            Err(ReloadError::RestartRequired(names)) => tracing::warn!(
                trigger,
                settings = ?names,
                "configuration reload refused: these settings change only with a restart; the running configuration stays"
            ),
        }
        result
    }

    fn try_install(&self, next: Result<Config, ConfigError>) -> Result<Reloaded, ReloadError> {
        let next = next?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let restart = current.restart_only_changes(&next);
        if !restart.is_empty() {
            return Err(ReloadError::RestartRequired(restart));
        }
        self.authorizer.swap(snapshot(&next));
        let reloaded = Reloaded {
            routes: next.routes_source.clone(),
            dry_run: next.decision.dry_run,
            allow_log_sample: next.decision.allow_log_sample,
        };
        *current = next;
        Ok(reloaded)
    }

    /// The configuration in force.
    pub fn current(&self) -> Config {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What `config` puts into force for decisions: its routes, its JWT keys
/// (with an empty verified-token cache) and its decision settings.
pub fn snapshot(config: &Config) -> Snapshot {
    Snapshot {
        routes: config.routes.clone(),
        authn: Authenticator::new(config.jwt.clone(), config.max_credentials),
        settings: config.decision,
    }
}

#[cfg(test)]
mod tests;
