//! Export files kept on HDFS, read and deleted through the WebHDFS REST API of the namenode:
//! `GET /webhdfs/v1/{path}?op=OPEN` (the namenode redirects to a datanode, which streams the
//! file) and `DELETE /webhdfs/v1/{path}?op=DELETE` (answered `{"boolean": true|false}`).
//!
//! Authentication is WebHDFS's "simple" one only: an optional `user.name` query parameter. There
//! is no Kerberos (SPNEGO) support, unlike upstream's Kerberos HDFS client: a kerberized cluster
//! needs a gateway (e.g. Knox or HttpFS with a proxy user) in front of it. The reqwest build of
//! the workspace has no TLS either: plain HTTP only.

use async_trait::async_trait;
use commands::ports::{ByteStream, ExportStorage, PortError};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::trace::Traced;

/// Redirects followed by hand when the client does not follow them itself (namenode → datanode
/// is one).
const MAX_REDIRECTS: usize = 5;

/// The WebHDFS storage adapter.
pub struct WebHdfsStorage {
    http: reqwest::Client,
    /// `{base}/webhdfs/v1`, to which a file's path segments are appended.
    root: Url,
    user: Option<String>,
}

impl WebHdfsStorage {
    /// A storage on the namenode at `base_url` (e.g. `http://namenode:9870`), acting as `user`
    /// when given. `Err` when `base_url` is not an absolute http(s) URL (checked once, at
    /// startup).
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        user: Option<String>,
    ) -> Result<Self, PortError> {
        Ok(Self {
            http,
            root: webhdfs_root(base_url)?,
            user,
        })
    }

    /// The URL of `path` (absolute in HDFS; a relative one is taken from the root) for `op`.
    /// Each segment is percent-encoded; `.` and `..` segments are refused, so that a path cannot
    /// leave the directory it names.
    fn url(&self, path: &str, op: &str) -> Result<Url, PortError> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segments.is_empty() || segments.iter().any(|s| *s == "." || *s == "..") {
            return Err(PortError(format!("invalid HDFS path {path:?}")));
        }
        let mut url = self.root.clone();
        url.path_segments_mut()
            .map_err(|_| PortError("the WebHDFS URL cannot take a path".into()))?
            .extend(segments);
        url.query_pairs_mut().append_pair("op", op);
        if let Some(user) = &self.user {
            url.query_pairs_mut().append_pair("user.name", user);
        }
        Ok(url)
    }

    /// `GET url`, following redirects by hand if the client answers them unfollowed.
    async fn get_following(&self, mut url: Url) -> Result<reqwest::Response, PortError> {
        for _ in 0..=MAX_REDIRECTS {
            let response = self
                .http
                .get(url.clone())
                .traced()
                .send()
                .await
                .map_err(|e| failed("OPEN", &e))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| PortError("WebHDFS redirected without a location".into()))?;
            url = url
                .join(location)
                .map_err(|_| PortError("WebHDFS redirected to an invalid location".into()))?;
        }
        Err(PortError("WebHDFS redirected too many times".into()))
    }
}

/// `{base_url}/webhdfs/v1`; `Err` unless `base_url` is an absolute http(s) URL.
fn webhdfs_root(base_url: &str) -> Result<Url, PortError> {
    let invalid = || PortError("the WebHDFS URL is not a valid http(s) URL".into());
    let mut root = Url::parse(base_url.trim_end_matches('/')).map_err(|_| invalid())?;
    if !matches!(root.scheme(), "http" | "https") || root.cannot_be_a_base() {
        return Err(invalid());
    }
    root.path_segments_mut()
        .map_err(|_| invalid())?
        .pop_if_empty()
        .extend(["webhdfs", "v1"]);
    Ok(root)
}

/// A failed call: its kind only (URLs may carry a user name or a delegation token).
fn failed(op: &str, e: &reqwest::Error) -> PortError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused or unreachable"
    } else {
        "request failed"
    };
    PortError(format!("WebHDFS {op}: {kind}"))
}

/// The body of `response`, chunk by chunk, as the port's byte stream (without reqwest's
/// `stream` feature: `chunk()` pulls one piece at a time).
fn byte_stream(response: reqwest::Response) -> ByteStream {
    Box::pin(futures::stream::try_unfold(response, |mut r| async move {
        match r.chunk().await {
            Ok(Some(bytes)) => Ok(Some((bytes.to_vec(), r))),
            Ok(None) => Ok(None),
            Err(e) => Err(std::io::Error::other(failed("OPEN", &e).0)),
        }
    }))
}

#[async_trait]
impl ExportStorage for WebHdfsStorage {
    async fn open(&self, path: &str) -> Result<Option<(Option<u64>, ByteStream)>, PortError> {
        let response = self.get_following(self.url(path, "OPEN")?).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(PortError(format!("WebHDFS OPEN answered HTTP {status}")));
        }
        let size = response.content_length();
        Ok(Some((size, byte_stream(response))))
    }

    async fn delete(&self, path: &str) -> Result<bool, PortError> {
        let response = self
            .http
            .delete(self.url(path, "DELETE")?)
            .traced()
            .send()
            .await
            .map_err(|e| failed("DELETE", &e))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !status.is_success() {
            return Err(PortError(format!("WebHDFS DELETE answered HTTP {status}")));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|_| PortError("WebHDFS DELETE answered something that is not JSON".into()))?;
        body.get("boolean")
            .and_then(Value::as_bool)
            .ok_or_else(|| PortError("WebHDFS DELETE answered without a boolean".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(user: Option<&str>) -> WebHdfsStorage {
        WebHdfsStorage::new(
            reqwest::Client::new(),
            "http://namenode:9870/",
            user.map(str::to_string),
        )
        .unwrap()
    }

    #[test]
    fn paths_are_encoded_and_cannot_climb() {
        let s = storage(Some("c360"));
        assert_eq!(
            s.url("/exports/csv/a b.zip", "OPEN").unwrap().as_str(),
            "http://namenode:9870/webhdfs/v1/exports/csv/a%20b.zip?op=OPEN&user.name=c360"
        );
        assert_eq!(
            storage(None)
                .url("exports//x.zip", "DELETE")
                .unwrap()
                .as_str(),
            "http://namenode:9870/webhdfs/v1/exports/x.zip?op=DELETE"
        );
        assert!(s.url("/exports/../etc/passwd", "OPEN").is_err());
        assert!(s.url("/", "OPEN").is_err());
        assert!(WebHdfsStorage::new(reqwest::Client::new(), "namenode:9870", None).is_err());
        assert!(WebHdfsStorage::new(reqwest::Client::new(), "ftp://namenode", None).is_err());
    }
}
