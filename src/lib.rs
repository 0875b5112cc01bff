//! velro-authz: an authorization sidecar for Envoy ext_authz (and HTTP forward-auth).
//!
//! The decision path reads top to bottom, each step one module:
//! `grpc` / `http` + `forward` (adapters) → `authz` (the check) → `routes` → `authn` →
//! `policy` (pure) → `facts` (L1 cache, single-flight, version stamps) → `store`
//! (Postgres) ; `invalidate` keeps `facts` fresh from LISTEN/NOTIFY.

pub mod answer;
pub mod app;
pub mod authn;
pub mod authz;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod facts;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod ids;
pub mod invalidate;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod policy;
pub mod ratelimit;
pub mod redis;
pub mod reload;
pub mod routes;
pub mod secret;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
