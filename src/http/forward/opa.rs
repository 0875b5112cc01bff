//! The OPA data API shape, as Kong Gateway's `opa` plugin speaks it.
//!
//! Source: Kong's plugin (`plugins-ee/opa/kong/plugins/opa/handler.lua` and
//! `decision.lua` in the Kong/kong repository; docs at
//! developer.konghq.com/plugins/opa). Kong POSTs to its `opa_path`
//!
//! ```json
//! {"input":{"request":{"http":{"method":"GET","scheme":"http","host":"example.org",
//!   "port":8000,"path":"/foo","headers":{"accept":"*/*","x-a":["1","2"]},
//!   "querystring":{"q":"x","flag":true,"many":["a","b"]},"tls":{}}},
//!   "client_ip":"127.0.0.1"}}
//! ```
//!
//! (plus `service`, `route`, `consumer`, body and URI captures when configured),
//! built from `kong.request.get_method()`, `get_path()` (normalized: dot
//! segments removed, percent-encoded unreserved and "other" bytes decoded),
//! `get_headers()` (lower-case names; a repeated header is an array) and
//! `get_query()` (decoded; a bare key is `true`, a repeated key an array).
//!
//! Kong accepts a 200 whose `result` is a boolean or `{"allow","status",
//! "headers","message"}`. On allow it sets `headers` on the upstream request
//! (overwriting; a value that is an empty array removes the header, because
//! Kong hands it to `ngx.req.set_header`, which clears a header given an empty
//! table). On deny the client gets `status` (default 403), `headers` and the
//! body `{"message": message}`. Any other answer (our 400/413/503) makes Kong
//! answer 500: it fails closed.

use serde_json::{Map, Value, json};

use crate::answer::{self, Outcome};
use crate::authz::{Decision, Headers};

/// What the decision needs from an OPA input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaInput {
    /// `input.request.http.method`.
    pub method: String,
    /// The request target rebuilt from `path` and `querystring`.
    pub target: String,
    /// `input.request.http.headers`, array values joined with `,`.
    pub headers: Headers,
}

/// Why an OPA input was refused (HTTP 400, OPA's `invalid_parameter`). Messages
/// name fields, never echo input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpaError {
    /// The body is not JSON.
    #[error("request body is not valid JSON (line {line}, column {column})")]
    Json {
        /// Where parsing stopped.
        line: usize,
        /// Where parsing stopped.
        column: usize,
    },
    /// A required field is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field has the wrong type.
    #[error("{0} must be {1}")]
    Type(&'static str, &'static str),
}

const INPUT: &str = "input";
const REQUEST: &str = "input.request";
const HTTP: &str = "input.request.http";
const METHOD: &str = "input.request.http.method";
const PATH: &str = "input.request.http.path";
const HEADERS: &str = "input.request.http.headers";
const QUERY: &str = "input.request.http.querystring";

/// Parses a request body of the OPA data API.
pub fn parse(body: &[u8]) -> Result<OpaInput, OpaError> {
    let root: Value = serde_json::from_slice(body).map_err(|e| OpaError::Json {
        line: e.line(),
        column: e.column(),
    })?;
    let root = root
        .as_object()
        .ok_or(OpaError::Type("the body", "an object"))?;
    let input = object(root.get(INPUT), INPUT)?;
    let request = object(input.get("request"), REQUEST)?;
    let http = object(request.get("http"), HTTP)?;
    let method = string(http.get("method"), METHOD)?;
    let path = string(http.get("path"), PATH)?;

    let mut headers = Headers::default();
    for (name, value) in optional_table(http.get("headers"), HEADERS)?
        .into_iter()
        .flatten()
    {
        match value {
            Value::String(s) => headers.add(name, s),
            Value::Array(items) => {
                for item in items {
                    let s = item.as_str().ok_or(OpaError::Type(
                        HEADERS,
                        "an object of strings or arrays of strings",
                    ))?;
                    headers.add(name, s);
                }
            }
            _ => {
                return Err(OpaError::Type(
                    HEADERS,
                    "an object of strings or arrays of strings",
                ));
            }
        }
    }

    let mut query = Vec::new();
    for (key, value) in optional_table(http.get("querystring"), QUERY)?
        .into_iter()
        .flatten()
    {
        let values = match value {
            Value::Array(items) => items.as_slice(),
            single => std::slice::from_ref(single),
        };
        for v in values {
            match v {
                Value::String(s) => query.push(format!("{}={}", encode(key), encode(s))),
                Value::Bool(true) => query.push(encode(key)),
                Value::Bool(false) => {}
                _ => {
                    return Err(OpaError::Type(
                        QUERY,
                        "an object of strings, true, or arrays of those",
                    ));
                }
            }
        }
    }

    Ok(OpaInput {
        method: method.to_owned(),
        target: target(path, &query),
        headers,
    })
}

/// The decision as an OPA data API answer (HTTP 200) Kong understands.
pub fn result(decision: &Decision, request_headers: &Headers) -> Value {
    let id = &decision.decision_id;
    match &decision.outcome {
        Outcome::Allow(_) => {
            let ours = decision.identity_headers();
            let mut headers = Map::new();
            // Empty array: Kong removes the header from the upstream request.
            for name in answer::headers_to_remove(request_headers.names(), &ours) {
                headers.insert(name, json!([]));
            }
            for (name, value) in ours {
                headers.insert(name.to_owned(), Value::String(value));
            }
            json!({
                "decision_id": id,
                "result": { "allow": true, "status": 200, "headers": headers },
            })
        }
        Outcome::Deny(reason) => {
            // Kong writes its own content type for `{"message": ...}`.
            let headers: Map<String, Value> = decision
                .deny_headers(*reason)
                .into_iter()
                .filter(|(name, _)| *name != "content-type")
                .map(|(name, value)| (name.to_owned(), Value::String(value)))
                .collect();
            json!({
                "decision_id": id,
                "result": {
                    "allow": false,
                    "status": reason.http_status(),
                    "headers": headers,
                    "message": answer::deny_json(*reason, id),
                },
            })
        }
    }
}

/// `path` escaped as Kong escapes the path it forwards upstream (bytes outside
/// `!#$&'()*+,/:;=?@[]`, letters, digits, `-._~%` become `%XX`), and `?` and
/// `#` too: Kong's path never holds them raw, and the core must not mistake
/// part of a path for a query. Then the query string, if any.
pub fn target(path: &str, query: &[String]) -> String {
    let mut out = String::with_capacity(path.len() + 16);
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"!$&'()*+,/:;=@[]-_.~%".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            push_escaped(&mut out, b);
        }
    }
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query.join("&"));
    }
    out
}

/// A query-string key or value, every byte but the unreserved ones escaped.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            push_escaped(&mut out, b);
        }
    }
    out
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

fn object<'a>(
    value: Option<&'a Value>,
    field: &'static str,
) -> Result<&'a Map<String, Value>, OpaError> {
    match value {
        None => Err(OpaError::Missing(field)),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(OpaError::Type(field, "an object")),
    }
}

fn string<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a str, OpaError> {
    match value {
        None => Err(OpaError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(OpaError::Type(field, "a string")),
    }
}

/// An optional table: absent, an object, or an empty array (how Lua's cjson
/// may encode an empty table).
fn optional_table<'a>(
    value: Option<&'a Value>,
    field: &'static str,
) -> Result<Option<&'a Map<String, Value>>, OpaError> {
    match value {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(Value::Array(items)) if items.is_empty() => Ok(None),
        Some(_) => Err(OpaError::Type(field, "an object")),
    }
}
