//! The least-privilege reader role (`velro-authz migrate --create-reader-role`):
//! a sidecar running as it decides, hears invalidations and proves its feed
//! with heartbeats; the role cannot change a table; creating it again gives
//! the same grants. Roles are global to the Postgres cluster, so each test
//! makes one of its own name and drops it at the end.

use std::time::Duration;

use sqlx::PgPool;
use velro_authz::migrate::{self, READ_TABLES, ReaderRole, RoleError};
use velro_authz::store::{self, DatabaseSettings};

use super::support::{attach, config, demo::*};

/// A guard against a hang, not a timing assertion.
const WITHIN: Duration = Duration::from_secs(10);

/// A role name of this test's own.
fn role_name() -> String {
    format!("velro_reader_{}", uuid::Uuid::new_v4().simple())
}

/// A pool on the same database as `pool`, logged in as `role`, made the way
/// `serve` makes its own (`store::connect`).
fn pool_as(pool: &PgPool, role: &str) -> PgPool {
    let o = pool.connect_options();
    let url = format!(
        "postgres://{role}@{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().expect("test database name")
    );
    store::connect(&DatabaseSettings {
        url,
        max_connections: 8,
        min_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    })
    .expect("reader pool")
}

async fn drop_role(pool: &PgPool, role: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""
    )))
    .execute(pool)
    .await
    .expect("drop role");
}

/// The SQLSTATE `sql` fails with as `pool`'s role, `None` if it succeeds.
async fn sqlstate(pool: &PgPool, sql: &str) -> Option<String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .err()
        .map(|e| {
            e.as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.into_owned())
                .unwrap_or_else(|| format!("not a database error: {e}"))
        })
}

#[sqlx::test(migrations = false)]
async fn reader_role_sidecar_decides_hears_changes_and_cannot_write(pool: PgPool) {
    let name = role_name();
    let reader = ReaderRole {
        name: name.clone(),
        password: None,
    };
    migrate::run(&pool, Some(&reader)).await.expect("migrate");
    velro_authz::demo::seed(&pool).await.expect("seed");
    // A grant too many (an operator's mistake) is taken back by a re-run.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT INSERT, DELETE ON users TO \"{name}\"; GRANT SELECT ON _sqlx_migrations TO \"{name}\""
    )))
    .execute(&pool)
    .await
    .expect("extra grant");
    migrate::run(&pool, Some(&reader))
        .await
        .expect("migrate again");

    let as_reader = pool_as(&pool, &name);
    let h = attach(as_reader.clone(), config("")).await;
    assert!(*h.running.listener.borrow(), "LISTEN up and proven");
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    assert_eq!(h.check_as(BOB, "GET", &path).await.status, 200);
    assert_eq!(h.check_as(ERIN, "GET", &path).await.status, 404);

    // A change made by the application (the owner here) reaches the sidecar.
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(BOB.parse::<uuid::Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("revoke");
    h.eventually(WITHIN, || async {
        h.check_as(BOB, "GET", &path).await.status == 404
    })
    .await;
    // Heartbeats come back (pg_notify and pg_current_wal_insert_lsn() are
    // open to the role).
    let beats = h.running.metrics.feed_heartbeat_seconds.get_sample_count();
    h.eventually(WITHIN, || async {
        h.running.metrics.feed_heartbeat_seconds.get_sample_count() > beats
    })
    .await;

    // Read only: every write refused for lack of privilege (42501).
    let id = "10000000-0000-4000-8000-0000000000aa";
    for sql in [
        format!("INSERT INTO users (id, email) VALUES ('{id}', 'x@example.com')"),
        format!("UPDATE users SET status = 'active' WHERE id = '{DAVE}'"),
        format!("DELETE FROM sessions WHERE id = '{SESSION_BOB_REVOKED}'"),
        "TRUNCATE api_keys".to_owned(),
        "SELECT count(*) FROM _sqlx_migrations".to_owned(),
        "CREATE TABLE users_copy (id uuid)".to_owned(),
    ] {
        assert_eq!(
            sqlstate(&as_reader, &sql).await.as_deref(),
            Some("42501"),
            "{sql}"
        );
    }
    for table in READ_TABLES {
        assert_eq!(
            sqlstate(&as_reader, &format!("SELECT 1 FROM {table} LIMIT 1")).await,
            None,
            "{table}"
        );
    }

    h.running.shutdown().await;
    as_reader.close().await;
    drop_role(&pool, &name).await;
}

#[sqlx::test(migrations = "./migrations")]
async fn reader_role_with_password_is_stored_as_scram_and_privileged_roles_are_refused(
    pool: PgPool,
) {
    let name = role_name();
    let reader = ReaderRole {
        name: name.clone(),
        password: Some(b"reader-test-password-0123456789".to_vec()),
    };
    migrate::ensure_reader_role(&pool, &reader)
        .await
        .expect("reader role");
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .expect("rolpassword");
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    assert!(!stored.contains("reader-test-password"));

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{name}\" CREATEDB"
    )))
    .execute(&pool)
    .await
    .expect("alter role");
    let err = migrate::ensure_reader_role(&pool, &reader)
        .await
        .expect_err("a CREATEDB role is no reader");
    assert!(
        matches!(
            err,
            RoleError::Privileged {
                attribute: "CREATEDB",
                ..
            }
        ),
        "{err}"
    );
    drop_role(&pool, &name).await;
}
