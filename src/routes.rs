//! Step 1 of a decision (SPEC §4, §9 "Paths and routes"): `(method, path)` →
//! what the request needs, or why it is refused before anyone is authenticated.
//!
//! The path is checked first and never "cleaned up": anything that is not already
//! in normal form (`.`/`..` or empty segments, encoded `/` or `\`, bad or needless
//! percent-encoding, control or non-ASCII bytes, a raw `\`, over [`MAX_PATH_BYTES`]) is
//! [`RouteError::BadPath`]. Then the table is consulted: routes are indexed by
//! method and segment count and compared segment by segment, without allocating.
//!
//! Building a table (the YAML format, its checks, the shipped default) is
//! `routes/table.rs`; this file is only the per-request matching.

use std::sync::Arc;

use uuid::Uuid;

use crate::answer::DenyReason;
use crate::ids::parse_canonical_uuid;
use crate::model::Action;

mod table;
#[cfg(test)]
mod tests;

pub use table::{RouteConfigError, RouteProblem};

/// Longest path (the request target without its `?query`/`#fragment`) that is
/// matched at all; anything longer is [`RouteError::BadPath`].
pub const MAX_PATH_BYTES: usize = 4096;

/// What kind of resource a route's `{id}` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// `{id}` is a generation id.
    Generation,
    /// `{id}` is a project id.
    Project,
    /// `{id}` is a team id.
    Team,
}

/// What a matched route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// No authentication at all.
    Public,
    /// An authenticated active user; if `scope` is `Some`, that scope must be
    /// granted explicitly (e.g. `ops`, which nothing implies).
    Authenticated {
        /// Scope the credential must carry, if any.
        scope: Option<String>,
    },
    /// `action` on the resource named by the path's `{id}`.
    Resource {
        /// What the `{id}` names.
        kind: TargetKind,
        /// What the request does to it.
        action: Action,
    },
}

/// The route a request matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The table's pattern, e.g. `"GET /api/v1/generations/{id}"`: never request
    /// text, so it is safe for logs and metric labels. A HEAD request reports
    /// the GET route it was authorized as.
    pub route: Arc<str>,
    /// What the request needs to be allowed.
    pub need: Need,
    /// The path's `{id}`, present exactly when `need` is [`Need::Resource`].
    pub id: Option<Uuid>,
}

/// Why a request matched no route; each is a deny the adapter answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path is not in normal form or is longer than [`MAX_PATH_BYTES`].
    #[error("malformed request path")]
    BadPath,
    /// A route matched except that its `{id}` segment is not a canonical UUID.
    #[error("path id is not a UUID")]
    InvalidId,
    /// No route for this (method, path): default-deny.
    #[error("no route for this method and path")]
    NoRoute,
    /// The request (headers, target) is larger than the adapter accepts; routing
    /// never returns it, adapters do.
    #[error("request too large")]
    TooLarge,
}

/// A loaded route table: immutable, cheap to share, answers [`RouteTable::resolve`].
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Routes indexed by `[method][segment count]`, each bucket in file order.
    by_method: [Box<[Box<[Route]>]>; Method::COUNT],
}

/// One (method, path) of the table.
#[derive(Debug, Clone)]
struct Route {
    /// `"METHOD /path"` as written in the table, shared with every match.
    pattern: Arc<str>,
    /// Handed out on a match.
    need: Need,
    /// The path split on `/`, after the leading one.
    segments: Box<[Segment]>,
}

/// One path segment of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the request's segment byte for byte.
    Literal(Box<str>),
    /// The request's segment must be a canonical UUID.
    Id,
}

/// The methods a table may list. HEAD is not one: it resolves as GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Connect,
    Trace,
}

/// Most segments a route may have; request paths with more never match, and
/// this bounds the segment boundaries [`RouteTable::resolve`] keeps on the stack.
const MAX_SEGMENTS: usize = 32;

/// Byte classes, for the one-pass path check and for table literals.
/// Allowed raw in a request path: printable ASCII (and space) except `\`, `%` and `/`.
/// Stricter would only change some answers from `no_route`/`invalid_id` to
/// `bad_path`: matching is exact, so no such byte can reach a route by accident.
const RAW: u8 = 1;
/// RFC 3986 pchar other than `%`: what a table's literal segments may hold.
const PCHAR: u8 = 2;
/// ALPHA / DIGIT / `-` / `.` / `_` / `~`: never percent-encoded in normal form.
const UNRESERVED: u8 = 4;

/// Class bits of every byte value.
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if (c.is_ascii_graphic() || c == b' ') && c != b'\\' && c != b'%' && c != b'/' {
            table[b] = RAW;
        }
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            table[b] |= PCHAR | UNRESERVED;
        } else if matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        ) {
            table[b] |= PCHAR;
        }
        b += 1;
    }
    table
};

impl RouteError {
    /// Stable machine code for deny bodies, metric labels and logs.
    pub fn reason(self) -> &'static str {
        DenyReason::from(self).code()
    }

    /// HTTP status of the deny (SPEC §9).
    pub fn http_status(self) -> u16 {
        DenyReason::from(self).http_status()
    }
}

impl From<RouteError> for DenyReason {
    fn from(e: RouteError) -> DenyReason {
        match e {
            RouteError::BadPath => DenyReason::BadPath,
            RouteError::InvalidId => DenyReason::InvalidId,
            RouteError::NoRoute => DenyReason::NoRoute,
            RouteError::TooLarge => DenyReason::TooLarge,
        }
    }
}

impl Method {
    /// Number of variants, the size of the per-method index.
    const COUNT: usize = 8;

    /// A request's method; HEAD is authorized as GET. Case-sensitive.
    fn of_request(method: &str) -> Option<Method> {
        match method {
            "HEAD" => Some(Method::Get),
            _ => Method::of_table(method),
        }
    }

    /// A method as a table may list it. Case-sensitive.
    fn of_table(method: &str) -> Option<Method> {
        Some(match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "CONNECT" => Method::Connect,
            "TRACE" => Method::Trace,
            _ => return None,
        })
    }
}

impl RouteTable {
    /// Matches a request. `path` is the raw request target as the proxy sent it;
    /// a `?query` or `#fragment` is ignored. Checks in SPEC §9 order: the path's
    /// form ([`RouteError::BadPath`]), then the method and literal segments
    /// ([`RouteError::NoRoute`]), then the `{id}` ([`RouteError::InvalidId`]).
    pub fn resolve(&self, method: &str, path: &str) -> Result<RouteMatch, RouteError> {
        let path = strip_query(path.as_bytes())?;
        let mut bounds = [(0u16, 0u16); MAX_SEGMENTS];
        let count = scan_path(path, &mut bounds)?;

        let method = Method::of_request(method).ok_or(RouteError::NoRoute)?;
        let (Some(candidates), Some(bounds)) = (
            self.by_method[method as usize].get(count),
            bounds.get(..count),
        ) else {
            return Err(RouteError::NoRoute);
        };

        let mut bad_id = false;
        'routes: for route in candidates {
            let mut id_segment: Option<&[u8]> = None;
            for (segment, &(start, end)) in route.segments.iter().zip(bounds) {
                let text = &path[usize::from(start)..usize::from(end)];
                match segment {
                    Segment::Literal(literal) if literal.as_bytes() == text => {}
                    Segment::Literal(_) => continue 'routes,
                    Segment::Id => id_segment = Some(text),
                }
            }
            let id = match id_segment {
                None => None,
                Some(text) => match parse_canonical_uuid(text) {
                    Some(id) => Some(id),
                    None => {
                        // Keep looking: a literal route may still match.
                        bad_id = true;
                        continue;
                    }
                },
            };
            return Ok(RouteMatch {
                route: Arc::clone(&route.pattern),
                need: route.need.clone(),
                id,
            });
        }
        Err(if bad_id {
            RouteError::InvalidId
        } else {
            RouteError::NoRoute
        })
    }
}

/// The path part of a request target: everything before the first `?` or `#`.
/// Looks at no more than [`MAX_PATH_BYTES`] + 1 bytes.
fn strip_query(target: &[u8]) -> Result<&[u8], RouteError> {
    let window = &target[..target.len().min(MAX_PATH_BYTES + 1)];
    let end = window
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    if end > MAX_PATH_BYTES {
        return Err(RouteError::BadPath);
    }
    Ok(&target[..end])
}

/// Checks in one pass that `path` is in normal form, records the bounds of its
/// first [`MAX_SEGMENTS`] segments (after the leading `/`) and returns how many
/// segments it has. A final empty segment (trailing `/`) is allowed: it is a
/// different path, not a malformed one.
fn scan_path(path: &[u8], bounds: &mut [(u16, u16); MAX_SEGMENTS]) -> Result<usize, RouteError> {
    if path.first() != Some(&b'/') {
        return Err(RouteError::BadPath);
    }
    let mut count = 0;
    let mut start = 1;
    let mut i = 1;
    loop {
        let byte = path.get(i).copied();
        match byte {
            None | Some(b'/') => {
                let segment = &path[start..i];
                let bad = match segment {
                    b"" => byte.is_some(),
                    b"." | b".." => true,
                    _ => false,
                };
                if bad {
                    return Err(RouteError::BadPath);
                }
                if let Some(slot) = bounds.get_mut(count) {
                    // Both fit: the path is at most MAX_PATH_BYTES long.
                    *slot = (start as u16, i as u16);
                }
                count += 1;
                if byte.is_none() {
                    return Ok(count);
                }
                i += 1;
                start = i;
            }
            Some(b'%') => {
                let decoded = match (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(RouteError::BadPath),
                };
                // Needless (unreserved, including '.'), a separator, or a control byte.
                if CLASS[usize::from(decoded)] & UNRESERVED != 0
                    || matches!(decoded, b'/' | b'\\' | 0x00..=0x1f | 0x7f)
                {
                    return Err(RouteError::BadPath);
                }
                i += 3;
            }
            Some(b) if CLASS[usize::from(b)] & RAW != 0 => i += 1,
            Some(_) => return Err(RouteError::BadPath),
        }
    }
}

/// Value of one hex digit, either case.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
