//! A private PostgreSQL cluster for one test: `initdb` into a temporary directory, a free port,
//! started and stopped with `pg_ctl` (as the `postgres` user when the test runs as root, since
//! PostgreSQL refuses to run as root). Fault tests stop it with `-m immediate` (a crash) and
//! start it again; TLS tests start it with a certificate of their own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tls::TestCa;

/// The directory of PostgreSQL's server programs: `PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `pg_config --bindir`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("PostgreSQL's server programs are needed: install postgresql or set PG_BIN_DIR");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn give_to_owner(path: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown {}", path.display());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running (or stopped) private cluster.
pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    tls: bool,
}

impl PgCluster {
    /// Creates and starts a cluster (trust authentication for user `postgres`, loopback only).
    pub fn start(name: &str) -> Self {
        Self::create(name, None)
    }

    /// The same, with TLS on, presenting `ca`'s server certificate.
    pub fn start_with_tls(name: &str, ca: &TestCa) -> Self {
        Self::create(name, Some(ca))
    }

    fn create(name: &str, ca: Option<&TestCa>) -> Self {
        let dir = std::env::temp_dir().join(format!("c360-pg-{name}-{}", crate::unique_id()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let bin = bin_dir();
        if let Some(ca) = ca {
            std::fs::copy(&ca.cert_pem, dir.join("server.pem")).expect("certificate copied");
            std::fs::copy(&ca.key_pem, dir.join("server.key")).expect("key copied");
        }
        give_to_owner(&dir);
        if ca.is_some() {
            // PostgreSQL refuses a key others may read.
            Command::new("chmod")
                .arg("600")
                .arg(dir.join("server.key"))
                .status()
                .expect("chmod runs");
        }
        let out = as_owner(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            port: free_port(),
            dir,
            data,
            bin,
            tls: ca.is_some(),
        };
        cluster.start_again();
        cluster
    }

    /// Starts the (stopped) cluster on its port, and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=100 -c fsync=on",
            self.port,
            self.dir.display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
                self.dir.display()
            ));
        }
        let out = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stops the cluster as a crash would: `-m immediate` (no checkpoint; recovery at start).
    pub fn crash(&self) {
        self.stop("immediate");
    }

    fn stop(&self, mode: &str) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "stop"])
            .output();
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
