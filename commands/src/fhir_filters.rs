//! Saved FHIR filters: owner-scoped, unique by (name, resource) per owner.

use std::sync::Arc;

use async_trait::async_trait;
use domain::fhir_filter::{
    FhirFilter, FhirFilterChanges, FhirFilterCommand, FhirFilterError, FhirFilterFields,
};
use uuid::Uuid;

use crate::bus::Execute;
use crate::cohorts::CohortsError;
use crate::context::CommandContext;
use crate::ports::{Consistency, PortError};
use crate::workspace::Written;

/// The read-model lookup that uniqueness needs.
#[async_trait]
pub trait FhirFilterDirectory: Send + Sync {
    /// Whether `owner` has another live filter (not `except`) named `name` on `fhir_resource`.
    async fn name_taken(
        &self,
        owner: &str,
        name: &str,
        fhir_resource: &str,
        except: Option<Uuid>,
    ) -> Result<bool, PortError>;
}

/// A new saved filter.
#[derive(Debug, Clone)]
pub struct NewFhirFilter {
    pub fields: FhirFilterFields,
    pub filter: String,
    pub auto_generated: bool,
}

/// The saved-filters service.
pub struct FhirFilters {
    bus: Arc<dyn Execute<FhirFilter>>,
    directory: Arc<dyn FhirFilterDirectory>,
    consistency: Arc<dyn Consistency>,
}

impl FhirFilters {
    pub fn new(
        bus: Arc<dyn Execute<FhirFilter>>,
        directory: Arc<dyn FhirFilterDirectory>,
        consistency: Arc<dyn Consistency>,
    ) -> Self {
        Self {
            bus,
            directory,
            consistency,
        }
    }

    async fn require_free_name(
        &self,
        owner: &str,
        fields: &FhirFilterFields,
        except: Option<Uuid>,
    ) -> Result<(), CohortsError> {
        if self
            .directory
            .name_taken(owner, fields.name.trim(), &fields.fhir_resource, except)
            .await?
        {
            return Err(CohortsError::FilterNameTaken);
        }
        Ok(())
    }

    /// Saves a filter for the caller.
    pub async fn create(
        &self,
        ctx: &CommandContext,
        new: NewFhirFilter,
    ) -> Result<Written<Uuid>, CohortsError> {
        self.require_free_name(&ctx.user, &new.fields, None).await?;
        let id = Uuid::new_v4();
        let command = FhirFilterCommand::Create {
            filter_id: id,
            owner: ctx.user.clone(),
            fields: new.fields,
            filter: new.filter,
            auto_generated: new.auto_generated,
            at: ctx.at,
        };
        let c = self.bus.execute_new(&id.to_string(), command, ctx).await?;
        let caught_up = self.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: id,
            caught_up,
        })
    }

    /// Changes one of the caller's filters.
    pub async fn update(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        changes: FhirFilterChanges,
    ) -> Result<Written<()>, CohortsError> {
        let current = self.bus.load(&id.to_string()).await?;
        let state = current
            .owned_by(&ctx.user)
            .ok_or(CohortsError::FhirFilter(FhirFilterError::NotFound))?;
        let renamed = FhirFilterFields {
            name: changes
                .name
                .clone()
                .unwrap_or_else(|| state.fields.name.clone()),
            fhir_resource: changes
                .fhir_resource
                .clone()
                .unwrap_or_else(|| state.fields.fhir_resource.clone()),
            ..state.fields.clone()
        };
        self.require_free_name(&ctx.user, &renamed, Some(id))
            .await?;
        let command = FhirFilterCommand::Update {
            by: ctx.user.clone(),
            changes,
            at: ctx.at,
        };
        let c = self.bus.execute(&id.to_string(), command, ctx).await?;
        let caught_up = self.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: (),
            caught_up,
        })
    }

    /// Deletes the caller's filters: all are checked first, one foreign id and nothing changes.
    pub async fn delete(&self, ctx: &CommandContext, ids: &[Uuid]) -> Result<(), CohortsError> {
        for id in ids {
            if self
                .bus
                .load(&id.to_string())
                .await?
                .owned_by(&ctx.user)
                .is_none()
            {
                return Err(CohortsError::FhirFilter(FhirFilterError::NotFound));
            }
        }
        let mut committed = Vec::new();
        for id in ids {
            let command = FhirFilterCommand::Delete {
                by: ctx.user.clone(),
                at: ctx.at,
            };
            committed.push(self.bus.execute(&id.to_string(), command, ctx).await?);
        }
        self.consistency.wait_for(&committed).await;
        Ok(())
    }
}
