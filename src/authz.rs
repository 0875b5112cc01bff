//! The decision, in the order of SPEC §4: route → authenticate → rate limit →
//! active user → effective role → answer. Protocol-free: adapters translate to
//! and from it, and [`crate::answer`] holds what an answer is made of.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::answer::{DenyReason, Identity, Outcome, RateLimitInfo};
use crate::authn::{Authenticator, AuthnError, Principal};
use crate::facts::{FactError, FactSource, Facts, Trace};
use crate::identity::{IdentitySigner, SignError};
use crate::metrics::Metrics;
use crate::model::{Action, Role, Scopes, UserStatus};
use crate::policy::{self, Verdict};
use crate::ratelimit::{FailedAuthLimiter, LimitKey, RateLimiter};
use crate::routes::{Need, RouteError, RouteTable};

mod explain;
pub mod log;
mod role;

pub use explain::{Explanation, Summary};

/// Largest header value accepted (SPEC §9): larger → 400 `too_large`.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Per-decision settings.
#[derive(Debug, Clone, Copy)]
pub struct DecisionSettings {
    /// Budget of one decision when the caller sets no sooner deadline.
    pub deadline: Duration,
    /// Shadow mode: log and count what would be denied, but allow.
    pub dry_run: bool,
    /// Fraction of allows written to the decision log (denies are always logged).
    pub allow_log_sample: f64,
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
    pub fn from_envoy(map: &HashMap<String, String>) -> Headers {
        Headers(map.clone())
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

/// Decides requests.
pub struct Authorizer<S> {
    /// Step 1: (method, path) → what the request needs.
    routes: RouteTable,
    /// Step 2: credentials → principal.
    authn: Authenticator,
    /// Steps 2–4 read their facts here (L1, then Redis, then Postgres).
    facts: Arc<Facts<S>>,
    /// Deadline, dry run, log sampling.
    settings: DecisionSettings,
    /// Step 2b, when configured.
    limiter: Option<RateLimiter>,
    /// Step 2, when configured: failed authentications per client address.
    failed_auth: Option<FailedAuthLimiter>,
    /// Decision counters and latency.
    metrics: Metrics,
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
            routes,
            authn,
            facts,
            settings,
            limiter: None,
            failed_auth: None,
            metrics,
            identity: None,
        }
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
        self.authn.flush();
    }

    /// Cached verified credentials.
    pub fn credential_entries(&self) -> u64 {
        self.authn.cached_tokens()
    }

    /// Decides one request within `deadline` (the caller's, capped by the
    /// configured budget), recording metrics and the decision log.
    pub async fn check(
        &self,
        req: &AuthzRequest<'_>,
        deadline: Option<Duration>,
    ) -> Result<Decision, CheckError> {
        let started = Instant::now();
        let budget = deadline.map_or(self.settings.deadline, |d| d.min(self.settings.deadline));
        let mut result =
            match tokio::time::timeout(budget, self.decide(req, &Trace::off(), true)).await {
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
        log::record(&self.metrics, self.settings.allow_log_sample, &result);
        result
    }

    /// Decides one request and reports every fact used. Not for the hot path.
    pub async fn explain(&self, req: &AuthzRequest<'_>) -> Explanation {
        let trace = Trace::recording();
        // Explaining never spends a principal's rate-limit allowance.
        let decision = self.decide(req, &trace, false).await;
        Explanation {
            decision,
            facts: trace.into_uses(),
        }
    }

    async fn decide(
        &self,
        req: &AuthzRequest<'_>,
        trace: &Trace,
        limit: bool,
    ) -> Result<Decision, CheckError> {
        let mut steps = Steps::default();
        let outcome = self.steps(req, trace, limit, &mut steps).await?;
        let (outcome, dry_run_deny) = match outcome {
            Outcome::Deny(reason) if self.settings.dry_run => (Outcome::Allow(None), Some(reason)),
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
        req: &AuthzRequest<'_>,
        trace: &Trace,
        limit: bool,
        steps: &mut Steps,
    ) -> Result<Outcome, CheckError> {
        if req.largest_header > MAX_HEADER_BYTES {
            return Ok(deny(RouteError::TooLarge));
        }
        // 1. Route.
        let route = match self.routes.resolve(req.method, req.path) {
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
            && !self.authn.recognizes(req.authorization, req.api_key)
        {
            steps.rate_limit = Some(verdict);
            return Ok(Outcome::Deny(DenyReason::RateLimited));
        }
        let authenticated = self
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
        // 3. The principal must be an active user.
        let status = match self.facts.user(principal.user_id, trace).await? {
            Some(user) => user.status,
            None => return Ok(deny(AuthnError::UnknownUser)),
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
            (Need::Resource { kind, action }, Some(id)) => {
                // 4. Effective role (skipped for inactive users: step 3 wins).
                let role = if status == UserStatus::Active {
                    role::effective_role(&self.facts, principal.user_id, *kind, id, trace).await?
                } else {
                    None
                };
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

/// A route's required scope: `ops` must be granted explicitly; an action name
/// is granted unless scopes narrow it away.
fn scope_grants(scopes: Option<Scopes>, scope: &str) -> bool {
    match scope.parse::<Action>() {
        Ok(action) => scopes.is_none_or(|s| s.allows(action)),
        Err(_) => scopes.is_some_and(Scopes::has_ops),
    }
}

fn deny(reason: impl Into<DenyReason>) -> Outcome {
    Outcome::Deny(reason.into())
}

/// A fresh decision id: 32 hex digits.
fn new_decision_id() -> String {
    Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests;
