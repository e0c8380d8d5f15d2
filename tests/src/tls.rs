//! TLS for the tests' servers: a CA and a `localhost`/`127.0.0.1` certificate generated per
//! test (rcgen), written as PEM files the application is pointed at, and a TLS terminator that
//! puts any plain test server (HTTP, the fake SMTP server) behind TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A test CA and a server certificate it signed, for `localhost` and `127.0.0.1`.
pub struct TestCa {
    /// The CA certificate (what clients trust).
    pub ca_pem: PathBuf,
    /// The server's certificate and key (what servers present).
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// Generates the CA and the server certificate, and writes their PEM files into `dir`.
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Cohort360 test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("PEM written");
            path
        };
        Self {
            ca_pem: write("ca.pem", &ca.pem()),
            cert_pem: write("server.pem", &server.pem()),
            key_pem: write("server.key", &server_key.serialize_pem()),
            cert_der: server.der().clone(),
            key_der: server_key.serialize_der(),
        }
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("server certificate accepted");
        Arc::new(config)
    }

    /// An acceptor for TLS connections with the server certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }
}

/// A TLS terminator on loopback: accepts TLS connections and relays their plain bytes to a
/// backend port (an HTTP test server becomes an HTTPS one).
pub struct TlsProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Binds the proxy's port; [`TlsProxy::forward`] starts it once the backend is known.
    pub async fn bind() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        (listener, port)
    }

    /// Relays every TLS connection on `listener` to `127.0.0.1:backend`.
    pub fn forward(listener: TcpListener, ca: &TestCa, backend: u16) -> Self {
        let port = listener.local_addr().expect("address").port();
        let acceptor = ca.acceptor();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(("127.0.0.1", backend)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
