//! Integration tests: the real sidecar (gRPC and HTTP sockets on port 0) against
//! real Postgres. Each test gets its own database from `#[sqlx::test]`, so the
//! suite runs in parallel; with no reachable Postgres (`DATABASE_URL`) every test
//! here fails, it never skips.

// Case tables are tuples on purpose: one row per case reads best.
#![allow(clippy::type_complexity)]

mod integration {
    pub mod support;

    mod amplification;
    mod breaker;
    mod cold;
    mod credentials;
    mod forward;
    mod freshness;
    mod identity;
    mod interfaces;
    mod jwks_https;
    mod jwks_rotation;
    mod l2;
    mod nginx;
    mod race;
    mod ratelimit;
    mod reader_role;
    mod reload;
    mod routes;
    mod traces;
    mod triggers;
}
