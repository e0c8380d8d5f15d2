//! `cargo run --release -p tests --bin bench`: throughput and lag of the pipeline, with the raw
//! Postgres rates measured in the same run on the same database as the yardstick.
//!
//! Needs the same services as the tests (TEST_DATABASE_URL, NATS_URL). Prints a Markdown report;
//! `BENCH_SECONDS` (default 5) sets each HTTP phase's duration.

// The service binary's allocator, so that the figures are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use commands::ports::Consistency;
use commands::workspace::{NewSnapshot, Workspace};
use commands::{CommandContext, Committed};
use futures::TryStreamExt;
use hdrhistogram::Histogram;
use infra::workspace::{PgWorkspace, WorkspaceProjection};
use projections::audit::AuditReader;
use serde_json::json;
use sqlx::{Executor, Row};
use tests::pg_cost::{Cost, PgCost, or_na};
use tests::{TestApp, query, settings, unique_id};

const CONCURRENCY: [usize; 3] = [1, 4, 16];

/// Upstream's `POST /cohort/folders/` rate at 16 connections, measured on this machine kind.
const UPSTREAM_FOLDER_POSTS_PER_S: f64 = 65.0;
const UPSTREAM_FOLDER_POSTS_SOURCE: &str =
    "upstream Django back-end on the same machine kind, wrk 16 connections, issue 18";

/// A consistency port that does not wait: phase B measures the lag itself.
struct NoWait;

#[async_trait::async_trait]
impl Consistency for NoWait {
    async fn wait_for(&self, _: &[Committed]) -> bool {
        true
    }
}

fn seconds() -> Duration {
    let s = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u64);
    Duration::from_secs(s.max(1))
}

/// Phase A: HTTP create-snapshot commands per second with `clients` concurrent clients.
async fn http_snapshots(
    app: &Arc<TestApp>,
    clients: usize,
    duration: Duration,
    meter: &PgCost,
) -> (Run, Cost) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let app = app.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("bench{clients}x{c}");
            let f = app.post("/cohort/folders/", &user, json!({"name": "bench"})).await;
            let r = app.post("/cohort/requests/", &user, json!({"name": "bench", "parent_folder": f.body["uuid"]})).await;
            let v1 = app
                .post("/cohort/request-query-snapshots/", &user, json!({"request": r.body["uuid"], "serialized_query": query(&["1"])}))
                .await;
            let mut previous = v1.body["uuid"].as_str().expect("v1 created").to_string();
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let s = app
                    .post(
                        "/cohort/request-query-snapshots/",
                        &user,
                        json!({"previous_snapshot": previous, "serialized_query": query(&[&done.to_string()])}),
                    )
                    .await;
                assert_eq!(s.status, reqwest::StatusCode::CREATED, "{:?}", s.body);
                hist.record(t.elapsed().as_micros() as u64).ok();
                previous = s.body["uuid"].as_str().expect("uuid").to_string();
                done += 1;
            }
            (done, hist)
        }));
    }
    // Let clients set up, then measure a fixed window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    measure_run(&stop, tasks, duration, Some(meter)).await
}

/// Lets the clients run for `duration`, stops them, and totals what they did: operations per
/// second over the window, and their latencies.
async fn measure(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<(u64, Histogram<u64>)>>,
    duration: Duration,
) -> (f64, Histogram<u64>) {
    let (run, _) = measure_run(stop, tasks, duration, None).await;
    (run.rate, run.latency)
}

/// What clients did over a measured window.
struct Run {
    operations: u64,
    rate: f64,
    latency: Histogram<u64>,
}

/// [`measure`], keeping the operation count, and what the window cost Postgres when `meter`.
async fn measure_run(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<(u64, Histogram<u64>)>>,
    duration: Duration,
    meter: Option<&PgCost>,
) -> (Run, Cost) {
    let mark = match meter {
        Some(m) => Some(m.start().await),
        None => None,
    };
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        let (n, h) = t.await.expect("client ran");
        total += n;
        hist.add(h).ok();
    }
    let elapsed = started.elapsed();
    let cost = match (meter, mark) {
        (Some(m), Some(mark)) => m.since(&mark).await,
        _ => Cost::default(),
    };
    (
        Run {
            operations: total,
            rate: total as f64 / elapsed.as_secs_f64(),
            latency: hist,
        },
        cost,
    )
}

/// Phase D1: raw single-row INSERT + COMMIT per second at `clients` concurrency, and what each
/// cost Postgres.
async fn raw_inserts(
    pool: &sqlx::PgPool,
    clients: usize,
    duration: Duration,
    meter: &PgCost,
) -> (Run, Cost) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, payload json NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("scratch table");
    let stop = Arc::new(AtomicBool::new(false));
    let payload = json!({"QuerySnapshotSaved": {"serialized_query": query(&["1"])}});
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let stop = stop.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tx.commit().await.expect("commit");
                hist.record(t.elapsed().as_micros() as u64).ok();
                n += 1;
            }
            (n, hist)
        }));
    }
    measure_run(&stop, tasks, duration, Some(meter)).await
}

/// Phase D3, one client: the least that read-your-writes (architecture guarantee 5) asks of
/// Postgres per command with this pipeline, as bare statements on scratch tables, without HTTP,
/// authorization, decision or decoding: the append (one statement, committed synchronously),
/// the projection's transaction (lock its checkpoint and read what follows it, in one round
/// trip; write the row; move the checkpoint and commit asynchronously, in one) and the answer's
/// read. Five round trips, one flush to disk: what a command costs before the service does
/// anything of its own.
async fn pipeline_floor(pool: &sqlx::PgPool, duration: Duration) -> Run {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_floor_log (id bigserial PRIMARY KEY, payload json NOT NULL);
         CREATE TABLE IF NOT EXISTS bench_floor_rows (id bigint PRIMARY KEY, payload json NOT NULL);
         CREATE TABLE IF NOT EXISTS bench_floor_checkpoint (singleton boolean PRIMARY KEY DEFAULT true, at bigint NOT NULL);
         INSERT INTO bench_floor_checkpoint (at) VALUES (0) ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await
    .expect("scratch tables");
    let payload = json!({"FolderCreated": {"name": "bench", "owner": "bench1x0"}});
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut hist) = (0u64, Histogram::<u64>::new(3).expect("histogram"));
            let mut at: i64 = sqlx::query_scalar("SELECT at FROM bench_floor_checkpoint")
                .fetch_one(&pool)
                .await
                .expect("checkpoint");
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO bench_floor_log (payload) VALUES ($1) RETURNING id",
                )
                .bind(&payload)
                .fetch_one(&pool)
                .await
                .expect("append");
                let mut conn = pool.acquire().await.expect("connection");
                let read = conn
                    .fetch_all(sqlx::raw_sql(&format!(
                        "BEGIN; SET LOCAL synchronous_commit = off;
                         SELECT at FROM bench_floor_checkpoint FOR UPDATE;
                         SELECT id, payload FROM bench_floor_log WHERE id > {at} ORDER BY id"
                    )))
                    .await
                    .expect("lock and read");
                let (ids, payloads): (Vec<i64>, Vec<serde_json::Value>) = read
                    .iter()
                    .skip(1)
                    .map(|row| (row.get::<i64, _>(0), row.get::<serde_json::Value, _>(1)))
                    .unzip();
                sqlx::query(
                    "INSERT INTO bench_floor_rows SELECT * FROM UNNEST($1::bigint[], $2::json[])",
                )
                .bind(&ids)
                .bind(&payloads)
                .execute(&mut *conn)
                .await
                .expect("project");
                at = ids.last().copied().unwrap_or(at);
                conn.execute(sqlx::raw_sql(&format!(
                    "UPDATE bench_floor_checkpoint SET at = {at}; COMMIT"
                )))
                .await
                .expect("checkpoint and commit");
                drop(conn);
                sqlx::query("SELECT payload FROM bench_floor_rows WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("answer");
                hist.record(t.elapsed().as_micros() as u64).ok();
                n += 1;
            }
            (n, hist)
        })
    };
    measure_run(&stop, vec![task], duration, None).await.0
}

/// A tree of about 10 000 perimeters: root, 10 groups, 100 hospitals, 1 000 poles, 9 000 units.
fn big_tree() -> Vec<domain::perimeter::PerimeterFields> {
    let mut rows = Vec::new();
    let mut push = |id: i64, parent: Option<i64>, kind: &str| {
        rows.push(domain::perimeter::PerimeterFields {
            id,
            local_id: format!("L{id}"),
            name: format!("{kind} {id}"),
            short_name: format!("{kind} {id}"),
            source_value: format!("S{id}"),
            type_source_value: kind.to_string(),
            parent_id: parent,
            cohort_id: Some(id.to_string()),
            cohort_size: None,
        });
    };
    push(1, None, "AP-HP");
    for g in 0..10 {
        let gid = 10 + g;
        push(gid, Some(1), "Groupe hospitalier (GH)");
        for h in 0..10 {
            let hid = 100 + g * 10 + h;
            push(hid, Some(gid), "Hôpital");
            for p in 0..10 {
                let pid = 1_000 + (hid - 100) * 10 + p;
                push(pid, Some(hid), "Pôle/DMU");
                for u in 0..9 {
                    push(100_000 + (pid - 1_000) * 9 + u, Some(pid), "UF");
                }
            }
        }
    }
    rows
}

/// Phase E: password logins over HTTP, against the bare argon2 verification they include.
/// `n` HTTP logins and `n` bare argon2 verifications, alternately, so that both see the same
/// load on this shared machine (one block after the other drifts by milliseconds).
async fn logins(app: &TestApp, n: usize) -> (Histogram<u64>, Histogram<u64>) {
    tests::identity::add_user(app, "bench.login", Some("bench-password-123")).await;
    let stored = commands::passwords::hash("bench-password-123");
    let mut http = Histogram::<u64>::new(3).expect("histogram");
    let mut bare = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..n {
        let t = Instant::now();
        let answer = app
            .send(
                app.request(reqwest::Method::POST, "/auth/login/")
                    .json(&json!({"username": "bench.login", "password": "bench-password-123"})),
            )
            .await;
        assert_eq!(answer.status, reqwest::StatusCode::OK);
        http.record(t.elapsed().as_micros() as u64).ok();
        let t = Instant::now();
        commands::passwords::verify(&stored, "bench-password-123");
        bare.record(t.elapsed().as_micros() as u64).ok();
    }
    (http, bare)
}

/// Where a login's time goes beyond HTTP: the service's password login (argon2 included) and
/// the session it opens (an event appended and read back), `n` times each.
async fn login_parts(app: &TestApp, n: usize) -> (Histogram<u64>, Histogram<u64>, Histogram<u64>) {
    let ctx = CommandContext {
        user: "bench.login".into(),
        impersonator: None,
        correlation_id: "bench".into(),
        causation_id: "bench".into(),
        at: chrono::Utc::now(),
    };
    let mut service = Histogram::<u64>::new(3).expect("histogram");
    let mut session = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..n {
        let t = Instant::now();
        app.state
            .identity_service
            .login_with_password(&ctx, "bench.login", "bench-password-123".into())
            .await
            .expect("login");
        service.record(t.elapsed().as_micros() as u64).ok();
        let t = Instant::now();
        app.state
            .identity_service
            .open_session(&ctx, "bench.login", "JWT")
            .await
            .expect("session");
        session.record(t.elapsed().as_micros() as u64).ok();
    }
    // The verification as the service runs it: on a blocking thread.
    let stored = commands::passwords::hash("bench-password-123");
    let mut blocking = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..n {
        let stored = stored.clone();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            commands::passwords::verify(&stored, "bench-password-123")
        })
        .await
        .expect("verified");
        blocking.record(t.elapsed().as_micros() as u64).ok();
    }
    (service, session, blocking)
}

/// Phase E2: `clients` simultaneous password logins of one user, `rounds` times; returns the
/// latencies and how many answers were not 200.
async fn concurrent_logins(
    app: &Arc<TestApp>,
    clients: usize,
    rounds: usize,
) -> (Histogram<u64>, usize) {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut errors = 0;
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let answer = app
                    .send(app.request(reqwest::Method::POST, "/auth/login/").json(
                        &json!({"username": "bench.login", "password": "bench-password-123"}),
                    ))
                    .await;
                (answer.status, t.elapsed())
            }));
        }
        for t in tasks {
            let (status, elapsed) = t.await.expect("login ran");
            hist.record(elapsed.as_micros() as u64).ok();
            if status != reqwest::StatusCode::OK {
                errors += 1;
            }
        }
    }
    (hist, errors)
}

/// Phase F: `GET path` as `user` by `clients` concurrent clients for `duration`.
async fn reads(
    app: &Arc<TestApp>,
    path: &str,
    user: &str,
    clients: usize,
    duration: Duration,
) -> (f64, Histogram<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (app, stop, path, user) = (
            app.clone(),
            stop.clone(),
            path.to_string(),
            user.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let answer = app.get(&path, &user).await;
                assert_eq!(answer.status, reqwest::StatusCode::OK, "{:?}", answer.body);
                hist.record(t.elapsed().as_micros() as u64).ok();
                n += 1;
            }
            (n, hist)
        }));
    }
    measure(&stop, tasks, duration).await
}

/// Yardstick of phase F: primary-key lookups per second at the same concurrency.
async fn raw_lookups(pool: &sqlx::PgPool, clients: usize, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (pool, stop) = (pool.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = 100_000 + ((n as i64 * 7 + c as i64) % 9_000);
                let _: Option<String> =
                    sqlx::query_scalar("SELECT name FROM identity.perimeters WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .expect("lookup");
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("reader ran");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Phase J1: `POST /cohort/folders/` by `clients` clients for `duration`, each request with a
/// fresh `Idempotency-Key` when `keyed`.
async fn folder_writes(
    app: &Arc<TestApp>,
    clients: usize,
    keyed: bool,
    duration: Duration,
    meter: Option<&PgCost>,
) -> (Run, Cost) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (app, stop) = (app.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let user = format!("bench.keys{c}");
            let token = app.token(&user).await;
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut request = app
                    .request(reqwest::Method::POST, "/cohort/folders/")
                    .bearer_auth(&token)
                    .json(&json!({"name": format!("f{n}")}));
                if keyed {
                    request = request.header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
                }
                let t = Instant::now();
                let answer = app.send(request).await;
                assert_eq!(
                    answer.status,
                    reqwest::StatusCode::CREATED,
                    "{:?}",
                    answer.body
                );
                hist.record(t.elapsed().as_micros() as u64).ok();
                n += 1;
            }
            (n, hist)
        }));
    }
    // Tokens are fetched before the window opens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    measure_run(&stop, tasks, duration, meter).await
}

/// Phase J2: `n` sequential checks of an access token's holder (user active, session open).
async fn holder_checks(app: &TestApp, user: &str, n: usize) -> Histogram<u64> {
    let token = app.token(user).await;
    let session = app.jwt_claims(&token).sid;
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..n {
        let t = Instant::now();
        app.state
            .identity_service
            .check_token_holder(user, session)
            .await
            .expect("valid holder");
        hist.record(t.elapsed().as_nanos() as u64).ok();
    }
    hist
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `n` sequential counts of one snapshot: (POST → `job_status` finished on the websocket,
/// POST → 201).
async fn count_round_trips(app: &TestApp, n: usize) -> (Histogram<u64>, Histogram<u64>) {
    tests::identity::add_user(app, "bench.counter", None).await;
    let user = "bench.counter";
    let folder = app
        .post(
            "/cohort/folders/",
            user,
            serde_json::json!({"name": "bench"}),
        )
        .await;
    let request = app
        .post(
            "/cohort/requests/",
            user,
            serde_json::json!({"name": "bench", "parent_folder": folder.body["uuid"]}),
        )
        .await;
    let snapshot = app
        .post(
            "/cohort/request-query-snapshots/",
            user,
            serde_json::json!({"request": request.body["uuid"], "serialized_query": query(&["1"])}),
        )
        .await;
    let snapshot_id = snapshot.body["uuid"].clone();
    let mut socket = tests::ws::connect_as(app, &app.token(user).await).await;
    let mut round_trip = Histogram::<u64>::new(3).expect("histogram");
    let mut accepted = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..n {
        let started = Instant::now();
        let dm = app
            .post(
                "/cohort/dated-measures/",
                user,
                serde_json::json!({"request_query_snapshot": snapshot_id}),
            )
            .await;
        accepted.record(started.elapsed().as_micros() as u64).ok();
        let uuid = dm.body["uuid"]
            .as_str()
            .expect("a dated measure")
            .to_string();
        let message = tests::ws::next_job_status(&mut socket, &uuid).await;
        assert_eq!(message["status"], "finished", "{message}");
        round_trip.record(started.elapsed().as_micros() as u64).ok();
    }
    (round_trip, accepted)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let duration = seconds();
    let id = unique_id();
    let qe_token = format!("qe-{id}");
    let executor = tests::executor::TestExecutor::start(&qe_token).await;
    let mut s = settings(&id, &tests::nats_url());
    s.identity.query_executor_token = Some(qe_token);
    s.cohorts.query_executor_url = executor.url.clone();
    s.database_max_connections = 40;
    s.read_your_writes_timeout_ms = 30_000;
    s.projector_poll_ms = 500;
    let app = Arc::new(TestApp::spawn_with(s, id).await);
    executor.set_backend(&app.base);
    let pool = app.pool.clone();
    let mut report = String::new();
    report.push_str(&format!(
        "# Benchmark\n\nOne run of `cargo run --release -p tests --bin bench` ({}s per phase), on this machine's \
         Postgres and NATS, in one fresh database.\n\n",
        duration.as_secs()
    ));

    let meter = PgCost::new(pool.clone()).await;
    if !meter.counts_statements() {
        report.push_str(&format!(
            "Statement counts: n/a ({}).\n\n",
            tests::pg_cost::ENABLE_STATEMENTS
        ));
    }

    // A, then D1 at the same concurrency: the two write commands against raw INSERT+COMMIT, with
    // what each cost Postgres.
    report.push_str(
        "## HTTP commands (read-your-writes included) against raw INSERT+COMMIT\n\n\
         Statements and Postgres CPU are per command (per INSERT+COMMIT for the raw rows), over \
         the whole measured window: the relay, projectors and reactors that follow each command \
         are counted in.\n\n\
         | command | clients | commands/s | p50 ms | p99 ms | statements | PG CPU ms | raw INSERT+COMMIT/s | raw statements | raw PG CPU ms | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut details = String::new();
    // Folder commands/s and raw INSERT+COMMIT/s at one client, for the floor below.
    let mut one_client = (0.0, 0.0);
    for command in ["create snapshot", "create folder"] {
        for clients in CONCURRENCY {
            let (run, cost) = if command == "create snapshot" {
                http_snapshots(&app, clients, duration, &meter).await
            } else {
                folder_writes(&app, clients, false, duration, Some(&meter)).await
            };
            let (raw, raw_cost) = raw_inserts(&pool, clients, duration, &meter).await;
            report.push_str(&format!(
                "| {command} | {clients} | {:.0} | {:.2} | {:.2} | {} | {} | {:.0} | {} | {} | {:.3} |\n",
                run.rate,
                ms(run.latency.value_at_quantile(0.5)),
                ms(run.latency.value_at_quantile(0.99)),
                or_na(cost.statements_per(run.operations), 1),
                or_na(cost.cpu_ms_per(run.operations), 2),
                raw.rate,
                or_na(raw_cost.statements_per(raw.operations), 1),
                or_na(raw_cost.cpu_ms_per(raw.operations), 2),
                run.rate / raw.rate
            ));
            if clients == 1 && command == "create folder" {
                one_client = (run.rate, raw.rate);
            }
            if clients == 16 && command == "create folder" {
                details.push_str(&format!(
                    "\n`POST /cohort/folders/` at 16 connections: {:.0} req/s, {:.1}× upstream's {UPSTREAM_FOLDER_POSTS_PER_S} req/s \
                     ({UPSTREAM_FOLDER_POSTS_SOURCE}; target 10×).\n\n",
                    run.rate,
                    run.rate / UPSTREAM_FOLDER_POSTS_PER_S
                ));
            }
            if clients == 4 && !cost.top.is_empty() {
                details.push_str(&format!(
                    "\nWhere Postgres spends its execution time, {command} at 4 clients (per command):\n\n| calls | exec ms | statement |\n|---|---|---|\n"
                ));
                let per = run.operations.max(1) as f64;
                for (statement, calls, exec_ms) in &cost.top {
                    details.push_str(&format!(
                        "| {:.2} | {:.3} | `{}` |\n",
                        *calls as f64 / per,
                        exec_ms / per,
                        statement.replace('|', "\\|")
                    ));
                }
            }
        }
    }
    report.push_str(&details);
    let floor = pipeline_floor(&pool, duration).await;
    report.push_str(&format!(
        "\n## The pipeline's floor at one client\n\n\
         The statements read-your-writes needs per command, bare (the append, the projection's \
         lock-and-read, row and checkpoint-and-commit, the answer's read: five round trips, one \
         flush), on scratch tables: what any command costs before HTTP and the service's own work.\n\n\
         | floor/s | floor p50 ms | floor / raw INSERT+COMMIT | create folder / floor |\n|---|---|---|---|\n\
         | {:.0} | {:.2} | {:.3} | {:.3} |\n",
        floor.rate,
        ms(floor.latency.value_at_quantile(0.5)),
        floor.rate / one_client.1,
        one_client.0 / floor.rate,
    ));

    // B: commit -> read-model lag, commands through the bus without waiting.
    let progress = app.progress();
    let directory = Arc::new(PgWorkspace::new(pool.clone()));
    let workspace = Workspace::new(
        infra::stores::folders(&pool),
        infra::stores::requests(&pool),
        directory,
        Arc::new(NoWait),
    );
    let ctx = |user: &str| CommandContext {
        user: user.into(),
        impersonator: None,
        correlation_id: "bench".into(),
        causation_id: "bench".into(),
        at: chrono::Utc::now(),
    };
    let f = workspace
        .create_folder(&ctx("lag"), "lag".into(), None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = workspace
        .create_request(
            &ctx("lag"),
            commands::workspace::NewRequest {
                name: "lag".into(),
                description: None,
                favorite: false,
                parent_folder: f.value,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lag = Histogram::<u64>::new(3)?;
    let mut command = Histogram::<u64>::new(3)?;
    let mut previous: Option<uuid::Uuid> = None;
    for i in 0..1000 {
        let new = NewSnapshot {
            request: Some(r.value),
            previous_snapshot: previous,
            serialized_query: query(&[&i.to_string()]),
            name: None,
        };
        let started = Instant::now();
        let w = workspace
            .save_snapshot(&ctx("lag"), new)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let committed_at = Instant::now();
        command
            .record((committed_at - started).as_micros() as u64)
            .ok();
        let request_id = r.value.to_string();
        let seq: i64 = sqlx::query_scalar("SELECT max(sequence) FROM events WHERE aggregate_type = 'Request' AND aggregate_id = $1")
            .bind(&request_id)
            .fetch_one(&pool)
            .await?;
        let target = infra::log::cursor_of(&pool, "Request", &request_id, seq)
            .await?
            .expect("event stored");
        for p in &progress {
            let mut p = p.clone();
            tokio::time::timeout(Duration::from_secs(30), p.wait_for(|c| *c >= target)).await??;
        }
        lag.record(committed_at.elapsed().as_micros() as u64).ok();
        previous = Some(w.value);
    }
    report.push_str(&format!(
        "\n## Commit → read-model lag (relay → JetStream → projector), 1000 sequential commands\n\n\
         | p50 ms | p99 ms | max ms |\n|---|---|---|\n| {:.2} | {:.2} | {:.2} |\n\n\
         The command itself (load, decide, append; no HTTP, no wait): p50 {:.2} ms, p99 {:.2} ms.\n",
        ms(lag.value_at_quantile(0.5)),
        ms(lag.value_at_quantile(0.99)),
        ms(lag.max()),
        ms(command.value_at_quantile(0.5)),
        ms(command.value_at_quantile(0.99))
    ));

    // C: rebuild, against D2: the raw ordered scan of the same table.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    // Each measured `BENCH_REBUILDS` times (default 5), alternately; the medians are reported
    // (a single rebuild of this small log lasts a fraction of a second: noise dominates).
    let rounds: usize = std::env::var("BENCH_REBUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5);
    let (mut rebuilds, mut scans) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        let rebuilt = infra::rebuild::rebuild(&pool, &WorkspaceProjection).await?;
        rebuilds.push((
            rebuilt.events as f64 / started.elapsed().as_secs_f64(),
            rebuilt,
        ));
        let started = Instant::now();
        let scanned = sqlx::query("SELECT * FROM events ORDER BY txid, position")
            .fetch(&pool)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await?;
        scans.push(scanned as f64 / started.elapsed().as_secs_f64());
    }
    rebuilds.sort_by(|a, b| a.0.total_cmp(&b.0));
    scans.sort_by(f64::total_cmp);
    let (rebuild_rate, rebuilt) = rebuilds.swap_remove(rounds / 2);
    let scan_rate = scans[rounds / 2];
    report.push_str(&format!(
        "\n## Rebuild of the workspace projection (median of {rounds})\n\n| events | rebuild events/s | raw ordered scan rows/s | ratio |\n|---|---|---|---|\n| {events} | {rebuild_rate:.0} | {scan_rate:.0} | {:.3} |\n\n\
         Its parts: schema copy {:.1} ms, fold {:.1} ms (of which waiting for the log's next \
         batch {:.1} ms), catch-up and swap {:.1} ms.\n",
        rebuild_rate / scan_rate,
        rebuilt.copy.as_secs_f64() * 1e3,
        rebuilt.fold.as_secs_f64() * 1e3,
        rebuilt.fold_read_wait.as_secs_f64() * 1e3,
        rebuilt.swap.as_secs_f64() * 1e3
    ));

    // E: logins.
    let (login, argon) = logins(&app, 50).await;
    report.push_str(&format!(
        "\n## Password login (argon2id m={} KiB, t={}, p={}), 50 sequential logins\n\n\
         | login p50 ms | login p99 ms | bare argon2 verify p50 ms | ratio (verify / login) |\n|---|---|---|---|\n\
         | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        commands::passwords::ARGON2_MEMORY_KIB,
        commands::passwords::ARGON2_ITERATIONS,
        commands::passwords::ARGON2_PARALLELISM,
        ms(login.value_at_quantile(0.5)),
        ms(login.value_at_quantile(0.99)),
        ms(argon.value_at_quantile(0.5)),
        argon.value_at_quantile(0.5) as f64 / login.value_at_quantile(0.5) as f64
    ));
    report.push_str(&format!(
        "\nLogin p50 minus bare verify p50: {:.2} ms (target < 5 ms).\n",
        ms(login.value_at_quantile(0.5)) - ms(argon.value_at_quantile(0.5))
    ));
    let (service, session, blocking) = login_parts(&app, 30).await;
    report.push_str(&format!(
        "\nWithout HTTP: `login_with_password` p50 {:.2} ms; the session it opens (append + read-your-writes) p50 {:.2} ms; \
         the bare verify on a blocking thread p50 {:.2} ms.\n",
        ms(service.value_at_quantile(0.5)),
        ms(session.value_at_quantile(0.5)),
        ms(blocking.value_at_quantile(0.5))
    ));
    let (together, errors) = concurrent_logins(&app, 16, 5).await;
    report.push_str(&format!(
        "\n16 simultaneous logins of one user, 5 rounds: {errors} errors in 80, p50 {:.2} ms, p99 {:.2} ms.\n",
        ms(together.value_at_quantile(0.5)),
        ms(together.value_at_quantile(0.99))
    ));

    // F: a 10 000-perimeter tree and the key front-end read at 16 clients.
    let tree = big_tree();
    let size = tree.len();
    let started = Instant::now();
    infra::runtime::operations::import_perimeters(&app.services, tree).await?;
    let import_rate = size as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("BENCH_WRITES_ONLY").is_some() {
        // The write-path figures only: commands, lag, rebuild, logins, import.
        #[expect(clippy::print_stdout, reason = "the report is the output")]
        {
            println!(
                "{report}\n## Perimeter import\n\n{size} perimeters: {import_rate:.0} perimeters/s.\n"
            );
        }
        Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
        return Ok(());
    }
    let fixture_role = |name: &str, rights: domain::rights::Rights| {
        let app = app.clone();
        let name = name.to_string();
        async move {
            app.state
                .identity_service
                .create_role(
                    &ctx("system"),
                    &commands::identity::Requester::System,
                    name,
                    rights,
                )
                .await
                .map(|w| w.value)
        }
    };
    let reader = fixture_role(
        "bench reader",
        domain::rights::Rights {
            right_read_patient_nominative: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pseudo = fixture_role(
        "bench pseudo",
        domain::rights::Rights {
            right_read_patient_pseudonymized: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tests::identity::add_user(&app, "bench.reader", None).await;
    let profile_id = app
        .state
        .identity
        .manual_profile("bench.reader")
        .await?
        .expect("profile");
    // Nominative on 10 hospitals, pseudonymized on a whole group (1 000 perimeters below).
    let mut grants: Vec<(i64, i64)> = (0..10).map(|h| (reader, 100 + h * 10)).collect();
    grants.push((pseudo, 15));
    for (role_id, perimeter_id) in grants {
        app.state
            .identity_service
            .grant_access(
                &ctx("system"),
                &commands::identity::Requester::System,
                commands::identity::NewAccess {
                    profile_id,
                    role_id,
                    perimeter_id,
                    start: None,
                    end: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report.push_str(&format!(
        "\n## Perimeter tree of {size} perimeters\n\nImport (one Perimeter aggregate per row, read model derived): {import_rate:.0} perimeters/s.\n\n\
         | `GET` at 16 clients | requests/s | p50 ms | p99 ms | raw PK lookup/s | ratio |\n|---|---|---|---|---|---|\n"
    ));
    for path in [
        "/accesses/perimeters/patient-data/rights/",
        "/accesses/perimeters/patient-data/rights/?type_source_value=UF&limit=20",
        "/accesses/accesses/my-data-rights/?perimeters_ids=100000,105000,108999",
    ] {
        let (rate, hist) = reads(&app, path, "bench.reader", 16, duration).await;
        let raw = raw_lookups(&pool, 16, duration).await;
        report.push_str(&format!(
            "| `{path}` | {rate:.0} | {:.2} | {:.2} | {raw:.0} | {:.3} |\n",
            ms(hist.value_at_quantile(0.5)),
            ms(hist.value_at_quantile(0.99)),
            rate / raw
        ));
    }

    // G: the round trip of a count through our pipeline, with an executor that answers at once.
    let (round_trip, accepted) = count_round_trips(&app, 200).await;
    report.push_str(&format!(
        "\n## Count round trip (POST `/cohort/dated-measures/` → executor callback → `job_status` on the websocket), \
         200 sequential counts, loopback executor answering at once\n\n\
         | POST → websocket p50 ms | p99 ms | POST → 201 p50 ms | p99 ms | ratio (201 / websocket, p50) |\n|---|---|---|---|---|\n\
         | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |\n",
        ms(round_trip.value_at_quantile(0.5)),
        ms(round_trip.value_at_quantile(0.99)),
        ms(accepted.value_at_quantile(0.5)),
        ms(accepted.value_at_quantile(0.99)),
        accepted.value_at_quantile(0.5) as f64 / round_trip.value_at_quantile(0.5) as f64
    ));

    // H: as-of reconstruction of one aggregate with 10 000 events (snapshots every
    // SNAPSHOT_EVERY events, as the command side writes them).
    let requests = infra::stores::requests(&pool);
    let long = workspace
        .create_request(
            &ctx("lag"),
            commands::workspace::NewRequest {
                name: "n0".into(),
                description: None,
                favorite: false,
                parent_folder: f.value,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let long_id = long.value.to_string();
    for i in 1..10_000 {
        requests
            .execute(
                &long_id,
                domain::request::RequestCommand::Update {
                    by: "lag".into(),
                    name: Some(format!("n{i}")),
                    description: None,
                    favorite: None,
                    parent_folder: None,
                    at: chrono::Utc::now(),
                },
                &ctx("lag"),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let audit = infra::audit::PgAudit::new(pool.clone());
    report.push_str(
        "\n## As-of reconstruction of one Request with 10 000 events (`AuditReader::state_as_of`)\n\n| as of | events folded | from snapshot | p50 ms | p99 ms |\n|---|---|---|---|---|\n",
    );
    for (label, version) in [
        ("version 10 000 (latest)", 10_000),
        ("version 9 999 (just before the snapshot)", 9_999),
        ("version 5 000", 5_000),
        ("version 1", 1),
    ] {
        let mut hist = Histogram::<u64>::new(3)?;
        let mut folded = (0, false);
        for _ in 0..20 {
            let started = Instant::now();
            let state = audit
                .state_as_of(
                    "Request",
                    &long_id,
                    projections::audit::AsOf::Version(version),
                )
                .await?
                .expect("state exists");
            hist.record(started.elapsed().as_micros() as u64).ok();
            folded = (state.events_folded, state.from_snapshot);
        }
        report.push_str(&format!(
            "| {label} | {} | {} | {:.2} | {:.2} |\n",
            folded.0,
            folded.1,
            ms(hist.value_at_quantile(0.5)),
            ms(hist.value_at_quantile(0.99))
        ));
    }

    // I: paging through the whole log, through the reader and through HTTP (each HTTP page also
    // records an AuditReadRecorded event).
    let auditor_role = fixture_role(
        "bench auditor",
        domain::rights::Rights {
            right_read_audit: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tests::identity::add_user(&app, "bench.auditor", None).await;
    let auditor_profile = app
        .state
        .identity
        .manual_profile("bench.auditor")
        .await?
        .expect("profile");
    app.state
        .identity_service
        .grant_access(
            &ctx("system"),
            &commands::identity::Requester::System,
            commands::identity::NewAccess {
                profile_id: auditor_profile,
                role_id: auditor_role,
                perimeter_id: 15,
                start: None,
                end: None,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let mut after = projections::Cursor::START;
    let mut direct = 0usize;
    loop {
        let page = audit.events(&Default::default(), after, 1000).await?;
        direct += page.len();
        match page.last() {
            Some((cursor, _)) if page.len() == 1000 => after = *cursor,
            _ => break,
        }
    }
    let direct_rate = direct as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut path = "/audit/events/?limit=1000".to_string();
    let mut over_http = 0usize;
    loop {
        let page = app.get(&path, "bench.auditor").await;
        anyhow::ensure!(page.status.is_success(), "audit page: {:?}", page.body);
        over_http += page.body["results"].as_array().map_or(0, Vec::len);
        match page.body["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    let http_rate = over_http as f64 / started.elapsed().as_secs_f64();
    report.push_str(&format!(
        "\n## Audit paging through the whole log (1 000 events per page)\n\n| path | events | events/s |\n|---|---|---|\n| `AuditReader::events` | {direct} | {direct_rate:.0} |\n| `GET /audit/events/` (JSON, read recorded) | {over_http} | {http_rate:.0} |\n| ratio (HTTP / reader) | | {:.3} |\n",
        http_rate / direct_rate
    ));

    // J: what the hardening costs: idempotency keys per command, the session check per request.
    report.push_str(
        "\n## Idempotency keys: `POST /cohort/folders/` at 4 clients, with and without a fresh `Idempotency-Key` each\n\n\
         | | commands/s | p50 ms | p99 ms |\n|---|---|---|---|\n",
    );
    let (plain, _) = folder_writes(&app, 4, false, duration, None).await;
    let (keyed, _) = folder_writes(&app, 4, true, duration, None).await;
    let (plain, plain_hist, keyed, keyed_hist) =
        (plain.rate, plain.latency, keyed.rate, keyed.latency);
    for (label, rate, hist) in [
        ("without a key", plain, &plain_hist),
        ("with a key", keyed, &keyed_hist),
    ] {
        report.push_str(&format!(
            "| {label} | {rate:.0} | {:.2} | {:.2} |\n",
            ms(hist.value_at_quantile(0.5)),
            ms(hist.value_at_quantile(0.99))
        ));
    }
    report.push_str(&format!(
        "| ratio (with / without) | {:.3} | {:.2} | |\n",
        keyed / plain,
        keyed_hist.value_at_quantile(0.5) as f64 / plain_hist.value_at_quantile(0.5) as f64
    ));
    // The same read with the check cached (1 s, the default) and made on every request.
    let id = unique_id();
    let mut uncached_settings = settings(&id, &tests::nats_url());
    uncached_settings.identity.token_check_cache_ms = 0;
    uncached_settings.database_max_connections = 40;
    let uncached = Arc::new(TestApp::spawn_with(uncached_settings, id).await);
    let cached_checks = holder_checks(&app, "bench.session", 2000).await;
    let uncached_checks = holder_checks(&uncached, "bench.session", 2000).await;
    let (cached_rate, cached_hist) = reads(
        &app,
        "/cohort/folders/?limit=20",
        "bench.session",
        16,
        duration,
    )
    .await;
    let (uncached_rate, uncached_hist) = reads(
        &uncached,
        "/cohort/folders/?limit=20",
        "bench.session",
        16,
        duration,
    )
    .await;
    report.push_str(&format!(
        "\n## Session check (the token's user active, its session open)\n\n\
         | check | one check p50 µs | p99 µs | `GET /cohort/folders/?limit=20` at 16 clients, requests/s | p50 ms |\n|---|---|---|---|---|\n\
         | cached 1 s (default) | {:.1} | {:.1} | {cached_rate:.0} | {:.2} |\n\
         | every request (`SESSION_CHECK_CACHE_MS=0`) | {:.1} | {:.1} | {uncached_rate:.0} | {:.2} |\n\
         | ratio (every request / cached) | | | {:.3} | |\n",
        cached_checks.value_at_quantile(0.5) as f64 / 1000.0,
        cached_checks.value_at_quantile(0.99) as f64 / 1000.0,
        ms(cached_hist.value_at_quantile(0.5)),
        uncached_checks.value_at_quantile(0.5) as f64 / 1000.0,
        uncached_checks.value_at_quantile(0.99) as f64 / 1000.0,
        ms(uncached_hist.value_at_quantile(0.5)),
        uncached_rate / cached_rate
    ));
    Arc::try_unwrap(uncached)
        .ok()
        .expect("sole owner")
        .stop()
        .await;

    #[expect(clippy::print_stdout, reason = "the report is the output")]
    {
        println!("{report}");
    }
    Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
    Ok(())
}
