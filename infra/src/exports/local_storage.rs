//! Export files kept in a local directory (the built-in exporter writes there): opened for
//! download as a stream of 64 KiB chunks, deleted by the retention clean-up.
//!
//! Paths are relative to the storage's root. A path that is absolute or goes up (`..`) is refused
//! whoever built it, so that no caller can reach a file outside the root.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use commands::ports::{ByteStream, ExportStorage, PortError};
use futures::TryStreamExt;
use tokio_util::io::ReaderStream;

/// Size of the chunks a download is streamed in: large enough for few system calls, small
/// enough that many concurrent downloads stay cheap.
const CHUNK_BYTES: usize = 64 * 1024;

/// `path` as a path under some root, or why it cannot be one: it must be non-empty, relative,
/// and must not go up (`..`). Shared with the built-in exporter, which writes where this storage
/// reads.
pub(crate) fn relative_path(path: &str) -> Result<PathBuf, String> {
    if path.contains('\0') {
        return Err("the path contains a NUL character".into());
    }
    let p = Path::new(path);
    if p.is_absolute() || p.has_root() {
        return Err(format!("the path `{path}` is absolute"));
    }
    let mut named = false;
    for c in p.components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("the path `{path}` goes up (`..`)")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("the path `{path}` is absolute"));
            }
        }
    }
    if !named {
        return Err(format!("the path `{path}` names no file"));
    }
    Ok(p.to_path_buf())
}

/// Whether an I/O error means "there is no such file" (rather than a failure to report).
fn is_missing(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Export files under one local directory.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// A storage over `root` (which need not exist yet: missing files are reported as such).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory files are kept in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file `path` stands for, once checked to stay under the root.
    fn resolve(&self, path: &str) -> Result<PathBuf, PortError> {
        relative_path(path)
            .map(|rel| self.root.join(rel))
            .map_err(PortError)
    }
}

#[async_trait]
impl ExportStorage for LocalStorage {
    async fn open(&self, path: &str) -> Result<Option<(Option<u64>, ByteStream)>, PortError> {
        let full = self.resolve(path)?;
        let file = match tokio::fs::File::open(&full).await {
            Ok(f) => f,
            Err(e) if is_missing(e.kind()) => return Ok(None),
            Err(e) => {
                return Err(PortError(format!(
                    "cannot open the export file {path}: {e}"
                )));
            }
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| PortError(format!("cannot read the export file {path}: {e}")))?;
        if !meta.is_file() {
            // A directory is not an export file: nothing to download.
            return Ok(None);
        }
        let stream = ReaderStream::with_capacity(file, CHUNK_BYTES).map_ok(Vec::from);
        Ok(Some((Some(meta.len()), Box::pin(stream))))
    }

    async fn delete(&self, path: &str) -> Result<bool, PortError> {
        let full = self.resolve(path)?;
        match tokio::fs::remove_file(&full).await {
            Ok(()) => Ok(true),
            Err(e) if is_missing(e.kind()) => Ok(false),
            Err(e) => Err(PortError(format!(
                "cannot delete the export file {path}: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// A fresh directory under the system's temporary directory, removed when dropped (even
    /// when an assertion fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir()
                .join(format!("cohort360-local-storage-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _removed = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn only_relative_paths_that_stay_under_the_root_are_accepted() {
        assert_eq!(
            relative_path("exports/csv/u1_x.zip").unwrap(),
            PathBuf::from("exports/csv/u1_x.zip")
        );
        assert!(relative_path("./a.zip").is_ok());
        assert!(
            relative_path("a..b.zip").is_ok(),
            "dots inside a name are fine"
        );
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "../a.zip",
            "exports/../../a.zip",
            "exports/..",
            "a\0b",
        ] {
            assert!(relative_path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[tokio::test]
    async fn open_streams_the_file_and_delete_removes_it() {
        let dir = TempDir::new();
        let storage = LocalStorage::new(dir.0.clone());
        std::fs::create_dir_all(dir.0.join("exports")).unwrap();
        // More than one chunk, and not a multiple of it.
        let body: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(dir.0.join("exports/a.zip"), &body).unwrap();

        let (size, stream) = storage.open("exports/a.zip").await.unwrap().unwrap();
        assert_eq!(size, Some(body.len() as u64));
        let chunks: Vec<Vec<u8>> = stream.map(|c| c.unwrap()).collect().await;
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        assert_eq!(chunks.concat(), body);

        assert!(storage.open("exports/missing.zip").await.unwrap().is_none());
        assert!(
            storage.open("exports").await.unwrap().is_none(),
            "a directory"
        );
        assert!(storage.open("exports/a.zip/x").await.unwrap().is_none());
        assert!(storage.open("../a.zip").await.is_err());
        assert!(storage.delete("/tmp/a.zip").await.is_err());

        assert!(storage.delete("exports/a.zip").await.unwrap());
        assert!(!storage.delete("exports/a.zip").await.unwrap());
        assert!(storage.open("exports/a.zip").await.unwrap().is_none());
    }
}
