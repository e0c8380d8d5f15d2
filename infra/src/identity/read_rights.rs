//! Whether a user reads patient data nominatively, and what rights they hold now, from the
//! identity read model (the ports of small-cell protection and of the authorization rules).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use commands::ports::{PatientReadRights, PortError};
use domain::authz::PerimeterRef;
use projections::identity::IdentityReader;

/// Nominative reading computed from the identity read model.
pub struct IdentityReadRights(pub Arc<dyn IdentityReader>);

#[async_trait]
impl PatientReadRights for IdentityReadRights {
    async fn reads_nominatively(
        &self,
        username: &str,
        perimeter_cohort_ids: &[String],
    ) -> Result<bool, PortError> {
        if perimeter_cohort_ids.is_empty() {
            return Ok(false);
        }
        let unavailable = |e: projections::ReadError| PortError(e.to_string());
        let perimeters = self
            .0
            .perimeters_by_cohort_ids(perimeter_cohort_ids)
            .await
            .map_err(unavailable)?;
        // A cohort used as a population (a sample's parent) is not a perimeter: not exempt.
        if perimeters.len() < perimeter_cohort_ids.len() {
            return Ok(false);
        }
        let authority = self
            .0
            .authority(username, Utc::now())
            .await
            .map_err(unavailable)?;
        Ok(perimeters.iter().all(|p| {
            authority
                .data_rights(PerimeterRef {
                    id: p.id,
                    ancestors: &p.ancestors,
                })
                .right_read_patient_nominative
        }))
    }
}

/// The users' current rights, for the authorization rules (`commands::authz`).
pub struct IdentityAuthorities(pub Arc<dyn IdentityReader>);

#[async_trait]
impl commands::authz::Authorities for IdentityAuthorities {
    async fn authority(&self, username: &str) -> Result<domain::authz::Authority, PortError> {
        self.0
            .authority(username, Utc::now())
            .await
            .map_err(|e| PortError(e.to_string()))
    }
}
