//! Faults under write load, with the service as a separate process on its own Postgres cluster
//! and NATS server (both started here on free ports): `kill -9` of the service, NATS killed and
//! restarted, Postgres stopped with `-m immediate` and restarted, and a start while NATS is down.
//!
//! Writers create folders with an `Idempotency-Key` each, retrying with the same key while no
//! answer comes (the service is down, or the key's first request still runs); an answered error
//! ends a write. Afterwards every acknowledged write must be in the log, the read model and
//! JetStream exactly once, no write answered with an error may be in the log, and
//! `/health/ready` must have told the truth all along. These tests run alone (nextest).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tests::nats_server::{NatsProcess, free_port};
use tests::pg_cluster::PgCluster;
use tests::service::ServiceProcess;
use tests::{PATIENCE, eventually, published, stream_len, unique_id};

/// A fault test's world: a Postgres cluster, a NATS server, the service, a logged-in writer.
struct Rig {
    dir: std::path::PathBuf,
    cluster: PgCluster,
    nats: NatsProcess,
    service: ServiceProcess,
    http: reqwest::Client,
    token: String,
}

impl Rig {
    /// Starts everything; with `nats_up` false, NATS stays down until the test starts it.
    async fn start(name: &str, nats_up: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("c360-fault-{name}-{}", unique_id()));
        std::fs::create_dir_all(&dir).expect("rig directory");
        let cluster = PgCluster::start(name);
        let mut nats = NatsProcess::start(free_port(), &dir.join("nats")).await;
        if !nats_up {
            nats.kill();
        }
        let mut service = ServiceProcess::new(&cluster.url("cohort360"), &nats.url(), &dir);
        service.run(
            &[
                "create-user",
                "writer",
                "--firstname",
                "Wri",
                "--lastname",
                "Ter",
            ],
            &[("COHORT360_NEW_USER_PASSWORD", "pw-writer-123")],
        );
        service.start().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let login: Value = http
            .post(format!("{}/auth/login/", service.base()))
            .json(&json!({"username": "writer", "password": "pw-writer-123"}))
            .send()
            .await
            .expect("login answered")
            .json()
            .await
            .expect("login JSON");
        let token = login["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("logged in: {login:?}"))
            .to_string();
        Self {
            dir,
            cluster,
            nats,
            service,
            http,
            token,
        }
    }

    async fn pool(&self) -> PgPool {
        PgPool::connect(&self.cluster.url("cohort360"))
            .await
            .expect("the test reaches its cluster")
    }

    async fn finish(mut self) {
        self.service.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the writers were told.
#[derive(Default)]
struct Ledger {
    /// Acknowledged writes: (name, uuid answered).
    acked: Vec<(String, String)>,
    /// Writes answered with an error: (name, status, code). None may be stored.
    refused: Vec<(String, u16, String)>,
    /// The longest an error answer took.
    slowest_error: Duration,
}

/// Writers creating folders until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rig: &Rig, writers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let writers = (0..writers)
            .map(|w| {
                let (http, url, token) = (
                    rig.http.clone(),
                    format!("{}/cohort/folders/", rig.service.base()),
                    rig.token.clone(),
                );
                let (stop, ledger) = (stop.clone(), ledger.clone());
                let prefix = format!("w{w}-{}", unique_id());
                tokio::spawn(write(http, url, token, prefix, stop, ledger))
            })
            .collect();
        Self {
            stop,
            ledger,
            writers,
        }
    }

    fn acked(&self) -> usize {
        self.ledger.lock().expect("ledger").acked.len()
    }

    /// Waits until `more` writes beyond the current count are acknowledged.
    async fn wait_for_more(&self, more: usize) {
        let target = self.acked() + more;
        assert!(
            eventually(PATIENCE, || async { self.acked() >= target }).await,
            "{} writes acknowledged, {target} expected",
            self.acked()
        );
    }

    /// Stops the writers (each finishes its write in progress) and returns what they saw.
    async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers {
            w.await.expect("writer ends");
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .expect("writers done")
            .into_inner()
            .expect("ledger")
    }
}

/// One writer: a new folder per write; the same key while no answer comes.
async fn write(
    http: reqwest::Client,
    url: String,
    token: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let name = format!("{prefix}-{n}");
        n += 1;
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "write {name} got no answer in time"
            );
            let started = Instant::now();
            let answer = http
                .post(&url)
                .bearer_auth(&token)
                .header("Idempotency-Key", &name)
                .json(&json!({"name": name}))
                .send()
                .await;
            let Ok(answer) = answer else {
                // No answer (the service is down or was killed): retry the same write.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                let uuid = body["uuid"].as_str().unwrap_or_default().to_string();
                ledger.lock().expect("ledger").acked.push((name, uuid));
                break;
            }
            if body["code"] == "idempotency_key_in_progress" {
                // The first request with this key has not answered (its process died).
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let mut l = ledger.lock().expect("ledger");
            l.slowest_error = l.slowest_error.max(started.elapsed());
            l.refused.push((
                name,
                status.as_u16(),
                body["code"].as_str().unwrap_or_default().to_string(),
            ));
            break;
        }
    }
}

/// Every acknowledged write once in the log, the read model and JetStream; no refused write in
/// the log.
async fn verify(rig: &Rig, ledger: &Ledger) {
    let pool = rig.pool().await;
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload::jsonb->'FolderCreated'->>'name', aggregate_id FROM events
          WHERE event_type = 'FolderCreated'",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, id) in &stored {
        by_name.entry(name).or_default().push(id);
    }
    assert!(!ledger.acked.is_empty());
    for (name, uuid) in &ledger.acked {
        assert_eq!(
            by_name.get(name.as_str()).map(Vec::as_slice),
            Some(&[uuid.as_str()][..]),
            "acknowledged write {name} is in the log exactly once, as answered"
        );
    }
    for (name, status, code) in &ledger.refused {
        assert!(
            !by_name.contains_key(name.as_str()),
            "{name} was answered {status} {code}, yet it is stored"
        );
    }
    let acked: Vec<uuid::Uuid> = ledger
        .acked
        .iter()
        .map(|(_, u)| u.parse().expect("uuid answered"))
        .collect();
    assert!(
        eventually(PATIENCE, || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM workspace.folders WHERE uuid = ANY($1)",
            )
            .bind(&acked)
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n as usize == acked.len())
        })
        .await,
        "every acknowledged write is in the read model"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    let (nats, stream) = (rig.nats.url(), rig.service.setting("NATS_STREAM"));
    assert!(
        eventually(PATIENCE, || async {
            stream_len(&nats, &stream).await == events as u64
        })
        .await,
        "JetStream holds the log ({events} events)"
    );
    let messages = published(&nats, &stream).await;
    let ids: HashSet<&str> = messages.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "no event published twice");
    let logged: HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT aggregate_type || ':' || aggregate_id || ':' || sequence FROM events",
    )
    .fetch_all(&pool)
    .await
    .expect("ids")
    .into_iter()
    .collect();
    assert_eq!(
        ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>(),
        logged
    );
    pool.close().await;
}

/// One `/health/ready` probe: when, the status code and body (none if nothing answered), and
/// how long the answer took.
type Sample = (Instant, Option<(u16, Value)>, Duration);

/// `/health/ready` sampled every 200 ms.
struct Readiness {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Readiness {
    fn watch(rig: &Rig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (http, url) = (
            rig.http.clone(),
            format!("{}/health/ready", rig.service.base()),
        );
        let (s, out) = (stop.clone(), samples.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                let answer = match http.get(&url).send().await {
                    Ok(r) => {
                        let code = r.status().as_u16();
                        Some((code, r.json::<Value>().await.unwrap_or(Value::Null)))
                    }
                    Err(_) => None,
                };
                out.lock()
                    .expect("samples")
                    .push((started, answer, started.elapsed()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            stop,
            samples,
            task,
        }
    }

    /// The probes made wholly between `from` and `to` (asked after `from`, answered by `to`).
    fn between(&self, from: Instant, to: Instant) -> Vec<(Option<(u16, Value)>, Duration)> {
        self.samples
            .lock()
            .expect("samples")
            .iter()
            .filter(|(at, _, took)| *at >= from && *at + *took <= to)
            .map(|(_, a, took)| (a.clone(), *took))
            .collect()
    }

    /// The newest answer.
    fn last(&self) -> Option<(u16, Value)> {
        self.samples
            .lock()
            .expect("samples")
            .last()
            .and_then(|(_, a, _)| a.clone())
    }

    async fn wait_for(&self, status: &str) {
        assert!(
            eventually(PATIENCE, || async {
                self.last()
                    .is_some_and(|(_, body)| body["status"] == status)
            })
            .await,
            "/health/ready never said {status}: {:?}",
            self.last()
        );
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

fn check_named<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[tokio::test]
async fn kill_9_of_the_service_under_write_load_loses_and_duplicates_no_acknowledged_write() {
    let mut rig = Rig::start("kill", true).await;
    let load = Load::start(&rig, 4);
    load.wait_for_more(60).await;
    rig.service.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.service.start().await;
    load.wait_for_more(60).await;
    let ledger = load.stop().await;
    verify(&rig, &ledger).await;
    assert!(
        ledger.refused.is_empty(),
        "no write was refused: {:?}",
        ledger.refused
    );
    rig.finish().await;
}

#[tokio::test]
async fn nats_killed_and_restarted_under_write_load_only_delays_publication() {
    let mut rig = Rig::start("nats", true).await;
    let readiness = Readiness::watch(&rig);
    readiness.wait_for("ok").await;
    let load = Load::start(&rig, 4);
    load.wait_for_more(40).await;
    rig.nats.kill();
    let killed = Instant::now();
    load.wait_for_more(60).await;
    readiness.wait_for("degraded").await;
    let restarted = Instant::now();
    rig.nats.restart().await;
    load.wait_for_more(40).await;
    let ledger = load.stop().await;
    verify(&rig, &ledger).await;
    assert!(
        ledger.refused.is_empty(),
        "writes go on without NATS: {:?}",
        ledger.refused
    );
    assert!(rig.service.is_running(), "the service did not exit");
    // Truthful: while NATS was away (after the client noticed), degraded and saying why.
    for (answer, _) in readiness.between(killed + Duration::from_secs(2), restarted) {
        let (code, body) = answer.expect("the service answers");
        assert_eq!(code, 200, "{body:?}");
        assert_eq!(body["status"], "degraded", "{body:?}");
        assert_eq!(
            check_named(&body, "nats").map(|c| &c["ok"]),
            Some(&json!(false))
        );
    }
    readiness.wait_for("ok").await;
    readiness.stop().await;
    rig.finish().await;
}

#[tokio::test]
async fn postgres_crashed_and_restarted_under_write_load_answers_fast_and_recovers_in_place() {
    let mut rig = Rig::start("postgres", true).await;
    let readiness = Readiness::watch(&rig);
    readiness.wait_for("ok").await;
    let load = Load::start(&rig, 4);
    load.wait_for_more(60).await;
    rig.cluster.crash();
    let crashed = Instant::now();
    readiness.wait_for("unavailable").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarting = Instant::now();
    rig.cluster.start_again();
    load.wait_for_more(60).await;
    let ledger = load.stop().await;
    assert!(rig.service.is_running(), "the service did not exit");
    verify(&rig, &ledger).await;
    // Errors came bounded, and only as 503s: a short pool timeout, or a commit whose outcome is
    // read back for about 7.5 s (`commands::bus::COMMIT_CHECKS`), never a queue of callers held
    // until the 30 s request timeout. The bound leaves room for a loaded machine.
    assert!(
        ledger.refused.iter().all(|(_, status, _)| *status == 503),
        "{:?}",
        ledger.refused
    );
    assert!(
        ledger.slowest_error < Duration::from_secs(15),
        "the slowest error answer took {:?}",
        ledger.slowest_error
    );
    // Truthful: unavailable while Postgres was down, and quick to say so.
    let during = readiness.between(crashed + Duration::from_secs(2), restarting);
    assert!(!during.is_empty());
    for (answer, took) in during {
        let (code, body) = answer.expect("the service answers");
        assert_eq!(
            (code, body["status"].as_str()),
            (503, Some("unavailable")),
            "{body:?}"
        );
        assert!(took < Duration::from_secs(5), "/health/ready took {took:?}");
    }
    readiness.wait_for("ok").await;
    readiness.stop().await;
    #[expect(clippy::print_stderr, reason = "the figures of the fault run")]
    {
        eprintln!(
            "postgres crash: {} writes acknowledged, {} refused with 503, slowest error {:?}",
            ledger.acked.len(),
            ledger.refused.len(),
            ledger.slowest_error
        );
    }
    rig.finish().await;
}

#[tokio::test]
async fn the_service_starts_while_nats_is_down_and_publishes_once_it_comes() {
    let mut rig = Rig::start("nats-down", false).await;
    let readiness = Readiness::watch(&rig);
    readiness.wait_for("degraded").await;
    let load = Load::start(&rig, 2);
    load.wait_for_more(20).await;
    rig.nats.restart().await;
    load.wait_for_more(20).await;
    let ledger = load.stop().await;
    verify(&rig, &ledger).await;
    assert!(ledger.refused.is_empty(), "{:?}", ledger.refused);
    readiness.wait_for("ok").await;
    readiness.stop().await;
    rig.finish().await;
}
