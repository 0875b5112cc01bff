//! The decision, in the order of SPEC §4: route → authenticate → rate limit →
//! active user → effective role → answer. Protocol-free: adapters translate to
//! and from it, and [`crate::answer`] holds what an answer is made of.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use uuid::Uuid;

use crate::answer::{DenyReason, Identity, Outcome, RateLimitInfo};
use crate::authn::{Authenticator, AuthnError, Principal};
use crate::facts::{FactError, FactSource, Facts, Gather, StatusAndRole, Trace};
use crate::identity::{IdentitySigner, SignError};
use crate::metrics::Metrics;
use crate::model::{Action, Role, Scopes, UserStatus};
use crate::policy::{self, Verdict};
use crate::ratelimit::{FailedAuthLimiter, LimitKey, RateLimiter};
use crate::routes::{Need, RouteError, RouteTable, TargetKind};
use crate::telemetry::traces::{DecisionAttributes, DecisionTracer};

mod explain;
pub mod log;
pub mod recent;
mod role;

pub use explain::{Explanation, PrincipalView, Summary};
pub use recent::{RecentDecisions, Recorded};

/// Largest header value accepted (SPEC §9): larger → 400 `too_large`.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Per-decision settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionSettings {
    /// Budget of one decision when the caller sets no sooner deadline.
    pub deadline: Duration,
    /// Shadow mode: log and count what would be denied, but allow.
    pub dry_run: bool,
    /// Fraction of allows written to the decision log (denies are always logged).
    pub allow_log_sample: f64,
    /// Checks decided at once, at most; one more is refused at once
    /// ([`CheckError::Overloaded`]) instead of queueing behind the others.
    pub max_in_flight: usize,
}

/// One request to decide, as the proxy described it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthzRequest<'a> {
    /// HTTP method, case-sensitive.
    pub method: &'a str,
    /// Raw request target (query string allowed; ignored for matching).
    pub path: &'a str,
    /// `Authorization` value; two headers arrive joined with `,`.
    pub authorization: Option<&'a str>,
    /// `x-api-key` value.
    pub api_key: Option<&'a str>,
    /// Length of the largest header value the client sent.
    pub largest_header: usize,
    /// The client's address as the proxy saw it (Envoy's
    /// `attributes.source`, the last `x-forwarded-for` hop a forward-auth
    /// proxy appended); `None` when the door cannot know it, and then no
    /// per-address limit applies.
    pub client_addr: Option<IpAddr>,
    /// Where the trace context (`traceparent`, `tracestate`) is read from,
    /// only when tracing is on: the request's headers, or an adapter's own
    /// source (Envoy's span of the Check call, in the gRPC metadata).
    pub trace_headers: Option<&'a Headers>,
}

/// The original request's headers as every adapter hands them over: lower-case
/// names, repeated headers joined with `,` as Envoy joins them (so two
/// `Authorization` headers are `invalid_token`, whatever the door).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers(HashMap<String, String>);

impl Headers {
    /// From (name, value) pairs, in order.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
        let mut out = Headers::default();
        for (name, value) in pairs {
            out.add(name, value);
        }
        out
    }

    /// Envoy's header map as sent (Envoy lower-cases names itself); names are
    /// kept as they are, so `headers_to_remove` echoes them exactly.
    pub fn from_envoy(map: HashMap<String, String>) -> Headers {
        Headers(map)
    }

    /// Adds one header line; the name is matched without regard to case.
    pub fn add(&mut self, name: &str, value: &str) {
        self.0
            .entry(name.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }

    /// The (joined) value of `name`, a lower-case name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Length of the largest value, not counting headers named in `except`
    /// (a proxy's own description of the original request).
    pub fn largest(&self, except: &[&str]) -> usize {
        self.0
            .iter()
            .filter(|(k, _)| !except.contains(&k.as_str()))
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(0)
    }

    /// Every header name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The request to decide.
    pub fn request<'a>(
        &'a self,
        method: &'a str,
        target: &'a str,
        except: &[&str],
    ) -> AuthzRequest<'a> {
        AuthzRequest {
            method,
            path: target,
            authorization: self.get("authorization"),
            api_key: self.get("x-api-key"),
            largest_header: self.largest(except),
            client_addr: None,
            trace_headers: Some(self),
        }
    }
}

/// A decision with the context that explains it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Unique id, in the answer, the dynamic metadata and the decision log.
    pub decision_id: String,
    /// What to do. In dry-run mode a deny becomes an allow here and
    /// `dry_run_deny` keeps what would have happened.
    pub outcome: Outcome,
    /// The deny that dry-run mode waved through.
    pub dry_run_deny: Option<DenyReason>,
    /// The route pattern matched, if any.
    pub route: Option<Arc<str>>,
    /// The authenticated principal, if it got that far.
    pub principal: Option<Principal>,
    /// The effective role, on resource routes.
    pub role: Option<Role>,
    /// The rate limiter's verdict, when one ran (headers on a 429).
    pub rate_limit: Option<RateLimitInfo>,
    /// The signed identity (`x-velro-identity`), on an allow with an identity
    /// when `identity_token` is configured; only [`Authorizer::check`] signs.
    pub identity_token: Option<String>,
}

impl Decision {
    /// A deny decided by an adapter before the core (the proxy did not describe
    /// the request): it gets a decision id like any other.
    pub fn adapter_deny(reason: DenyReason) -> Decision {
        Decision {
            decision_id: new_decision_id(),
            outcome: Outcome::Deny(reason),
            dry_run_deny: None,
            route: None,
            principal: None,
            role: None,
            rate_limit: None,
            identity_token: None,
        }
    }

    /// The headers for the upstream on allow (decision id, identity).
    pub fn identity_headers(&self) -> Vec<crate::answer::Header> {
        let identity = match &self.outcome {
            Outcome::Allow(identity) => identity.as_ref(),
            Outcome::Deny(_) => None,
        };
        crate::answer::identity_headers(&self.decision_id, identity, self.identity_token.as_deref())
    }

    /// The headers of a deny answer for `reason`.
    pub fn deny_headers(&self, reason: DenyReason) -> Vec<crate::answer::Header> {
        crate::answer::deny_headers(reason, &self.decision_id, self.rate_limit.as_ref())
    }
}

/// "Cannot decide": never a deny, never an allow (SPEC §4 step 6).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckError {
    /// A fact was needed and the store could not give it.
    #[error(transparent)]
    Unavailable(#[from] FactError),
    /// The decision outlived its deadline.
    #[error("decision deadline exceeded")]
    DeadlineExceeded,
    /// `decision.max_in_flight` Checks were already being decided: this one
    /// was refused before any work, so the proxy's failure mode applies now
    /// rather than at the deadline.
    #[error("overloaded: too many decisions in flight")]
    Overloaded,
    /// An allow's identity token could not be signed: the applications expect
    /// one, so no allow goes out without it.
    #[error(transparent)]
    IdentityToken(#[from] SignError),
}

impl CheckError {
    /// Stable reason code for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckError::Unavailable(_) => "store_unavailable",
            CheckError::DeadlineExceeded => "deadline_exceeded",
            CheckError::Overloaded => "overloaded",
            CheckError::IdentityToken(_) => "identity_token_unsigned",
        }
    }
}

/// What the steps learned on the way, for the decision and its log.
#[derive(Default)]
struct Steps {
    route: Option<Arc<str>>,
    principal: Option<Principal>,
    role: Option<Role>,
    rate_limit: Option<RateLimitInfo>,
}

/// What a configuration reload may change, swapped whole: each decision
/// loads it once and finishes on it, whatever is swapped in meanwhile.
pub struct Snapshot {
    /// Step 1: (method, path) → what the request needs.
    pub routes: RouteTable,
    /// Step 2: credentials → principal (the JWT keys, verified tokens).
    pub authn: Authenticator,
    /// Deadline, dry run, log sampling.
    pub settings: DecisionSettings,
}

/// Decides requests.
pub struct Authorizer<S> {
    /// Routes, keys and decision settings in force; replaced whole by a
    /// configuration reload ([`Authorizer::swap`]).
    live: ArcSwap<Snapshot>,
    /// Steps 2–4 read their facts here (L1, then Redis, then Postgres).
    facts: Arc<Facts<S>>,
    /// Step 2b, when configured.
    limiter: Option<RateLimiter>,
    /// Step 2, when configured: failed authentications per client address.
    failed_auth: Option<FailedAuthLimiter>,
    /// Decision counters and latency.
    metrics: Metrics,
    /// Checks being decided now (`settings.max_in_flight` bounds it).
    in_flight: AtomicUsize,
    /// The decisions the decision log wrote, with their facts, for
    /// explaining one later by its id; `None` = not kept.
    recent: Option<RecentDecisions>,
    /// Decision spans, when tracing is on.
    tracer: Option<DecisionTracer>,
    /// Signs `x-velro-identity` on allows, when configured.
    identity: Option<Arc<IdentitySigner>>,
}

impl<S: FactSource> Authorizer<S> {
    /// Wires the decision steps.
    pub fn new(
        routes: RouteTable,
        authn: Authenticator,
        facts: Arc<Facts<S>>,
        settings: DecisionSettings,
        metrics: Metrics,
    ) -> Authorizer<S> {
        Authorizer {
            live: ArcSwap::from_pointee(Snapshot {
                routes,
                authn,
                settings,
            }),
            facts,
            limiter: None,
            failed_auth: None,
            metrics,
            in_flight: AtomicUsize::new(0),
            recent: None,
            tracer: None,
            identity: None,
        }
    }

    /// Keeps the decisions the decision log writes (every deny, sampled
    /// allows) in `recent`, with the facts each used.
    pub fn with_recent_decisions(mut self, recent: RecentDecisions) -> Self {
        self.recent = Some(recent);
        self
    }

    /// The recent decisions, when kept.
    pub fn recent_decisions(&self) -> Option<&RecentDecisions> {
        self.recent.as_ref()
    }

    /// The routes, keys and settings in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Puts `next` in force for every decision that starts from now on;
    /// decisions under way finish on the snapshot they started with.
    /// Returns the one replaced.
    pub fn swap(&self, next: Snapshot) -> Arc<Snapshot> {
        self.live.swap(Arc::new(next))
    }

    /// Traces sampled decisions with `tracer`.
    pub fn with_tracer(mut self, tracer: DecisionTracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Whether decisions may be traced (adapters read trace context only then).
    pub fn traced(&self) -> bool {
        self.tracer.is_some()
    }

    /// Signs an identity token for the upstream on every allow with an identity.
    pub fn with_identity_signer(mut self, signer: Arc<IdentitySigner>) -> Self {
        self.identity = Some(signer);
        self
    }

    /// The identity token signer, when configured (its JWKS is published).
    pub fn identity_signer(&self) -> Option<&Arc<IdentitySigner>> {
        self.identity.as_ref()
    }

    /// Limits failed authentications per client address.
    pub fn with_failed_auth_limiter(mut self, limiter: FailedAuthLimiter) -> Self {
        self.failed_auth = Some(limiter);
        self
    }

    /// The failed-authentication limiter, when enabled.
    pub fn failed_auth_limiter(&self) -> Option<&FailedAuthLimiter> {
        self.failed_auth.as_ref()
    }

    /// Enables per-principal rate limiting.
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The rate limiter, when enabled.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.limiter.as_ref()
    }

    /// The fact cache (admin stats, flush).
    pub fn facts(&self) -> &Arc<Facts<S>> {
        &self.facts
    }

    /// Drops verified credentials (admin flush, key rotation).
    pub fn flush_credentials(&self) {
        self.live.load().authn.flush();
    }

    /// Cached verified credentials.
    pub fn credential_entries(&self) -> u64 {
        self.live.load().authn.cached_tokens()
    }

    /// Decides one request within `deadline` (the caller's, capped by the
    /// configured budget), recording metrics and the decision log.
    pub async fn check(
        &self,
        req: &AuthzRequest<'_>,
        deadline: Option<Duration>,
    ) -> Result<Decision, CheckError> {
        // One load per decision: a reload meanwhile does not change its course.
        let snapshot = self.live.load_full();
        let settings = snapshot.settings;
        let Some(_slot) = Slot::take(&self.in_flight, settings.max_in_flight) else {
            log::shed(&self.metrics);
            return Err(CheckError::Overloaded);
        };
        let started = Instant::now();
        let budget = deadline.map_or(settings.deadline, |d| d.min(settings.deadline));
        let trace = match &self.tracer {
            None => Trace::off(),
            Some(tracer) => traced(tracer, req),
        };
        // Facts are collected only when recent decisions are kept: a few
        // clones of small values into one vector per decision.
        let trace = match self.recent {
            Some(_) => trace.and_recording(),
            None => trace,
        };
        // Boxed once here: the decision's future is several kilobytes (every
        // step's state, the cold paths' included), and unboxed it would be
        // copied whole at each layer that moves it (the timeout, this
        // future, the gRPC handler's, tonic's boxes).
        let decide = Box::pin(self.decide(&snapshot, req, &trace, true));
        let mut result = match tokio::time::timeout(budget, decide).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::DeadlineExceeded),
        };
        // Signed here and not in `decide`, so `explain` never mints a token.
        if let Some(signer) = &self.identity
            && let Ok(decision) = &mut result
            && let Outcome::Allow(Some(identity)) = &decision.outcome
        {
            match signer.sign(identity, &decision.decision_id) {
                Ok(token) => decision.identity_token = Some(token),
                Err(e) => result = Err(e.into()),
            }
        }
        self.metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
        let logged = log::record(&self.metrics, settings.allow_log_sample, &result);
        let (uses, span) = trace.into_parts();
        if let Some(span) = span {
            let (outcome, status, reason) = log::labels(&result);
            let decision = result.as_ref().ok();
            span.end(DecisionAttributes {
                route: decision.and_then(|d| d.route.as_deref()),
                outcome,
                status,
                reason,
                decision_id: decision.map(|d| d.decision_id.as_str()),
            });
        }
        if logged
            && let Some(recent) = &self.recent
            && let Ok(decision) = &result
        {
            // The path's resource id, from the route table again (only for
            // what is recorded); never the raw path.
            let resource_id = snapshot
                .routes
                .resolve(req.method, req.path)
                .ok()
                .and_then(|m| m.id);
            recent.push(Recorded::new(decision, req.method, resource_id, uses));
        }
        result
    }

    /// A decision recorded by [`Authorizer::check`], by its id, while it is
    /// among the recent ones kept.
    pub fn recorded(&self, decision_id: &str) -> Option<Arc<Recorded>> {
        self.recent.as_ref()?.get(decision_id)
    }

    /// Decides one request and reports every fact used. Not for the hot path.
    pub async fn explain(&self, req: &AuthzRequest<'_>) -> Explanation {
        let trace = Trace::recording();
        let snapshot = self.live.load_full();
        // Explaining never spends a principal's rate-limit allowance.
        let decision = self.decide(&snapshot, req, &trace, false).await;
        Explanation {
            decision,
            facts: trace.into_uses(),
        }
    }

    async fn decide(
        &self,
        snapshot: &Snapshot,
        req: &AuthzRequest<'_>,
        trace: &Trace,
        limit: bool,
    ) -> Result<Decision, CheckError> {
        let mut steps = Steps::default();
        let outcome = self.steps(snapshot, req, trace, limit, &mut steps).await?;
        let (outcome, dry_run_deny) = match outcome {
            Outcome::Deny(reason) if snapshot.settings.dry_run => {
                (Outcome::Allow(None), Some(reason))
            }
            other => (other, None),
        };
        Ok(Decision {
            decision_id: new_decision_id(),
            outcome,
            dry_run_deny,
            route: steps.route,
            principal: steps.principal,
            role: steps.role,
            rate_limit: steps.rate_limit,
            identity_token: None,
        })
    }

    /// SPEC §4, steps 1–6.
    async fn steps(
        &self,
        snapshot: &Snapshot,
        req: &AuthzRequest<'_>,
        trace: &Trace,
        limit: bool,
        steps: &mut Steps,
    ) -> Result<Outcome, CheckError> {
        if req.largest_header > MAX_HEADER_BYTES {
            return Ok(deny(RouteError::TooLarge));
        }
        // 1. Route.
        let route = match snapshot.routes.resolve(req.method, req.path) {
            Ok(m) => m,
            Err(e) => return Ok(deny(e)),
        };
        steps.route = Some(route.route.clone());
        if route.need == Need::Public {
            return Ok(Outcome::Allow(None));
        }
        // 2. Authenticate. An address that has failed too often gets 429
        // before its credential costs a lookup, unless that credential
        // authenticated recently (a neighbour behind the same NAT).
        let failed_auth = self
            .failed_auth
            .as_ref()
            .filter(|_| limit)
            .zip(req.client_addr);
        if let Some((limiter, addr)) = failed_auth
            && let Some(verdict) = limiter.blocked(addr)
            && !snapshot.authn.recognizes(req.authorization, req.api_key)
        {
            steps.rate_limit = Some(verdict);
            return Ok(Outcome::Deny(DenyReason::RateLimited));
        }
        let authenticated = snapshot
            .authn
            .authenticate(req.authorization, req.api_key, &self.facts, trace)
            .await?;
        let principal = match authenticated {
            Ok(p) => p,
            Err(e) => {
                if let Some((limiter, addr)) = failed_auth
                    && e.spends_failure_budget()
                {
                    limiter.record_failure(addr);
                }
                return Ok(deny(e));
            }
        };
        steps.principal = Some(principal);
        // 2b. Rate limit, per principal, before any more facts are read.
        if limit && let Some(limiter) = &self.limiter {
            let key = match principal.api_key_id {
                Some(id) => LimitKey::ApiKey(id),
                None => LimitKey::User(principal.user_id),
            };
            // Boxed: the Redis call's future is large; keep it off the
            // decision's own future when the limiter is off.
            let verdict = Box::pin(limiter.check(key)).await;
            steps.rate_limit = Some(verdict);
            if !verdict.allowed {
                return Ok(Outcome::Deny(DenyReason::RateLimited));
            }
        }
        // 3. The principal must be an active user. From here on, facts come
        // from L1 or, at the first miss, all at once (`facts::Gather`).
        let target = match (&route.need, route.id) {
            (Need::Resource { kind, .. }, Some(id)) => Some(role::target(*kind, id)),
            _ => None,
        };
        let (status, role) = match (&route.need, route.id) {
            // 3–4 for a resource: remembered from an earlier decision while
            // every fact behind it would still be served, else from the facts.
            (Need::Resource { kind, .. }, Some(id)) => {
                let remembered =
                    target.and_then(|t| self.facts.remembered(principal.user_id, t, trace));
                let known = match remembered {
                    Some(known) => known,
                    None => {
                        let facts = self.facts.gather(principal.user_id, target, trace);
                        let known = status_and_role(&facts, principal.user_id, *kind, id).await?;
                        facts.remember(known);
                        known
                    }
                };
                match known {
                    Some(known) => known,
                    None => return Ok(deny(AuthnError::UnknownUser)),
                }
            }
            _ => match self.facts.user(principal.user_id, trace).await? {
                Some(user) => (user.status, None),
                None => return Ok(deny(AuthnError::UnknownUser)),
            },
        };
        let identity = |role| Identity {
            user_id: principal.user_id,
            auth: principal.auth,
            role,
        };
        match (&route.need, route.id) {
            (Need::Authenticated { scope }, _) => {
                if status != UserStatus::Active {
                    return Ok(Outcome::Deny(DenyReason::UserInactive));
                }
                if let Some(scope) = scope
                    && !scope_grants(principal.scopes, scope)
                {
                    return Ok(Outcome::Deny(DenyReason::InsufficientScope));
                }
                Ok(Outcome::Allow(Some(identity(None))))
            }
            (Need::Resource { action, .. }, Some(_)) => {
                steps.role = role;
                // 5–6. Allowed by role and scopes?
                match policy::decide(status, role, *action, principal.scopes) {
                    Verdict::Allow(role) => Ok(Outcome::Allow(Some(identity(Some(role))))),
                    Verdict::Deny(reason) => Ok(Outcome::Deny(reason)),
                }
            }
            // A resource route always carries an id; treat anything else as no route.
            (Need::Resource { .. }, None) | (Need::Public, _) => Ok(deny(RouteError::NoRoute)),
        }
    }
}

/// Steps 3 and 4 for a resource: the user's status (`None`: no such user)
/// and, for an active user, the effective role (skipped for inactive users:
/// step 3 wins).
async fn status_and_role<S: FactSource>(
    facts: &Gather<'_, S>,
    user_id: Uuid,
    kind: TargetKind,
    id: Uuid,
) -> Result<StatusAndRole, FactError> {
    let Some(user) = facts.user(user_id).await? else {
        return Ok(None);
    };
    let role = if user.status == UserStatus::Active {
        role::effective_role(facts, user_id, kind, id).await?
    } else {
        None
    };
    Ok(Some((user.status, role)))
}

/// A route's required scope: `ops` must be granted explicitly; an action name
/// is granted unless scopes narrow it away.
fn scope_grants(scopes: Option<Scopes>, scope: &str) -> bool {
    match scope.parse::<Action>() {
        Ok(action) => scopes.is_none_or(|s| s.allows(action)),
        Err(_) => scopes.is_some_and(Scopes::has_ops),
    }
}

/// The fact trace of a decision: with a span when the request is sampled
/// (its `traceparent`, else the ratio), else off.
#[cold]
fn traced(tracer: &DecisionTracer, req: &AuthzRequest<'_>) -> Trace {
    let header = |name| req.trace_headers.and_then(|h| h.get(name));
    match tracer.start(header("traceparent"), header("tracestate")) {
        Some(span) => Trace::traced(span),
        None => Trace::off(),
    }
}

fn deny(reason: impl Into<DenyReason>) -> Outcome {
    Outcome::Deny(reason.into())
}

/// One of `max_in_flight` places for a Check being decided; given back on drop.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// A place, unless `max` are taken. A count, not a lock: Relaxed is enough.
    fn take(in_flight: &'a AtomicUsize, max: usize) -> Option<Slot<'a>> {
        if in_flight.fetch_add(1, Ordering::Relaxed) >= max {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(in_flight))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fresh decision id: a random (version 4) UUID as 32 hex digits, from the
/// thread's own CSPRNG rather than a `getrandom` system call per Check.
fn new_decision_id() -> String {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    uuid.simple().encode_lower(&mut buf).to_owned()
}

#[cfg(test)]
mod tests;
