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

    async fn launch(port: u16, store: &Path, certificate: Option<(PathBuf, PathBuf)>) -> Self {
        let child = Self::spawn(port, store, certificate.as_ref()).await;
        Self {
            child,
            port,
            store: store.to_path_buf(),
            tls: certificate.is_some(),
            certificate,
        }
    }

    /// Runs nats-server and waits until it listens.
    async fn spawn(port: u16, store: &Path, certificate: Option<&(PathBuf, PathBuf)>) -> Child {
        let mut command = Command::new(nats_server_bin());
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store);
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
        self.child = Self::spawn(self.port, &self.store, self.certificate.as_ref()).await;
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
