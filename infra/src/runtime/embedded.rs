//! Results of the embedded QueryExecutor, applied as the executor's callbacks would be: a count's
//! report settles the count, a creation's settles the cohort, and a job with a feasibility
//! callback path settles the study. Acts as the executor's applicative user.

use std::sync::Arc;
use std::time::Duration;

use commands::cohorts::Cohorts;
use commands::context::CommandContext;
use commands::feasibility::Feasibility;
use commands::ports::{ExecutorMode, JobCompletion};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many times a result is offered before it is dropped (a lost result is later found by the
/// reconciler, which asks the executor).
const ATTEMPTS: u32 = 5;

pub async fn deliver_completions(
    mut completions: UnboundedReceiver<JobCompletion>,
    cohorts: Arc<Cohorts>,
    feasibility: Arc<Feasibility>,
    executor_user: String,
    shutdown: CancellationToken,
) {
    loop {
        let completion = tokio::select! {
            () = shutdown.cancelled() => return,
            c = completions.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        let target = completion.job.target;
        for attempt in 1..=ATTEMPTS {
            let ctx = CommandContext {
                user: executor_user.clone(),
                impersonator: None,
                correlation_id: completion
                    .trace_id
                    .clone()
                    .unwrap_or_else(|| Uuid::new_v4().to_string()),
                causation_id: format!("embedded-executor:{target}"),
                at: chrono::Utc::now(),
            };
            match deliver(&completion, &ctx, &cohorts, &feasibility).await {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(%target, attempt, error = %e, "cannot apply an embedded job's result; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::error!(%target, error = %e, "an embedded job's result was not applied");
                }
            }
        }
    }
}

async fn deliver(
    completion: &JobCompletion,
    ctx: &CommandContext,
    cohorts: &Cohorts,
    feasibility: &Feasibility,
) -> Result<(), commands::cohorts::CohortsError> {
    let JobCompletion { job, report, .. } = completion;
    let is_study = job
        .callback_path
        .as_deref()
        .is_some_and(|p| p.contains("/feasibility-studies/"));
    if is_study {
        feasibility.settle(ctx, job.target, report.clone()).await?;
    } else if job.mode == ExecutorMode::Create {
        cohorts
            .settle_cohort(ctx, job.target, report.clone(), false)
            .await?;
    } else {
        cohorts
            .settle_count(ctx, job.target, report.clone())
            .await?;
    }
    Ok(())
}
