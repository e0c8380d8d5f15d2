//! The terminology store: code systems (concepts with displays and a parent), and value sets
//! (FHIR `ValueSet` resources whose `compose` picks codes from them).
//!
//! * [`builtin`]: the terminologies of the clinical store and the query forms, written at start;
//! * [`import`]: FHIR `CodeSystem` / `ValueSet` JSON and CSV files, as loaded by
//!   `cohort360 import-terminology`;
//! * [`store`]: applying a terminology (the difference with what is stored), and the reader the
//!   FHIR terminology API, the FHIR search and the query engine use.

pub mod builtin;
pub mod import;
pub mod store;

use serde_json::Value;

/// One concept of a code system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    pub code: String,
    pub display: String,
    /// Its parent in the code system's hierarchy.
    pub parent: Option<String>,
}

/// A whole code system (every concept: a load replaces the stored one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSystemData {
    pub url: String,
    pub name: String,
    pub title: String,
    pub version: Option<String>,
    pub concepts: Vec<Concept>,
}

/// A value set: its header and the FHIR resource as given.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSetData {
    pub url: String,
    pub name: String,
    pub title: String,
    pub version: Option<String>,
    pub resource: Value,
}

/// What a terminology file or catalogue holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Terminologies {
    pub code_systems: Vec<CodeSystemData>,
    pub value_sets: Vec<ValueSetData>,
}

/// A value set holding every code of one code system, under the same url (so that
/// `ValueSet?url=` and `$expand?url=` answer a code system's url too).
pub fn whole_system_value_set(cs: &CodeSystemData) -> ValueSetData {
    ValueSetData {
        url: cs.url.clone(),
        name: cs.name.clone(),
        title: cs.title.clone(),
        version: cs.version.clone(),
        resource: serde_json::json!({
            "resourceType": "ValueSet",
            "url": cs.url,
            "name": cs.name,
            "title": cs.title,
            "status": "active",
            "compose": {"include": [{"system": cs.url}]},
        }),
    }
}
