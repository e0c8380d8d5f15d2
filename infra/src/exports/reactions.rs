//! What the reactors do with export events (and with the results of export subsets): create the
//! subsets, hand validated exports to the exporter, and send the e-mails.

use std::sync::Arc;

use async_trait::async_trait;
use commands::exports::Exports;
use cqrs_es::Aggregate;
use domain::cohort::Cohort;
use domain::export::Export;

use crate::cohorts::reactions::caused_by;
use crate::log::CommittedEvent;
use crate::projector::aggregate_uuid;
use crate::reactor::Reaction;

/// Drives exports: subsets on request and retry, the check of an export when one of its subsets
/// settles, the submission once validated.
pub struct ExportReaction {
    pub exports: Arc<Exports>,
}

const SUBSET_SETTLED: &[&str] = &["CohortCreated", "CohortFailed", "CohortCancelled"];

#[async_trait]
impl Reaction for ExportReaction {
    fn name(&self) -> &'static str {
        "exports"
    }

    fn handles(&self, event: &CommittedEvent) -> bool {
        (event.aggregate_type == Export::TYPE
            && ["ExportRequested", "ExportValidated", "ExportRetried"]
                .contains(&event.event_type.as_str()))
            || (event.aggregate_type == Cohort::TYPE
                && SUBSET_SETTLED.contains(&event.event_type.as_str()))
    }

    async fn react(&self, event: &CommittedEvent) -> Result<(), String> {
        let id = aggregate_uuid(event).map_err(|e| e.to_string())?;
        let ctx = caused_by(event);
        let done = match event.event_type.as_str() {
            "ExportRequested" => self.exports.prepare(&ctx, id).await,
            "ExportValidated" => self.exports.submit(&ctx, id).await,
            // A retried export needs new subsets (if they never all got created), or goes
            // straight back to the exporter.
            "ExportRetried" => match self.exports.prepare(&ctx, id).await {
                Ok(()) => self.exports.submit(&ctx, id).await,
                Err(e) => Err(e),
            },
            _ => self.exports.subset_settled(&ctx, id).await,
        };
        done.map_err(|e| e.to_string())
    }
}

/// Sends the export e-mails: received, succeeded, failed (owner and `ADMINS`), files deleted.
pub struct ExportMails {
    pub exports: Arc<Exports>,
}

#[async_trait]
impl Reaction for ExportMails {
    fn name(&self) -> &'static str {
        "export_mails"
    }

    fn handles(&self, event: &CommittedEvent) -> bool {
        event.aggregate_type == Export::TYPE
            && [
                "ExportSubmitted",
                "ExportFinished",
                "ExportFailed",
                "ExportFilesCleaned",
            ]
            .contains(&event.event_type.as_str())
    }

    async fn react(&self, event: &CommittedEvent) -> Result<(), String> {
        let id = aggregate_uuid(event).map_err(|e| e.to_string())?;
        let ctx = caused_by(event);
        self.exports
            .notify(&ctx, id, &event.event_type, &event.message_id())
            .await
            .map_err(|e| e.to_string())
    }
}
