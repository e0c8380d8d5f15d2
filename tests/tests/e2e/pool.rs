//! The service's Postgres pool: connections in steady use are not checked before each use, and
//! one that sat idle is, so that a connection the server closed meanwhile is replaced unseen.

use std::time::Duration;

use infra::db::{CHECK_IF_IDLE_FOR, PoolLimits, connect};
use sqlx::PgPool;
use tests::server_url;

async fn backend_pid<'e>(on: impl sqlx::PgExecutor<'e>) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(on)
        .await
}

/// Ends backend `pid` from `admin`, waiting until it is gone.
async fn terminate(admin: &PgPool, pid: i32) {
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .expect("terminate");
    assert!(terminated, "backend {pid} did not end");
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

    terminate(&admin, first).await;
    // Idle at least that long (waiting longer changes nothing).
    tokio::time::sleep(CHECK_IF_IDLE_FOR + Duration::from_millis(100)).await;

    let second = backend_pid(&pool)
        .await
        .expect("the closed connection is replaced when taken, not handed out");
    assert_ne!(first, second);
    pool.close().await;
    admin.close().await;
}

/// The connection a projector or the relay keeps to itself: reused while in steady use,
/// replaced when the server closed it while idle, never reused after being dropped mid-way.
mod held {
    use super::*;
    use infra::held_connection::HeldConnection;

    async fn pool() -> PgPool {
        connect(&server_url(), PoolLimits::default())
            .await
            .expect("pool")
    }

    #[tokio::test]
    async fn a_connection_given_back_is_the_one_taken_next() {
        let held = HeldConnection::new(pool().await);
        let mut conn = held.take().await.expect("take");
        let first = backend_pid(&mut conn).await.expect("pid");
        held.give_back(conn);
        let mut conn = held.take().await.expect("take again");
        assert_eq!(backend_pid(&mut conn).await.expect("pid"), first);
    }

    #[tokio::test]
    async fn a_connection_dropped_in_use_is_not_kept() {
        let held = HeldConnection::new(pool().await);
        let mut conn = held.take().await.expect("take");
        sqlx::query("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        let first = backend_pid(&mut conn).await.expect("pid");
        drop(conn);
        let mut conn = held.take().await.expect("take again");
        // Another backend: the dropped one (and its open transaction) ended with its socket.
        assert_ne!(backend_pid(&mut conn).await.expect("pid"), first);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_it_sat_idle_is_replaced_unseen() {
        let pool = pool().await;
        let held = HeldConnection::new(pool.clone());
        let mut conn = held.take().await.expect("take");
        let first = backend_pid(&mut conn).await.expect("pid");
        held.give_back(conn);

        terminate(&pool, first).await;
        tokio::time::sleep(CHECK_IF_IDLE_FOR + Duration::from_millis(100)).await;

        let mut conn = held
            .take()
            .await
            .expect("the closed connection is replaced when taken, not handed out");
        assert_ne!(backend_pid(&mut conn).await.expect("pid"), first);
    }
}
