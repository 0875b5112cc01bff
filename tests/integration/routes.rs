//! Every row of the default route table, allowed and denied, and the demo
//! decision matrix (demo/README.md), through a real gRPC socket.

use sqlx::PgPool;

use super::support::{demo::*, start};

const USERS: [(&str, &str); 5] = [
    ("alice", ALICE),
    ("bob", BOB),
    ("carol", CAROL),
    ("dave", DAVE),
    ("erin", ERIN),
];

/// demo/README.md, compact table: per generation, per user (alice, bob, carol,
/// dave, erin): GET/PUT/DELETE as A = allow, 4 = 404 not_found,
/// R = 403 insufficient_role, I = 403 user_inactive; then the role on allow.
const GENERATIONS: [(&str, [(&str, &str); 5]); 8] = [
    (
        GEN_BOB,
        [
            ("AAA", "owner"),
            ("AAA", "owner"),
            ("AAA", "admin"),
            ("III", ""),
            ("444", ""),
        ],
    ),
    (
        GEN_PUBLIC,
        [
            ("AAA", "owner"),
            ("ARR", "viewer"),
            ("ARR", "viewer"),
            ("III", ""),
            ("ARR", "viewer"),
        ],
    ),
    (
        GEN_SHARED_ERIN,
        [
            ("AAA", "owner"),
            ("444", ""),
            ("AAR", "member"),
            ("III", ""),
            ("ARR", "viewer"),
        ],
    ),
    (
        GEN_CHILD,
        [
            ("AAA", "owner"),
            ("AAR", "member"),
            ("AAA", "owner"),
            ("III", ""),
            ("444", ""),
        ],
    ),
    (
        GEN_DELETED,
        [
            ("444", ""),
            ("444", ""),
            ("444", ""),
            ("III", ""),
            ("444", ""),
        ],
    ),
    (
        GEN_BOB_ALONE,
        [
            ("444", ""),
            ("AAA", "owner"),
            ("444", ""),
            ("III", ""),
            ("444", ""),
        ],
    ),
    (
        GEN_GRANDCHILD,
        [
            ("AAA", "owner"),
            ("AAR", "member"),
            ("AAA", "owner"),
            ("III", ""),
            ("444", ""),
        ],
    ),
    (
        GEN_MISSING,
        [
            ("444", ""),
            ("444", ""),
            ("444", ""),
            ("III", ""),
            ("444", ""),
        ],
    ),
];

fn expected(code: char) -> (u16, &'static str) {
    match code {
        'A' => (200, "ok"),
        '4' => (404, "not_found"),
        'R' => (403, "insufficient_role"),
        'I' => (403, "user_inactive"),
        other => panic!("bad code {other}"),
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn check_demo_generation_matrix_matches_oracle(pool: PgPool) {
    let h = start(pool).await;
    let mut mismatches = Vec::new();
    for (generation, row) in GENERATIONS {
        for ((name, user), (codes, role)) in USERS.iter().zip(row) {
            for (method, code) in ["GET", "PUT", "DELETE"].iter().zip(codes.chars()) {
                let path = format!("/api/v1/generations/{generation}");
                let a = h.check_as(user, method, &path).await;
                let (status, reason) = expected(code);
                let got_role = a.headers.get("x-velro-role").cloned().unwrap_or_default();
                let want_role = if code == 'A' { role } else { "" };
                if a.status != status || a.reason != reason || got_role != want_role {
                    mismatches.push(format!(
                        "{name} {method} {generation}: want {status} {reason} {want_role:?}, got {} {} {got_role:?}",
                        a.status, a.reason
                    ));
                }
            }
            // PUT .../share needs `share`: allowed exactly where DELETE is.
            let a = h
                .check_as(
                    user,
                    "PUT",
                    &format!("/api/v1/generations/{generation}/share"),
                )
                .await;
            let (status, reason) = expected(codes.chars().nth(2).expect("3 codes"));
            if a.status != status || a.reason != reason {
                mismatches.push(format!(
                    "{name} PUT share {generation}: want {status} {reason}, got {} {}",
                    a.status, a.reason
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn check_demo_project_and_team_matrix_matches_oracle(pool: PgPool) {
    let h = start(pool).await;
    // (path, per user: (status, reason, role))
    let cases: [(String, [(u16, &str, &str); 5]); 7] = [
        (
            format!("/api/v1/projects/{PROJECT_NOTEBOOK}"),
            [
                (200, "ok", "owner"),
                (200, "ok", "member"),
                (200, "ok", "admin"),
                (403, "user_inactive", ""),
                (404, "not_found", ""),
            ],
        ),
        (
            format!("/api/v1/projects/{PROJECT_GALLERY}"),
            [
                (200, "ok", "owner"),
                (200, "ok", "viewer"),
                (200, "ok", "viewer"),
                (403, "user_inactive", ""),
                (200, "ok", "viewer"),
            ],
        ),
        (
            format!("/api/v1/projects/{PROJECT_SKETCHES}"),
            [
                (200, "ok", "owner"),
                (404, "not_found", ""),
                (200, "ok", "member"),
                (403, "user_inactive", ""),
                (404, "not_found", ""),
            ],
        ),
        (
            format!("/api/v1/teams/{TEAM_ACME}/members"),
            [
                (404, "not_found", ""),
                (404, "not_found", ""),
                (200, "ok", "admin"),
                (403, "user_inactive", ""),
                (404, "not_found", ""),
            ],
        ),
        (
            format!("/api/v1/teams/{TEAM_RESEARCH}/permissions"),
            [
                (404, "not_found", ""),
                (200, "ok", "member"),
                (200, "ok", "admin"),
                (403, "user_inactive", ""),
                (404, "not_found", ""),
            ],
        ),
        (
            format!("/api/v1/teams/{TEAM_ACME}/invite"),
            [
                (404, "not_found", ""),
                (404, "not_found", ""),
                (200, "ok", "admin"),
                (403, "user_inactive", ""),
                (404, "not_found", ""),
            ],
        ),
        (
            format!("/api/v1/teams/{TEAM_RESEARCH}/invite"),
            [
                (404, "not_found", ""),
                (403, "insufficient_role", ""),
                (200, "ok", "admin"),
                (403, "user_inactive", ""),
                (404, "not_found", ""),
            ],
        ),
    ];
    let mut mismatches = Vec::new();
    for (path, row) in &cases {
        let method = if path.ends_with("/invite") {
            "POST"
        } else {
            "GET"
        };
        for ((name, user), (status, reason, role)) in USERS.iter().zip(row) {
            let a = h.check_as(user, method, path).await;
            let got_role = a.headers.get("x-velro-role").cloned().unwrap_or_default();
            if a.status != *status || a.reason != *reason || got_role != *role {
                mismatches.push(format!("{name} {method} {path}: want {status} {reason} {role:?}, got {} {} {got_role:?}", a.status, a.reason));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// One allowed and one denied request for every row of the SPEC's default table.
#[sqlx::test(migrations = "./migrations")]
async fn check_every_default_route_row_allows_and_denies(pool: PgPool) {
    let h = start(pool).await;
    let alice = format!("Bearer {}", h.token(ALICE));
    let erin = format!("Bearer {}", h.token(ERIN));
    let dave = format!("Bearer {}", h.token(DAVE));
    let ops = format!("Bearer {}", h.token_with(ALICE, None, Some("ops")));
    let carol = format!("Bearer {}", h.token(CAROL));
    let bob = format!("Bearer {}", h.token(BOB));
    let gen_path = format!("/api/v1/generations/{GEN_BOB}");
    // (method, path, allowed-with, denied-with, denied status, denied reason)
    let rows: Vec<(&str, String, Option<&str>, Option<&str>, u16, &str)> = vec![
        ("POST", "/api/v1/auth/login".into(), None, None, 0, ""),
        ("POST", "/api/v1/auth/refresh".into(), None, None, 0, ""),
        (
            "POST",
            "/api/v1/auth/logout".into(),
            Some(&alice),
            None,
            401,
            "missing_credentials",
        ),
        (
            "GET",
            gen_path.clone(),
            Some(&alice),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "PUT",
            gen_path.clone(),
            Some(&alice),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "PATCH",
            gen_path.clone(),
            Some(&alice),
            Some(&dave),
            403,
            "user_inactive",
        ),
        (
            "DELETE",
            gen_path.clone(),
            Some(&alice),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("{gen_path}/authorize"),
            Some(&alice),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "PUT",
            format!("{gen_path}/share"),
            Some(&alice),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/v1/projects/{PROJECT_NOTEBOOK}"),
            Some(&alice),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/v1/teams/{TEAM_ACME}/members"),
            Some(&carol),
            Some(&alice),
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/v1/teams/{TEAM_ACME}/permissions"),
            Some(&carol),
            Some(&erin),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/v1/teams/{TEAM_RESEARCH}/invite"),
            Some(&carol),
            Some(&bob),
            403,
            "insufficient_role",
        ),
        (
            "GET",
            "/api/v1/users/profile".into(),
            Some(&alice),
            Some(&dave),
            403,
            "user_inactive",
        ),
        (
            "PUT",
            "/api/v1/users/profile".into(),
            Some(&erin),
            None,
            401,
            "missing_credentials",
        ),
        (
            "GET",
            "/api/v1/users/sessions".into(),
            Some(&alice),
            None,
            401,
            "missing_credentials",
        ),
        (
            "GET",
            "/api/v1/users/activity".into(),
            Some(&alice),
            None,
            401,
            "missing_credentials",
        ),
        ("GET", "/health/status".into(), None, None, 0, ""),
        (
            "GET",
            "/health/metrics".into(),
            Some(&ops),
            Some(&alice),
            403,
            "insufficient_scope",
        ),
        (
            "GET",
            "/health/cache".into(),
            Some(&ops),
            Some(&erin),
            403,
            "insufficient_scope",
        ),
    ];
    for (method, path, allowed, denied, status, reason) in &rows {
        let headers: Vec<(&str, &str)> = allowed
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let a = h.check(method, path, &headers).await;
        assert_eq!(
            (a.status, a.reason.as_str()),
            (200, "ok"),
            "{method} {path} allowed case"
        );
        if *status == 0 {
            // Public: no identity headers at all.
            assert!(
                !a.headers.contains_key("x-velro-user-id"),
                "{method} {path}: public adds no identity"
            );
            continue;
        }
        assert!(
            a.headers.contains_key("x-velro-user-id"),
            "{method} {path}: identity header"
        );
        let headers: Vec<(&str, &str)> = denied
            .map(|d| vec![("authorization", d)])
            .unwrap_or_default();
        let d = h.check(method, path, &headers).await;
        assert_eq!(
            (d.status, d.reason.as_str()),
            (*status, *reason),
            "{method} {path} denied case"
        );
    }
    // HEAD is authorized as GET.
    let a = h
        .check("HEAD", &gen_path, &[("authorization", &alice)])
        .await;
    assert_eq!(a.status, 200);
    // Methods outside the table and lower-case methods are no_route.
    for method in ["OPTIONS", "get", "TRACE"] {
        let a = h
            .check(method, &gen_path, &[("authorization", &alice)])
            .await;
        assert_eq!((a.status, a.reason.as_str()), (404, "no_route"), "{method}");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn check_malformed_paths_are_denied_before_authentication(pool: PgPool) {
    let h = start(pool).await;
    let long = format!("/api/v1/generations/{}", "a".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "GET",
            format!("/api/v1/generations/{GEN_BOB}/../{GEN_PUBLIC}"),
            400,
            "bad_path",
        ),
        (
            "GET",
            format!("/api/v1/generations/./{GEN_BOB}"),
            400,
            "bad_path",
        ),
        (
            "GET",
            format!("/api/v1//generations/{GEN_BOB}"),
            400,
            "bad_path",
        ),
        (
            "GET",
            format!("/api/v1/generations%2F{GEN_BOB}"),
            400,
            "bad_path",
        ),
        (
            "GET",
            format!("/api/v1/generations%5c{GEN_BOB}"),
            400,
            "bad_path",
        ),
        ("GET", "/api/v1/generations/%zz".to_owned(), 400, "bad_path"),
        ("GET", "/api/v1/gener%61tions/x".to_owned(), 400, "bad_path"),
        (
            "GET",
            "/api/v1/generations/\u{1}".to_owned(),
            400,
            "bad_path",
        ),
        ("GET", long, 400, "bad_path"),
        (
            "GET",
            "/api/v1/generations/not-a-uuid".to_owned(),
            400,
            "invalid_id",
        ),
        (
            "GET",
            format!("/api/v1/generations/{{{GEN_BOB}}}"),
            400,
            "invalid_id",
        ),
        (
            "GET",
            format!("/api/v1/generations/urn:uuid:{GEN_BOB}"),
            400,
            "invalid_id",
        ),
        (
            "GET",
            format!("/api/v1/generations/{}", GEN_BOB.replace('-', "")),
            400,
            "invalid_id",
        ),
        ("GET", "/api/v1/unknown".to_owned(), 404, "no_route"),
        (
            "GET",
            format!("/api/v1/generations/{GEN_BOB}/"),
            404,
            "no_route",
        ),
        (
            "DELETE",
            format!("/api/v1/projects/{PROJECT_NOTEBOOK}"),
            404,
            "no_route",
        ),
    ];
    for (method, path, status, reason) in cases {
        let a = h.check(method, &path, &[]).await;
        assert_eq!(
            (a.status, a.reason.as_str()),
            (status, reason),
            "{method} {path:.80}"
        );
        assert!(
            !a.headers.contains_key("www-authenticate"),
            "route denies carry no challenge"
        );
    }
    // Upper-case UUIDs are UUIDs; the query string is ignored.
    let alice = format!("Bearer {}", h.token(ALICE));
    let a = h
        .check(
            "GET",
            &format!("/api/v1/generations/{}?x=1", GEN_BOB.to_uppercase()),
            &[("authorization", &alice)],
        )
        .await;
    assert_eq!(a.status, 200);
}

/// Random, mostly hostile requests through the socket: every one gets an
/// answer (never an RPC error, never a crash), and without credentials only the
/// public routes are ever allowed.
#[sqlx::test(migrations = "./migrations")]
async fn check_random_requests_always_answer_and_never_allow_anonymously(pool: PgPool) {
    use rand::Rng;
    use rand::seq::IndexedRandom;

    let h = start(pool).await;
    let mut rng = rand::rng();
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "", "G\u{0}T", "CONNECT",
    ];
    let seeds = [
        format!("/api/v1/generations/{GEN_BOB}"),
        format!("/api/v1/generations/{GEN_BOB}/share"),
        format!("/api/v1/projects/{PROJECT_NOTEBOOK}"),
        format!("/api/v1/teams/{TEAM_ACME}/invite"),
        "/api/v1/users/profile".to_owned(),
        "/api/v1/auth/login".to_owned(),
        "/health/status".to_owned(),
        "/health/metrics".to_owned(),
    ];
    let junk = [
        "/", "//", "..", ".", "%", "%2f", "%2e", "%00", "?", "#", "\\", "\u{7f}", "é", "{", "}",
        " ", "%25", "-", "a",
    ];
    let public = [
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/health/status",
    ];
    for _ in 0..400 {
        let mut path = seeds.choose(&mut rng).expect("seed").clone();
        for _ in 0..rng.random_range(0..4) {
            let at = rng.random_range(0..=path.len());
            if path.is_char_boundary(at) {
                path.insert_str(at, junk.choose(&mut rng).expect("junk"));
            }
        }
        let method = *methods.choose(&mut rng).expect("method");
        let garbage_auth = [
            "Bearer",
            "Bearer ",
            "Bearer a.b.c",
            "Basic x",
            ",",
            "Bearer eyJhbGciOiJub25lIn0.e30.",
        ];
        let mut headers = vec![("x-velro-user-id", ALICE)];
        if rng.random_bool(0.5) {
            headers.push((
                "authorization",
                garbage_auth.choose(&mut rng).expect("auth"),
            ));
        }
        let response = h.raw_check(method, &path, &headers).await;
        let a = velro_authz::testkit::Answer::read(
            response.unwrap_or_else(|e| panic!("{method} {path:?}: RPC error {e}")),
        );
        if a.status == 200 {
            let bare = path.split(['?', '#']).next().unwrap_or_default();
            assert!(
                public.contains(&bare),
                "anonymous allow for {method} {path:?}"
            );
            assert!(
                !a.headers.contains_key("x-velro-user-id"),
                "identity on an anonymous allow"
            );
        }
    }
}
