//! DRF-style limit/offset pagination and query-string parsing helpers.

use std::collections::HashMap;

use axum::http::{HeaderMap, Uri};
use chrono::{DateTime, NaiveDate, Utc};
use projections::{Page, Window};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest page; also what a negative `limit` ("everything") means.
pub const MAX_LIMIT: i64 = 30_000;

/// The largest window: what "everything" means for lists the server reads whole.
pub const ALL: Window = Window {
    limit: MAX_LIMIT,
    offset: 0,
};

/// The query string, as parsed key/values.
pub type Params = HashMap<String, String>;

/// The `{count, next, previous, results}` envelope.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// An integer filter.
pub fn int_param(params: &Params, key: &'static str) -> Result<Option<i64>, ApiError> {
    params
        .get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::invalid_field(key, format!("{key} must be an integer")))
        })
        .transpose()
}

/// Page size of page-number lists (`/users/`, `/maintenances/`, `/accesses/accesses/`, …).
pub const PAGE_SIZE: i64 = 20;

/// Resolves `page` (1-based, default 1) into a window of [`PAGE_SIZE`].
pub fn page_window(params: &Params) -> Result<Window, ApiError> {
    let page = int_param(params, "page")?.unwrap_or(1);
    if page < 1 {
        return Err(ApiError::invalid_field("page", "page must be 1 or more"));
    }
    let offset = (page - 1)
        .checked_mul(PAGE_SIZE)
        .ok_or_else(|| ApiError::invalid_field("page", "page is too large"))?;
    Ok(Window {
        limit: PAGE_SIZE,
        offset,
    })
}

/// The envelope of a page-number list, with `?page=` links.
pub fn page_envelope<T>(
    page: Page<T>,
    window: Window,
    uri: &Uri,
    headers: &HeaderMap,
    params: &Params,
) -> Envelope<T> {
    let number = window.offset / PAGE_SIZE + 1;
    let at = |n: i64| {
        let mut p = params.clone();
        p.remove("limit");
        p.insert("page".into(), n.to_string());
        // `link` appends limit/offset; page lists ignore those, so strip them back out.
        let url = link(uri, headers, &p, PAGE_SIZE, 0);
        url.replace(&format!("&limit={PAGE_SIZE}"), "")
            .replace(&format!("?limit={PAGE_SIZE}"), "?")
    };
    Envelope {
        count: page.count,
        next: (window.offset.saturating_add(PAGE_SIZE) < page.count).then(|| at(number + 1)),
        previous: (number > 1).then(|| at(number - 1)),
        results: page.results,
    }
}

/// Resolves `limit` and `offset`: default 20, negative = all (capped at 30 000), 0 = count only.
pub fn window(params: &Params) -> Result<Window, ApiError> {
    let limit = match int_param(params, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) if l < 0 => MAX_LIMIT,
        Some(l) => l.min(MAX_LIMIT),
    };
    let offset = int_param(params, "offset")?.unwrap_or(0).max(0);
    Ok(Window { limit, offset })
}

fn link(uri: &Uri, headers: &HeaderMap, params: &Params, limit: i64, offset: i64) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "limit" && k.as_str() != "offset")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pairs.sort();
    pairs.push(("limit".into(), limit.to_string()));
    if offset > 0 {
        pairs.push(("offset".into(), offset.to_string()));
    }
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!("http://{host}{}?{query}", uri.path())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wraps a page in the envelope, with DRF's absolute `next`/`previous` links.
pub fn envelope<T>(
    page: Page<T>,
    window: Window,
    uri: &Uri,
    headers: &HeaderMap,
    params: &Params,
) -> Envelope<T> {
    let Window { limit, offset } = window;
    let next = (limit > 0 && offset.saturating_add(limit) < page.count)
        .then(|| link(uri, headers, params, limit, offset + limit));
    let previous = (limit > 0 && offset > 0)
        .then(|| link(uri, headers, params, limit, (offset - limit).max(0)));
    Envelope {
        count: page.count,
        next,
        previous,
        results: page.results,
    }
}

/// A boolean filter (`true`/`false`, also `1`/`0`, `True`/`False`).
pub fn bool_param(params: &Params, key: &'static str) -> Result<Option<bool>, ApiError> {
    match params.get(key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v == "true" || v == "1" => Ok(Some(true)),
        Some(v) if v == "false" || v == "0" => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid_field(
            key,
            format!("{key} must be true or false"),
        )),
    }
}

/// A uuid filter.
pub fn uuid_param(params: &Params, key: &'static str) -> Result<Option<Uuid>, ApiError> {
    params
        .get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid_field(key, format!("{key} must be a uuid")))
        })
        .transpose()
}

/// A date-time filter: RFC 3339, or a plain date (midnight UTC).
pub fn datetime_param(
    params: &Params,
    key: &'static str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = params.get(key).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(ApiError::invalid_field(
        key,
        format!("{key} must be a date or an RFC 3339 date-time"),
    ))
}

/// A comma-list filter (`status=a,b`); empty items are dropped.
pub fn list_param(params: &Params, key: &str) -> Vec<String> {
    params
        .get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A non-empty text filter.
pub fn text_param(params: &Params, key: &str) -> Option<String> {
    params.get(key).filter(|v| !v.is_empty()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limit_defaults_caps_and_negative_means_all() {
        assert_eq!(
            window(&params(&[])).unwrap(),
            Window {
                limit: 20,
                offset: 0
            }
        );
        assert_eq!(
            window(&params(&[("limit", "-1")])).unwrap().limit,
            MAX_LIMIT
        );
        assert_eq!(
            window(&params(&[("limit", "99999")])).unwrap().limit,
            MAX_LIMIT
        );
        assert_eq!(
            window(&params(&[("limit", "0"), ("offset", "-3")])).unwrap(),
            Window {
                limit: 0,
                offset: 0
            }
        );
        assert!(window(&params(&[("limit", "ten")])).is_err());
    }

    #[test]
    fn links_point_to_the_neighbouring_pages() {
        let uri: Uri = "/cohort/folders/?limit=2&offset=2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.org".parse().unwrap());
        let p = params(&[("limit", "2"), ("offset", "2"), ("search", "a b")]);
        let page = Page {
            count: 5,
            results: vec![1, 2],
        };
        let e = envelope(
            page,
            Window {
                limit: 2,
                offset: 2,
            },
            &uri,
            &headers,
            &p,
        );
        assert_eq!(
            e.next.as_deref(),
            Some("http://example.org/cohort/folders/?search=a%20b&limit=2&offset=4")
        );
        assert_eq!(
            e.previous.as_deref(),
            Some("http://example.org/cohort/folders/?search=a%20b&limit=2")
        );
    }

    #[test]
    fn filters_parse_or_explain() {
        let p = params(&[
            ("favorite", "True"),
            ("min_updated_at", "2024-01-31"),
            ("request", "x"),
        ]);
        assert_eq!(bool_param(&p, "favorite").unwrap(), Some(true));
        assert!(datetime_param(&p, "min_updated_at").unwrap().is_some());
        assert!(uuid_param(&p, "request").is_err());
    }
}
