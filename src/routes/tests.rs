// A failed unwrap in a test is the failure report.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use uuid::Uuid;

use super::table::VELRO_DEFAULT_YAML;
use super::*;

const ID: &str = "3f2c1a9e-7b4d-4e8f-9a0b-1c2d3e4f5a6b";

fn table() -> RouteTable {
    RouteTable::velro_default()
}

fn id() -> Uuid {
    Uuid::parse_str(ID).unwrap()
}

fn resource(kind: TargetKind, action: Action) -> Need {
    Need::Resource { kind, action }
}

fn authenticated() -> Need {
    Need::Authenticated { scope: None }
}

fn ops() -> Need {
    Need::Authenticated {
        scope: Some("ops".to_owned()),
    }
}

/// Every (method, path, route pattern, need, has id) of SPEC §4's default table.
fn default_rows() -> Vec<(&'static str, String, &'static str, Need, bool)> {
    use Action::*;
    use TargetKind::*;
    let g = format!("/api/v1/generations/{ID}");
    let p = format!("/api/v1/projects/{ID}");
    let t = format!("/api/v1/teams/{ID}");
    vec![
        (
            "POST",
            "/api/v1/auth/login".into(),
            "POST /api/v1/auth/login",
            Need::Public,
            false,
        ),
        (
            "POST",
            "/api/v1/auth/refresh".into(),
            "POST /api/v1/auth/refresh",
            Need::Public,
            false,
        ),
        (
            "POST",
            "/api/v1/auth/logout".into(),
            "POST /api/v1/auth/logout",
            authenticated(),
            false,
        ),
        (
            "GET",
            g.clone(),
            "GET /api/v1/generations/{id}",
            resource(Generation, Read),
            true,
        ),
        (
            "PUT",
            g.clone(),
            "PUT /api/v1/generations/{id}",
            resource(Generation, Write),
            true,
        ),
        (
            "PATCH",
            g.clone(),
            "PATCH /api/v1/generations/{id}",
            resource(Generation, Write),
            true,
        ),
        (
            "DELETE",
            g.clone(),
            "DELETE /api/v1/generations/{id}",
            resource(Generation, Delete),
            true,
        ),
        (
            "POST",
            format!("{g}/authorize"),
            "POST /api/v1/generations/{id}/authorize",
            resource(Generation, Read),
            true,
        ),
        (
            "PUT",
            format!("{g}/share"),
            "PUT /api/v1/generations/{id}/share",
            resource(Generation, Share),
            true,
        ),
        (
            "GET",
            p,
            "GET /api/v1/projects/{id}",
            resource(Project, Read),
            true,
        ),
        (
            "GET",
            format!("{t}/members"),
            "GET /api/v1/teams/{id}/members",
            resource(Team, Read),
            true,
        ),
        (
            "GET",
            format!("{t}/permissions"),
            "GET /api/v1/teams/{id}/permissions",
            resource(Team, Read),
            true,
        ),
        (
            "POST",
            format!("{t}/invite"),
            "POST /api/v1/teams/{id}/invite",
            resource(Team, Manage),
            true,
        ),
        (
            "GET",
            "/api/v1/users/profile".into(),
            "GET /api/v1/users/profile",
            authenticated(),
            false,
        ),
        (
            "PUT",
            "/api/v1/users/profile".into(),
            "PUT /api/v1/users/profile",
            authenticated(),
            false,
        ),
        (
            "GET",
            "/api/v1/users/sessions".into(),
            "GET /api/v1/users/sessions",
            authenticated(),
            false,
        ),
        (
            "GET",
            "/api/v1/users/activity".into(),
            "GET /api/v1/users/activity",
            authenticated(),
            false,
        ),
        (
            "GET",
            "/health/status".into(),
            "GET /health/status",
            Need::Public,
            false,
        ),
        (
            "GET",
            "/health/metrics".into(),
            "GET /health/metrics",
            ops(),
            false,
        ),
        (
            "GET",
            "/health/cache".into(),
            "GET /health/cache",
            ops(),
            false,
        ),
    ]
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

fn problems(yaml: &str) -> Vec<String> {
    match RouteTable::from_yaml(yaml) {
        Err(RouteConfigError::Invalid(problems)) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("expected Invalid, got a table"),
    }
}

fn one_route(body: &str) -> String {
    format!("routes:\n  - {}\n", body.trim().replace('\n', "\n    "))
}

// ---- the default table -------------------------------------------------------

#[test]
fn velro_default_embedded_yaml_loads() {
    RouteTable::from_yaml(VELRO_DEFAULT_YAML).unwrap();
}

#[test]
fn resolve_every_default_row_gives_its_need_and_id() {
    let table = table();
    for (method, path, pattern, need, has_id) in default_rows() {
        let matched = table
            .resolve(method, &path)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        assert_eq!(&*matched.route, pattern, "{method} {path}");
        assert_eq!(matched.need, need, "{method} {path}");
        assert_eq!(matched.id, has_id.then(id), "{method} {path}");
    }
}

#[test]
fn resolve_default_table_has_no_other_method_for_its_paths() {
    let table = table();
    let rows = default_rows();
    for (_, path, ..) in &rows {
        for method in METHODS {
            let listed = rows
                .iter()
                .any(|(m, p, ..)| p == path && (*m == method || (method == "HEAD" && *m == "GET")));
            let result = table.resolve(method, path);
            if listed {
                assert!(result.is_ok(), "{method} {path}: {result:?}");
            } else {
                assert_eq!(result, Err(RouteError::NoRoute), "{method} {path}");
            }
        }
    }
}

#[test]
fn resolve_head_is_authorized_as_get() {
    let table = table();
    for (method, path, ..) in default_rows() {
        if method == "GET" {
            assert_eq!(
                table.resolve("HEAD", &path),
                table.resolve("GET", &path),
                "{path}"
            );
        }
    }
    assert_eq!(
        table.resolve("HEAD", "/api/v1/auth/login"),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_wrong_method_is_no_route() {
    let table = table();
    let g = format!("/api/v1/generations/{ID}");
    assert_eq!(table.resolve("POST", &g), Err(RouteError::NoRoute));
    assert_eq!(
        table.resolve("GET", "/api/v1/auth/login"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("DELETE", "/health/status"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("PATCH", &format!("{g}/share")),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_method_is_case_sensitive() {
    let table = table();
    assert_eq!(
        table.resolve("get", "/health/status"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("Get", "/health/status"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("head", "/health/status"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("", "/health/status"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("FOO", "/health/status"),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_unknown_path_is_no_route() {
    let table = table();
    for path in [
        "/",
        "/api",
        "/api/v1",
        "/api/v1/generations",
        "/health",
        "/api/v2/auth/login",
        "/x/y/z/w/v/u",
    ] {
        assert_eq!(
            table.resolve("GET", path),
            Err(RouteError::NoRoute),
            "{path}"
        );
    }
}

#[test]
fn resolve_query_string_and_fragment_are_ignored() {
    let table = table();
    let g = format!("/api/v1/generations/{ID}");
    for target in [
        format!("{g}?"),
        format!("{g}?x=1&y=../..//%2f"),
        format!("{g}#frag"),
        format!("{g}?a=b#c"),
        format!("{g}?{}", "q".repeat(10_000)),
    ] {
        let matched = table
            .resolve("GET", &target)
            .unwrap_or_else(|e| panic!("{target}: {e:?}"));
        assert_eq!(matched.id, Some(id()));
    }
    assert_eq!(
        table.resolve("GET", "/health/status?full=1").unwrap().need,
        Need::Public
    );
}

#[test]
fn resolve_query_does_not_hide_a_bad_path() {
    let table = table();
    assert_eq!(
        table.resolve("GET", "/health/../status?x"),
        Err(RouteError::BadPath)
    );
    assert_eq!(
        table.resolve("GET", "?/health/status"),
        Err(RouteError::BadPath)
    );
}

#[test]
fn resolve_trailing_slash_is_no_route() {
    let table = table();
    let g = format!("/api/v1/generations/{ID}");
    assert_eq!(
        table.resolve("GET", &format!("{g}/")),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("GET", "/health/status/"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("POST", "/api/v1/auth/login/"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("POST", "/api/v1/auth/login/?x=1"),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_table_with_trailing_slash_route_matches_only_that_form() {
    let table =
        RouteTable::from_yaml(&one_route("methods: [GET]\npath: /docs/\naccess: public")).unwrap();
    assert_eq!(table.resolve("GET", "/docs/").unwrap().need, Need::Public);
    assert_eq!(table.resolve("GET", "/docs"), Err(RouteError::NoRoute));
}

#[test]
fn resolve_root_route_matches_slash() {
    let table =
        RouteTable::from_yaml(&one_route("methods: [GET]\npath: /\naccess: public")).unwrap();
    assert_eq!(&*table.resolve("GET", "/").unwrap().route, "GET /");
    assert_eq!(table.resolve("GET", "//"), Err(RouteError::BadPath));
}

// ---- malformed paths ------------------------------------------------------------

fn assert_bad_path(paths: &[&str]) {
    let table = table();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "FOO"] {
            assert_eq!(
                table.resolve(method, path),
                Err(RouteError::BadPath),
                "{method} {path:?}"
            );
        }
    }
}

#[test]
fn resolve_path_not_starting_with_slash_is_bad_path() {
    assert_bad_path(&[
        "",
        "health/status",
        "*",
        "http://host/health/status",
        " /health/status",
        "?",
    ]);
}

#[test]
fn resolve_dot_segments_are_bad_path() {
    assert_bad_path(&[
        "/health/./status",
        "/health/../health/status",
        "/api/v1/generations/x/../../projects",
        "/.",
        "/..",
        "/health/status/.",
        "/health/status/..",
        "/./health/status",
    ]);
}

#[test]
fn resolve_percent_encoded_dot_segments_are_bad_path() {
    assert_bad_path(&[
        "/health/%2e/status",
        "/health/%2E%2E/status",
        "/health/.%2e/status",
        "/health/%2e./status",
        "/api/v1/auth/%2e%2e/logout",
    ]);
}

#[test]
fn resolve_empty_segments_are_bad_path() {
    assert_bad_path(&[
        "//health/status",
        "/health//status",
        "/health/status//",
        "//",
        "///",
    ]);
}

#[test]
fn resolve_encoded_slash_or_backslash_is_bad_path() {
    assert_bad_path(&[
        "/health%2Fstatus",
        "/health%2fstatus",
        "/api/v1/generations/%2F",
        "/health%5Cstatus",
        "/health%5cstatus",
    ]);
}

#[test]
fn resolve_bad_percent_encoding_is_bad_path() {
    assert_bad_path(&[
        "/health/status%",
        "/health/status%2",
        "/health/%zzstatus",
        "/health/%g0",
        "/health/%0g",
        "/%%41",
    ]);
}

#[test]
fn resolve_needless_percent_encoding_is_bad_path() {
    assert_bad_path(&[
        "/health/st%61tus",
        "/health/%73tatus",
        "/health/status%41",
        "/health/%30",
        "/h%2Dx",
        "/h%5fx",
        "/h%7Ex",
        "/h%2ex",
    ]);
}

#[test]
fn resolve_control_characters_are_bad_path() {
    assert_bad_path(&[
        "/health/status\0",
        "/health/\nstatus",
        "/health\r/status",
        "/health/\tstatus",
        "/health/status\x7f",
        "/health/status%00",
        "/health/status%0A",
        "/health/status%0d",
        "/health/status%1F",
        "/health/status%7F",
    ]);
}

#[test]
fn resolve_raw_backslash_is_bad_path() {
    assert_bad_path(&[
        "/health\\status",
        "\\health/status",
        "/health/status\\",
        "/api/v1/generations/\\",
    ]);
}

#[test]
fn resolve_other_printable_ascii_is_matched_not_bad_path() {
    let table = table();
    for path in [
        "/health/stat us",
        "/health/<status>",
        "/health/\"s\"",
        "/health/{id}",
        "/a|b^c`d[e]",
    ] {
        assert_eq!(
            table.resolve("GET", path),
            Err(RouteError::NoRoute),
            "{path:?}"
        );
    }
}

#[test]
fn resolve_non_ascii_is_bad_path() {
    assert_bad_path(&["/health/stätus", "/héalth/status", "/health/status\u{200b}"]);
}

#[test]
fn resolve_allowed_percent_encoding_is_not_bad_path() {
    let table = table();
    for path in [
        "/api/v1/users/pro%20file",
        "/health/%C3%A9",
        "/health/%3a",
        "/x%25y",
    ] {
        assert_eq!(
            table.resolve("GET", path),
            Err(RouteError::NoRoute),
            "{path}"
        );
    }
}

#[test]
fn resolve_pchar_sub_delims_are_not_bad_path() {
    assert_eq!(
        table().resolve("GET", "/a-b._~!$&'()*+,;=:@/x"),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_path_over_4_kib_is_bad_path() {
    let table = table();
    let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
    assert_eq!(long.len(), MAX_PATH_BYTES + 1);
    assert_eq!(table.resolve("GET", &long), Err(RouteError::BadPath));
    assert_eq!(
        table.resolve("GET", &format!("{long}?q")),
        Err(RouteError::BadPath)
    );
    let huge = format!("/{}", "a/".repeat(100_000));
    assert_eq!(table.resolve("GET", &huge), Err(RouteError::BadPath));
}

#[test]
fn resolve_path_of_exactly_4_kib_is_matched() {
    let table = table();
    let exact = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
    assert_eq!(exact.len(), MAX_PATH_BYTES);
    assert_eq!(table.resolve("GET", &exact), Err(RouteError::NoRoute));
    assert_eq!(
        table.resolve("GET", &format!("{exact}?{}", "q".repeat(10))),
        Err(RouteError::NoRoute)
    );
    let many_segments = format!("/{}a", "a/".repeat(2000));
    assert_eq!(
        table.resolve("GET", &many_segments),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_bad_path_wins_over_unknown_method() {
    assert_eq!(table().resolve("BREW", "/a/../b"), Err(RouteError::BadPath));
}

// ---- ids ------------------------------------------------------------------------

#[test]
fn resolve_upper_and_mixed_case_uuid_is_accepted() {
    let table = table();
    for form in [
        ID.to_uppercase(),
        "3F2C1A9E-7b4d-4E8F-9a0b-1C2D3E4F5A6B".to_owned(),
    ] {
        let matched = table
            .resolve("GET", &format!("/api/v1/generations/{form}"))
            .unwrap();
        assert_eq!(matched.id, Some(id()), "{form}");
    }
}

#[test]
fn resolve_nil_and_max_uuid_are_accepted() {
    let table = table();
    for uuid in [Uuid::nil(), Uuid::max()] {
        let matched = table
            .resolve("GET", &format!("/api/v1/projects/{uuid}"))
            .unwrap();
        assert_eq!(matched.id, Some(uuid));
    }
}

#[test]
fn resolve_non_canonical_uuid_forms_are_invalid_id() {
    let table = table();
    let simple = ID.replace('-', "");
    for form in [
        format!("%7B{ID}%7D"),
        format!("{{{ID}}}"),
        format!(" {ID}"),
        format!("{ID} "),
        format!("urn:uuid:{ID}"),
        simple.clone(),
        simple.to_uppercase(),
        format!("0{ID}"),
        format!("{ID}0"),
        format!("{ID}%20"),
        format!("%20{ID}"),
        ID[..35].to_owned(),
        ID.replacen('-', ":", 1),
        ID.replace('a', "g"),
        "3f2c1a9e7-b4d-4e8f-9a0b-1c2d3e4f5a6b".to_owned(),
        "not-a-uuid".to_owned(),
        "latest".to_owned(),
        "1".to_owned(),
    ] {
        for (method, path) in [
            ("GET", format!("/api/v1/generations/{form}")),
            ("DELETE", format!("/api/v1/generations/{form}")),
            ("POST", format!("/api/v1/generations/{form}/authorize")),
            ("GET", format!("/api/v1/projects/{form}")),
            ("POST", format!("/api/v1/teams/{form}/invite")),
        ] {
            assert_eq!(
                table.resolve(method, &path),
                Err(RouteError::InvalidId),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn resolve_bad_id_under_wrong_method_is_no_route() {
    let table = table();
    assert_eq!(
        table.resolve("POST", "/api/v1/generations/not-a-uuid"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("GET", "/api/v1/teams/not-a-uuid/invite"),
        Err(RouteError::NoRoute)
    );
    assert_eq!(
        table.resolve("GET", "/api/v1/teams/not-a-uuid/other"),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn resolve_bad_id_in_malformed_path_is_bad_path() {
    assert_eq!(
        table().resolve("GET", "/api/v1/generations/%zz"),
        Err(RouteError::BadPath)
    );
    assert_eq!(
        table().resolve("GET", "/api/v1/generations/.."),
        Err(RouteError::BadPath)
    );
}

#[test]
fn resolve_literal_route_beside_id_route_wins_for_its_literal() {
    let yaml = "routes:
  - methods: [GET]
    path: /g/{id}
    access: resource
    resource: generation
    action: read
  - methods: [GET]
    path: /g/latest
    access: authenticated
";
    let table = RouteTable::from_yaml(yaml).unwrap();
    assert_eq!(
        table.resolve("GET", "/g/latest").unwrap().need,
        authenticated()
    );
    assert_eq!(
        table.resolve("GET", &format!("/g/{ID}")).unwrap().id,
        Some(id())
    );
    assert_eq!(
        table.resolve("GET", "/g/newest"),
        Err(RouteError::InvalidId)
    );
}

// ---- errors ---------------------------------------------------------------------

#[test]
fn route_error_reason_and_status_follow_spec() {
    assert_eq!(
        (
            RouteError::BadPath.reason(),
            RouteError::BadPath.http_status()
        ),
        ("bad_path", 400)
    );
    assert_eq!(
        (
            RouteError::InvalidId.reason(),
            RouteError::InvalidId.http_status()
        ),
        ("invalid_id", 400)
    );
    assert_eq!(
        (
            RouteError::NoRoute.reason(),
            RouteError::NoRoute.http_status()
        ),
        ("no_route", 404)
    );
    assert_eq!(
        (
            RouteError::TooLarge.reason(),
            RouteError::TooLarge.http_status()
        ),
        ("too_large", 400)
    );
}

// ---- YAML -----------------------------------------------------------------------

#[test]
fn from_yaml_override_table_replaces_default() {
    let yaml = "
routes:
  - methods: [GET, POST]
    path: /v2/things/{id}/parts
    access: resource
    resource: project
    action: write
  - methods: [OPTIONS]
    path: /v2/ping
    access: public
  - methods: [GET]
    path: /v2/admin
    access: authenticated
    scope: manage
";
    let table = RouteTable::from_yaml(yaml).unwrap();
    let path = format!("/v2/things/{ID}/parts");
    for method in ["GET", "HEAD", "POST"] {
        let matched = table.resolve(method, &path).unwrap();
        assert_eq!(matched.need, resource(TargetKind::Project, Action::Write));
        assert_eq!(matched.id, Some(id()));
    }
    assert_eq!(
        &*table.resolve("POST", &path).unwrap().route,
        "POST /v2/things/{id}/parts"
    );
    assert_eq!(
        &*table.resolve("HEAD", &path).unwrap().route,
        "GET /v2/things/{id}/parts"
    );
    assert_eq!(
        table.resolve("OPTIONS", "/v2/ping").unwrap().need,
        Need::Public
    );
    assert_eq!(
        table.resolve("GET", "/v2/admin").unwrap().need,
        Need::Authenticated {
            scope: Some("manage".to_owned())
        }
    );
    assert_eq!(
        table.resolve("GET", "/health/status"),
        Err(RouteError::NoRoute)
    );
}

#[test]
fn from_yaml_action_typo_names_entry_and_field() {
    let yaml = "routes:
  - methods: [GET]
    path: /a
    access: public
  - methods: [GET]
    path: /b
    access: public
  - methods: [GET]
    path: /c
    access: public
  - methods: [GET]
    path: /g/{id}
    access: resource
    resource: generation
    action: reed
";
    assert_eq!(
        problems(yaml),
        ["routes[3].action: unknown action \"reed\""]
    );
    let err = RouteTable::from_yaml(yaml).err().unwrap();
    assert!(
        err.to_string()
            .contains("routes[3].action: unknown action \"reed\""),
        "{err}"
    );
}

#[test]
fn from_yaml_unknown_field_is_rejected() {
    let got = problems(&one_route(
        "methods: [GET]\npath: /a\naccess: public\nacces: public",
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("routes[0].acces: unknown field"),
        "{got:?}"
    );
}

#[test]
fn from_yaml_unknown_top_level_key_is_syntax_error() {
    let yaml = "routes:\n  - methods: [GET]\n    path: /a\n    access: public\nroute: []\n";
    assert!(matches!(
        RouteTable::from_yaml(yaml),
        Err(RouteConfigError::Syntax(_))
    ));
}

#[test]
fn from_yaml_not_yaml_or_wrong_shape_is_syntax_error() {
    for yaml in [
        "",
        "routes: [",
        "routes: 3",
        "routes:\n  - methods: GET\n    path: /a\n    access: public\n",
        "- a",
    ] {
        assert!(
            matches!(
                RouteTable::from_yaml(yaml),
                Err(RouteConfigError::Syntax(_))
            ),
            "{yaml:?}"
        );
    }
}

#[test]
fn from_yaml_empty_table_is_rejected() {
    assert_eq!(problems("routes: []\n").len(), 1);
}

#[test]
fn from_yaml_missing_fields_are_each_reported() {
    let got = problems("routes:\n  - {}\n");
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("routes[0].methods: missing"), "{got:?}");
    assert!(got[1].starts_with("routes[0].path: missing"), "{got:?}");
    assert!(got[2].starts_with("routes[0].access: missing"), "{got:?}");
}

#[test]
fn from_yaml_resource_route_without_resource_or_action_is_rejected() {
    let got = problems(&one_route(
        "methods: [GET]\npath: /g/{id}\naccess: resource",
    ));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("routes[0].resource: missing"), "{got:?}");
    assert!(got[1].starts_with("routes[0].action: missing"), "{got:?}");
}

#[test]
fn from_yaml_unknown_resource_or_access_is_rejected() {
    let got = problems(&one_route(
        "methods: [GET]\npath: /g/{id}\naccess: resource\nresource: user\naction: read",
    ));
    assert_eq!(
        got,
        ["routes[0].resource: unknown resource \"user\" (expected generation, project or team)"]
    );
    let got = problems(&one_route("methods: [GET]\npath: /g\naccess: private"));
    assert!(
        got.len() == 1 && got[0].starts_with("routes[0].access: unknown access \"private\""),
        "{got:?}"
    );
}

#[test]
fn from_yaml_resource_route_needs_exactly_one_id() {
    for path in ["/g", "/g/{id}/{id}"] {
        let got = problems(&one_route(&format!(
            "methods: [GET]\npath: {path}\naccess: resource\nresource: generation\naction: read"
        )));
        assert_eq!(
            got,
            ["routes[0].path: a resource route needs exactly one {id} segment"],
            "{path}"
        );
    }
}

#[test]
fn from_yaml_id_on_non_resource_route_is_rejected() {
    for access in ["public", "authenticated"] {
        let got = problems(&one_route(&format!(
            "methods: [GET]\npath: /g/{{id}}\naccess: {access}"
        )));
        assert_eq!(
            got,
            ["routes[0].path: {id} is only allowed with access: resource"],
            "{access}"
        );
    }
}

#[test]
fn from_yaml_fields_of_other_access_kinds_are_rejected() {
    let got = problems(&one_route(
        "methods: [GET]\npath: /a\naccess: public\nscope: ops\naction: read",
    ));
    assert_eq!(
        got,
        [
            "routes[0].scope: not allowed with access: public",
            "routes[0].action: not allowed with access: public"
        ]
    );
    let got = problems(&one_route(
        "methods: [GET]\npath: /a\naccess: authenticated\nresource: team",
    ));
    assert_eq!(
        got,
        ["routes[0].resource: not allowed with access: authenticated"]
    );
    let got = problems(&one_route(
        "methods: [GET]\npath: /g/{id}\naccess: resource\nresource: team\naction: read\nscope: ops",
    ));
    assert_eq!(got, ["routes[0].scope: not allowed with access: resource"]);
}

#[test]
fn from_yaml_unknown_scope_is_rejected() {
    let got = problems(&one_route(
        "methods: [GET]\npath: /a\naccess: authenticated\nscope: opps",
    ));
    assert!(
        got.len() == 1 && got[0].starts_with("routes[0].scope: unknown scope \"opps\""),
        "{got:?}"
    );
}

#[test]
fn from_yaml_duplicate_method_and_path_is_rejected() {
    let yaml = "routes:
  - methods: [GET, PUT]
    path: /a/{id}
    access: resource
    resource: project
    action: read
  - methods: [PUT]
    path: /a/{id}
    access: resource
    resource: project
    action: write
";
    assert_eq!(
        problems(yaml),
        ["routes[1]: duplicate route \"PUT /a/{id}\" (first defined by routes[0])"]
    );
}

#[test]
fn from_yaml_same_path_different_methods_is_accepted() {
    let yaml = "routes:
  - methods: [GET]
    path: /a
    access: public
  - methods: [POST]
    path: /a
    access: authenticated
";
    let table = RouteTable::from_yaml(yaml).unwrap();
    assert_eq!(table.resolve("POST", "/a").unwrap().need, authenticated());
}

#[test]
fn from_yaml_unknown_lowercase_or_head_method_is_rejected() {
    for method in ["get", "Get", "FETCH", "HEAD", ""] {
        let got = problems(&one_route(&format!(
            "methods: [\"{method}\"]\npath: /a\naccess: public"
        )));
        assert_eq!(got.len(), 1, "{method}: {got:?}");
        assert!(got[0].starts_with("routes[0].methods: "), "{got:?}");
    }
    let got = problems(&one_route("methods: []\npath: /a\naccess: public"));
    assert_eq!(got, ["routes[0].methods: empty list"]);
    let got = problems(&one_route("methods: [GET, GET]\npath: /a\naccess: public"));
    assert_eq!(got, ["routes[0].methods: method \"GET\" listed twice"]);
}

#[test]
fn from_yaml_path_not_starting_with_slash_is_rejected() {
    for path in ["a/b", "\"\"", "\"*\""] {
        let got = problems(&one_route(&format!(
            "methods: [GET]\npath: {path}\naccess: public"
        )));
        assert_eq!(got.len(), 1, "{path}: {got:?}");
        assert!(
            got[0].starts_with("routes[0].path: ") && got[0].ends_with("does not start with '/'"),
            "{got:?}"
        );
    }
}

#[test]
fn from_yaml_unmatchable_path_segments_are_rejected() {
    for path in [
        "/a//b",
        "/a/../b",
        "/a/./b",
        "/a/%2e",
        "/a/b c",
        "/a/{ID}",
        "/a/x{id}",
        "/a/{name}",
        "/a\\b",
        "/ä",
    ] {
        let got = problems(&one_route(&format!(
            "methods: [GET]\npath: \"{path}\"\naccess: public"
        )));
        assert_eq!(got.len(), 1, "{path}: {got:?}");
        assert!(got[0].starts_with("routes[0].path: "), "{got:?}");
    }
}

#[test]
fn from_yaml_reports_every_problem_in_file_order() {
    let yaml = "routes:
  - methods: [get]
    path: /a
    access: public
  - methods: [GET]
    path: b
    access: public
  - methods: [GET]
    path: /g/{id}
    access: resource
    resource: generation
    action: reed
    extra: 1
  - methods: [GET]
    path: /ok
    access: public
  - methods: [GET]
    path: /ok
    access: public
";
    let got = problems(yaml);
    let fields: Vec<&str> = got.iter().map(|p| p.split(": ").next().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "routes[0].methods",
            "routes[1].path",
            "routes[2].extra",
            "routes[2].action",
            "routes[4]"
        ],
        "{got:?}"
    );
}

#[test]
fn route_config_error_is_send_sync_static() {
    fn check<T: std::error::Error + Send + Sync + 'static>() {}
    check::<RouteConfigError>();
    check::<RouteError>();
}

// ---- fuzzing --------------------------------------------------------------------

/// Paths built from route-like segments, without `?`/`#`.
fn path_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("api".to_owned()),
            Just("v1".to_owned()),
            Just("generations".to_owned()),
            Just("teams".to_owned()),
            Just("health".to_owned()),
            Just("status".to_owned()),
            Just(ID.to_owned()),
            "[a-zA-Z0-9._~%{}-]{0,12}",
        ],
        0..7,
    )
    .prop_map(|segments| segments.iter().map(|s| format!("/{s}")).collect())
}

fn any_method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(METHODS.to_vec()).prop_map(str::to_owned),
        ".{0,8}",
    ]
}

proptest! {
    #[test]
    fn resolve_arbitrary_strings_never_panics(method in any_method(), path in ".{0,300}") {
        let _ = table().resolve(&method, &path);
    }

    #[test]
    fn resolve_arbitrary_latin1_bytes_never_panics(
        method in any_method(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let path: String = bytes.iter().map(|&b| char::from(b)).collect();
        let _ = table().resolve(&method, &path);
        let _ = table().resolve(&method, &format!("/{path}"));
    }

    #[test]
    fn resolve_path_like_strings_never_panics_and_head_equals_get(path in path_like()) {
        let table = table();
        prop_assert_eq!(table.resolve("HEAD", &path), table.resolve("GET", &path));
    }

    #[test]
    fn resolve_dot_dot_segment_is_never_ok(
        method in any_method(),
        prefix in path_like(),
        suffix in path_like(),
        dots in prop::sample::select(vec!["..", ".", "%2e%2e", "%2E.", ".%2e", "%2e"]),
    ) {
        let path = format!("{prefix}/{dots}{suffix}");
        prop_assert_eq!(table().resolve(&method, &path), Err(RouteError::BadPath), "{}", path);
    }

    #[test]
    fn resolve_double_slash_is_never_ok(method in any_method(), prefix in path_like(), suffix in path_like()) {
        let path = format!("{prefix}//{suffix}");
        prop_assert!(table().resolve(&method, &path).is_err(), "{}", path);
    }

    #[test]
    fn resolve_encoded_slash_anywhere_is_never_ok(
        method in any_method(),
        row in 0..20usize,
        at in any::<prop::sample::Index>(),
        encoded in prop::sample::select(vec!["%2f", "%2F", "%5c", "%5C"]),
    ) {
        let rows = default_rows();
        let (_, path, ..) = &rows[row % rows.len()];
        let at = at.index(path.len() + 1);
        let path = format!("{}{encoded}{}", &path[..at], &path[at..]);
        prop_assert!(table().resolve(&method, &path).is_err(), "{}", path);
    }

    #[test]
    fn resolve_valid_uuid_on_resource_route_returns_it(
        bytes in any::<[u8; 16]>(),
        upper in any::<bool>(),
        row in 0..20usize,
        query in prop::option::of("[a-z=&/.%]{0,20}"),
    ) {
        let uuid = Uuid::from_bytes(bytes);
        let text = if upper { uuid.hyphenated().to_string().to_uppercase() } else { uuid.hyphenated().to_string() };
        let rows: Vec<_> = default_rows().into_iter().filter(|r| r.4).collect();
        let (method, path, pattern, need, _) = &rows[row % rows.len()];
        let mut target = path.replace(ID, &text);
        if let Some(query) = query {
            target = format!("{target}?{query}");
        }
        let matched = table().resolve(method, &target);
        prop_assert_eq!(
            matched,
            Ok(RouteMatch { route: Arc::from(*pattern), need: need.clone(), id: Some(uuid) })
        );
    }
}
