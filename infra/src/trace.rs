//! Outbound HTTP calls carry the current trace id ([`commands::trace`]) as `X-Trace-Id`.

/// Outbound requests that carry the current trace id.
pub trait Traced {
    /// Adds `X-Trace-Id` when a trace id is current.
    fn traced(self) -> Self;
}

impl Traced for reqwest::RequestBuilder {
    fn traced(self) -> Self {
        match commands::trace::current() {
            Some(id) => self.header("x-trace-id", id),
            None => self,
        }
    }
}
