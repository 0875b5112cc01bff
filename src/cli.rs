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
use crate::config::{AdminClientSettings, Config, read_secret_file};
use crate::identity::IdentitySigner;
use crate::metrics::Metrics;
use crate::migrate::{self, ReaderRole};
use crate::reload::ConfigSource;
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
    /// it; SIGHUP reloads the configuration (routes, JWT keys and the JWKS
    /// file, dry run, log sampling), keeping the running one if the new one
    /// is not valid in full.
    Serve,
    /// Apply database migrations; optionally create the sidecar's
    /// least-privilege role.
    Migrate {
        /// Also create, or bring in line, a role NAME with only what the
        /// sidecar needs (LOGIN, CONNECT, USAGE on the schema, SELECT on the
        /// authorization tables); re-running gives the same grants. Serve with
        /// it in `DATABASE_URL`.
        #[arg(long, value_name = "NAME")]
        create_reader_role: Option<String>,
        /// File with that role's password (trailing newline ignored); else
        /// `VELRO_AUTHZ_READER_PASSWORD`; else a new role gets no password
        /// (trust or certificate authentication) and an existing one keeps
        /// its own. Sent to Postgres only as a SCRAM verifier.
        #[arg(
            long,
            value_name = "FILE",
            env = "VELRO_AUTHZ_READER_PASSWORD_FILE",
            requires = "create_reader_role"
        )]
        reader_password_file: Option<PathBuf>,
    },
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
    /// Explain a decision in a running sidecar: a past one by its id
    /// (`--decision`), or a request decided now. The same as `admin explain`.
    Explain {
        /// The admin address (default: `admin.addr`, else 127.0.0.1:9192).
        #[arg(long)]
        addr: Option<String>,
        /// File holding the admin token (default: `admin.token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// What to explain.
        #[command(flatten)]
        what: ExplainArgs,
    },
    /// Print the public key of the signed identity header (`x-velro-identity`)
    /// as a JWKS, for the applications that verify it. Needs only the
    /// `identity_token` section of the config.
    IdentityJwks,
    /// Call a running sidecar's admin service (`admin.addr`), with the token
    /// from `admin.token_file`. Needs only the `admin` section of the config.
    Admin {
        /// The admin address (default: `admin.addr`, else 127.0.0.1:9192).
        #[arg(long)]
        addr: Option<String>,
        /// File holding the admin token (default: `admin.token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// What to ask.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// What `explain` explains: a past decision by id, or a request now.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// A past decision's id (`x-velro-decision-id`, the decision log's
    /// `decision_id`), as it was decided then.
    #[arg(long, conflicts_with_all = ["path", "token", "api_key"])]
    pub decision: Option<String>,
    /// HTTP method of the request to decide now.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path of the request to decide now.
    #[arg(required_unless_present = "decision")]
    pub path: Option<String>,
    /// The request's bearer token (sent as `Authorization: Bearer …`).
    #[arg(long)]
    pub token: Option<String>,
    /// The request's API key (sent as `x-api-key`).
    #[arg(long)]
    pub api_key: Option<String>,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Explain a decision in the running sidecar and print it as JSON: a
    /// request decided now (not enforced), or a past one by `--decision`;
    /// the route, principal and every fact used, with where each came from.
    Explain(ExplainArgs),
    /// Cache statistics.
    CacheStats,
    /// Flush this sidecar's caches and void the shared Redis tier for every sidecar.
    Flush,
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

/// Runs every command but `migrate` with the loaded configuration (read
/// from `config_path`, if any, which `serve` rereads on SIGHUP), on a
/// multi-threaded runtime; returns the process exit code.
pub fn run(command: Command, config: Config, config_path: Option<PathBuf>) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(execute(command, config, config_path)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("velro-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `migrate`, which needs only the database settings: a migration Job has no
/// JWT keys, routes or Redis. `reader`: the role to create as well.
pub fn migrate(database: &DatabaseSettings, reader: Option<ReaderRole>) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(apply_migrations(database, reader.as_ref()));
    match result {
        Ok(()) => {
            println!("migrations applied");
            if let Some(reader) = reader {
                println!("reader role {} has exactly its grants", reader.name);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("velro-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `identity-jwks`: prints the identity token's public key set; exit 64 when
/// no identity token is configured.
pub fn identity_jwks(signer: Option<&IdentitySigner>) -> ExitCode {
    match signer {
        Some(signer) => {
            println!("{}", signer.jwks());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "velro-authz: identity_token.key_file is not set: no identity token is signed, \
                 so there is no key to publish"
            );
            ExitCode::from(crate::config::EXIT_BAD_CONFIG as u8)
        }
    }
}

/// `admin …`: a client of a running sidecar's admin service. `settings` come
/// from the `admin` section; `--addr` / `--token-file` override them.
pub fn admin(
    addr: Option<String>,
    token_file: Option<PathBuf>,
    command: AdminCommand,
    settings: AdminClientSettings,
) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let settings = AdminClientSettings {
        addr: addr.unwrap_or(settings.addr),
        token_file: token_file.or(settings.token_file),
    };
    match runtime.block_on(call_admin(&settings, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("velro-authz: admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn call_admin(settings: &AdminClientSettings, command: AdminCommand) -> anyhow::Result<()> {
    use crate::grpc::admin_pb::{self, admin_client::AdminClient};
    let Some(token_file) = &settings.token_file else {
        anyhow::bail!(
            "no token file: pass --token-file or set admin.token_file / VELRO_AUTHZ_ADMIN_TOKEN_FILE"
        );
    };
    let addr = &settings.addr;
    let token = read_secret_file(token_file)
        .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", token_file.display()))?;
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", String::from_utf8_lossy(&token))
            .parse()
            .map_err(|_| {
                anyhow::anyhow!(
                    "--token-file {}: not a printable token",
                    token_file.display()
                )
            })?;
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let mut client = AdminClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    let out = match command {
        AdminCommand::Explain(what) => {
            let request = match what.decision {
                Some(decision_id) => admin_pb::ExplainRequest {
                    decision_id,
                    ..Default::default()
                },
                None => {
                    let mut headers = std::collections::HashMap::new();
                    if let Some(t) = what.token {
                        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
                    }
                    if let Some(k) = what.api_key {
                        headers.insert("x-api-key".to_owned(), k);
                    }
                    admin_pb::ExplainRequest {
                        method: what.method,
                        path: what.path.unwrap_or_default(),
                        headers,
                        decision_id: String::new(),
                    }
                }
            };
            let r = client.explain(request).await.map_err(status)?.into_inner();
            serde_json::from_str(&r.json)
                .map_err(|e| anyhow::anyhow!("the sidecar's explanation is not JSON: {e}"))?
        }
        AdminCommand::CacheStats => {
            let r = client
                .cache_stats(admin_pb::CacheStatsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            serde_json::json!({
                "fact_entries": r.fact_entries,
                "credential_entries": r.credential_entries,
                "epoch": r.epoch,
                "listener_connected": r.listener_connected,
                "redis_circuit": r.redis_circuit,
                "redis_trusted": r.redis_trusted,
                "postgres_circuit": r.postgres_circuit,
                "rate_limited_principals": r.rate_limited_principals,
            })
        }
        AdminCommand::Flush => {
            let r = client
                .flush(admin_pb::FlushRequest {})
                .await
                .map_err(status)?
                .into_inner();
            serde_json::json!({ "epoch": r.epoch })
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn apply_migrations(
    database: &DatabaseSettings,
    reader: Option<&ReaderRole>,
) -> anyhow::Result<()> {
    let pool = store::connect(database)?;
    migrate::run(&pool, reader).await
}

fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("velro-authz: cannot start runtime: {e}"))
        .ok()
}

impl Command {
    /// A call to a running sidecar's admin service (`admin …`, `explain`):
    /// where to, with which token file, and what; any other command back.
    pub fn into_admin_call(
        self,
    ) -> Result<(Option<String>, Option<PathBuf>, AdminCommand), Box<Command>> {
        match self {
            Command::Admin {
                addr,
                token_file,
                command,
            } => Ok((addr, token_file, command)),
            Command::Explain {
                addr,
                token_file,
                what,
            } => Ok((addr, token_file, AdminCommand::Explain(what))),
            other => Err(Box::new(other)),
        }
    }
}

async fn execute(
    command: Command,
    config: Config,
    config_path: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let (addr, token_file, admin_command) = match command.into_admin_call() {
        Ok(call) => call,
        Err(other) => return execute_local(*other, config, config_path).await,
    };
    // `main` calls [`admin`] before the full configuration is loaded; this
    // is for a caller that already has it.
    let configured = config.admin.as_ref();
    let settings = AdminClientSettings {
        addr: addr
            .or_else(|| configured.map(|a| a.addr.to_string()))
            .unwrap_or_else(|| crate::config::DEFAULT_ADMIN_ADDR.to_owned()),
        token_file: token_file.or_else(|| configured.map(|a| a.token_file.clone())),
    };
    call_admin(&settings, admin_command).await?;
    Ok(ExitCode::SUCCESS)
}

/// The commands that run here rather than ask a running sidecar.
async fn execute_local(
    command: Command,
    config: Config,
    config_path: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve(config, config_path).await,
        Command::Validate => {
            println!("configuration OK ({:?})", config.routes_source);
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin { .. } | Command::Explain { .. } => {
            anyhow::bail!("admin commands ask a running sidecar (see `execute`)")
        }
        // `main` calls [`identity_jwks`] before the full configuration is
        // loaded; this arm is for a caller that already has it.
        Command::IdentityJwks => Ok(identity_jwks(config.identity_token.as_deref())),
        // `main` runs `migrate` before the full configuration is loaded; this arm
        // is for a caller that already has it.
        Command::Migrate {
            create_reader_role,
            reader_password_file,
        } => {
            let reader = migrate::reader_role(create_reader_role, reader_password_file, |name| {
                std::env::var(name).ok()
            })
            .map_err(anyhow::Error::msg)?;
            apply_migrations(&config.database, reader.as_ref()).await?;
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
                trace_headers: None,
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
            let out = if explain {
                summary.to_json()
            } else {
                serde_json::json!({
                    "allowed": summary.allowed,
                    "status": summary.status,
                    "reason": summary.reason,
                    "decision_id": summary.decision_id,
                    "headers": summary.headers,
                })
            };
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

async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let telemetry = telemetry::init(config.log_format);
    // Before anything else: from here on SIGHUP reloads the configuration
    // instead of ending the process (its default action).
    let mut hangup = Hangup::install();
    let dropped = telemetry.dropped.clone();
    let app = App::build(config, Metrics::new())?.reload_from(ConfigSource::process(config_path));
    let running = app
        .spawn(Some(Arc::new(move || dropped.dropped_lines() as u64)))
        .await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = hangup.next() => {
                // Files are read off the async workers; `reload` logs and
                // counts the outcome, and an error keeps the running config.
                let reloader = running.reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload("signal")).await;
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    drop(telemetry);
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP, which `serve` answers by reloading the configuration.
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
