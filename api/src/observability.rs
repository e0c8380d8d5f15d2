//! Request tracing and metrics: `X-Trace-Id` on every request and response (and in the logs and
//! outbound calls made while serving it), Prometheus metrics at `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::state::AppState;

/// Latency buckets (seconds) of every `*_seconds` histogram.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide metrics recorder (installed on first use; the `metrics` facade has one
/// global recorder per process).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program): render an empty one.
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// A client-given trace id is kept if it is short, visible ASCII; otherwise one is generated.
fn accepted_trace_id(value: Option<&HeaderValue>) -> Option<String> {
    let text = value?.to_str().ok()?.trim();
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| text.to_string())
}

/// Middleware (outermost): resolves the trace id (`X-Trace-Id`, else `X-Request-Id`, else a new
/// uuid), makes it visible to the handlers (request header), the logs (span field) and outbound
/// calls ([`commands::trace`]), and returns it on every answer, 404s included.
pub async fn trace_id(mut request: Request, next: Next) -> Response {
    let trace_id = accepted_trace_id(request.headers().get("x-trace-id"))
        .or_else(|| accepted_trace_id(request.headers().get("x-request-id")))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let header_value = HeaderValue::from_str(&trace_id).unwrap_or(HeaderValue::from_static("-"));
    request
        .headers_mut()
        .insert("x-trace-id", header_value.clone());
    let span = tracing::info_span!(
        "request",
        trace_id = %trace_id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = commands::trace::scope(trace_id, next.run(request).instrument(span)).await;
    response.headers_mut().insert("x-trace-id", header_value);
    response
}

/// Route middleware: counts requests and their latency per route template and status.
pub async fn measure(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "cohort360_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "cohort360_http_request_duration_seconds",
        "method" => method, "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text format. Open unless `METRICS_TOKEN` is set, in which case the
/// scraper must send it as a bearer token.
pub async fn metrics_endpoint(State(state): State<AppState>, request: Request) -> Response {
    if let Some(expected) = &state.metrics_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches = given.is_some_and(|g| {
            subtle::ConstantTimeEq::ct_eq(g.as_bytes(), expected.as_bytes()).into()
        });
        if !matches {
            return crate::error::ApiError::unauthenticated(
                "send METRICS_TOKEN as a bearer token to read /metrics",
            )
            .into_response();
        }
    }
    state.metrics.run_upkeep();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts open WebSocket connections while alive.
pub struct ConnectionGauge;

impl ConnectionGauge {
    pub fn open() -> Self {
        metrics::gauge!("cohort360_websocket_connections").increment(1.0);
        ConnectionGauge
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("cohort360_websocket_connections").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_trace_ids_are_kept_only_when_short_and_printable() {
        let id = |s: &str| accepted_trace_id(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(id(" abc-123 "), Some("abc-123".into()));
        assert_eq!(id(""), None);
        assert_eq!(id("has space"), None);
        assert_eq!(id(&"x".repeat(129)), None);
        assert_eq!(accepted_trace_id(None), None);
    }
}
