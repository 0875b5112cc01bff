//! Loading a route table (SPEC §4, §9 "Paths and routes"): the YAML format,
//! every check an entry must pass (all problems reported at once, in file
//! order) and the shipped default table. Matching a request against a loaded
//! table is the parent module's business.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{
    CLASS, MAX_PATH_BYTES, MAX_SEGMENTS, Method, Need, PCHAR, Route, RouteTable, Segment,
    TargetKind,
};
use crate::model::Action;

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
/// `pub(super)` for the test that proves it loads.
pub(super) const VELRO_DEFAULT_YAML: &str = include_str!("../../routes/velro-default.yaml");

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

/// The placeholder segment.
const ID_SEGMENT: &str = "{id}";

/// Field names of an entry, for the unknown-field message.
const FIELDS: &str = "methods, path, access, scope, resource, action";

/// Scopes a route may require: the five actions and `ops` (SPEC §9).
const SCOPES: [&str; 6] = ["read", "write", "delete", "share", "manage", "ops"];

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

    /// A table with no routes: denies everything.
    fn empty() -> RouteTable {
        RouteTable {
            by_method: Default::default(),
        }
    }
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
