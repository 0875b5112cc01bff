//! Ids as requests carry them (SPEC §9): a path's `{id}` and a token's `sub` and
//! `sid` are UUIDs only in the canonical hyphenated form. One parser, so a route
//! and a token can never disagree on what counts as an id.

use uuid::Uuid;

/// Parses a UUID only in the canonical hyphenated 8-4-4-4-12 form, hex digits
/// of either case. Every other spelling `Uuid::parse_str` accepts (braced,
/// `urn:uuid:`, simple) is refused: the spec says they are not UUIDs.
///
/// Takes bytes because route matching has the path as bytes and must not
/// allocate or re-check UTF-8; callers with a `&str` pass `text.as_bytes()`.
pub fn parse_canonical_uuid(text: &[u8]) -> Option<Uuid> {
    // Of the forms the uuid crate parses (simple 32, hyphenated 36, braced 38,
    // URN 45 bytes), only the hyphenated one is 36 bytes long; the crate then
    // checks the four hyphens and that every other byte is a hex digit.
    if text.len() != 36 {
        return None;
    }
    Uuid::try_parse_ascii(text).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The user id of the authn tests these cases came from.
    const USER: &str = "7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f50";
    /// The path id of the route tests these cases came from.
    const ROUTE_ID: &str = "3f2c1a9e-7b4d-4e8f-9a0b-1c2d3e4f5a6b";

    fn user() -> Uuid {
        Uuid::parse_str(USER).expect("uuid")
    }

    fn route_id() -> Uuid {
        Uuid::parse_str(ROUTE_ID).expect("uuid")
    }

    #[test]
    fn canonical_uuid_either_case_is_accepted() {
        let lower = USER;
        assert_eq!(parse_canonical_uuid(lower.as_bytes()), Some(user()));
        assert_eq!(
            parse_canonical_uuid(lower.to_uppercase().as_bytes()),
            Some(user())
        );
    }

    #[test]
    fn non_canonical_uuid_forms_are_rejected() {
        for text in [
            "{7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f50}",
            "urn:uuid:7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f50",
            "7d4e1f0a3b2c4d5e8f9a0b1c2d3e4f50",
            " 7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f50",
            "7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f5",
            "7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f5g",
            "7d4e1f0a+3b2c-4d5e-8f9a-0b1c2d3e4f50",
            "7d4e1f0a-3b2c4-d5e-8f9a-0b1c2d3e4f50",
            "",
        ] {
            assert_eq!(parse_canonical_uuid(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn parse_canonical_uuid_agrees_with_uuid_crate_on_hyphenated_strings() {
        for uuid in [route_id(), Uuid::nil(), Uuid::max(), Uuid::new_v4()] {
            let text = uuid.hyphenated().to_string();
            assert_eq!(parse_canonical_uuid(text.as_bytes()), Some(uuid));
            assert_eq!(
                parse_canonical_uuid(text.to_uppercase().as_bytes()),
                Some(uuid)
            );
            assert_eq!(
                parse_canonical_uuid(uuid.braced().to_string().as_bytes()),
                None
            );
            assert_eq!(
                parse_canonical_uuid(uuid.urn().to_string().as_bytes()),
                None
            );
            assert_eq!(
                parse_canonical_uuid(uuid.simple().to_string().as_bytes()),
                None
            );
        }
    }

    proptest! {
        #[test]
        fn parse_canonical_uuid_accepts_only_the_hyphenated_form(text in ".{0,40}") {
            if let Some(uuid) = parse_canonical_uuid(text.as_bytes()) {
                prop_assert_eq!(uuid.hyphenated().to_string(), text.to_ascii_lowercase());
            }
        }
    }
}
