use super::*;

#[test]
fn parse_team_member_update_voids_old_and_new_user() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let payload = format!(
        r#"{{"t":"team_members","op":"UPDATE","ts":1.5,"old":{{"user_id":"{a}","team_id":"{b}"}},"new":{{"user_id":"{b}","team_id":"{b}"}}}}"#
    );
    assert_eq!(
        parse(&payload),
        Invalidation::Keys {
            table: "team_members",
            keys: vec![FactKey::Memberships(a), FactKey::Memberships(b)],
            changed_at: Some(1.5),
        }
    );
}

#[test]
fn parse_share_insert_voids_resource_shares() {
    let id = Uuid::new_v4();
    let payload = format!(
        r#"{{"t":"shares","op":"INSERT","ts":2,"old":null,"new":{{"resource_kind":"project","resource_id":"{id}"}}}}"#
    );
    assert_eq!(
        parse(&payload),
        Invalidation::Keys {
            table: "shares",
            keys: vec![FactKey::Shares(ResourceKind::Project, id)],
            changed_at: Some(2.0),
        }
    );
}

#[test]
fn parse_statement_payload_voids_every_key_once() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let payload = format!(
        r#"{{"t":"generations","op":"UPDATE","ts":3.25,"keys":[{{"id":"{a}"}},{{"id":"{b}"}},{{"id":"{a}"}}]}}"#
    );
    assert_eq!(
        parse(&payload),
        Invalidation::Keys {
            table: "generations",
            keys: vec![FactKey::Generation(a), FactKey::Generation(b)],
            changed_at: Some(3.25),
        }
    );
}

#[test]
fn parse_statement_payload_of_shares_and_api_keys_names_their_facts() {
    let id = Uuid::new_v4();
    let hash = "ab".repeat(32);
    let shares = format!(
        r#"{{"t":"shares","op":"DELETE","ts":1,"keys":[{{"resource_kind":"generation","resource_id":"{id}"}}]}}"#
    );
    let keys =
        format!(r#"{{"t":"api_keys","op":"INSERT","ts":1,"keys":[{{"key_hash":"{hash}"}}]}}"#);
    assert_eq!(
        parse(&shares),
        Invalidation::Keys {
            table: "shares",
            keys: vec![FactKey::Shares(ResourceKind::Generation, id)],
            changed_at: Some(1.0),
        }
    );
    assert_eq!(
        parse(&keys),
        Invalidation::Keys {
            table: "api_keys",
            keys: vec![FactKey::ApiKey(hash.as_str().into())],
            changed_at: Some(1.0),
        }
    );
}

#[test]
fn parse_truncate_or_flush_payload_flushes() {
    for payload in [
        r#"{"t":"users","op":"TRUNCATE","ts":1}"#,
        // 0003: keys too many for one notification.
        r#"{"t":"generations","op":"FLUSH","ts":1}"#,
        r#"{"t":"generations","op":"FLUSH","ts":1,"keys":[{"id":"00000000-0000-4000-8000-000000000001"}]}"#,
    ] {
        assert_eq!(parse(payload), Invalidation::Flush, "{payload}");
    }
}

#[test]
fn parse_junk_is_unreadable() {
    for payload in [
        "",
        "not json",
        r#"{"t":"mystery","op":"INSERT","ts":1,"new":{"id":"x"}}"#,
        r#"{"t":"users","op":"INSERT","ts":1,"new":{"id":"not-a-uuid"}}"#,
        r#"{"t":"users","op":"DELETE","ts":1,"old":null,"new":null}"#,
        // 0003 shape with no key, or one that does not parse.
        r#"{"t":"users","op":"UPDATE","ts":1,"keys":[]}"#,
        r#"{"t":"users","op":"UPDATE","ts":1,"keys":[{"id":"00000000-0000-4000-8000-000000000001"},{}]}"#,
        r#"{"t":"shares","op":"INSERT","ts":1,"keys":[{"resource_kind":"team","resource_id":"00000000-0000-4000-8000-000000000001"}]}"#,
        r#"{"t":"users","op":"UPDATE","ts":1,"keys":{"id":"00000000-0000-4000-8000-000000000001"}}"#,
    ] {
        assert_eq!(parse(payload), Invalidation::Unreadable, "{payload}");
    }
}

#[test]
fn parse_lsn_reads_postgres_positions() {
    assert_eq!(parse_lsn("0/16B3748"), Some(0x16B_3748));
    assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
    for bad in ["", "0", "/1", "1/", "x/1", "1/2/3", "100000000/0"] {
        assert_eq!(parse_lsn(bad), None, "{bad}");
    }
}

#[test]
fn heartbeat_parse_takes_only_our_own() {
    let sent = Sent::new();
    let ours = format!("{}:7:0/10", sent.instance);
    assert_eq!(sent.parse(&ours), Some((7, 0x10)));
    let theirs = format!("{}:7:0/10", Uuid::new_v4().simple());
    assert_eq!(sent.parse(&theirs), None);
    assert_eq!(sent.parse(&format!("{}:x:0/10", sent.instance)), None);
    assert_eq!(sent.parse(""), None);
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(payload in ".*") {
        let _ = parse(&payload);
        let _ = parse_lsn(&payload);
        let _ = Sent::new().parse(&payload);
    }

    /// Any number of keys in the 0003 shape comes back as exactly those
    /// facts, in order, once each.
    #[test]
    fn parse_statement_payload_round_trips(ids in proptest::collection::vec(0u8..8, 1..40)) {
        let ids: Vec<Uuid> = ids.iter().map(|n| Uuid::from_u128(0x1000 + u128::from(*n))).collect();
        let keys: Vec<String> = ids.iter().map(|id| format!(r#"{{"user_id":"{id}"}}"#)).collect();
        let payload = format!(
            r#"{{"t":"team_members","op":"DELETE","ts":1,"keys":[{}]}}"#,
            keys.join(",")
        );
        let mut want: Vec<FactKey> = Vec::new();
        for id in ids {
            if !want.contains(&FactKey::Memberships(id)) {
                want.push(FactKey::Memberships(id));
            }
        }
        proptest::prop_assert_eq!(
            parse(&payload),
            Invalidation::Keys { table: "team_members", keys: want, changed_at: Some(1.0) }
        );
    }
}
