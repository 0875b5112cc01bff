//! The demo data set (`demo/seed.sql`): idempotent, fixed ids, loaded by
//! `velro-authz seed-demo`.

use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The seed script, embedded so the binary alone can load the demo.
pub const SEED_SQL: &str = include_str!("../demo/seed.sql");

/// A demo user, as listed after seeding.
#[derive(Debug, Clone)]
pub struct DemoUser {
    /// User id (the JWT `sub`).
    pub id: Uuid,
    /// Email, also accepted by `token --user`.
    pub email: String,
    /// Account status.
    pub status: String,
}

/// Loads the demo data (safe to run twice) and lists the demo users.
pub async fn seed(pool: &PgPool) -> Result<Vec<DemoUser>, sqlx::Error> {
    sqlx::raw_sql(SEED_SQL).execute(pool).await?;
    let rows = sqlx::query("SELECT id, email, status FROM users ORDER BY email")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DemoUser {
                id: r.try_get(0)?,
                email: r.try_get(1)?,
                status: r.try_get(2)?,
            })
        })
        .collect()
}
