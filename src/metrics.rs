//! Prometheus metrics (SPEC §7), all prefixed `velro_authz_`, registered on an
//! explicit registry. Labels come only from enums and route patterns — never a
//! user id, token, raw path or error text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The fact kinds (`FactKey::kind()`), for the handles resolved at start.
const FACT_KINDS: [&str; 8] = [
    "user",
    "team",
    "memberships",
    "project",
    "generation",
    "shares",
    "api_key",
    "session",
];

/// Every metric the sidecar exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Decisions by outcome (allow | deny | dry_run_allow | error), HTTP status and reason code.
    pub decisions: IntCounterVec,
    /// `decisions{outcome="allow",status="200",reason="ok"}`, resolved once:
    /// the hot path counts without hashing labels.
    pub decisions_allowed: IntCounter,
    /// Checks refused at once because `decision.max_in_flight` were in flight.
    pub decisions_shed: IntCounter,
    /// Decision latency, from request received to answer built.
    pub decision_seconds: Histogram,
    /// Cache lookups by tier (l1 | l2 | memo), fact kind and result (hit | miss | coalesced | error).
    pub cache_lookups: IntCounterVec,
    /// `cache_lookups{tier="l1",result="hit"}` per fact kind, resolved once
    /// (ten of them on a deep hot Check); see [`Metrics::l1_hit`].
    l1_hits: Vec<(&'static str, IntCounter)>,
    /// `cache_lookups{tier="memo",kind="decision"}`, hit and miss, resolved once.
    memo_lookups: [IntCounter; 2],
    /// Postgres fact queries by fact kind: proves what a cached Check does not touch.
    pub store_queries: IntCounterVec,
    /// Store query failures by fact kind.
    pub store_errors: IntCounterVec,
    /// Invalidations applied by table.
    pub invalidations: IntCounterVec,
    /// Commit (trigger time) to applied, seconds.
    pub invalidation_lag_seconds: Histogram,
    /// Whole-cache flushes by cause (listener_gap | notification | junk).
    pub flushes: IntCounterVec,
    /// Notifications on the change channel that no trigger of ours sent in a
    /// shape we read (each still flushes: see `invalidate::parse`).
    pub invalidation_junk: IntCounter,
    /// 1 while the LISTEN connection is up.
    pub listener_connected: IntGauge,
    /// LISTEN reconnects after the first connect.
    pub listener_reconnects: IntCounter,
    /// 1 while the change feed is proven live within `freshness.max_silence_ms`
    /// (cached facts trusted); 0 while decisions read through to Postgres.
    pub feed_trusted: IntGauge,
    /// Seconds from sending a heartbeat through Postgres to hearing it back.
    pub feed_heartbeat_seconds: Histogram,
    /// Facts answered from cache while the feed was untrusted and Postgres
    /// unreachable (`freshness.serve_stale_on_outage_ms`), by fact kind.
    pub stale_served: IntCounterVec,
    /// How this sidecar came to trust the shared Redis tier after a start or a
    /// gap (joined: others covered the gap | bumped: the epoch was bumped).
    pub l2_trust: IntCounterVec,
    /// 1 when a dependency answered its last call.
    pub dependency_up: IntGaugeVec,
    /// Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// Circuit breaker transitions by dependency and new state.
    pub circuit_transitions: IntCounterVec,
    /// L2 (Redis) fills by result (written | refused: a newer version or epoch won).
    pub l2_fills: IntCounterVec,
    /// L2 (Redis) values not trusted although present, by reason (bad_mac |
    /// unauthenticated | wrong_fact | malformed | format): each is read as a miss.
    pub l2_rejected: IntCounterVec,
    /// Requests refused by the rate limiter, by backend (redis | local | failed_auth).
    pub rate_limited: IntCounterVec,
    /// Pool connections by state (idle | in_use).
    pub db_pool_connections: IntGaugeVec,
    /// Decision log lines dropped because the writer fell behind.
    pub decision_log_dropped: IntCounter,
    /// Decision-trace spans handed to the OTLP exporter, by result (exported |
    /// failed: the collector refused them or could not be reached).
    pub trace_spans: IntCounterVec,
    /// Constant 1 with the build version.
    pub build_info: IntGaugeVec,
    /// Configuration reloads by result (applied | error: the new configuration
    /// is invalid | restart_required: it changes a restart-only setting).
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric on a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "velro_authz_decisions_total",
                "Decisions by outcome, status and reason.",
            ),
            &["outcome", "status", "reason"],
        )
        .expect("metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "velro_authz_cache_lookups_total",
                "Cache lookups by tier, kind and result.",
            ),
            &["tier", "kind", "result"],
        )
        .expect("metric");
        let m = Metrics {
            decisions_allowed: decisions.with_label_values(&["allow", "200", "ok"]),
            decisions,
            l1_hits: FACT_KINDS
                .iter()
                .map(|&kind| (kind, cache_lookups.with_label_values(&["l1", kind, "hit"])))
                .collect(),
            memo_lookups: [
                cache_lookups.with_label_values(&["memo", "decision", "miss"]),
                cache_lookups.with_label_values(&["memo", "decision", "hit"]),
            ],
            cache_lookups,
            decisions_shed: IntCounter::new(
                "velro_authz_decisions_shed_total",
                "Checks refused at once (UNAVAILABLE / 503) because decision.max_in_flight were in flight.",
            )
            .expect("metric"),
            decision_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "velro_authz_decision_duration_seconds",
                    "Time to decide one request.",
                )
                .buckets(vec![
                    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )
            .expect("metric"),
            store_queries: IntCounterVec::new(
                Opts::new(
                    "velro_authz_store_queries_total",
                    "Postgres fact queries by kind.",
                ),
                &["kind"],
            )
            .expect("metric"),
            store_errors: IntCounterVec::new(
                Opts::new(
                    "velro_authz_store_errors_total",
                    "Postgres fact query failures by kind.",
                ),
                &["kind"],
            )
            .expect("metric"),
            invalidations: IntCounterVec::new(
                Opts::new(
                    "velro_authz_invalidations_total",
                    "Invalidations applied by table.",
                ),
                &["table"],
            )
            .expect("metric"),
            invalidation_lag_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "velro_authz_invalidation_lag_seconds",
                    "From the change in Postgres to the invalidation applied here.",
                )
                .buckets(vec![
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("metric"),
            flushes: IntCounterVec::new(
                Opts::new(
                    "velro_authz_cache_flushes_total",
                    "Whole-cache flushes by cause.",
                ),
                &["cause"],
            )
            .expect("metric"),
            invalidation_junk: IntCounter::new(
                "velro_authz_invalidation_junk_total",
                "Unreadable notifications on the change channel (each flushed the cache).",
            )
            .expect("metric"),
            listener_connected: IntGauge::new(
                "velro_authz_listener_connected",
                "1 while the LISTEN connection is up.",
            )
            .expect("metric"),
            listener_reconnects: IntCounter::new(
                "velro_authz_listener_reconnects_total",
                "LISTEN reconnects after the first connect.",
            )
            .expect("metric"),
            feed_trusted: IntGauge::new(
                "velro_authz_feed_trusted",
                "1 while the change feed is proven live (cached facts trusted).",
            )
            .expect("metric"),
            feed_heartbeat_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "velro_authz_feed_heartbeat_seconds",
                    "From sending a heartbeat through Postgres to hearing it on the feed.",
                )
                .buckets(vec![
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("metric"),
            stale_served: IntCounterVec::new(
                Opts::new(
                    "velro_authz_stale_served_total",
                    "Facts served from cache while the feed was untrusted and Postgres unreachable.",
                ),
                &["kind"],
            )
            .expect("metric"),
            l2_trust: IntCounterVec::new(
                Opts::new(
                    "velro_authz_l2_trust_total",
                    "How the Redis tier came to be trusted after a start or a gap (joined | bumped).",
                ),
                &["how"],
            )
            .expect("metric"),
            dependency_up: IntGaugeVec::new(
                Opts::new(
                    "velro_authz_dependency_up",
                    "1 when the dependency answered its last call.",
                ),
                &["dependency"],
            )
            .expect("metric"),
            circuit_state: IntGaugeVec::new(
                Opts::new(
                    "velro_authz_circuit_state",
                    "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                ),
                &["dependency"],
            )
            .expect("metric"),
            circuit_transitions: IntCounterVec::new(
                Opts::new(
                    "velro_authz_circuit_transitions_total",
                    "Circuit breaker state changes by dependency and new state.",
                ),
                &["dependency", "state"],
            )
            .expect("metric"),
            l2_fills: IntCounterVec::new(
                Opts::new(
                    "velro_authz_l2_fills_total",
                    "Redis fills by result: written, or refused because an invalidation or epoch bump won.",
                ),
                &["result"],
            )
            .expect("metric"),
            l2_rejected: IntCounterVec::new(
                Opts::new(
                    "velro_authz_l2_rejected_total",
                    "Redis values not trusted (read as a miss), by reason: bad_mac, unauthenticated, wrong_fact, malformed, format.",
                ),
                &["reason"],
            )
            .expect("metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "velro_authz_rate_limited_total",
                    "Requests refused by the rate limiter, by backend.",
                ),
                &["backend"],
            )
            .expect("metric"),
            db_pool_connections: IntGaugeVec::new(
                Opts::new(
                    "velro_authz_db_pool_connections",
                    "Postgres pool connections by state.",
                ),
                &["state"],
            )
            .expect("metric"),
            decision_log_dropped: IntCounter::new(
                "velro_authz_decision_log_dropped_total",
                "Decision log lines dropped rather than slow a decision.",
            )
            .expect("metric"),
            trace_spans: IntCounterVec::new(
                Opts::new(
                    "velro_authz_trace_spans_total",
                    "Decision-trace spans sent to the OTLP collector, by result (exported | failed).",
                ),
                &["result"],
            )
            .expect("metric"),
            build_info: IntGaugeVec::new(
                Opts::new("velro_authz_build_info", "Build information."),
                &["version"],
            )
            .expect("metric"),
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "velro_authz_config_reloads_total",
                    "Configuration reloads by result.",
                ),
                &["result"],
            )
            .expect("metric"),
            registry,
        };
        for c in m.collectors() {
            m.registry.register(c).expect("unique metric names");
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every result from the start, so a dashboard sees 0 rather than nothing.
        for result in ["applied", "error", "restart_required"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// Every metric, once each (what [`Metrics::new`] registers).
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let m = self;
        vec![
            Box::new(m.decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.decisions_shed.clone()),
            Box::new(m.decision_seconds.clone()),
            Box::new(m.cache_lookups.clone()),
            Box::new(m.store_queries.clone()),
            Box::new(m.store_errors.clone()),
            Box::new(m.invalidations.clone()),
            Box::new(m.invalidation_lag_seconds.clone()),
            Box::new(m.flushes.clone()),
            Box::new(m.invalidation_junk.clone()),
            Box::new(m.listener_connected.clone()),
            Box::new(m.listener_reconnects.clone()),
            Box::new(m.feed_trusted.clone()),
            Box::new(m.feed_heartbeat_seconds.clone()),
            Box::new(m.stale_served.clone()),
            Box::new(m.l2_trust.clone()),
            Box::new(m.dependency_up.clone()),
            Box::new(m.circuit_state.clone()),
            Box::new(m.circuit_transitions.clone()),
            Box::new(m.l2_fills.clone()),
            Box::new(m.l2_rejected.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.db_pool_connections.clone()),
            Box::new(m.decision_log_dropped.clone()),
            Box::new(m.trace_spans.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.config_reloads.clone()),
        ]
    }

    /// The name and type of every metric family exported, whether or not it
    /// has a series yet (a labelled family has none until first used, and
    /// `/metrics` leaves it out until then): what dashboards and alert rules
    /// may name, with `_bucket`, `_sum` and `_count` for histograms.
    pub fn families(&self) -> Vec<(String, prometheus::proto::MetricType)> {
        self.collectors()
            .iter()
            .flat_map(|c| c.collect())
            .map(|f| (f.name().to_owned(), f.get_field_type()))
            .collect()
    }

    /// Counts a lookup of a remembered decision: `hit`, or a miss (none
    /// kept, or no longer trusted).
    pub fn memo_lookup(&self, hit: bool) {
        self.memo_lookups[usize::from(hit)].inc();
    }

    /// Counts an L1 hit on a fact of `kind` (a `FactKey::kind()` name)
    /// through a handle resolved at start, not a label lookup.
    pub fn l1_hit(&self, kind: &'static str) {
        match self.l1_hits.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.inc(),
            None => self
                .cache_lookups
                .with_label_values(&["l1", kind, "hit"])
                .inc(),
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Current value of one store-query counter (tests and the admin API).
    pub fn store_queries_total(&self) -> u64 {
        self.store_queries
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

use prometheus::core::Collector as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_handles_count_into_the_labelled_series() {
        let m = Metrics::new();
        m.decisions_allowed.inc();
        assert_eq!(
            m.decisions.with_label_values(&["allow", "200", "ok"]).get(),
            1
        );
        for kind in FACT_KINDS {
            m.l1_hit(kind);
            m.l1_hit(kind);
            assert_eq!(
                m.cache_lookups
                    .with_label_values(&["l1", kind, "hit"])
                    .get(),
                2,
                "{kind}"
            );
        }
        m.l1_hit("not_a_kind");
        assert_eq!(
            m.cache_lookups
                .with_label_values(&["l1", "not_a_kind", "hit"])
                .get(),
            1
        );
    }

    #[test]
    fn metrics_render_has_prefix_and_build_info() {
        let m = Metrics::new();
        m.decisions.with_label_values(&["allow", "200", "ok"]).inc();
        let text = m.render();
        assert!(text.contains("velro_authz_build_info{version=\""), "{text}");
        assert!(
            text.contains("velro_authz_decisions_total{outcome=\"allow\""),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(
                line.starts_with("velro_authz_"),
                "unprefixed metric: {line}"
            );
        }
    }
}
