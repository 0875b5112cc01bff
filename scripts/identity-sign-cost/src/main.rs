// What one x-velro-identity costs: run by hand (docs/performance.md, "Signed
// identity header"). Not part of the crate or its tests: a loop in release mode
// over the call IdentitySigner::sign_at makes (src/identity.rs).
// Same call as velro_authz::identity::IdentitySigner::sign_at: jsonwebtoken::encode
// with an EdDSA header carrying a kid and the same claims shape.
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    auth: &'static str,
    iat: u64,
    exp: u64,
    jti: &'a str,
}

fn main() {
    let key = EncodingKey::from_ed_pem(
        &std::fs::read(
            std::env::args()
                .nth(1)
                .unwrap_or_else(|| "../../tests/fixtures/keys/ed25519_private.pem".into()),
        )
        .unwrap(),
    )
    .unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("JWT".into());
    header.kid = Some("x".repeat(43));
    let user = uuid::Uuid::new_v4();
    let jti = uuid::Uuid::new_v4().simple().to_string();
    let sign = |i: u64| {
        let c = Claims {
            iss: "velro-authz",
            aud: "velro-app",
            sub: user.to_string(),
            role: Some("member"),
            auth: "jwt",
            iat: 1_800_000_000 + i,
            exp: 1_800_000_060 + i,
            jti: &jti,
        };
        jsonwebtoken::encode(&header, &c, &key).unwrap()
    };
    let mut len = 0;
    for i in 0..2_000 {
        len += sign(i).len();
    }
    for round in 0..5 {
        let n = 20_000u64;
        let t = Instant::now();
        for i in 0..n {
            len += sign(i).len();
        }
        let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
        println!("round {round}: {per:.2} µs per sign ({n} signs)");
    }
    println!("token length {} bytes (checksum {len})", sign(0).len());
}
