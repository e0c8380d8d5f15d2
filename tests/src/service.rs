//! The `cohort360` binary as a separate process, for the fault tests: started with an
//! environment of the test's own, killed with `SIGKILL`, started again.
//!
//! The binary is `target/<profile>/cohort360`, next to the test binaries (`scripts/test`
//! builds it), or `COHORT360_BIN`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the service binary is.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("COHORT360_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test binary> → target/<profile>/cohort360
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("cohort360"))
        .expect("a target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p api --bin cohort360`; ./scripts/test does) \
         or set COHORT360_BIN",
        bin.display()
    );
    bin
}

/// A service process and the environment it runs with.
pub struct ServiceProcess {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub port: u16,
    log: PathBuf,
}

impl ServiceProcess {
    /// The environment for a service on `database_url` and `nats_url`, listening on a free
    /// port, with names of its own on NATS.
    pub fn new(database_url: &str, nats_url: &str, dir: &std::path::Path) -> Self {
        let port = crate::nats_server::free_port();
        let id = crate::unique_id();
        let env = [
            ("DATABASE_URL", database_url.to_string()),
            ("NATS_URL", nats_url.to_string()),
            ("NATS_SUBJECT_PREFIX", format!("f{id}")),
            ("NATS_STREAM", format!("F{id}_EVENTS")),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("JWT_SIGNING_KEY", format!("fault-key-{id}")),
            ("QUERY_EXECUTOR_URL", String::new()),
            (
                "EXPORT_STORAGE_DIR",
                dir.join("exports").display().to_string(),
            ),
            ("PIPELINE_STALL_SECONDS", "5".to_string()),
            ("READ_YOUR_WRITES_TIMEOUT_MS", "3000".to_string()),
            ("RUST_LOG", "warn,api=info,infra=info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            child: None,
            env,
            port,
            log: dir.join("service.log"),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of one of its settings.
    pub fn setting(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary());
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs an operator command (`cohort360 <args>`) to completion.
    pub fn run(&self, args: &[&str], extra_env: &[(&str, &str)]) {
        let out = self
            .command()
            .args(args)
            .envs(extra_env.iter().copied())
            .output()
            .expect("cohort360 runs");
        assert!(
            out.status.success(),
            "cohort360 {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `cohort360 serve` and waits until it answers `/health/live`.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = self
            .command()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cohort360 serve starts");
        self.child = Some(child);
        let http = reqwest::Client::new();
        let live = format!("{}/health/live", self.base());
        let up = crate::eventually(crate::PATIENCE, || async {
            http.get(&live)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "the service answers; its log:\n{}", self.log_text());
    }

    /// Kills it with `SIGKILL`: no shutdown, no flush, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it still runs (a fault must not make it exit).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it gracefully (`SIGTERM`), then kills it if it lingers.
    pub async fn stop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let stopped = crate::eventually(Duration::from_secs(15), || {
            let done = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            async move { done }
        })
        .await;
        if !stopped {
            self.kill();
        }
        self.child = None;
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
