//! The service's Postgres pool: connections in steady use are not checked before each use, and
//! one that sat idle is, so that a connection the server closed meanwhile is replaced unseen.

use std::time::Duration;

use infra::db::{CHECK_IF_IDLE_FOR, PoolLimits, connect};
use sqlx::PgPool;
use tests::server_url;

async fn backend_pid(pool: &PgPool) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn a_connection_the_server_closed_while_it_sat_idle_is_replaced_unseen() {
    let limits = PoolLimits {
        max_connections: 1,
        ..PoolLimits::default()
    };
    let pool = connect(&server_url(), limits).await.expect("pool");
    let admin = connect(&server_url(), PoolLimits::default())
        .await
        .expect("admin pool");
    let first = backend_pid(&pool).await.expect("first statement");

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(first)
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(terminated, "backend {first} did not end");
    // Idle at least that long (waiting longer changes nothing).
    tokio::time::sleep(CHECK_IF_IDLE_FOR + Duration::from_millis(100)).await;

    let second = backend_pid(&pool)
        .await
        .expect("the closed connection is replaced when taken, not handed out");
    assert_ne!(first, second);
    pool.close().await;
    admin.close().await;
}
