//! The `velro-authz` command line: the commands, and what each one does once
//! the configuration is loaded. `main.rs` only parses, loads the configuration
//! and exits with the code a command returns here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::authn::apikey;
use crate::authn::jwt::MintClaims;
use crate::authz::AuthzRequest;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{self, DatabaseSettings, MIGRATOR, Store};
use crate::{demo, telemetry};

/// Authorization sidecar for Envoy ext_authz.
#[derive(Parser)]
#[command(name = "velro-authz", version, about)]
pub struct Cli {
    /// YAML config file (environment variables override it).
    #[arg(long, global = true, env = "VELRO_AUTHZ_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve ext_authz (gRPC) and health/metrics (HTTP). SIGINT/SIGTERM stop
    /// it; SIGHUP rereads the JWKS file.
    Serve,
    /// Apply database migrations.
    Migrate,
    /// Load the demo data set (idempotent) and print dev tokens for it.
    SeedDemo,
    /// Validate the configuration and exit.
    Validate,
    /// Decide one request against the database and print the answer.
    Check {
        /// HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request path (with query string if you like).
        path: String,
        /// Bearer token (sent as `Authorization: Bearer …`).
        #[arg(long)]
        token: Option<String>,
        /// API key (sent as `x-api-key`).
        #[arg(long)]
        api_key: Option<String>,
        /// Print the route, principal, every fact used and where it came from.
        #[arg(long)]
        explain: bool,
    },
    /// Mint a development JWT with the configured signing key.
    Token {
        /// User email or id (the `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Space-separated scopes (`read write delete share manage ops`).
        #[arg(long)]
        scope: Option<String>,
        /// Open a session row and put its id in the `sid` claim.
        #[arg(long)]
        session: bool,
    },
    /// API key management.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
}

#[derive(Subcommand)]
pub enum ApikeyCommand {
    /// Create a key: prints it once, stores only its hash.
    Create {
        /// User email or id owning the key.
        #[arg(long)]
        user: String,
        /// Comma-separated scopes; omitted = no narrowing.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Days until it expires; omitted = never.
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
}

/// Runs every command but `migrate` with the loaded configuration, on a
/// multi-threaded runtime; returns the process exit code.
pub fn run(command: Command, config: Config) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(execute(command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("velro-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `migrate`, which needs only the database settings: a migration Job has no
/// JWT keys, routes or Redis.
pub fn migrate(database: &DatabaseSettings) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(apply_migrations(database));
    match result {
        Ok(()) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("velro-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn apply_migrations(database: &DatabaseSettings) -> anyhow::Result<()> {
    let pool = store::connect(database)?;
    MIGRATOR.run(&pool).await?;
    Ok(())
}

fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("velro-authz: cannot start runtime: {e}"))
        .ok()
}

async fn execute(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve(config).await,
        Command::Validate => {
            println!("configuration OK ({:?})", config.routes_source);
            Ok(ExitCode::SUCCESS)
        }
        // `main` runs `migrate` before the full configuration is loaded; this arm
        // is for a caller that already has it.
        Command::Migrate => {
            apply_migrations(&config.database).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::SeedDemo => {
            let pool = store::connect(&config.database)?;
            MIGRATOR.run(&pool).await?;
            let users = demo::seed(&pool).await?;
            let jwt = &config.jwt;
            println!("demo data loaded. Dev tokens (valid 24 h):");
            for u in users {
                let token = jwt.mint(&MintClaims {
                    subject: u.id.to_string(),
                    session_id: None,
                    scope: None,
                    ttl: Duration::from_secs(86_400),
                    kid: None,
                })?;
                println!("\n{} ({}, {})\n  {}", u.email, u.id, u.status, token);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            method,
            path,
            token,
            api_key,
            explain,
        } => {
            let app = App::build(config, Metrics::new())?;
            let authorization = token.map(|t| format!("Bearer {t}"));
            let req = AuthzRequest {
                method: &method,
                path: &path,
                authorization: authorization.as_deref(),
                api_key: api_key.as_deref(),
                largest_header: authorization
                    .as_ref()
                    .map_or(0, String::len)
                    .max(api_key.as_ref().map_or(0, String::len)),
                // From this machine: no client address to limit.
                client_addr: None,
            };
            let summary = match app.authorizer.explain(&req).await.summary() {
                Ok(s) => s,
                Err(e) => {
                    println!(
                        "{}",
                        serde_json::json!({"error": "cannot decide", "reason": e.reason()})
                    );
                    return Ok(ExitCode::from(3));
                }
            };
            let mut out = serde_json::json!({
                "allowed": summary.allowed,
                "status": summary.status,
                "reason": summary.reason,
                "decision_id": summary.decision_id,
                "headers": summary.headers,
            });
            if explain {
                out["route"] = summary.route.into();
                out["principal"] = summary.principal.into();
                out["role"] = summary.role.into();
                out["facts"] = serde_json::to_value(&summary.facts)?;
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(if summary.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Token {
            user,
            ttl,
            scope,
            session,
        } => {
            let jwt = config.jwt.clone();
            let store = Store::new(store::connect(&config.database)?);
            let user_id = store
                .resolve_user(&user)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {user:?}"))?;
            let session_id = if session {
                let expires = chrono::Utc::now() + chrono::Duration::seconds(ttl as i64);
                Some(store.insert_session(user_id, expires).await?)
            } else {
                None
            };
            let token = jwt.mint(&MintClaims {
                subject: user_id.to_string(),
                session_id,
                scope,
                ttl: Duration::from_secs(ttl),
                kid: None,
            })?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Apikey {
            command:
                ApikeyCommand::Create {
                    user,
                    scopes,
                    expires_in_days,
                },
        } => {
            let store = Store::new(store::connect(&config.database)?);
            let user_id = store
                .resolve_user(&user)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {user:?}"))?;
            let key = apikey::generate();
            let expires = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(d));
            let id = store
                .insert_api_key(
                    user_id,
                    &key.hash,
                    &key.display_prefix,
                    scopes.as_deref(),
                    expires,
                )
                .await?;
            eprintln!("api key {id} for user {user_id} (shown once; only its hash is stored):");
            println!("{}", key.plain);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let telemetry = telemetry::init(config.log_format);
    // Before anything else: from here on SIGHUP rereads the JWKS file instead
    // of ending the process (its default action).
    let mut hangup = Hangup::install();
    let dropped = telemetry.dropped.clone();
    let app = App::build(config, Metrics::new())?;
    let running = app
        .spawn(Some(Arc::new(move || dropped.dropped_lines() as u64)))
        .await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = hangup.next() => {
                // `reload` logs the outcome; an error keeps the previous keys.
                let _ = running.reload();
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    drop(telemetry);
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP, which `serve` answers by rereading the JWKS file.
struct Hangup {
    /// The installed handler; `None` where there is no SIGHUP (or installing
    /// it failed, which is logged).
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Installs the handler (needs a runtime).
    fn install() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .map_err(
                    |e| tracing::warn!(error = %e, "cannot handle SIGHUP; it will end the process"),
                )
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// The next SIGHUP; never, where there is none.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
