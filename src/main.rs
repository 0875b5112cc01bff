//! `velro-authz`: parse the command line, load the configuration, run the
//! command (see `velro_authz::cli`), exit with its code.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser as _;
use velro_authz::cli::{self, Cli, Command};
use velro_authz::config::{Config, ConfigError, EXIT_BAD_CONFIG};

/// With the `jemalloc` feature (the container image), jemalloc serves every
/// allocation (docs/performance.md, "Allocator", has what it changes).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.as_deref();
    let env = |name: &str| std::env::var(name).ok();
    if let Command::Migrate {
        create_reader_role,
        reader_password_file,
    } = cli.command
    {
        // A migration Job has only the database settings: no JWT keys, routes or Redis.
        let reader = match velro_authz::migrate::reader_role(
            create_reader_role,
            reader_password_file,
            env,
        ) {
            Ok(reader) => reader,
            Err(e) => {
                eprintln!("velro-authz: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG as u8);
            }
        };
        return match Config::load_database(path, env) {
            Ok(database) => cli::migrate(&database, reader),
            Err(e) => bad_config(e),
        };
    }
    if let Command::IdentityJwks = cli.command {
        // The applications' public key: only the identity_token section matters.
        return match Config::load_identity(path) {
            Ok(signer) => cli::identity_jwks(signer.as_ref()),
            Err(e) => bad_config(e),
        };
    }
    // Clients of a running sidecar need where the admin service is and its
    // token, not the database, keys or routes.
    let (addr, token_file, command) = match cli.command.into_admin_call() {
        Ok(call) => call,
        Err(command) => {
            return match Config::load(path, env) {
                Ok(config) => cli::run(*command, config, path.map(Path::to_path_buf)),
                Err(e) => bad_config(e),
            };
        }
    };
    match Config::load_admin_client(path, env) {
        Ok(settings) => cli::admin(addr, token_file, command, settings),
        Err(e) => bad_config(e),
    }
}

/// Reports a configuration error; exits 64 so that a bad config is told apart
/// from a failure at run time.
fn bad_config(e: ConfigError) -> ExitCode {
    eprintln!("velro-authz: {e}");
    ExitCode::from(EXIT_BAD_CONFIG as u8)
}
