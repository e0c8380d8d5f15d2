//! NATS goes away and comes back: commands keep working, the relay drains afterwards.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tests::{TestApp, eventually, published, settings, stream_len, unique_id};

/// A private nats-server process (killed on drop).
struct NatsProcess {
    child: Child,
    port: u16,
}

fn nats_server_bin() -> String {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.to_string_lossy().into_owned();
    }
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "/usr/bin/nats-server",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "this test runs its own nats-server: install it (apt-get install nats-server) or set NATS_SERVER_BIN"
    );
}

impl NatsProcess {
    async fn start(port: u16, store: &Path) -> Self {
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let up = tests::eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "nats-server listens on {port}");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn commands_succeed_while_nats_is_down_and_the_relay_drains_when_it_returns() {
    let store = std::env::temp_dir().join(format!("c360-nats-{}", unique_id()));
    let mut nats = NatsProcess::start(free_port(), &store).await;
    let id = unique_id();
    let app = TestApp::spawn_with(settings(&id, &nats.url()), id).await;

    let first = app
        .post("/cohort/folders/", "frank", json!({"name": "before"}))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["name"], "before");

    nats.kill();
    for n in 0..3 {
        let during = app
            .post(
                "/cohort/folders/",
                "frank",
                json!({"name": format!("during{n}")}),
            )
            .await;
        assert_eq!(during.status, StatusCode::CREATED, "{:?}", during.body);
        assert_eq!(
            during.body["name"],
            format!("during{n}"),
            "projected from Postgres while NATS is down"
        );
    }
    let listed = app.get("/cohort/folders/", "frank").await;
    assert_eq!(listed.body["count"], 4);
    let ready = app
        .call(reqwest::Method::GET, "/health/ready", None, None)
        .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "nats" && c["ok"] == false),
        "{:?}",
        ready.body
    );

    let port = nats.port;
    drop(nats);
    let nats = NatsProcess::start(port, &store).await;
    let url = nats.url();
    let stream = app.settings.nats_stream.clone();
    assert!(
        eventually(Duration::from_secs(40), || async {
            stream_len(&url, &stream).await == 4
        })
        .await,
        "the relay drained the backlog once NATS returned"
    );
    let ids: Vec<String> = published(&url, &stream)
        .await
        .into_iter()
        .map(|m| m.msg_id)
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 4, "each event once: {ids:?}");
    let after = app
        .post("/cohort/folders/", "frank", json!({"name": "after"}))
        .await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert!(
        eventually(Duration::from_secs(20), || async {
            stream_len(&url, &stream).await == 5
        })
        .await
    );

    app.stop().await;
    drop(nats);
    let _ = std::fs::remove_dir_all(store);
}
