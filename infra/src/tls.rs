//! TLS of outbound connections (HTTP clients and SMTP): rustls, trusting the system's roots
//! plus the CAs of `TLS_CA_FILE` (a PEM bundle), so that a hospital's internal CA (its
//! Keycloak, identity service, Export API, WebHDFS, mail relay) can be trusted without touching
//! the system store. Postgres (`sslmode`, `sslrootcert` in `DATABASE_URL`) and NATS
//! (`NATS_TLS_CA_FILE`, …) have TLS settings of their own.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// What outbound TLS trusts beyond the system's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// A PEM file of one or more CA certificates.
    pub ca_file: Option<PathBuf>,
}

/// Why TLS could not be set up (a configuration error, reported at start).
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS_CA_FILE {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl TlsSettings {
    /// The extra CA certificates, as PEM, if a file is configured.
    fn ca_pem(&self) -> Result<Option<Vec<u8>>, TlsError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let failed = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(failed("holds no PEM certificate".into()));
        }
        Ok(Some(pem))
    }
}

/// A builder of outbound HTTP clients: rustls, the system's roots and the configured CAs, a
/// bounded connect time. Callers add their own request timeout.
pub fn http_client_builder(tls: &TlsSettings) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true)
        .connect_timeout(Duration::from_secs(10));
    if let Some(pem) = tls.ca_pem()? {
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// The TLS parameters of an SMTP connection to `domain`: the system's roots and the
/// configured CAs.
pub fn smtp_tls(
    domain: &str,
    tls: &TlsSettings,
) -> Result<lettre::transport::smtp::client::TlsParameters, TlsError> {
    let failed = |e: lettre::transport::smtp::Error| TlsError::CaFile {
        path: tls
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        reason: e.to_string(),
    };
    let mut builder = lettre::transport::smtp::client::TlsParameters::builder(domain.to_string());
    if let Some(pem) = tls.ca_pem()? {
        for block in split_pem_certificates(&pem) {
            let cert =
                lettre::transport::smtp::client::Certificate::from_pem(&block).map_err(failed)?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build_rustls().map_err(failed)
}

/// Each `CERTIFICATE` block of a PEM bundle, on its own.
fn split_pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut blocks = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        blocks.push(format!("{}\n", &rest[start..stop]).into_bytes());
        rest = &rest[stop..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_splits_into_its_certificates() {
        let bundle = b"junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                       -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let blocks = split_pem_certificates(bundle);
        assert_eq!(blocks.len(), 2);
        assert!(String::from_utf8_lossy(&blocks[1]).contains("BBB"));
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_is_a_clear_error() {
        let missing = TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        assert!(
            missing
                .ca_pem()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/ca.pem")
        );
        let file = std::env::temp_dir().join(format!("c360-not-pem-{}", std::process::id()));
        std::fs::write(&file, "hello").unwrap();
        let not_pem = TlsSettings {
            ca_file: Some(file.clone()),
        };
        assert!(not_pem.ca_pem().unwrap_err().to_string().contains("no PEM"));
        let _ = std::fs::remove_file(file);
        assert!(TlsSettings::default().ca_pem().unwrap().is_none());
    }
}
