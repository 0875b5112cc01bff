//! Decision traces, exported over OTLP/gRPC; off unless
//! `tracing.otlp_endpoint` is set.
//!
//! One span per decision (`velro_authz.check`), continuing the proxy's trace
//! from the request's `traceparent`, with a child span for each fetch a cache
//! miss made from Redis or Postgres. The spans are made with the OpenTelemetry
//! API directly rather than through the `tracing` bridge, so that what a
//! decision pays is chosen here:
//!
//! - tracing off: one branch on an `Option` (no header read, no span);
//! - on, request not sampled: a header lookup and a parse, no span;
//! - sampled: the spans, which leave through the SDK's batch processor (its
//!   own thread, a bounded queue). A slow or dead collector costs dropped
//!   spans, counted, never a slower decision.
//!
//! Sampling is parent-based: a proxy's sampled flag is honoured either way;
//! a request with no (valid) `traceparent` starts a root trace with
//! probability `tracing.sample_ratio`. Attributes carry codes and the route
//! pattern only: never a token, a key, a user id or the raw path.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};

use crate::metrics::Metrics;

/// Name of the span of one decision.
pub const DECISION_SPAN: &str = "velro_authz.check";

/// Spans waiting for export at most; past it new spans are dropped.
const MAX_QUEUE: usize = 4_096;

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `tracing` section, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC address, `http://host:port`.
    pub otlp_endpoint: String,
    /// Probability that a request with no `traceparent` starts a trace.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// Where a fetch on a cache miss went: the child span's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// A fact read from the Redis tier.
    RedisGet,
    /// A fact written to the Redis tier after a Postgres read.
    RedisPut,
    /// A fact query to Postgres.
    PostgresQuery,
}

impl Fetch {
    fn name(self) -> &'static str {
        match self {
            Fetch::RedisGet => "redis.get",
            Fetch::RedisPut => "redis.put",
            Fetch::PostgresQuery => "postgres.query",
        }
    }

    fn system(self) -> &'static str {
        match self {
            Fetch::RedisGet | Fetch::RedisPut => "redis",
            Fetch::PostgresQuery => "postgresql",
        }
    }
}

/// Makes decision spans; cheap to clone (the SDK tracer is shared).
#[derive(Clone)]
pub struct DecisionTracer {
    /// The SDK tracer, sampling parent-based with the configured ratio.
    tracer: SdkTracer,
    /// Whether requests without a sampled parent may start traces at all
    /// (`sample_ratio > 0`); when not, they are skipped before any span work.
    roots: bool,
}

impl fmt::Debug for DecisionTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionTracer")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// The running export pipeline. [`TracePipeline::shutdown`] flushes what is
/// queued; dropping it without that loses the queue.
pub struct TracePipeline {
    provider: SdkTracerProvider,
    tracer: DecisionTracer,
}

/// The span of one sampled decision, and the context its children hang from.
pub struct DecisionSpan {
    /// Holds the decision span.
    cx: Context,
    /// Starts the child spans.
    tracer: SdkTracer,
    /// The tiers that answered a fact ([`Tier`] bits).
    tiers: AtomicU8,
}

/// A child span; ends when dropped.
pub struct FetchSpan {
    span: opentelemetry_sdk::trace::Span,
}

/// What a decision span records when it ends: codes and the route pattern
/// only.
#[derive(Debug, Clone, Copy)]
pub struct DecisionAttributes<'a> {
    /// The matched route (`GET /api/v1/generations/{id}`), if any.
    pub route: Option<&'a str>,
    /// `allow`, `deny`, `dry_run_allow` or `error`.
    pub outcome: &'static str,
    /// The HTTP status the proxy answers with (`200`, `404`, `503`, ...).
    pub status: &'static str,
    /// The stable reason code (`ok`, `not_found`, `store_unavailable`, ...).
    pub reason: &'static str,
    /// The decision id, when there is a decision.
    pub decision_id: Option<&'a str>,
}

/// A cache tier that answered a fact, as a bit of [`DecisionSpan::tiers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// In-process cache.
    L1 = 1,
    /// Redis.
    L2 = 2,
    /// Postgres, read by this decision.
    Postgres = 4,
    /// Another decision's fill.
    Coalesced = 8,
    /// A stale fact served during an outage.
    Stale = 16,
}

const TIERS: [(Tier, &str); 5] = [
    (Tier::L1, "l1"),
    (Tier::L2, "l2"),
    (Tier::Postgres, "postgres"),
    (Tier::Coalesced, "coalesced"),
    (Tier::Stale, "stale"),
];

impl TracePipeline {
    /// Builds the exporter and the batch processor. Needs a Tokio runtime:
    /// the gRPC channel's connection task runs on it, while the batch
    /// processor's thread waits for each export. Connects lazily: a
    /// collector that is not there yet costs failed exports, not a failed
    /// start.
    pub fn start(settings: &TraceSettings, metrics: &Metrics) -> Result<TracePipeline, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.otlp_endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        let processor = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            metrics: metrics.clone(),
            failing: std::sync::atomic::AtomicBool::new(false),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            // Only what the config says: no resource read from OTEL_* variables.
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(settings.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = DecisionTracer {
            tracer: provider.tracer("velro-authz"),
            roots: settings.sample_ratio > 0.0,
        };
        Ok(TracePipeline { provider, tracer })
    }

    /// The tracer the decision path holds.
    pub fn tracer(&self) -> DecisionTracer {
        self.tracer.clone()
    }

    /// Exports what is queued (bounded by the export timeout) and stops.
    /// The wait happens on a blocking thread: the export itself needs the
    /// runtime's workers, even on a single-threaded runtime.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let outcome = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = outcome {
            tracing::warn!(error = %e, "trace export: flush at shutdown failed");
        }
    }
}

impl DecisionTracer {
    /// The span of a decision, when this request is sampled: the proxy's
    /// sampled flag decides when `traceparent` is valid, else the ratio.
    pub fn start(
        &self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<DecisionSpan> {
        let parent = match traceparent {
            Some(value) => TraceContextPropagator::new().extract(&TraceHeaders {
                traceparent: value,
                tracestate,
            }),
            None => Context::new(),
        };
        let remote = parent.span().span_context().clone();
        if remote.is_valid() {
            if !remote.is_sampled() {
                return None;
            }
        } else if !self.roots {
            return None;
        }
        let span = self
            .tracer
            .span_builder(DECISION_SPAN)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        // The ratio sampler said no to this root.
        if !span.is_recording() {
            return None;
        }
        Some(DecisionSpan {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
            tiers: AtomicU8::new(0),
        })
    }
}

impl DecisionSpan {
    /// Notes that `tier` answered a fact of this decision.
    pub fn tier(&self, tier: Tier) {
        self.tiers.fetch_or(tier as u8, Ordering::Relaxed);
    }

    /// A child span for one fetch of a fact of `kind` (`user`, `shares`, ...).
    pub fn fetch(&self, fetch: Fetch, kind: &'static str) -> FetchSpan {
        let span = self
            .tracer
            .span_builder(fetch.name())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("db.system.name", fetch.system()),
                KeyValue::new("velro_authz.fact_kind", kind),
            ])
            .start_with_context(&self.tracer, &self.cx);
        FetchSpan { span }
    }

    /// Records the outcome and ends the span.
    pub fn end(self, attributes: DecisionAttributes<'_>) {
        let span = self.cx.span();
        let tiers = self.tiers.load(Ordering::Relaxed);
        let tiers: Vec<opentelemetry::StringValue> = TIERS
            .iter()
            .filter(|(t, _)| tiers & (*t as u8) != 0)
            .map(|(_, name)| (*name).into())
            .collect();
        let mut values = vec![
            KeyValue::new("velro_authz.outcome", attributes.outcome),
            KeyValue::new("velro_authz.reason", attributes.reason),
            KeyValue::new(
                "http.response.status_code",
                attributes.status.parse::<i64>().unwrap_or(0),
            ),
            KeyValue::new("velro_authz.tiers", Value::Array(tiers.into())),
        ];
        // A route is named `METHOD /pattern`, as in the metrics.
        if let Some(route) = attributes.route {
            match route.split_once(' ') {
                Some((method, pattern)) => {
                    values.push(KeyValue::new("http.request.method", method.to_owned()));
                    values.push(KeyValue::new("http.route", pattern.to_owned()));
                }
                None => values.push(KeyValue::new("http.route", route.to_owned())),
            }
        }
        if let Some(id) = attributes.decision_id {
            values.push(KeyValue::new("velro_authz.decision_id", id.to_owned()));
        }
        span.set_attributes(values);
        if attributes.outcome == "error" {
            span.set_status(Status::error(attributes.reason));
        }
        span.end();
    }
}

impl FetchSpan {
    /// Marks the fetch as failed (the span still ends on drop).
    pub fn failed(&mut self, reason: &'static str) {
        self.span.set_status(Status::error(reason));
    }

    /// Records what the fetch found (`hit`, `miss`, ...).
    pub fn result(&mut self, result: &'static str) {
        self.span
            .set_attribute(KeyValue::new("velro_authz.result", result));
    }
}

/// The two trace-context headers, for the W3C propagator.
struct TraceHeaders<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The OTLP exporter, counting what it exported and what failed, and
/// logging when export starts failing and when it recovers (not per batch:
/// a dead collector must not flood the log).
struct Counted<E> {
    inner: E,
    metrics: Metrics,
    /// Whether the last export failed.
    failing: std::sync::atomic::AtomicBool,
}

impl<E> fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counted")
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.metrics
                    .trace_spans
                    .with_label_values(&["exported"])
                    .inc_by(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(e) => {
                self.metrics
                    .trace_spans
                    .with_label_values(&["failed"])
                    .inc_by(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    // The SDK's error names the gRPC code and the transport
                    // cause; the endpoint carries no credentials (config
                    // refuses them).
                    tracing::warn!(error = %e, spans, "trace export failing; spans are dropped until it recovers");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests;
