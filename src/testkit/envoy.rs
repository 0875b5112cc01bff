//! Envoy's side of ext_authz: the CheckRequest it sends and what a test reads
//! in the CheckResponse, over a socket or in-process alike.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::transport::Channel;

use crate::answer::{Outcome, ROLE};
use crate::authz::{Authorizer, CheckError, Decision, Headers};
use crate::facts::FactSource;

/// One request as Envoy describes it to ext_authz.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    /// HTTP method.
    pub method: String,
    /// Request target, query included.
    pub path: String,
    /// Request headers in order; a repeated name keeps its last value, as in
    /// Envoy's `headers` map.
    pub headers: Vec<(String, String)>,
    /// Sends the headers in `header_map` as raw bytes, as Envoy does with
    /// `encode_raw_headers: true`, instead of in `headers`.
    pub header_map: bool,
}

impl Check {
    /// `method path`, no headers.
    pub fn new(method: &str, path: &str) -> Check {
        Check {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            header_map: false,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Check {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds headers.
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Check {
        for (name, value) in headers {
            self = self.header(name, value);
        }
        self
    }

    /// Adds `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Check {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sends the headers in `header_map` (`encode_raw_headers`).
    pub fn in_header_map(mut self) -> Check {
        self.header_map = true;
        self
    }

    /// Decides this request in-process, as an adapter would hand it over
    /// (repeated headers joined with `,`), within `deadline` if given.
    pub async fn decide<S: FactSource>(
        &self,
        authorizer: &Authorizer<S>,
        deadline: Option<Duration>,
    ) -> Result<Decision, CheckError> {
        let headers =
            Headers::from_pairs(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let request = headers.request(&self.method, &self.path, &[]);
        authorizer.check(&request, deadline).await
    }

    /// The protobuf message.
    pub fn request(&self) -> CheckRequest {
        let mut http = HttpRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            ..Default::default()
        };
        if self.header_map {
            http.header_map = Some(HeaderMap {
                headers: self
                    .headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.clone(),
                        raw_value: v.clone().into_bytes(),
                        ..Default::default()
                    })
                    .collect(),
            });
        } else {
            http.headers = self.headers.iter().cloned().collect();
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }
}

/// Sends `check` on `client`. With a `timeout`, the server gets it as
/// `grpc-timeout` and the client stops waiting after it (DEADLINE_EXCEEDED).
pub async fn send_check(
    client: &AuthorizationClient<Channel>,
    check: &Check,
    timeout: Option<Duration>,
) -> Result<CheckResponse, tonic::Status> {
    let mut request = tonic::Request::new(check.request());
    let Some(timeout) = timeout else {
        return client
            .clone()
            .check(request)
            .await
            .map(tonic::Response::into_inner);
    };
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.clone().check(request)).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("client-side timeout")),
    }
}

/// Sends `check`, giving up after `timeout`, and reads what it comes to; a
/// response that is no answer of ours is a deny with status 0 saying why.
pub async fn verdict(
    client: &AuthorizationClient<Channel>,
    check: &Check,
    timeout: Duration,
) -> Result<Verdict, tonic::Status> {
    let response = send_check(client, check, Some(timeout)).await?;
    Ok(Answer::try_read(response).map_or_else(|e| Verdict::deny(0, &e), |a| a.verdict()))
}

/// A CheckResponse in the terms tests assert on.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status Envoy answers with: 200 on allow.
    pub status: u16,
    /// The gRPC code in `CheckResponse.status`.
    pub code: i32,
    /// The deny body's reason, `ok` on allow.
    pub reason: String,
    /// Headers for the upstream (allow) or the client (deny).
    pub headers: HashMap<String, String>,
    /// How each of `headers` is set (`append_action`).
    pub header_actions: HashMap<String, HeaderAppendAction>,
    /// Headers Envoy removes from the upstream request (allow).
    pub headers_to_remove: Vec<String>,
    /// Headers Envoy adds to the response to the client (allow).
    pub response_headers: HashMap<String, String>,
    /// The deny body; `Null` on allow.
    pub body: serde_json::Value,
    /// `dynamic_metadata.decision_id`.
    pub metadata_decision_id: String,
    /// Every string field of `dynamic_metadata`.
    pub metadata: HashMap<String, String>,
}

impl Answer {
    /// Reads `response`; panics if it is neither an OK nor a denied answer
    /// with a JSON body.
    pub fn read(response: CheckResponse) -> Answer {
        Answer::try_read(response).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads `response`, or says why it is no answer of ours.
    pub fn try_read(response: CheckResponse) -> Result<Answer, String> {
        let code = response.status.as_ref().map_or(0, |s| s.code);
        let metadata: HashMap<String, String> = response
            .dynamic_metadata
            .iter()
            .flat_map(|m| &m.fields)
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect();
        let mut answer = Answer {
            status: 200,
            code,
            reason: "ok".to_owned(),
            headers: HashMap::new(),
            header_actions: HashMap::new(),
            headers_to_remove: Vec::new(),
            response_headers: HashMap::new(),
            body: serde_json::Value::Null,
            metadata_decision_id: metadata.get("decision_id").cloned().unwrap_or_default(),
            metadata,
        };
        let options = match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                answer.headers_to_remove = ok.headers_to_remove;
                answer.response_headers = pairs(&ok.response_headers_to_add).collect();
                ok.headers
            }
            Some(HttpResponse::DeniedResponse(denied)) => {
                answer.body = serde_json::from_str(&denied.body)
                    .map_err(|e| format!("deny body is not JSON ({e}): {:?}", denied.body))?;
                answer.status = denied.status.map_or(0, |s| s.code as u16);
                answer.reason = answer.body["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                denied.headers
            }
            other => return Err(format!("unexpected http_response {other:?}")),
        };
        answer.headers = pairs(&options).collect();
        answer.header_actions = options
            .iter()
            .filter_map(|o| {
                let action = HeaderAppendAction::try_from(o.append_action).ok()?;
                Some((o.header.as_ref()?.key.clone(), action))
            })
            .collect();
        Ok(answer)
    }

    /// Allowed?
    pub fn allowed(&self) -> bool {
        self.status == 200
    }

    /// The value of header `name` (upstream on allow, client on deny).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The string field `name` of the dynamic metadata.
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).map(String::as_str)
    }

    /// What two answers are compared on.
    pub fn verdict(&self) -> Verdict {
        Verdict {
            status: self.status,
            reason: self.reason.clone(),
            role: self.headers.get(ROLE).cloned(),
        }
    }
}

/// (name, value) of each header option.
fn pairs(options: &[HeaderValueOption]) -> impl Iterator<Item = (String, String)> + '_ {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
}

/// What an answer comes to, without its ids: equal for equal decisions (the
/// cluster tests compare it with an oracle's, sidecar against sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// 200 for allow, else the deny's HTTP status.
    pub status: u16,
    /// Deny reason code, or `ok`.
    pub reason: String,
    /// `x-velro-role` on allow (resource routes), else `None`.
    pub role: Option<String>,
}

impl Verdict {
    /// An allow with `role`.
    pub fn allow(role: Option<&str>) -> Verdict {
        Verdict {
            status: 200,
            reason: "ok".to_owned(),
            role: role.map(str::to_owned),
        }
    }

    /// What an in-process decision's outcome comes to.
    pub fn of(outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Allow(identity) => {
                Verdict::allow(identity.and_then(|i| i.role).map(|r| r.as_str()))
            }
            Outcome::Deny(reason) => Verdict::deny(reason.http_status(), reason.code()),
        }
    }

    /// A deny.
    pub fn deny(status: u16, reason: &str) -> Verdict {
        Verdict {
            status,
            reason: reason.to_owned(),
            role: None,
        }
    }

    /// Allowed?
    pub fn allowed(&self) -> bool {
        self.status == 200
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.role {
            Some(role) => write!(f, "{} {} role={role}", self.status, self.reason),
            None => write!(f, "{} {}", self.status, self.reason),
        }
    }
}
