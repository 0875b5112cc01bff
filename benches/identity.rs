//! What one `x-velro-identity` costs: `IdentitySigner::sign_at`, the call
//! every allow with an identity makes when `identity_token` is on.
//!
//!     cargo bench --bench identity
//!
//! The fixture Ed25519 key, a member's identity, a fresh decision id per
//! round; 2,000 warm-up signatures, then 5 rounds of 20,000.

use std::path::PathBuf;
use std::time::Instant;

use uuid::Uuid;
use velro_authz::answer::{AuthKind, Identity};
use velro_authz::identity::{DEFAULT_ISSUER, DEFAULT_TTL, IdentitySettings, IdentitySigner};
use velro_authz::model::Role;

const ROUNDS: usize = 5;
const PER_ROUND: u64 = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench identity`");
        return Ok(());
    }
    let signer = IdentitySigner::load(&IdentitySettings {
        key_file: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys/ed25519_private.pem"),
        audience: "velro-app".to_owned(),
        issuer: DEFAULT_ISSUER.to_owned(),
        ttl: DEFAULT_TTL,
    })?;
    let identity = Identity {
        user_id: Uuid::new_v4(),
        auth: AuthKind::Jwt,
        role: Some(Role::Member),
    };
    let decision_id = Uuid::new_v4().simple().to_string();
    let mut bytes = 0;
    for i in 0..2_000 {
        bytes += signer
            .sign_at(&identity, &decision_id, 1_800_000_000 + i)?
            .len();
    }
    for round in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..PER_ROUND {
            bytes += signer
                .sign_at(&identity, &decision_id, 1_800_000_000 + i)?
                .len();
        }
        let per = started.elapsed().as_secs_f64() / PER_ROUND as f64 * 1e6;
        println!("round {round}: {per:.2} µs per signature ({PER_ROUND} signatures)");
    }
    let token = signer.sign_at(&identity, &decision_id, 1_800_000_000)?;
    println!(
        "token length {} bytes (bytes signed in all: {bytes})",
        token.len()
    );
    Ok(())
}
