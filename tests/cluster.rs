//! Cluster tests: several real `velro-authz serve` processes (the binary, not
//! the library) over Postgres and Redis, under a storm of changes and under
//! faults. The storm uses the servers named by DATABASE_URL / REDIS_URL with a
//! database and key prefix of its own; every fault test starts its own
//! `redis-server` and Postgres cluster on spare ports, so it can kill them.
//! With no reachable server or no server binaries, these tests fail, never skip.

mod cluster {
    pub mod fleet;
    pub mod oracle;
    // Shared with benches/freshness.rs: not every item is used by both.
    #[allow(dead_code)]
    pub mod support;
    pub mod world;

    mod faults;
    mod storm;
}
