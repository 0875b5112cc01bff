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

// ---- shape: what cannot be ours is refused before any lookup ----

#[test]
fn is_well_formed_generated_keys_pass() {
    for _ in 0..1000 {
        let key = generate();
        assert!(is_well_formed(&key.plain), "{}", key.display_prefix);
        assert_eq!(key.plain.len(), KEY_LEN);
    }
}

#[test]
fn is_well_formed_refuses_other_shapes() {
    let key = generate().plain;
    let body = &key[PREFIX.len()..];
    let last = body.as_bytes()[body.len() - 1];
    // The same 43 characters with the spare low bits of the last one set: no
    // encoder writes that, so it cannot be a key we issued.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.iter().position(|&c| c == last).expect("base64url");
    let spare_bits = format!(
        "{PREFIX}{}{}",
        &body[..body.len() - 1],
        char::from(alphabet[(index & !3) | 1])
    );
    for value in [
        String::new(),
        PREFIX.to_owned(),
        format!("Velro_{body}"),
        format!("vk_{body}"),
        format!("{PREFIX}{}", &body[1..]),
        format!("{key}A"),
        format!("{key}="),
        format!("{PREFIX}{}+", &body[..42]),
        format!("{PREFIX}{}/", &body[..42]),
        format!("{PREFIX}{} ", &body[..42]),
        format!("{PREFIX}{}é", &body[..41]),
        format!("{key},{key}"),
        spare_bits,
    ] {
        assert!(!is_well_formed(&value), "{value:?}");
    }
}

proptest::proptest! {
    /// Exact: every 32-byte value, encoded as `generate` encodes it, passes.
    #[test]
    fn is_well_formed_every_encoded_32_bytes_pass(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
        let plain = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        proptest::prop_assert!(is_well_formed(&plain));
    }

    /// Whatever the client sends, the check answers without panicking, and
    /// what passes decodes back to itself (so it is an encoding of 32 bytes).
    #[test]
    fn is_well_formed_arbitrary_values_pass_only_if_canonical(value in "(velro_)?[A-Za-z0-9_=+/ -]{0,50}") {
        if is_well_formed(&value) {
            let bytes = URL_SAFE_NO_PAD.decode(&value[PREFIX.len()..]).expect("decodes");
            proptest::prop_assert_eq!(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)), value);
        }
    }

    /// One changed character of a real key: still ours in shape only if it
    /// stays in the alphabet (and the last one keeps its zero bits).
    #[test]
    fn is_well_formed_never_panics_on_mutations(index in 0usize..49, byte in proptest::num::u8::ANY) {
        let mut bytes = generate().plain.into_bytes();
        bytes[index] = byte;
        let _ = String::from_utf8(bytes).map(|v| is_well_formed(&v));
    }
}
