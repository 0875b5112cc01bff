//! The ext_authz handler called in-process (`Authorization::check` with a
//! tonic request, no socket), over facts in memory: what Envoy receives on
//! allow, on deny, on a malformed request and when no decision can be made.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use uuid::Uuid;

use super::*;
use crate::answer::{AUTH, ROLE, USER_ID};
use crate::model::UserStatus;
use crate::testkit::{Answer, AuthorizerBuilder, Check, Held, MemorySource, Token, config};

/// An active user owning one generation.
fn world() -> (MemorySource, Uuid, Uuid) {
    let source = MemorySource::new();
    let (owner, generation) = (Uuid::new_v4(), Uuid::new_v4());
    source
        .user(owner, UserStatus::Active)
        .generation(generation, owner);
    (source, owner, generation)
}

/// The handler over `source`, configured by `yaml`.
fn ext_authz<S: FactSource>(yaml: &str, source: S) -> ExtAuthz<S> {
    ExtAuthz {
        authorizer: AuthorizerBuilder::yaml(yaml).build(source),
    }
}

/// Calls the handler with `request` as tonic hands it over.
async fn call<S: FactSource>(
    ext: &ExtAuthz<S>,
    request: Request<CheckRequest>,
) -> Result<CheckResponse, Status> {
    Authorization::check(ext, request)
        .await
        .map(Response::into_inner)
}

fn bearer(user: Uuid) -> String {
    Token::new(user).bearer(&config("").jwt)
}

#[tokio::test]
async fn check_allow_sets_identity_headers_and_removes_spoofed_velro_names() {
    let (source, owner, generation) = world();
    let ext = ext_authz("", source);
    let base = Check::new("GET", &format!("/api/v1/generations/{generation}")).headers(&[
        ("authorization", &bearer(owner)),
        ("x-velro-user-id", "spoofed"),
        ("x_velro_user_id", "aliased"),
        ("x-velro-admin", "1"),
        ("accept", "*/*"),
    ]);
    // Envoy sends `headers`, or `header_map` with `encode_raw_headers`.
    for check in [base.clone(), base.in_header_map()] {
        let a = Answer::read(
            call(&ext, Request::new(check.request()))
                .await
                .expect("answer"),
        );
        assert_eq!((a.status, a.code), (200, rpc_code::OK));
        assert_eq!(a.header(USER_ID), Some(owner.to_string().as_str()));
        assert_eq!(a.header(AUTH), Some("jwt"));
        assert_eq!(a.header(ROLE), Some("owner"));
        assert_eq!(a.header(DECISION_ID), Some(a.metadata_decision_id.as_str()));
        assert_eq!(a.metadata_decision_id.len(), 32);
        assert_eq!(a.header_actions.len(), a.headers.len());
        assert!(
            a.header_actions
                .values()
                .all(|x| *x == HeaderAppendAction::OverwriteIfExistsOrAdd),
            "{:?}",
            a.header_actions
        );
        let mut removed = a.headers_to_remove.clone();
        removed.sort();
        assert_eq!(removed, ["x-velro-admin", "x_velro_user_id"], "{check:?}");
        assert_eq!(
            a.response_headers.get(DECISION_ID),
            Some(&a.metadata_decision_id)
        );
        assert_eq!(a.metadata("route"), Some("GET /api/v1/generations/{id}"));
    }
}

#[tokio::test]
async fn check_deny_carries_status_body_challenge_and_decision_id() {
    let (source, _, generation) = world();
    let ext = ext_authz("", source);
    let path = format!("/api/v1/generations/{generation}");

    let a = Answer::read(
        call(&ext, Request::new(Check::new("GET", &path).request()))
            .await
            .expect("answer"),
    );
    assert_eq!((a.status, a.code), (401, rpc_code::UNAUTHENTICATED));
    assert_eq!(
        a.body,
        serde_json::json!({
            "error": "unauthenticated",
            "reason": "missing_credentials",
            "request_id": a.metadata_decision_id,
        })
    );
    assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"velro\""));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header(DECISION_ID), Some(a.metadata_decision_id.as_str()));
    assert_eq!(a.metadata("reason"), Some("missing_credentials"));
    assert!(a.headers_to_remove.is_empty());

    // Not a 401: no challenge.
    let stranger = bearer(Uuid::new_v4());
    let check = Check::new("GET", "/nope").header("authorization", &stranger);
    let a = Answer::read(
        call(&ext, Request::new(check.request()))
            .await
            .expect("answer"),
    );
    assert_eq!(
        (a.status, a.code, a.reason.as_str()),
        (404, rpc_code::NOT_FOUND, "no_route")
    );
    assert!(!a.headers.contains_key("www-authenticate"));
    assert_eq!(
        a.body["request_id"].as_str(),
        Some(a.metadata_decision_id.as_str())
    );
}

#[tokio::test]
async fn check_in_dry_run_allows_and_names_the_waved_deny_in_metadata() {
    let (source, _, generation) = world();
    let ext = ext_authz("decision:\n  dry_run: true\n", source);
    let check = Check::new("GET", &format!("/api/v1/generations/{generation}"))
        .header("x-velro-user-id", "spoofed");
    let a = Answer::read(
        call(&ext, Request::new(check.request()))
            .await
            .expect("answer"),
    );
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key(USER_ID), "no identity granted");
    assert_eq!(a.headers_to_remove, ["x-velro-user-id"]);
    assert_eq!(a.metadata("dry_run_deny"), Some("missing_credentials"));
}

#[tokio::test]
async fn check_without_http_attributes_is_invalid_argument() {
    let (source, _, _) = world();
    let ext = ext_authz("", source);
    for request in [
        CheckRequest::default(),
        CheckRequest {
            attributes: Some(Default::default()),
        },
    ] {
        let status = call(&ext, Request::new(request))
            .await
            .expect_err("no answer");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}

#[tokio::test]
async fn check_that_cannot_decide_is_unavailable_or_deadline_exceeded_never_an_answer() {
    let (source, owner, generation) = world();
    let path = format!("/api/v1/generations/{generation}");
    let check = Check::new("GET", &path).header("authorization", &bearer(owner));

    // The store is down: UNAVAILABLE, so Envoy's failure mode applies.
    let down = source.clone();
    down.set_down(true);
    let ext = ext_authz("", down);
    let status = call(&ext, Request::new(check.request()))
        .await
        .expect_err("cannot decide");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        "cannot decide: authorization data unavailable"
    );
    source.set_down(false);

    // A fill outlives Envoy's grpc-timeout: DEADLINE_EXCEEDED.
    let held = Held::new(source);
    let hold = held.hold_next("user");
    let ext = ext_authz("", held);
    let mut request = Request::new(check.request());
    request
        .metadata_mut()
        .insert("grpc-timeout", "50m".parse().expect("metadata"));
    let status = call(&ext, request).await.expect_err("cannot decide");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    hold.release();
}

#[tokio::test]
async fn check_past_max_in_flight_is_unavailable_at_once_never_an_answer() {
    let (source, owner, generation) = world();
    let check = Check::new("GET", &format!("/api/v1/generations/{generation}"))
        .header("authorization", &bearer(owner));
    let held = Held::new(source);
    let hold = held.hold_next("user");
    let ext = Arc::new(ext_authz("decision:\n  max_in_flight: 1\n", held));
    let first = {
        let (ext, request) = (ext.clone(), check.request());
        tokio::spawn(async move { call(&ext, Request::new(request)).await })
    };
    hold.reached().await;
    let status = call(&ext, Request::new(check.request()))
        .await
        .expect_err("shed");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "cannot decide: overloaded");
    hold.release();
    let first = Answer::read(first.await.expect("task").expect("answered"));
    assert!(first.allowed());
}

#[test]
fn grpc_timeout_parses_units_and_rejects_garbage() {
    assert_eq!(grpc_timeout(Some("100m")), Some(Duration::from_millis(100)));
    assert_eq!(grpc_timeout(Some("2S")), Some(Duration::from_secs(2)));
    assert_eq!(grpc_timeout(Some("5u")), Some(Duration::from_micros(5)));
    for bad in ["", "m", "10x", "-1m", "123456789m", "1.5S"] {
        assert_eq!(grpc_timeout(Some(bad)), None, "{bad}");
    }
}

proptest::proptest! {
    #[test]
    fn grpc_timeout_never_panics(s in ".*") {
        let _ = grpc_timeout(Some(&s));
    }
}

#[test]
fn client_addr_is_the_source_socket_address_only() {
    use envoy_types::pb::envoy::config::core::v3::{Address, Pipe, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    let with = |address: Option<AddressKind>| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address { address }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let socket = |ip: &str| {
        Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            ..Default::default()
        }))
    };
    assert_eq!(
        client_addr(&with(socket("203.0.113.9"))),
        Some("203.0.113.9".parse().expect("ip"))
    );
    assert_eq!(
        client_addr(&with(socket("2001:db8::1"))),
        Some("2001:db8::1".parse().expect("ip"))
    );
    assert_eq!(client_addr(&with(socket("not-an-ip"))), None);
    let pipe = Some(AddressKind::Pipe(Pipe {
        path: "/tmp/s".to_owned(),
        ..Default::default()
    }));
    assert_eq!(client_addr(&with(pipe)), None);
    assert_eq!(client_addr(&CheckRequest::default()), None);
}
