//! The trace id of the work in progress (`X-Trace-Id`).
//!
//! An HTTP request sets it from its `X-Trace-Id` header (or a generated one); a reactor sets it
//! from the `correlation_id` of the event it reacts to, which is the trace id of the request
//! that caused the event. Outbound HTTP clients (in `infra`) send it along.

use std::future::Future;

tokio::task_local! {
    static TRACE_ID: String;
}

/// Runs `work` with `trace_id` as the current trace id.
pub async fn scope<F: Future>(trace_id: String, work: F) -> F::Output {
    TRACE_ID.scope(trace_id, work).await
}

/// The current trace id, if the work runs inside a [`scope`].
pub fn current() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok()
}
