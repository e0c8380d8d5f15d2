//! The owner's rights as export validation needs them, computed from the identity read model.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use commands::exports::ExportRights;
use commands::ports::PortError;
use domain::authz::{DataRights, PerimeterRef};
use domain::rights::Rights;
use projections::identity::IdentityReader;

/// [`ExportRights`] over the identity read model.
pub struct IdentityExportRights(pub Arc<dyn IdentityReader>);

fn unavailable(e: projections::ReadError) -> PortError {
    PortError(e.to_string())
}

#[async_trait]
impl ExportRights for IdentityExportRights {
    async fn global_rights(&self, username: &str) -> Result<Rights, PortError> {
        let authority = self
            .0
            .authority(username, Utc::now())
            .await
            .map_err(unavailable)?;
        Ok(authority.global())
    }

    async fn data_rights(
        &self,
        username: &str,
        perimeter_cohort_ids: &[String],
    ) -> Result<Vec<(String, Option<DataRights>)>, PortError> {
        let authority = self
            .0
            .authority(username, Utc::now())
            .await
            .map_err(unavailable)?;
        let perimeters = self
            .0
            .perimeters_by_cohort_ids(perimeter_cohort_ids)
            .await
            .map_err(unavailable)?;
        Ok(perimeter_cohort_ids
            .iter()
            .map(|cohort_id| {
                let rights = perimeters
                    .iter()
                    .find(|p| p.cohort_id.as_deref() == Some(cohort_id.as_str()))
                    .map(|p| {
                        authority.data_rights(PerimeterRef {
                            id: p.id,
                            ancestors: &p.ancestors,
                        })
                    });
                (cohort_id.clone(), rights)
            })
            .collect())
    }
}
