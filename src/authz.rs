//! The decision, in the order of SPEC §4: route → authenticate → active user →
//! effective role → answer. Protocol-free: adapters translate to and from it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::authn::jwt::{JwtVerifier, VerifiedToken};
use crate::authn::{self, AuthnError, Credential, apikey};
use crate::config::{CacheConfig, DecisionConfig};
use crate::facts::{FactError, FactSource, FactUse, Facts, Trace};
use crate::metrics::Metrics;
use crate::model::{ResourceKind, Role, Scopes, Share, UserStatus};
use crate::policy::{
    self, DenyReason, GenerationFacts, ProjectFacts, ShareFact, ShareGrantee, Subject, Verdict,
};
use crate::ratelimit::{LimitKey, RateLimitInfo, RateLimiter};
use crate::routes::{Need, RouteError, RouteTable, TargetKind};

/// Largest header value accepted (SPEC §9): larger → 400 `too_large`.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

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
}

/// How the principal authenticated (`x-velro-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    Jwt,
    ApiKey,
}

impl AuthKind {
    /// Header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Jwt => "jwt",
            AuthKind::ApiKey => "api_key",
        }
    }
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The user (the JWT `sub`, or the API key's owner).
    pub user_id: Uuid,
    /// JWT or API key.
    pub auth: AuthKind,
    /// `None` = no narrowing.
    pub scopes: Option<Scopes>,
    /// The API key's id, when authenticated by one (rate limiting key).
    pub api_key_id: Option<Uuid>,
}

/// Identity handed to the upstream on allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// `x-velro-user-id`.
    pub user_id: Uuid,
    /// `x-velro-auth`.
    pub auth: AuthKind,
    /// `x-velro-role`, on resource routes only.
    pub role: Option<Role>,
}

/// A deny: status, stable reason code and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deny {
    /// HTTP status the proxy answers with.
    pub status: u16,
    /// Stable machine code (`no_route`, `invalid_token`, ...).
    pub reason: &'static str,
    /// Whether to send `www-authenticate` (401s).
    pub challenge: bool,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through; `None` identity on public routes.
    Allow(Option<Identity>),
    /// Stop it.
    Deny(Deny),
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
    pub dry_run_deny: Option<Deny>,
    /// The route pattern matched, if any.
    pub route: Option<Arc<str>>,
    /// The authenticated principal, if it got that far.
    pub principal: Option<Principal>,
    /// The effective role, on resource routes.
    pub role: Option<Role>,
    /// The rate limiter's verdict, when one ran (headers on a 429).
    pub rate_limit: Option<RateLimitInfo>,
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
}

impl CheckError {
    /// Stable reason code for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckError::Unavailable(_) => "store_unavailable",
            CheckError::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// A decision plus every fact it used (`check --explain`, admin `Explain`).
#[derive(Debug)]
pub struct Explanation {
    /// The decision, or why none could be made.
    pub decision: Result<Decision, CheckError>,
    /// Facts used, in order, with their source.
    pub facts: Vec<FactUse>,
}

/// Per-request state built up along the steps.
#[derive(Default)]
struct Steps {
    route: Option<Arc<str>>,
    principal: Option<Principal>,
    role: Option<Role>,
    rate_limit: Option<RateLimitInfo>,
}

/// Decides requests.
pub struct Authorizer<S> {
    routes: RouteTable,
    jwt: JwtVerifier,
    facts: Arc<Facts<S>>,
    /// Verified tokens by SHA-256 of the token; an entry never outlives `exp`.
    tokens: Cache<[u8; 32], Arc<VerifiedToken>>,
    config: DecisionConfig,
    limiter: Option<RateLimiter>,
    metrics: Metrics,
}

struct TokenExpiry;

impl Expiry<[u8; 32], Arc<VerifiedToken>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.expires_at - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(left.clamp(0, 300) as u64))
    }
}

impl<S: FactSource> Authorizer<S> {
    /// Wires the decision steps.
    pub fn new(
        routes: RouteTable,
        jwt: JwtVerifier,
        facts: Arc<Facts<S>>,
        cache: &CacheConfig,
        config: DecisionConfig,
        metrics: Metrics,
    ) -> Authorizer<S> {
        let tokens = Cache::builder()
            .max_capacity(cache.max_credentials)
            .expire_after(TokenExpiry)
            .build();
        Authorizer {
            routes,
            jwt,
            facts,
            tokens,
            config,
            limiter: None,
            metrics,
        }
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
        self.tokens.invalidate_all();
    }

    /// Cached verified credentials.
    pub fn credential_entries(&self) -> u64 {
        self.tokens.entry_count()
    }

    /// Decides one request within `deadline` (the caller's, capped by the
    /// configured budget), recording metrics and the decision log.
    pub async fn check(
        &self,
        req: &AuthzRequest<'_>,
        deadline: Option<Duration>,
    ) -> Result<Decision, CheckError> {
        let started = Instant::now();
        let budget = deadline.map_or(self.config.deadline, |d| d.min(self.config.deadline));
        let result = match tokio::time::timeout(budget, self.decide(req, &Trace::off(), true)).await
        {
            Ok(r) => r,
            Err(_) => Err(CheckError::DeadlineExceeded),
        };
        self.metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
        self.record(&result);
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
            Outcome::Deny(deny) if self.config.dry_run => (Outcome::Allow(None), Some(deny)),
            other => (other, None),
        };
        Ok(Decision {
            decision_id: Uuid::new_v4().simple().to_string(),
            outcome,
            dry_run_deny,
            route: steps.route,
            principal: steps.principal,
            role: steps.role,
            rate_limit: steps.rate_limit,
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
            return Ok(deny_route(RouteError::TooLarge));
        }
        // 1. Route.
        let route = match self.routes.resolve(req.method, req.path) {
            Ok(m) => m,
            Err(e) => return Ok(deny_route(e)),
        };
        steps.route = Some(route.route.clone());
        if route.need == Need::Public {
            return Ok(Outcome::Allow(None));
        }
        // 2. Authenticate.
        let principal = match self.authenticate(req, trace).await? {
            Ok(p) => p,
            Err(e) => return Ok(deny_authn(e)),
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
                return Ok(Outcome::Deny(Deny {
                    status: 429,
                    reason: "rate_limited",
                    challenge: false,
                }));
            }
        }
        // 3. The principal must be an active user.
        let status = match self.facts.user(principal.user_id, trace).await? {
            Some(user) => user.status,
            None => return Ok(deny_authn(AuthnError::UnknownUser)),
        };
        let identity = |role| Identity {
            user_id: principal.user_id,
            auth: principal.auth,
            role,
        };
        match (&route.need, route.id) {
            (Need::Authenticated { scope }, _) => {
                if status != UserStatus::Active {
                    return Ok(deny_policy(DenyReason::UserInactive));
                }
                if let Some(scope) = scope
                    && !scope_grants(principal.scopes, scope)
                {
                    return Ok(deny_policy(DenyReason::InsufficientScope));
                }
                Ok(Outcome::Allow(Some(identity(None))))
            }
            (Need::Resource { kind, action }, Some(id)) => {
                // 4. Effective role (skipped for inactive users: step 3 wins).
                let role = if status == UserStatus::Active {
                    self.effective_role(principal.user_id, *kind, id, trace)
                        .await?
                } else {
                    None
                };
                steps.role = role;
                // 5–6. Allowed by role and scopes?
                match policy::decide(status, role, *action, principal.scopes) {
                    Verdict::Allow(role) => Ok(Outcome::Allow(Some(identity(Some(role))))),
                    Verdict::Deny(reason) => Ok(deny_policy(reason)),
                }
            }
            // A resource route always carries an id; treat anything else as no route.
            (Need::Resource { .. }, None) | (Need::Public, _) => {
                Ok(deny_route(RouteError::NoRoute))
            }
        }
    }

    async fn authenticate(
        &self,
        req: &AuthzRequest<'_>,
        trace: &Trace,
    ) -> Result<Result<Principal, AuthnError>, CheckError> {
        let credential = match authn::extract_credential(req.authorization, req.api_key) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Err(AuthnError::MissingCredentials)),
            Err(e) => return Ok(Err(e)),
        };
        match credential {
            Credential::Bearer(token) => {
                let verified = match self.verify_token(token) {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                if let Some(sid) = verified.session_id {
                    let session = self.facts.session(sid, trace).await?;
                    let now = chrono::Utc::now();
                    if let Err(e) = authn::check_session(session.as_ref(), verified.subject, now) {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(Principal {
                    user_id: verified.subject,
                    auth: AuthKind::Jwt,
                    scopes: verified.scopes,
                    api_key_id: None,
                }))
            }
            Credential::ApiKey(plain) => {
                let hash = apikey::hash(plain);
                let Some(key) = self.facts.api_key(hash.as_str().into(), trace).await? else {
                    return Ok(Err(AuthnError::InvalidApiKey));
                };
                if !apikey::hashes_match(&key.key_hash, &hash) {
                    return Ok(Err(AuthnError::InvalidApiKey));
                }
                if let Err(e) = apikey::check_state(&key, chrono::Utc::now()) {
                    return Ok(Err(e));
                }
                Ok(Ok(Principal {
                    user_id: key.user_id,
                    auth: AuthKind::ApiKey,
                    scopes: key
                        .scopes
                        .as_ref()
                        .map(|s| Scopes::from_tokens(s.iter().map(String::as_str))),
                    api_key_id: Some(key.id),
                }))
            }
        }
    }

    /// Signature and claims checks are pure and costly; their result is cached
    /// by a hash of the token (never the token itself) until it expires.
    fn verify_token(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthnError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.tokens.get(&key)
            && v.expires_at > chrono::Utc::now().timestamp()
        {
            return Ok(v);
        }
        let verified = Arc::new(self.jwt.verify(token)?);
        self.tokens.insert(key, verified.clone());
        Ok(verified)
    }

    async fn effective_role(
        &self,
        user_id: Uuid,
        kind: TargetKind,
        id: Uuid,
        trace: &Trace,
    ) -> Result<Option<Role>, CheckError> {
        let memberships = self.facts.memberships(user_id, trace).await?;
        let subject = Subject {
            user_id,
            memberships: &memberships,
        };
        Ok(match kind {
            TargetKind::Team => {
                let chain = self.facts.team_chain(id, trace).await?;
                policy::role_in_team(&subject, &chain)
            }
            TargetKind::Project => match self.project_facts(id, trace).await? {
                Some(p) => policy::role_on_project(&subject, &p),
                None => None,
            },
            TargetKind::Generation => {
                let Some(generation) = self.facts.generation(id, trace).await? else {
                    return Ok(None);
                };
                if generation.status == crate::model::GenerationStatus::Deleted {
                    return Ok(None);
                }
                let chain = self
                    .facts
                    .generation_chain(generation.clone(), trace)
                    .await?;
                let project = match policy::project_of(&chain) {
                    Some(pid) => self.project_facts(pid, trace).await?,
                    None => None,
                };
                let shares = self
                    .share_facts(ResourceKind::Generation, id, trace)
                    .await?;
                policy::role_on_generation(
                    &subject,
                    &GenerationFacts {
                        generation,
                        shares,
                        project,
                    },
                )
            }
        })
    }

    async fn project_facts(
        &self,
        id: Uuid,
        trace: &Trace,
    ) -> Result<Option<ProjectFacts>, CheckError> {
        let Some(project) = self.facts.project(id, trace).await? else {
            return Ok(None);
        };
        let team_chain = match project.team_id {
            Some(team) => self.facts.team_chain(team, trace).await?,
            None => Vec::new(),
        };
        let shares = self.share_facts(ResourceKind::Project, id, trace).await?;
        Ok(Some(ProjectFacts {
            project,
            team_chain,
            shares,
        }))
    }

    async fn share_facts(
        &self,
        kind: ResourceKind,
        id: Uuid,
        trace: &Trace,
    ) -> Result<Vec<ShareFact>, CheckError> {
        let shares = self.facts.shares(kind, id, trace).await?;
        let mut out = Vec::with_capacity(shares.len());
        for Share { grantee, role } in shares.iter().copied() {
            let grantee = match grantee {
                crate::model::Grantee::User(u) => ShareGrantee::User(u),
                crate::model::Grantee::Team(t) => ShareGrantee::Team {
                    chain: self.facts.team_chain(t, trace).await?,
                },
            };
            out.push(ShareFact { grantee, role });
        }
        Ok(out)
    }

    fn record(&self, result: &Result<Decision, CheckError>) {
        match result {
            Ok(d) => {
                let (outcome, status, reason) = match (&d.outcome, &d.dry_run_deny) {
                    (Outcome::Deny(deny), _) => ("deny", status_label(deny.status), deny.reason),
                    (Outcome::Allow(_), Some(deny)) => {
                        ("dry_run_allow", status_label(deny.status), deny.reason)
                    }
                    (Outcome::Allow(_), None) => ("allow", "200", "ok"),
                };
                self.metrics
                    .decisions
                    .with_label_values(&[outcome, status, reason])
                    .inc();
                let sampled =
                    outcome == "allow" && rand::random::<f64>() < self.config.allow_log_sample;
                if outcome != "allow" || sampled {
                    tracing::info!(
                        target: "velro_authz::decision",
                        decision_id = %d.decision_id,
                        outcome,
                        status,
                        reason,
                        route = d.route.as_deref().unwrap_or("-"),
                        user_id = d.principal.map(|p| p.user_id.to_string()).unwrap_or_default(),
                        auth = d.principal.map(|p| p.auth.as_str()).unwrap_or("-"),
                        role = d.role.map(|r| r.as_str()).unwrap_or("-"),
                        "decision"
                    );
                }
            }
            Err(e) => {
                self.metrics
                    .decisions
                    .with_label_values(&["error", "503", e.reason()])
                    .inc();
                tracing::warn!(target: "velro_authz::decision", reason = e.reason(), error = %e, "cannot decide");
            }
        }
    }
}

/// A route's required scope: `ops` must be granted explicitly; an action name
/// is granted unless scopes narrow it away.
fn scope_grants(scopes: Option<Scopes>, scope: &str) -> bool {
    match scope.parse::<crate::model::Action>() {
        Ok(action) => scopes.is_none_or(|s| s.allows(action)),
        Err(_) => scopes.is_some_and(Scopes::has_ops),
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        _ => "other",
    }
}

fn deny_route(e: RouteError) -> Outcome {
    Outcome::Deny(Deny {
        status: e.http_status(),
        reason: e.reason(),
        challenge: false,
    })
}

fn deny_authn(e: AuthnError) -> Outcome {
    Outcome::Deny(Deny {
        status: 401,
        reason: e.reason(),
        challenge: true,
    })
}

fn deny_policy(reason: DenyReason) -> Outcome {
    let status = match reason {
        DenyReason::NotFound => 404,
        DenyReason::UserInactive | DenyReason::InsufficientRole | DenyReason::InsufficientScope => {
            403
        }
    };
    Outcome::Deny(Deny {
        status,
        reason: reason.reason(),
        challenge: false,
    })
}
