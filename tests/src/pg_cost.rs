//! What a benchmark phase cost Postgres: statements run (from `pg_stat_statements`, when the
//! server preloads it) and CPU time (from `/proc`, when Postgres runs on this machine).
//!
//! Both are server-wide views: run the benchmark alone. Statements are counted in the bench's
//! database only; CPU is every `postgres` process's user + system time, children included (a
//! backend that exits is added to the postmaster's `cutime`), so connections opened and closed
//! during a phase are counted too.

use std::time::Duration;

use sqlx::PgPool;

/// How to enable the statement counts, printed when they are missing.
pub const ENABLE_STATEMENTS: &str = "statements need `shared_preload_libraries = 'pg_stat_statements'` \
    (ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'; then restart Postgres)";

/// The meter of one database.
pub struct PgCost {
    pool: PgPool,
    statements: bool,
    ticks_per_second: f64,
}

/// Where a phase started.
pub struct Mark {
    cpu: Option<Duration>,
}

/// What a phase cost.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    /// Statements executed in the bench's database (None: `pg_stat_statements` not loaded).
    pub statements: Option<u64>,
    /// The statements Postgres spent most execution time on: text, calls, milliseconds.
    pub top: Vec<(String, u64, f64)>,
    /// CPU used by every Postgres process (None: Postgres is not on this machine).
    pub cpu: Option<Duration>,
}

impl Cost {
    /// Statements per operation, if counted.
    pub fn statements_per(&self, operations: u64) -> Option<f64> {
        self.statements.map(|s| s as f64 / operations.max(1) as f64)
    }

    /// Postgres CPU milliseconds per operation, if measured.
    pub fn cpu_ms_per(&self, operations: u64) -> Option<f64> {
        self.cpu
            .map(|c| c.as_secs_f64() * 1000.0 / operations.max(1) as f64)
    }
}

/// `value` with `decimals`, or "n/a".
pub fn or_na(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

impl PgCost {
    /// Installs `pg_stat_statements` in the database if the server preloads it.
    pub async fn new(pool: PgPool) -> Self {
        let statements = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .is_ok()
            && sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1")
                .execute(&pool)
                .await
                .is_ok();
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            pool,
            statements,
            ticks_per_second,
        }
    }

    /// Whether statements are counted.
    pub fn counts_statements(&self) -> bool {
        self.statements
    }

    /// Starts a phase: resets the statement counts and reads the CPU clock.
    pub async fn start(&self) -> Mark {
        if self.statements {
            let _ = sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&self.pool)
                .await;
        }
        Mark {
            cpu: self.postgres_cpu(),
        }
    }

    /// What happened since `mark`.
    pub async fn since(&self, mark: &Mark) -> Cost {
        let cpu = match (mark.cpu, self.postgres_cpu()) {
            (Some(before), Some(now)) => Some(now.saturating_sub(before)),
            _ => None,
        };
        let (statements, top) = if self.statements {
            let rows: Vec<(String, i64, f64)> = sqlx::query_as(
                "SELECT query, calls, total_exec_time FROM pg_stat_statements
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND query NOT LIKE '%pg_stat_statements%'
                  ORDER BY total_exec_time DESC",
            )
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
            let total = rows.iter().map(|(_, c, _)| *c as u64).sum();
            let top = rows
                .into_iter()
                .take(10)
                .map(|(q, c, t)| (one_line(&q), c as u64, t))
                .collect();
            (Some(total), top)
        } else {
            (None, Vec::new())
        };
        Cost {
            statements,
            top,
            cpu,
        }
    }

    /// User + system CPU of every `postgres` process, exited children included.
    fn postgres_cpu(&self) -> Option<Duration> {
        let mut ticks = 0u64;
        let mut found = false;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: the command name may hold spaces, so split after ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            if !head.ends_with("(postgres") {
                continue;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
            let sum: u64 = fields
                .get(11..15)
                .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
                .unwrap_or(0);
            ticks += sum;
            found = true;
        }
        found.then(|| Duration::from_secs_f64(ticks as f64 / self.ticks_per_second))
    }
}

fn one_line(query: &str) -> String {
    let flat = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 90 {
        format!("{}…", flat.chars().take(90).collect::<String>())
    } else {
        flat
    }
}
