//! A private `nats-server` process with JetStream, on a port of the test's (killed on drop):
//! for tests that stop NATS, or that need it with TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::tls::TestCa;

/// The `nats-server` binary: `NATS_SERVER_BIN`, else the usual locations.
fn nats_server_bin() -> String {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.to_string_lossy().into_owned();
    }
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "/usr/bin/nats-server",
    ] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "this test runs its own nats-server: install it (apt-get install nats-server) or set NATS_SERVER_BIN"
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running nats-server.
pub struct NatsProcess {
    child: Child,
    pub port: u16,
    store: PathBuf,
    tls: bool,
    certificate: Option<(PathBuf, PathBuf)>,
    config: Option<PathBuf>,
}

/// A NATS JWT (`ed25519-nkey`) with these claims, issued by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": crate::unique_id(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let signature = issuer.sign(signed.as_bytes()).expect("JWT signed");
    format!("{signed}.{}", b64(&signature))
}

impl NatsProcess {
    /// Starts a server with JetStream on `port`, keeping its streams in `store`.
    pub async fn start(port: u16, store: &Path) -> Self {
        Self::launch(port, store, None).await
    }

    /// The same, requiring TLS with `ca`'s server certificate.
    pub async fn start_with_tls(port: u16, store: &Path, ca: &TestCa) -> Self {
        Self::launch(port, store, Some((ca.cert_pem.clone(), ca.key_pem.clone()))).await
    }

    /// The same, in decentralized-auth mode (an operator, its system account, one account with
    /// JetStream and one user in it): only clients presenting the returned `.creds` file may
    /// connect.
    pub async fn start_with_credentials(port: u16, dir: &Path) -> (Self, PathBuf) {
        std::fs::create_dir_all(dir).expect("NATS directory");
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "test-operator",
            serde_json::json!({"type": "operator", "version": 2}),
        );
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        });
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "cohort360",
            serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
        );
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            "SYS",
            serde_json::json!({"type": "account", "version": 2}),
        );
        let user_jwt = jwt(
            &account,
            &user.public_key(),
            "service",
            serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                               "type": "user", "version": 2}),
        );
        let operator_file = dir.join("operator.jwt");
        std::fs::write(&operator_file, &operator_jwt).expect("operator JWT written");
        let config = dir.join("server.conf");
        std::fs::write(
            &config,
            format!(
                "host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{}\" }}\n\
                 operator: \"{}\"\nsystem_account: {system}\nresolver: MEMORY\n\
                 resolver_preload: {{ {system}: \"{system_jwt}\", {}: \"{account_jwt}\" }}\n",
                dir.join("store").display(),
                operator_file.display(),
                account.public_key(),
                system = system.public_key(),
            ),
        )
        .expect("config written");
        let creds = dir.join("service.creds");
        std::fs::write(
            &creds,
            format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().expect("user seed")
            ),
        )
        .expect("creds written");
        let child = Self::spawn(port, dir, None, Some(&config)).await;
        let server = Self {
            child,
            port,
            store: dir.to_path_buf(),
            tls: false,
            certificate: None,
            config: Some(config),
        };
        (server, creds)
    }

    async fn launch(port: u16, store: &Path, certificate: Option<(PathBuf, PathBuf)>) -> Self {
        let child = Self::spawn(port, store, certificate.as_ref(), None).await;
        Self {
            child,
            port,
            store: store.to_path_buf(),
            tls: certificate.is_some(),
            certificate,
            config: None,
        }
    }

    /// Runs nats-server (from a configuration file, if given) and waits until it listens.
    async fn spawn(
        port: u16,
        store: &Path,
        certificate: Option<&(PathBuf, PathBuf)>,
        config: Option<&PathBuf>,
    ) -> Child {
        let mut command = Command::new(nats_server_bin());
        match config {
            Some(config) => {
                command.arg("-c").arg(config);
            }
            None => {
                command
                    .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                    .arg(store);
            }
        }
        if let Some((cert, key)) = certificate {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let up = crate::eventually(crate::PATIENCE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "nats-server listens on {port}");
        child
    }

    /// `nats://127.0.0.1:<port>` (`tls://` when TLS is on).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (`SIGKILL`): what a crash does.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again (killing it first if it runs) on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(
            self.port,
            &self.store,
            self.certificate.as_ref(),
            self.config.as_ref(),
        )
        .await;
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
