//! What `velro-authz migrate` does to a database: the embedded migrations and,
//! on request, the least-privilege role the sidecar runs as (the reader role).
//!
//! The sidecar only reads: a SELECT on the eight authorization tables, LISTEN,
//! and its heartbeat (`pg_notify` and `pg_current_wal_insert_lsn()`, which
//! every role may call). Running it as the migration role, which owns the
//! tables, would let anyone holding its `DATABASE_URL` rewrite every fact a
//! decision rests on. The reader role is made to hold exactly what it needs:
//! LOGIN, CONNECT on this database, USAGE on the schema the tables are in and
//! SELECT on those eight tables; no other attribute, no other table.
//! Re-running gives the same grants (what it held on the schema's tables
//! besides is taken back) and no error.
//!
//! A password never travels to the server in the clear: the SCRAM-SHA-256
//! verifier is computed here and sent in its place (what `psql`'s `\password`
//! does), so no statement log can hold it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

use sqlx::{PgPool, Row};

use crate::config::read_secret_file;
use crate::store::MIGRATOR;

/// The tables the sidecar reads (src/store.rs), and nothing else.
pub const READ_TABLES: [&str; 8] = [
    "users",
    "teams",
    "team_members",
    "projects",
    "generations",
    "shares",
    "api_keys",
    "sessions",
];

/// PBKDF2 rounds of a SCRAM-SHA-256 verifier (Postgres' own default).
const SCRAM_ITERATIONS: u32 = 4096;

/// The role to create or bring in line.
pub struct ReaderRole {
    /// Role name: lower-case letters, digits and `_`, not starting with `pg_`.
    pub name: String,
    /// Its password; `None` leaves a new role without one (trust or
    /// certificate authentication) and an existing role's as it is.
    pub password: Option<Vec<u8>>,
}

impl std::fmt::Debug for ReaderRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderRole")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why the reader role could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The name is not one we accept.
    #[error(
        "--create-reader-role: {0:?} is not a role name we create (lower-case letters, digits and _, at most 63, not starting with a digit or pg_)"
    )]
    BadName(String),
    /// The password cannot be used.
    #[error("reader password: {0}")]
    BadPassword(&'static str),
    /// The role exists with more power than a reader may have.
    #[error(
        "role {role:?} exists with {attribute}: not a least-privilege reader; drop it or choose another name"
    )]
    Privileged {
        /// The role.
        role: String,
        /// The attribute it has.
        attribute: &'static str,
    },
    /// After the grants, the role can still change a table (through a grant to
    /// PUBLIC or membership in another role).
    #[error(
        "role {role:?} can still {privilege} table {table} (a grant to PUBLIC or to a role it is a member of): revoke that first"
    )]
    StillWrites {
        /// The role.
        role: String,
        /// The privilege it kept.
        privilege: &'static str,
        /// The table.
        table: &'static str,
    },
    /// Postgres refused.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Applies the embedded migrations, then creates or updates `reader` if given.
pub async fn run(pool: &PgPool, reader: Option<&ReaderRole>) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    if let Some(reader) = reader {
        ensure_reader_role(pool, reader).await?;
    }
    Ok(())
}

/// The reader role `migrate` was asked for: its name checked, its password
/// read from `password_file`, else from `VELRO_AUTHZ_READER_PASSWORD`
/// (through `env`). Errors name the setting.
pub fn reader_role(
    name: Option<String>,
    password_file: Option<PathBuf>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ReaderRole>, String> {
    let Some(name) = name else {
        return Ok(None);
    };
    check_name(&name).map_err(|e| e.to_string())?;
    let password = match password_file {
        Some(path) => Some(read_secret_file(&path).map_err(|e| {
            format!(
                "--reader-password-file (VELRO_AUTHZ_READER_PASSWORD_FILE) {}: {e}",
                path.display()
            )
        })?),
        None => env("VELRO_AUTHZ_READER_PASSWORD")
            .filter(|p| !p.is_empty())
            .map(String::into_bytes),
    };
    if let Some(p) = &password {
        let folded: String = String::from_utf8_lossy(p)
            .to_lowercase()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | '.'))
            .collect();
        if p.len() < 16
            || ["changeme", "replaceme", "placeholder"]
                .iter()
                .any(|w| folded.contains(w))
        {
            return Err("--reader-password-file / VELRO_AUTHZ_READER_PASSWORD: shorter than 16 bytes or a placeholder (CHANGE-ME…); generate one, e.g. `head -c 32 /dev/urandom | base64`".to_owned());
        }
        scram_verifier(p, b"check")
            .map_err(|e| format!("--reader-password-file / VELRO_AUTHZ_READER_PASSWORD: {e}"))?;
    }
    Ok(Some(ReaderRole { name, password }))
}

/// Checks a role name: the shape is checked here rather than quoted through,
/// so the name reads the same in SQL, in `pg_hba.conf` and in a URL.
pub fn check_name(name: &str) -> Result<(), RoleError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with("pg_")
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RoleError::BadName(name.to_owned()))
    }
}

/// Creates the reader role, or brings an existing one in line, with exactly
/// the grants the sidecar needs; one transaction.
pub async fn ensure_reader_role(pool: &PgPool, role: &ReaderRole) -> Result<(), RoleError> {
    check_name(&role.name)?;
    let verifier = match &role.password {
        Some(p) => Some(scram_verifier(p, &rand::random::<[u8; 16]>())?),
        None => None,
    };
    let name = quote_ident(&role.name);
    let mut tx = pool.begin().await?;
    let existing = sqlx::query(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(&role.name)
    .fetch_optional(&mut *tx)
    .await?;
    let password = verifier
        .as_deref()
        .map(|v| format!(" PASSWORD '{v}'"))
        .unwrap_or_default();
    let statement = match existing {
        None => format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS{password}"
        ),
        Some(row) => {
            let attributes = [
                "SUPERUSER",
                "CREATEROLE",
                "CREATEDB",
                "REPLICATION",
                "BYPASSRLS",
            ];
            for (i, attribute) in attributes.into_iter().enumerate() {
                if row.try_get::<bool, _>(i)? {
                    return Err(RoleError::Privileged {
                        role: role.name.clone(),
                        attribute,
                    });
                }
            }
            format!("ALTER ROLE {name} LOGIN{password}")
        }
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut *tx)
        .await?;

    let row = sqlx::query("SELECT current_database()::text, current_schema()::text")
        .fetch_one(&mut *tx)
        .await?;
    let database = quote_ident(&row.try_get::<String, _>(0)?);
    let schema = quote_ident(&row.try_get::<String, _>(1)?);
    let tables = READ_TABLES
        .iter()
        .map(|t| format!("{schema}.{}", quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ");
    // Take back whatever the role held on the schema's tables and sequences,
    // then grant exactly what the sidecar uses.
    let grants = format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {name}; \
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {name}; \
         GRANT CONNECT ON DATABASE {database} TO {name}; \
         GRANT USAGE ON SCHEMA {schema} TO {name}; \
         GRANT SELECT ON TABLE {tables} TO {name};"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(grants))
        .execute(&mut *tx)
        .await?;

    // What the grants cannot take back: privileges through PUBLIC or another
    // role. Refuse to call such a role a reader.
    for table in READ_TABLES {
        for privilege in ["INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
            let can: bool = sqlx::query_scalar(
                "SELECT has_table_privilege($1, format('%I.%I', current_schema(), $2::text), $3)",
            )
            .bind(&role.name)
            .bind(table)
            .bind(privilege)
            .fetch_one(&mut *tx)
            .await?;
            if can {
                return Err(RoleError::StillWrites {
                    role: role.name.clone(),
                    privilege,
                    table,
                });
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// A Postgres SCRAM-SHA-256 verifier (`rolpassword`) for `password`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802,
/// RFC 7677). Passwords are taken as ASCII only: SASLprep, which clients
/// apply before hashing, leaves printable ASCII as it is.
pub fn scram_verifier(password: &[u8], salt: &[u8]) -> Result<String, RoleError> {
    if password.is_empty() {
        return Err(RoleError::BadPassword("empty"));
    }
    if !password.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(RoleError::BadPassword(
            "printable ASCII without spaces only (e.g. `head -c 32 /dev/urandom | base64`)",
        ));
    }
    let salted = pbkdf2_sha256(password, salt, SCRAM_ITERATIONS)?;
    let client_key = hmac_sha256(&salted, b"Client Key")?;
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    ))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<[u8; 32], RoleError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| RoleError::BadPassword("cannot key HMAC"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output: one block, so
/// U1 = HMAC(P, salt || 1), Ui = HMAC(P, Ui-1), result = U1 ^ … ^ Uc.
fn pbkdf2_sha256(password: &[u8], salt: &[u8], rounds: u32) -> Result<[u8; 32], RoleError> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &first)?;
    let mut out = u;
    for _ in 1..rounds {
        u = hmac_sha256(password, &u)?;
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    Ok(out)
}

/// `"name"` with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (user `user`, password `pencil`): the keys
    /// of this verifier reproduce its ServerSignature
    /// (`6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=`) and ClientProof
    /// (`dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=`); checked against
    /// Python's hashlib/hmac when this test was written.
    #[test]
    fn scram_verifier_matches_rfc7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        assert_eq!(
            scram_verifier(b"pencil", &salt).expect("verifier"),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn scram_verifier_refuses_empty_and_non_ascii_passwords() {
        for bad in [&b""[..], "pässword".as_bytes(), b"with space", b"new\nline"] {
            assert!(scram_verifier(bad, b"salt").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reader_role_errors_name_the_setting() {
        let none = |_: &str| None;
        assert!(matches!(reader_role(None, None, none), Ok(None)));
        let e = reader_role(Some("Bad".into()), None, none).expect_err("bad name");
        assert!(e.contains("--create-reader-role"), "{e}");
        let e = reader_role(
            Some("reader".into()),
            Some(PathBuf::from("/nonexistent/velro-reader-password")),
            none,
        )
        .expect_err("missing file");
        assert!(e.contains("--reader-password-file"), "{e}");
        let env = |name: &str| (name == "VELRO_AUTHZ_READER_PASSWORD").then(|| "has space".into());
        let e = reader_role(Some("reader".into()), None, env).expect_err("bad password");
        assert!(
            e.contains("VELRO_AUTHZ_READER_PASSWORD") && !e.contains("has space"),
            "{e}"
        );
        let env = |name: &str| {
            (name == "VELRO_AUTHZ_READER_PASSWORD")
                .then(|| "CHANGE-ME-to-random-printable-ascii".into())
        };
        let e = reader_role(Some("reader".into()), None, env).expect_err("placeholder");
        assert!(e.contains("placeholder"), "{e}");
        let env = |name: &str| {
            (name == "VELRO_AUTHZ_READER_PASSWORD").then(|| "s3cret-pw-0123456789".into())
        };
        let role = reader_role(Some("reader".into()), None, env)
            .expect("ok")
            .expect("a role");
        assert_eq!(role.password.as_deref(), Some(&b"s3cret-pw-0123456789"[..]));
        assert!(!format!("{role:?}").contains("s3cret"));
    }

    #[test]
    fn check_name_accepts_plain_names_only() {
        for good in ["velro_reader", "r", "reader2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "Reader",
            "pg_reader",
            "1reader",
            "read-er",
            "a\"b",
            "x; DROP TABLE users",
            long.as_str(),
        ] {
            assert!(
                matches!(check_name(bad), Err(RoleError::BadName(_))),
                "{bad}"
            );
        }
    }
}
