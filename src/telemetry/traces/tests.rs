use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A tracer sampling like the sidecar's, with no exporter: what is tested
/// here is which requests get a span.
fn tracer(ratio: f64) -> DecisionTracer {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .build();
    DecisionTracer {
        tracer: provider.tracer("test"),
        roots: ratio > 0.0,
    }
}

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

#[test]
fn sampled_traceparent_continues_the_proxy_trace_even_at_ratio_zero() {
    let span = tracer(0.0)
        .start(Some(&traceparent("01")), None)
        .expect("the proxy sampled it");
    let cx = span.cx.span().span_context().clone();
    assert_eq!(cx.trace_id(), TraceId::from_hex(TRACE).expect("hex"));
    assert_ne!(cx.span_id(), SpanId::from_hex(PARENT).expect("hex"));
    assert!(cx.is_sampled());
}

#[test]
fn unsampled_traceparent_gets_no_span_even_at_ratio_one() {
    assert!(tracer(1.0).start(Some(&traceparent("00")), None).is_none());
}

#[test]
fn no_traceparent_starts_a_root_only_by_ratio() {
    assert!(tracer(0.0).start(None, None).is_none());
    let span = tracer(1.0)
        .start(None, None)
        .expect("ratio 1 samples every root");
    assert!(span.cx.span().span_context().is_valid());
}

#[test]
fn malformed_traceparent_is_no_parent() {
    let bad = [
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("00-{}-{PARENT}-01", "0".repeat(32)),
        format!("00-{TRACE}-{PARENT}-01,{}", traceparent("01")),
        "00-zz-yy-01".to_owned(),
        String::new(),
    ];
    for value in &bad {
        assert!(
            tracer(0.0).start(Some(value), None).is_none(),
            "{value:?} at ratio 0"
        );
        let root = tracer(1.0)
            .start(Some(value), None)
            .unwrap_or_else(|| panic!("{value:?} at ratio 1: a root"));
        let trace_id = root.cx.span().span_context().trace_id();
        assert_ne!(
            trace_id,
            TraceId::from_hex(TRACE).expect("hex"),
            "{value:?}"
        );
    }
}
