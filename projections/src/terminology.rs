//! The terminology API's view of the terminology store: code systems, value sets, expansions
//! (filtered, paged, one level of a hierarchy at a time) and code hierarchies for the query engine
//! and the FHIR search. Terminologies are loaded data, not folded from events.

use async_trait::async_trait;
use domain::terminology::CodeSelection;
use serde_json::Value;

use crate::ReadError;

/// The FHIR id of a terminology resource: its url's characters FHIR ids allow, at most 64 (a
/// longer url keeps its end, where names are).
pub fn resource_id(url: &str) -> String {
    let cleaned: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches('-');
    let start = trimmed.len().saturating_sub(64);
    let id = trimmed[start..].trim_start_matches('-');
    if id.is_empty() {
        "terminology".to_string()
    } else {
        id.to_string()
    }
}

/// A code system's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSystemInfo {
    /// Its FHIR id (derived from its url).
    pub id: String,
    pub url: String,
    pub name: String,
    pub title: String,
    pub version: Option<String>,
    /// How many concepts it holds.
    pub count: i64,
}

/// A value set as stored: its header and the FHIR resource (its `compose`).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSetInfo {
    /// Its FHIR id (derived from its url).
    pub id: String,
    pub url: String,
    pub name: String,
    pub title: String,
    pub version: Option<String>,
    pub resource: Value,
}

/// What to list of a value set (or of a whole code system).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpandRequest {
    /// A value set's or a code system's canonical url.
    pub url: String,
    /// An inline `ValueSet` (a `$expand` POST's `valueSet`): its `compose` is expanded instead
    /// of a stored one's.
    pub value_set: Option<Value>,
    /// Words every listed concept's code or display contains (accents and case ignored).
    pub filter: Option<String>,
    /// Only the children of this code (a tree picker opening a node); empty: only the roots.
    pub parent: Option<String>,
    /// Only these codes (with their displays): a picker resolving saved selections.
    pub codes: Vec<String>,
    pub count: i64,
    pub offset: i64,
}

/// One listed concept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedConcept {
    pub system: String,
    pub code: String,
    pub display: String,
    pub parent: Option<String>,
    /// It has children in its code system (a tree picker shows it as expandable).
    pub has_children: bool,
}

/// A page of an expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub url: String,
    pub version: Option<String>,
    pub total: i64,
    pub offset: i64,
    pub concepts: Vec<ExpandedConcept>,
}

#[async_trait]
pub trait TerminologyReader: Send + Sync {
    /// Code systems, all or those of one url.
    async fn code_systems(&self, url: Option<&str>) -> Result<Vec<CodeSystemInfo>, ReadError>;
    /// Value sets, all, those of one url, or those drawing on a code system (`reference`).
    async fn value_sets(
        &self,
        url: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Vec<ValueSetInfo>, ReadError>;
    /// An expansion; `None` when no value set or code system has the url.
    async fn expand(&self, request: &ExpandRequest) -> Result<Option<Expansion>, ReadError>;
    /// What criterion values on a code system select, one selection per value (in order): the
    /// value with its descendants, and a range (`X60-X84`) as a range. A code the store does not
    /// know selects itself.
    async fn resolve_codes(
        &self,
        system: &str,
        values: &[String],
    ) -> Result<Vec<CodeSelection>, ReadError>;
}
