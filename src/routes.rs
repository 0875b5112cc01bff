//! Step 1 of a decision (SPEC §4, §9 "Paths and routes"): `(method, path)` →
//! what the request needs, or why it is refused before anyone is authenticated.
//!
//! The path is checked first and never "cleaned up": anything that is not already
//! in normal form (`.`/`..` or empty segments, encoded `/` or `\`, bad or needless
//! percent-encoding, control or non-ASCII bytes, a raw `\`, over [`MAX_PATH_BYTES`]) is
//! [`RouteError::BadPath`]. Then the table is consulted: routes are indexed by
//! method and segment count and compared segment by segment, without allocating.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;
use uuid::Uuid;

use crate::answer::DenyReason;
use crate::ids::parse_canonical_uuid;
use crate::model::Action;

#[cfg(test)]
mod tests;

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

/// Why a route table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RouteConfigError {
    /// The text is not YAML, or not of the table's shape (a value of the wrong
    /// type, a missing or unknown top-level key).
    #[error("route table: {0}")]
    Syntax(#[source] Box<serde_saphyr::Error>),
    /// The YAML has the right shape but entries are invalid: every problem
    /// found, in file order.
    #[error("route table: {}", ProblemList(.0))]
    Invalid(Vec<RouteProblem>),
}

/// One invalid field of a route table, e.g. `routes[3].action: unknown action "reed"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    /// Where: `routes[i]` (zero-based) or `routes[i].field`.
    pub field: String,
    /// What is wrong there.
    pub message: String,
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

/// A route table entry as written, every field optional so that all missing and
/// unknown fields are reported together rather than one serde error at a time.
#[derive(Deserialize)]
struct RawRoute {
    methods: Option<Vec<String>>,
    path: Option<String>,
    access: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
    action: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

/// The document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    routes: Vec<RawRoute>,
}

/// Displays problems joined by `; `.
struct ProblemList<'a>(&'a [RouteProblem]);

/// The shipped default table (SPEC §4), also installed as a file operators can copy.
const VELRO_DEFAULT_YAML: &str = include_str!("../routes/velro-default.yaml");

/// Most segments a route may have; request paths with more never match, and
/// this bounds the segment boundaries [`RouteTable::resolve`] keeps on the stack.
const MAX_SEGMENTS: usize = 32;

/// The placeholder segment.
const ID_SEGMENT: &str = "{id}";

/// Field names of an entry, for the unknown-field message.
const FIELDS: &str = "methods, path, access, scope, resource, action";

/// Scopes a route may require: the five actions and `ops` (SPEC §9).
const SCOPES: [&str; 6] = ["read", "write", "delete", "share", "manage", "ops"];

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

impl fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
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
    /// SPEC's default Velro table, from the embedded `routes/velro-default.yaml`.
    pub fn velro_default() -> RouteTable {
        // A unit test proves the embedded file loads; were it ever broken, an
        // empty table denies every request (fail closed) instead of panicking.
        RouteTable::from_yaml(VELRO_DEFAULT_YAML).unwrap_or_else(|_| RouteTable::empty())
    }

    /// Loads a table from YAML (format: the comment at the top of
    /// `routes/velro-default.yaml`), reporting every invalid entry at once.
    pub fn from_yaml(text: &str) -> Result<RouteTable, RouteConfigError> {
        let raw: RawTable =
            serde_saphyr::from_str(text).map_err(|e| RouteConfigError::Syntax(Box::new(e)))?;
        let mut problems = Vec::new();
        if raw.routes.is_empty() {
            problems.push(problem(
                "routes".to_owned(),
                "the table has no routes, so every request would be denied",
            ));
        }

        let mut buckets: [Vec<Vec<Route>>; Method::COUNT] = Default::default();
        let mut seen: HashMap<(Method, String), usize> = HashMap::new();
        for (index, entry) in raw.routes.into_iter().enumerate() {
            let Some(checked) = check_entry(index, entry, &mut problems) else {
                continue;
            };
            for (method, name) in checked.methods {
                match seen.get(&(method, checked.path.clone())) {
                    Some(first) => problems.push(problem(
                        format!("routes[{index}]"),
                        format!(
                            "duplicate route \"{name} {}\" (first defined by routes[{first}])",
                            checked.path
                        ),
                    )),
                    None => {
                        seen.insert((method, checked.path.clone()), index);
                        let bucket = &mut buckets[method as usize];
                        let count = checked.segments.len();
                        if bucket.len() <= count {
                            bucket.resize_with(count + 1, Vec::new);
                        }
                        bucket[count].push(Route {
                            pattern: Arc::from(format!("{name} {}", checked.path)),
                            need: checked.need.clone(),
                            segments: checked.segments.clone(),
                        });
                    }
                }
            }
        }

        if !problems.is_empty() {
            return Err(RouteConfigError::Invalid(problems));
        }
        Ok(RouteTable {
            by_method: buckets
                .map(|bucket| bucket.into_iter().map(Vec::into_boxed_slice).collect()),
        })
    }

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

    /// A table with no routes: denies everything.
    fn empty() -> RouteTable {
        RouteTable {
            by_method: Default::default(),
        }
    }
}

/// An entry that passed every check, ready to index.
struct CheckedEntry {
    /// Each listed method with its spelling, for the pattern.
    methods: Vec<(Method, String)>,
    /// The path as written.
    path: String,
    /// Its segments.
    segments: Box<[Segment]>,
    /// What it needs.
    need: Need,
}

/// A problem at `field`.
fn problem(field: String, message: impl Into<String>) -> RouteProblem {
    RouteProblem {
        field,
        message: message.into(),
    }
}

/// Checks one entry, pushing every problem found; `Some` only if there were none.
fn check_entry(
    index: usize,
    raw: RawRoute,
    problems: &mut Vec<RouteProblem>,
) -> Option<CheckedEntry> {
    let before = problems.len();
    let at = |field: &str| format!("routes[{index}].{field}");

    for name in raw.unknown.keys() {
        problems.push(problem(
            at(name),
            format!("unknown field (expected one of {FIELDS})"),
        ));
    }

    let mut methods = Vec::new();
    match raw.methods {
        None => problems.push(problem(at("methods"), "missing (e.g. [GET])")),
        Some(list) if list.is_empty() => problems.push(problem(at("methods"), "empty list")),
        Some(list) => {
            for name in list {
                match Method::of_table(&name) {
                    _ if name == "HEAD" => problems.push(problem(
                        at("methods"),
                        "HEAD is authorized as GET; list GET instead",
                    )),
                    None => problems.push(problem(
                        at("methods"),
                        format!(
                            "unknown method {name:?} (case-sensitive: GET, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, TRACE)"
                        ),
                    )),
                    Some(method) if methods.iter().any(|(m, _)| *m == method) => {
                        problems.push(problem(at("methods"), format!("method {name:?} listed twice")));
                    }
                    Some(method) => methods.push((method, name)),
                }
            }
        }
    }

    let segments = match &raw.path {
        None => {
            problems.push(problem(at("path"), "missing"));
            None
        }
        Some(path) => check_route_path(path)
            .map_err(|m| problems.push(problem(at("path"), m)))
            .ok(),
    };
    let ids = segments
        .as_deref()
        .map(|s| s.iter().filter(|s| **s == Segment::Id).count());

    if matches!(raw.access.as_deref(), Some("public" | "authenticated"))
        && ids.is_some_and(|n| n > 0)
    {
        problems.push(problem(
            at("path"),
            "{id} is only allowed with access: resource",
        ));
    }
    let mut forbid = |field: &str, value: &Option<String>, access: &str| {
        if value.is_some() {
            problems.push(problem(
                at(field),
                format!("not allowed with access: {access}"),
            ));
        }
    };
    let need = match raw.access.as_deref() {
        None => {
            problems.push(problem(
                at("access"),
                "missing (public, authenticated or resource)",
            ));
            None
        }
        Some("public") => {
            forbid("scope", &raw.scope, "public");
            forbid("resource", &raw.resource, "public");
            forbid("action", &raw.action, "public");
            Some(Need::Public)
        }
        Some("authenticated") => {
            forbid("resource", &raw.resource, "authenticated");
            forbid("action", &raw.action, "authenticated");
            match raw.scope {
                Some(scope) if !SCOPES.contains(&scope.as_str()) => {
                    problems.push(problem(
                        at("scope"),
                        format!(
                            "unknown scope {scope:?} (expected one of {})",
                            SCOPES.join(", ")
                        ),
                    ));
                    None
                }
                scope => Some(Need::Authenticated { scope }),
            }
        }
        Some("resource") => {
            forbid("scope", &raw.scope, "resource");
            if ids.is_some_and(|n| n != 1) {
                problems.push(problem(
                    at("path"),
                    "a resource route needs exactly one {id} segment",
                ));
            }
            let kind = match raw.resource.as_deref() {
                None => {
                    problems.push(problem(
                        at("resource"),
                        "missing (generation, project or team)",
                    ));
                    None
                }
                Some("generation") => Some(TargetKind::Generation),
                Some("project") => Some(TargetKind::Project),
                Some("team") => Some(TargetKind::Team),
                Some(other) => {
                    problems.push(problem(
                        at("resource"),
                        format!(
                            "unknown resource {other:?} (expected generation, project or team)"
                        ),
                    ));
                    None
                }
            };
            let action = match raw.action.as_deref() {
                None => {
                    problems.push(problem(
                        at("action"),
                        "missing (read, write, delete, share or manage)",
                    ));
                    None
                }
                Some(text) => text
                    .parse::<Action>()
                    .map_err(|e| problems.push(problem(at("action"), e.to_string())))
                    .ok(),
            };
            kind.zip(action)
                .map(|(kind, action)| Need::Resource { kind, action })
        }
        Some(other) => {
            problems.push(problem(
                at("access"),
                format!("unknown access {other:?} (expected public, authenticated or resource)"),
            ));
            None
        }
    };

    if problems.len() > before {
        return None;
    }
    Some(CheckedEntry {
        methods,
        path: raw.path?,
        segments: segments?,
        need: need?,
    })
}

/// Splits a table path into segments, refusing any that no normal request path
/// could ever equal.
fn check_route_path(path: &str) -> Result<Box<[Segment]>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} does not start with '/'"));
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("longer than {MAX_PATH_BYTES} bytes"));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!("more than {MAX_SEGMENTS} segments"));
    }
    let last = parts.len() - 1;
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        if part == ID_SEGMENT {
            segments.push(Segment::Id);
            continue;
        }
        if part.is_empty() && i != last {
            return Err(format!("{path:?} has an empty segment ('//')"));
        }
        if part == "." || part == ".." {
            return Err(format!(
                "{path:?} has a {part:?} segment, which never matches"
            ));
        }
        if part.contains(['{', '}']) {
            return Err(format!(
                "segment {part:?}: the only placeholder is a whole segment {ID_SEGMENT}"
            ));
        }
        if let Some(bad) = part.bytes().find(|&b| CLASS[usize::from(b)] & PCHAR == 0) {
            return Err(format!(
                "segment {part:?}: byte {:?} is not allowed (literal segments use letters, digits and -._~!$&'()*+,;=:@, no percent-encoding)",
                char::from(bad)
            ));
        }
        segments.push(Segment::Literal(part.into()));
    }
    Ok(segments.into_boxed_slice())
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
