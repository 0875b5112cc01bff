use chrono::{Duration, TimeZone as _};
use uuid::Uuid;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn key() -> ApiKey {
    ApiKey {
        id: Uuid::nil(),
        user_id: Uuid::nil(),
        key_hash: hash("velro_example"),
        scopes: None,
        expires_at: None,
        revoked_at: None,
    }
}

#[test]
fn generate_key_has_prefix_length_and_matching_hash() {
    let key = generate();
    assert!(key.plain.starts_with(PREFIX), "{}", key.display_prefix);
    assert_eq!(key.plain.len(), PREFIX.len() + 43);
    assert!(
        key.plain[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(key.hash, hash(&key.plain));
    assert_eq!(key.display_prefix, key.plain[..12]);
}

#[test]
fn generate_twice_gives_different_keys() {
    assert_ne!(generate().plain, generate().plain);
}

#[test]
fn generated_key_debug_never_prints_the_plain_key() {
    let key = generate();
    let debug = format!("{key:?}");
    assert!(!debug.contains(&key.plain[PREFIX.len()..]), "{debug}");
}

#[test]
fn hash_is_lowercase_hex_sha256() {
    // sha256("abc"), FIPS 180-2 test vector.
    assert_eq!(
        hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn hashes_match_equal_true_different_false() {
    let h = hash("velro_a");
    assert!(hashes_match(&h, &hash("velro_a")));
    assert!(!hashes_match(&h, &hash("velro_b")));
    assert!(!hashes_match(&h, &h[..63]));
    assert!(!hashes_match(&h, ""));
}

#[test]
fn check_state_live_key_is_ok() {
    assert_eq!(check_state(&key(), now()), Ok(()));
}

#[test]
fn check_state_revoked_key_is_api_key_revoked() {
    let mut k = key();
    k.revoked_at = Some(now() - Duration::days(1));
    assert_eq!(check_state(&k, now()), Err(AuthnError::ApiKeyRevoked));
    // Revocation wins over expiry.
    k.expires_at = Some(now() - Duration::days(2));
    assert_eq!(check_state(&k, now()), Err(AuthnError::ApiKeyRevoked));
}

#[test]
fn check_state_expired_key_is_api_key_expired() {
    let mut k = key();
    k.expires_at = Some(now());
    assert_eq!(check_state(&k, now()), Err(AuthnError::ApiKeyExpired));
    k.expires_at = Some(now() - Duration::seconds(1));
    assert_eq!(check_state(&k, now()), Err(AuthnError::ApiKeyExpired));
}

#[test]
fn check_state_future_expiry_is_ok() {
    let mut k = key();
    k.expires_at = Some(now() + Duration::seconds(1));
    assert_eq!(check_state(&k, now()), Ok(()));
}
