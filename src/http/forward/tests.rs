use std::sync::LazyLock;

use axum::body::Body;
use proptest::prelude::*;

use super::*;
use crate::model::UserStatus;
use crate::testkit::{AuthorizerBuilder, MemorySource, Token, config};

const USER: &str = "10000000-0000-4000-8000-000000000001";
const GEN: &str = "40000000-0000-4000-8000-000000000001";

/// A world with one active user and nothing else.
fn world() -> MemorySource {
    let source = MemorySource::new();
    source.user(USER.parse().expect("uuid"), UserStatus::Active);
    source
}

/// A store that is down.
fn dead() -> MemorySource {
    let source = MemorySource::new();
    source.set_down(true);
    source
}

fn forward(source: MemorySource, yaml: &str) -> Forward<MemorySource> {
    let config = config(yaml);
    Forward {
        config: Arc::new(config.forward_auth.clone()),
        authorizer: AuthorizerBuilder::new(config).build(source),
    }
}

fn bearer() -> String {
    Token::new(USER).bearer(&config("").jwt)
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    map
}

/// Status, headers and body of a response.
async fn parts(response: Response) -> (u16, HeaderMap, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

// ------------------------------------------------------------------ headers

#[test]
fn headers_join_repeats_with_comma_and_ignore_case() {
    let map = header_map(&[
        ("Authorization", "Bearer a"),
        ("authorization", "Bearer b"),
        ("X-Api-Key", "k"),
    ]);
    let headers = headers_of(&map);
    assert_eq!(headers.get("authorization"), Some("Bearer a,Bearer b"));
    assert_eq!(headers.get("x-api-key"), Some("k"));
    let mut added = Headers::default();
    added.add("AUTHORIZATION", "x");
    added.add("Authorization", "y");
    assert_eq!(added.get("authorization"), Some("x,y"));
}

#[test]
fn headers_largest_skips_the_proxys_description() {
    let long = "a".repeat(100);
    let map = header_map(&[("x-original-uri", &long), ("accept", "1234")]);
    let headers = headers_of(&map);
    assert_eq!(headers.largest(&[]), 100);
    assert_eq!(headers.largest(&["x-original-uri"]), 4);
    let req = headers.request("GET", "/", &["x-original-uri"]);
    assert_eq!(req.largest_header, 4);
    assert_eq!(req.authorization, None);
}

#[test]
fn check_target_is_everything_after_the_prefix() {
    for (uri, target) in [
        ("/v1/check/api/v1/users/profile", "/api/v1/users/profile"),
        ("/v1/check/a?b=c&d", "/a?b=c&d"),
        ("/v1/check", ""),
        ("/v1/check/", "/"),
        ("/v1/check?x", "?x"),
        ("/v1/check//api/../x", "//api/../x"),
        ("http://host/v1/check/x?y", "/x?y"),
    ] {
        let uri: Uri = uri.parse().expect("uri");
        assert_eq!(check_target(&uri), target, "{uri}");
    }
}

// ------------------------------------------------------------------ original

#[test]
fn original_from_nginx_traefik_or_both_agreeing() {
    let config = ForwardAuthSettings::default();
    let nginx = header_map(&[("X-Original-Method", "PUT"), ("X-Original-URI", "/a?b")]);
    let o = original::extract(&nginx, &config).expect("nginx");
    assert_eq!((o.method.as_str(), o.uri.as_str()), ("PUT", "/a?b"));

    let traefik = header_map(&[
        ("X-Forwarded-Method", "DELETE"),
        ("X-Forwarded-Uri", "/x"),
        ("X-Forwarded-Host", "example.org"),
        ("X-Forwarded-Proto", "https"),
    ]);
    let o = original::extract(&traefik, &config).expect("traefik");
    assert_eq!((o.method.as_str(), o.uri.as_str()), ("DELETE", "/x"));
    assert_eq!(o.host.as_deref(), Some("example.org"));
    assert_eq!(o.proto.as_deref(), Some("https"));

    let both = header_map(&[
        ("X-Original-Method", "GET"),
        ("X-Forwarded-Method", "GET"),
        ("X-Original-URI", "/same"),
        ("X-Forwarded-Uri", "/same"),
    ]);
    assert_eq!(
        original::extract(&both, &config).expect("both").uri,
        "/same"
    );

    // Mixed families, one field each: fine, nothing contradicts.
    let mixed = header_map(&[("X-Original-Method", "GET"), ("X-Forwarded-Uri", "/m")]);
    assert_eq!(original::extract(&mixed, &config).expect("mixed").uri, "/m");
}

#[test]
fn original_conflicts_and_repeats_are_ambiguous() {
    let config = ForwardAuthSettings::default();
    for pairs in [
        // A client behind Traefik adding nginx's header to pick a public route.
        &[
            ("X-Forwarded-Method", "DELETE"),
            ("X-Forwarded-Uri", "/api/v1/generations/x"),
            ("X-Original-URI", "/health/status"),
        ][..],
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/a"),
            ("X-Forwarded-Method", "POST"),
        ],
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/a"),
            ("X-Forwarded-Uri", "/health/status"),
        ],
    ] {
        let map = header_map(pairs);
        assert_eq!(
            original::extract(&map, &config),
            Err(original::OriginalError::Ambiguous),
            "{pairs:?}"
        );
    }
}

#[test]
fn original_missing_or_empty_is_missing() {
    let config = ForwardAuthSettings::default();
    for pairs in [
        &[][..],
        &[("X-Original-Method", "GET")],
        &[("X-Forwarded-Uri", "/a")],
        &[("X-Original-Method", "GET"), ("X-Original-URI", "")],
    ] {
        let map = header_map(pairs);
        let err = original::extract(&map, &config).expect_err("missing");
        assert_eq!(err.reason(), "missing_original_request", "{pairs:?}");
    }
}

#[test]
fn original_header_names_are_configurable() {
    let config = ForwardAuthSettings {
        original_method_header: "x-m".to_owned(),
        original_uri_header: "x-u".to_owned(),
    };
    let map = header_map(&[("X-M", "GET"), ("X-U", "/c")]);
    assert_eq!(original::extract(&map, &config).expect("custom").uri, "/c");
    let nginx_names = header_map(&[("X-Original-Method", "GET"), ("X-Original-URI", "/c")]);
    assert!(original::extract(&nginx_names, &config).is_err());
    assert_eq!(
        original::header_names(&config),
        ["x-m", "x-u", "x-forwarded-method", "x-forwarded-uri"]
    );
}

// ------------------------------------------------------------------ OPA input

/// A body as Kong's `opa` plugin builds it (see `opa.rs` for the source).
fn kong_body(method: &str, path: &str, headers: Value, query: Value) -> Vec<u8> {
    json!({
        "input": {
            "request": {
                "http": {
                    "method": method,
                    "scheme": "http",
                    "host": "example.org",
                    "port": 8000,
                    "path": path,
                    "headers": headers,
                    "querystring": query,
                    "tls": {},
                }
            },
            "client_ip": "127.0.0.1",
        }
    })
    .to_string()
    .into_bytes()
}

#[test]
fn opa_parse_reads_kongs_input() {
    let body = kong_body(
        "GET",
        "/api/v1/generations/x",
        json!({"authorization": "Bearer t", "accept": ["a", "b"], "X-Api-Key": "k"}),
        json!({"q": "a b", "flag": true, "off": false, "many": ["1", true]}),
    );
    let input = opa::parse(&body).expect("kong body");
    assert_eq!(input.method, "GET");
    assert_eq!(
        input.target,
        "/api/v1/generations/x?flag&many=1&many&q=a%20b"
    );
    assert_eq!(input.headers.get("authorization"), Some("Bearer t"));
    assert_eq!(input.headers.get("accept"), Some("a,b"));
    assert_eq!(input.headers.get("x-api-key"), Some("k"));
}

#[test]
fn opa_two_authorization_values_join_like_envoy() {
    let body = kong_body(
        "GET",
        "/x",
        json!({"authorization": ["Bearer a", "Bearer b"]}),
        json!({}),
    );
    let input = opa::parse(&body).expect("parse");
    assert_eq!(
        input.headers.get("authorization"),
        Some("Bearer a,Bearer b")
    );
}

#[test]
fn opa_empty_tables_may_be_arrays_and_are_optional() {
    let body = kong_body("GET", "/x", json!([]), json!([]));
    let input = opa::parse(&body).expect("empty arrays");
    assert_eq!(input.target, "/x");
    assert_eq!(input.headers, Headers::default());
    let minimal = br#"{"input":{"request":{"http":{"method":"GET","path":"/y"}}}}"#;
    assert_eq!(opa::parse(minimal).expect("minimal").target, "/y");
}

#[test]
fn opa_target_escapes_like_kong_and_never_splits_the_path() {
    for (path, target) in [
        ("/a b", "/a%20b"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a?b", "/a%3Fb"),
        ("/a#b", "/a%23b"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a\\b", "/a%5Cb"),
        ("/a\u{1}", "/a%01"),
        ("/ok-._~!$&'()*+,;=:@[]", "/ok-._~!$&'()*+,;=:@[]"),
        ("", ""),
    ] {
        assert_eq!(opa::target(path, &[]), target, "{path:?}");
    }
    assert_eq!(
        opa::target("/p", &["a=1".to_owned(), "b".to_owned()]),
        "/p?a=1&b"
    );
}

#[test]
fn opa_malformed_inputs_are_named_errors() {
    use opa::OpaError::*;
    let cases: [(&[u8], opa::OpaError); 10] = [
        (b"", Json { line: 1, column: 0 }),
        (b"{", Json { line: 1, column: 1 }),
        (b"[]", Type("the body", "an object")),
        (b"{}", Missing("input")),
        (br#"{"input":1}"#, Type("input", "an object")),
        (br#"{"input":{}}"#, Missing("input.request")),
        (
            br#"{"input":{"request":{"http":{"path":"/"}}}}"#,
            Missing("input.request.http.method"),
        ),
        (
            br#"{"input":{"request":{"http":{"method":1,"path":"/"}}}}"#,
            Type("input.request.http.method", "a string"),
        ),
        (
            br#"{"input":{"request":{"http":{"method":"GET","path":"/","headers":{"a":1}}}}}"#,
            Type(
                "input.request.http.headers",
                "an object of strings or arrays of strings",
            ),
        ),
        (
            br#"{"input":{"request":{"http":{"method":"GET","path":"/","querystring":{"a":{}}}}}}"#,
            Type(
                "input.request.http.querystring",
                "an object of strings, true, or arrays of those",
            ),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            opa::parse(body),
            Err(want),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let secret = br#"{"input":{"request":{"http":{"method":"GET","path":"/","headers":{"authorization":{"t":"Bearer s3cret"}}}}}}"#;
    let message = opa::parse(secret).expect_err("bad").to_string();
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn opa_result_allow_sets_identity_and_clears_spoofed_names() {
    let decision = Decision {
        decision_id: "d1".to_owned(),
        outcome: Outcome::Allow(Some(crate::answer::Identity {
            user_id: USER.parse().expect("uuid"),
            auth: crate::answer::AuthKind::Jwt,
            role: Some(crate::model::Role::Viewer),
        })),
        dry_run_deny: None,
        route: None,
        principal: None,
        role: None,
        rate_limit: None,
        identity_token: None,
    };
    let mut headers = Headers::default();
    headers.add("x-velro-user-id", "spoofed");
    headers.add("x-velro-admin", "1");
    let v = opa::result(&decision, &headers);
    assert_eq!(v["decision_id"], "d1");
    assert_eq!(v["result"]["allow"], true);
    let h = &v["result"]["headers"];
    assert_eq!(h["x-velro-user-id"], USER);
    assert_eq!(h["x-velro-auth"], "jwt");
    assert_eq!(h["x-velro-role"], "viewer");
    assert_eq!(h["x-velro-decision-id"], "d1");
    assert_eq!(h["x-velro-admin"], json!([]));
}

#[test]
fn opa_result_deny_carries_status_headers_and_our_body_as_message() {
    let decision = Decision {
        decision_id: "d2".to_owned(),
        outcome: Outcome::Deny(DenyReason::MissingCredentials),
        dry_run_deny: None,
        route: None,
        principal: None,
        role: None,
        rate_limit: None,
        identity_token: None,
    };
    let v = opa::result(&decision, &Headers::default());
    let r = &v["result"];
    assert_eq!(r["allow"], false);
    assert_eq!(r["status"], 401);
    assert_eq!(r["message"]["reason"], "missing_credentials");
    assert_eq!(r["message"]["request_id"], "d2");
    assert_eq!(r["headers"]["x-velro-decision-id"], "d2");
    assert!(r["headers"]["www-authenticate"].as_str().is_some());
    assert!(r["headers"].get("content-type").is_none());
}

// ------------------------------------------------------------------ handlers in-process

#[tokio::test]
async fn envoy_allow_lists_spoofed_headers_to_remove() {
    let fwd = forward(world(), "");
    let auth = bearer();
    let map = header_map(&[
        ("authorization", &auth),
        ("x-velro-user-id", "spoofed"),
        ("x-velro-admin", "1"),
    ]);
    let uri: Uri = "/v1/check/api/v1/users/profile?x=1".parse().expect("uri");
    let (status, headers, _) = parts(envoy_check(State(fwd), Method::GET, uri, map).await).await;
    assert_eq!(status, 200);
    assert_eq!(get(&headers, "x-velro-user-id"), Some(USER));
    assert_eq!(get(&headers, "x-velro-auth"), Some("jwt"));
    assert_eq!(
        get(&headers, "x-velro-role"),
        None,
        "authenticated-only route"
    );
    assert_eq!(
        get(&headers, ENVOY_HEADERS_TO_REMOVE),
        Some("x-velro-admin")
    );
}

#[tokio::test]
async fn auth_nginx_shape_folds_statuses_into_401_or_403() {
    let fwd = forward(world(), "");
    let auth = bearer();
    let gen_path = format!("/api/v1/generations/{GEN}");
    for (extra, want_status, real, reason) in [
        (None, 403, "404", "not_found"),
        (Some("/nope"), 403, "404", "no_route"),
        (
            Some("/api/v1/generations/not-a-uuid"),
            403,
            "400",
            "invalid_id",
        ),
        (Some("/api/v1/users/profile"), 200, "", ""),
    ] {
        let uri = extra.unwrap_or(&gen_path);
        let map = header_map(&[
            ("authorization", &auth),
            ("x-original-method", "GET"),
            ("x-original-uri", uri),
            (PROXY_MODE, "nginx"),
            ("x-velro-admin", "1"),
        ]);
        let (status, headers, body) = parts(forward_auth(State(fwd.clone()), map).await).await;
        assert_eq!(status, want_status, "{uri}: {body}");
        if status == 200 {
            assert_eq!(
                get(&headers, NGINX_HEADERS_TO_REMOVE),
                Some("x-velro-admin")
            );
            continue;
        }
        assert_eq!(get(&headers, NGINX_STATUS), Some(real), "{uri}");
        let rendered: Value =
            serde_json::from_str(get(&headers, NGINX_BODY).expect("body header")).expect("json");
        assert_eq!(rendered["reason"], reason);
        assert_eq!(rendered.to_string(), body);
    }
    // A 401 stays a 401, with its challenge.
    let map = header_map(&[
        ("x-original-method", "GET"),
        ("x-original-uri", &gen_path),
        (PROXY_MODE, "nginx"),
    ]);
    let (status, headers, _) = parts(forward_auth(State(fwd), map).await).await;
    assert_eq!(status, 401);
    assert_eq!(get(&headers, NGINX_STATUS), Some("401"));
    assert!(get(&headers, "www-authenticate").is_some());
}

#[tokio::test]
async fn auth_true_shape_is_the_default_and_missing_original_is_400() {
    let fwd = forward(world(), "");
    let (status, headers, body) =
        parts(forward_auth(State(fwd.clone()), HeaderMap::new()).await).await;
    assert_eq!(status, 400);
    assert_eq!(get(&headers, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["reason"], "missing_original_request");
    assert_eq!(
        v["request_id"],
        get(&headers, "x-velro-decision-id").expect("id")
    );

    let map = header_map(&[(PROXY_MODE, "nginx")]);
    let (status, headers, _) = parts(forward_auth(State(fwd.clone()), map).await).await;
    assert_eq!((status, get(&headers, NGINX_STATUS)), (403, Some("400")));

    // Any other mode value is the default shape.
    let map = header_map(&[
        (PROXY_MODE, "Nginx"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/nope"),
    ]);
    let (status, headers, _) = parts(forward_auth(State(fwd), map).await).await;
    assert_eq!((status, get(&headers, NGINX_STATUS)), (404, None));
}

#[tokio::test]
async fn cannot_decide_is_503_or_an_nginx_rendered_503_never_an_allow() {
    let fwd = forward(dead(), "");
    let auth = bearer();
    let path = format!("/api/v1/generations/{GEN}");
    let uri: Uri = format!("/v1/check{path}").parse().expect("uri");
    let map = header_map(&[("authorization", &auth)]);
    let (status, _, body) =
        parts(envoy_check(State(fwd.clone()), Method::GET, uri, map.clone()).await).await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v,
        json!({"error": "unavailable", "reason": "store_unavailable"})
    );

    let mut nginx = map.clone();
    nginx.insert(PROXY_MODE, HeaderValue::from_static("nginx"));
    nginx.insert("x-original-method", HeaderValue::from_static("GET"));
    nginx.insert(
        "x-original-uri",
        HeaderValue::from_str(&path).expect("value"),
    );
    let (status, headers, _) = parts(forward_auth(State(fwd.clone()), nginx).await).await;
    assert_eq!((status, get(&headers, NGINX_STATUS)), (403, Some("503")));

    let body = kong_body("GET", &path, json!({"authorization": auth}), json!({}));
    let request = Request::post("/v1/data/velro")
        .body(Body::from(body))
        .expect("request");
    let (status, _, body) = parts(opa_data(State(fwd), request).await).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
}

#[tokio::test]
async fn opa_body_limit_and_garbage_answer_413_and_400() {
    let fwd = forward(world(), "");
    let big = vec![b' '; OPA_MAX_BODY + 1];
    let request = Request::post("/v1/data/x")
        .body(Body::from(big.clone()))
        .expect("req");
    let (status, _, body) = parts(opa_data(State(fwd.clone()), request).await).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["code"],
        "request_too_large"
    );
    // No content-length: the limit still holds while reading.
    let stream = Body::from_stream(futures_chunks(big));
    let request = Request::post("/v1/data/x").body(stream).expect("req");
    let (status, _, _) = parts(opa_data(State(fwd.clone()), request).await).await;
    assert_eq!(status, 413);

    let request = Request::post("/v1/data/x")
        .body(Body::from("{nope"))
        .expect("req");
    let (status, _, body) = parts(opa_data(State(fwd), request).await).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["code"], "invalid_parameter");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("not valid JSON")
    );
}

/// A body in 1 KiB chunks, without a length.
fn futures_chunks(
    bytes: Vec<u8>,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1024).map(|c| Ok(c.to_vec())).collect();
    tokio_stream::iter(chunks)
}

// ------------------------------------------------------------------ fuzzing

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

static WORLD: LazyLock<Forward<MemorySource>> = LazyLock::new(|| forward(world(), ""));

/// The routes that allow with no credentials (the shipped table).
fn is_public(method: &str, target: &str) -> bool {
    let path = target.split(['?', '#']).next().unwrap_or("");
    matches!(
        (method, path),
        ("POST", "/api/v1/auth/login" | "/api/v1/auth/refresh")
            | ("GET" | "HEAD", "/health/status")
    )
}

fn arb_method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("HEAD".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("get".to_owned()),
        "[A-Za-z]{0,8}",
        "[ -~]{0,8}",
    ]
}

fn arb_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/health/status".to_owned()),
        Just("/api/v1/auth/login".to_owned()),
        Just("/api/v1/users/profile".to_owned()),
        Just(format!("/api/v1/generations/{GEN}")),
        "(/(health|status|api|v1|auth|login|users|profile|generations|%2e|%2F|\\.|\\.\\.|)){0,5}[?#]?[ -~]{0,6}",
        "[ -~]{0,40}",
        ".{0,16}",
    ]
}

fn arb_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("authorization"),
        Just("x-api-key"),
        Just("x-velro-user-id"),
        Just("x-original-method"),
        Just("x-original-uri"),
        Just("x-forwarded-method"),
        Just("x-forwarded-uri"),
        Just("x-velro-proxy"),
        Just("accept"),
    ];
    let value = prop_oneof![
        Just("Bearer x.y.z".to_owned()),
        Just("nginx".to_owned()),
        Just("GET".to_owned()),
        Just("/health/status".to_owned()),
        "[ -~]{0,30}",
    ];
    prop::collection::vec((name.prop_map(str::to_owned), value), 0..6)
}

fn to_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    map
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        prop::arbitrary::any::<bool>().prop_map(Value::Bool),
        prop::arbitrary::any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Headers as Kong sends them: strings, or arrays for repeated headers.
fn arb_kong_headers() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just("authorization".to_owned()),
        Just("x-api-key".to_owned()),
        Just("x-velro-user-id".to_owned()),
        "[a-z-]{1,8}",
    ];
    let value = prop_oneof![
        "[ -~]{0,20}".prop_map(Value::String),
        prop::collection::vec("[ -~]{0,12}".prop_map(Value::String), 0..3).prop_map(Value::Array),
    ];
    prop::collection::btree_map(name, value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A query as Kong sends it: strings, `true`, or arrays of those.
fn arb_kong_query() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        ".{0,8}".prop_map(Value::String),
        Just(Value::Bool(true)),
        prop::collection::vec(".{0,6}".prop_map(Value::String), 0..3).prop_map(Value::Array),
    ];
    prop::collection::btree_map(".{0,6}", value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn opa_parse_never_panics_on_bytes(bytes in prop::collection::vec(prop::arbitrary::any::<u8>(), 0..300)) {
        let _ = opa::parse(&bytes);
    }

    #[test]
    fn opa_target_never_leaves_a_raw_query_or_fragment_in_the_path(path in ".{0,40}") {
        let target = opa::target(&path, &[]);
        prop_assert!(!target.contains(['?', '#']), "{target}");
        prop_assert!(target.bytes().all(|b| b.is_ascii_graphic()), "{target}");
    }

    #[test]
    fn original_extract_never_panics(headers in arb_headers()) {
        let _ = original::extract(&to_map(&headers), &ForwardAuthSettings::default());
    }

    /// Envoy shape: whatever the target and headers, only public routes allow.
    #[test]
    fn envoy_check_garbage_never_allows_a_protected_route(
        method in arb_method(), path in arb_path(), headers in arb_headers(),
    ) {
        let (Ok(method), Ok(uri)) = (
            Method::from_bytes(method.as_bytes()),
            format!("{CHECK_PREFIX}{path}").parse::<Uri>(),
        ) else {
            return Ok(());
        };
        let target = check_target(&uri).to_owned();
        let response = RT.block_on(envoy_check(State(WORLD.clone()), method.clone(), uri, to_map(&headers)));
        if response.status() == StatusCode::OK {
            prop_assert!(is_public(method.as_str(), &target), "{method} {target}");
        }
    }

    /// nginx/Traefik shape: only public routes allow, and only when the
    /// proxy's description of the request is unambiguous.
    #[test]
    fn auth_garbage_never_allows_a_protected_route(
        method in arb_method(),
        path in arb_path(),
        family in 0..5u8,
        extra in arb_headers(),
    ) {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut describe = |m: &str, u: &str| {
            pairs.push((m.to_owned(), method.clone()));
            pairs.push((u.to_owned(), path.clone()));
        };
        match family {
            0 => describe("x-original-method", "x-original-uri"),
            1 => describe("x-forwarded-method", "x-forwarded-uri"),
            2 => {
                describe("x-original-method", "x-original-uri");
                describe("x-forwarded-method", "x-forwarded-uri");
            }
            3 => {
                describe("x-forwarded-method", "x-forwarded-uri");
                pairs.push(("x-original-uri".to_owned(), "/health/status".to_owned()));
            }
            _ => {}
        }
        pairs.extend(extra);
        let map = to_map(&pairs);
        let original = original::extract(&map, &ForwardAuthSettings::default());
        let response = RT.block_on(forward_auth(State(WORLD.clone()), map));
        if response.status() == StatusCode::OK {
            let o = original.expect("an allow had an original request");
            prop_assert!(is_public(&o.method, &o.uri), "{o:?}");
        }
    }

    /// OPA shape: any JSON anywhere in Kong's input; only public routes allow.
    #[test]
    fn opa_garbage_never_allows_a_protected_route(
        method in prop_oneof![4 => arb_method().prop_map(Value::String), 1 => arb_json()],
        path in prop_oneof![4 => arb_path().prop_map(Value::String), 1 => arb_json()],
        headers in prop_oneof![3 => arb_kong_headers(), 1 => arb_json()],
        query in prop_oneof![3 => arb_kong_query(), 1 => arb_json()],
        shuffle in prop::arbitrary::any::<bool>(),
    ) {
        let body = if shuffle {
            json!({"input": {"request": {"http": {"method": method, "path": path}}, "x": headers}})
        } else {
            json!({"input": {"request": {"http": {
                "method": method, "path": path, "headers": headers, "querystring": query,
            }}}})
        };
        let bytes = body.to_string();
        let parsed = opa::parse(bytes.as_bytes());
        let request = Request::post("/v1/data/velro").body(Body::from(bytes)).expect("request");
        let (status, _, text) = RT.block_on(async { parts(opa_data(State(WORLD.clone()), request).await).await });
        let answer: Value = serde_json::from_str(&text).expect("always JSON");
        match &parsed {
            Err(_) => prop_assert_eq!(status, 400),
            Ok(input) => {
                prop_assert_eq!(status, 200);
                if answer["result"]["allow"] == json!(true) {
                    prop_assert!(is_public(&input.method, &input.target), "{input:?}");
                }
            }
        }
    }
}

// ---- the client address for the per-address failure limit ----

#[test]
fn forwarded_client_is_the_last_x_forwarded_for_hop() {
    let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
    for (xff, expected) in [
        ("203.0.113.9", ip("203.0.113.9")),
        // The client wrote the first hops; the proxy appended the last.
        ("1.2.3.4, 198.51.100.7", ip("198.51.100.7")),
        ("spoofed,  2001:db8::5 ", ip("2001:db8::5")),
        ("198.51.100.7:4711", ip("198.51.100.7")),
        ("[2001:db8::5]:443", ip("2001:db8::5")),
        ("1.2.3.4, unknown", None),
        ("", None),
    ] {
        let headers = Headers::from_pairs([("X-Forwarded-For", xff)]);
        assert_eq!(forwarded_client(&headers), expected, "{xff:?}");
    }
    // Two header lines are joined in order: the last line's last hop counts.
    let two = Headers::from_pairs([
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-for", "192.0.2.44"),
    ]);
    assert_eq!(forwarded_client(&two), ip("192.0.2.44"));
    assert_eq!(forwarded_client(&Headers::default()), None);
}
