//! Refuses, once and before any handler runs, input that no handler could store:
//!
//! * a body over [`MAX_BODY_BYTES`]: `413 payload_too_large`;
//! * text Postgres cannot hold (`text` and `jsonb` refuse U+0000) in the path, the query string
//!   or the body: `400 invalid_text`, naming where it was found.
//!
//! Every other layer (the request log, the JSON extractor, the handlers) then only sees input
//! that can be stored, so a NUL can no longer surface as a 500 from the database.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Largest request body accepted, in bytes. The largest field caps (a query text of 256 KiB,
/// see `domain::limits`) fit several times over; nothing the front-end sends comes close.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Where a refused character was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Path,
    Query,
    Body,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Path => "path",
            Place::Query => "query string",
            Place::Body => "body",
        }
    }
}

fn refused(place: Place) -> Response {
    ApiError::invalid_text(place.name()).into_response()
}

/// Whether a percent-encoded URI part (path or query) decodes to a NUL. Raw NULs cannot reach
/// here (the HTTP parser refuses them), so `%00` is the only spelling.
fn uri_part_has_nul(raw: &str) -> bool {
    raw.as_bytes().windows(3).any(|w| w == b"%00")
}

/// Whether a JSON text holds a NUL: a raw 0x00 byte, or the escape `\u0000` (preceded by an odd
/// number of backslashes, so that an escaped backslash followed by `u0000` is not one).
fn json_has_nul(bytes: &[u8]) -> bool {
    if bytes.contains(&0) {
        return true;
    }
    let needle = b"u0000";
    bytes.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle && bytes[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
    })
}

/// Whether a body of the given content type holds a NUL.
fn body_has_nul(content_type: &str, bytes: &[u8]) -> bool {
    if content_type.starts_with("application/x-www-form-urlencoded") {
        // Form values are percent-encoded like a query string (a raw NUL is refused too).
        return bytes.contains(&0) || bytes.windows(3).any(|w| w == b"%00");
    }
    // JSON (whatever the declared type: the JSON extractor does not insist on one), and
    // multipart forms, whose text fields carry the value as raw bytes.
    json_has_nul(bytes)
}

/// Middleware: applies the size limit and the NUL rule to every request.
pub async fn guard(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if uri_part_has_nul(uri.path()) {
        return refused(Place::Path);
    }
    if uri.query().is_some_and(uri_part_has_nul) {
        return refused(Place::Query);
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::payload_too_large(MAX_BODY_BYTES).into_response(),
    };
    if body_has_nul(&content_type, &bytes) {
        return refused(Place::Body);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not_mistaken_for_them() {
        assert!(json_has_nul(br#"{"name":"a\u0000b"}"#));
        assert!(json_has_nul(br#"{"a\u0000":1}"#));
        assert!(json_has_nul(b"{\"name\":\"a\0b\"}"));
        assert!(json_has_nul(br#"{"name":"\\\u0000"}"#));
        assert!(!json_has_nul(br#"{"name":"a\\u0000b"}"#));
        assert!(!json_has_nul(br#"{"name":"u0000","n":10000}"#));
        assert!(!json_has_nul(br#"{"name":"\u0001"}"#));
    }

    #[test]
    fn percent_encoded_nuls_are_found_in_uris_and_forms() {
        assert!(uri_part_has_nul("name=%00"));
        assert!(uri_part_has_nul("/cohort/folders/a%00b/"));
        assert!(!uri_part_has_nul("name=%100"));
        assert!(!uri_part_has_nul("name=%2500"));
        assert!(body_has_nul(
            "application/x-www-form-urlencoded",
            b"username=a%00b&password=p"
        ));
        assert!(!body_has_nul(
            "application/x-www-form-urlencoded",
            b"username=a%2500b"
        ));
        assert!(body_has_nul(
            "multipart/form-data; boundary=x",
            b"--x\r\n\r\na\0b\r\n--x--"
        ));
    }
}
