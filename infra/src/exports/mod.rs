//! Exports: the read model and the reactions, the exporters (the built-in one, which writes CSV
//! and XLSX from the clinical store; the upstream Export API with the Hadoop API) and the
//! storages their files are read from (a local directory, or HDFS through WebHDFS).

pub mod builtin;
pub mod export_api;
pub mod local_storage;
pub mod reactions;
pub mod read_model;
pub mod rights;
pub mod webhdfs;

pub use read_model::{ExportsProjection, PgExports};
pub use rights::IdentityExportRights;
