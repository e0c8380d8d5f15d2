//! The FHIR read API's view of the clinical store: searches restricted to the perimeters a
//! caller may read, with the rows the API shapes into FHIR resources.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use domain::cohort_query::fhir_search::SearchParam;
use thiserror::Error;

use crate::ReadError;

/// The resource types the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirType {
    Patient,
    Encounter,
    Condition,
    Observation,
    MedicationRequest,
    Procedure,
    DocumentReference,
}

impl FhirType {
    pub const ALL: [FhirType; 7] = [
        Self::Patient,
        Self::Encounter,
        Self::Condition,
        Self::Observation,
        Self::MedicationRequest,
        Self::Procedure,
        Self::DocumentReference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Patient => "Patient",
            Self::Encounter => "Encounter",
            Self::Condition => "Condition",
            Self::Observation => "Observation",
            Self::MedicationRequest => "MedicationRequest",
            Self::Procedure => "Procedure",
            Self::DocumentReference => "DocumentReference",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The code system of this type's codes (each fact type has one terminology).
    pub fn code_system(self) -> Option<&'static str> {
        Some(match self {
            Self::Condition => "https://smt.esante.gouv.fr/terminologie-cim-10/",
            Self::Observation => "http://loinc.org",
            Self::MedicationRequest => "https://terminology.eds.aphp.fr/atc",
            Self::Procedure => "https://terminology.eds.aphp.fr/ccam",
            Self::DocumentReference => "http://loinc.org",
            Self::Patient | Self::Encounter => return None,
        })
    }

    /// The search parameters this type answers (besides `_id`, `_list`, and the result
    /// parameters `_count`, `_offset`, `_summary`, `_sort`, `_elements`, `_total`).
    pub fn search_params(self) -> &'static [&'static str] {
        match self {
            Self::Patient => &[
                "gender",
                "birthdate",
                "deceased",
                "death-date",
                "identifier",
                "active",
            ],
            Self::Encounter => &["subject", "patient", "class", "date", "subject.active"],
            Self::Observation => &[
                "subject",
                "patient",
                "encounter",
                "code",
                "date",
                "value-quantity",
                "subject.active",
            ],
            Self::DocumentReference => &[
                "subject",
                "patient",
                "encounter",
                "type",
                "date",
                "_text",
                "subject.active",
            ],
            Self::Condition | Self::MedicationRequest | Self::Procedure => &[
                "subject",
                "patient",
                "encounter",
                "code",
                "date",
                "subject.active",
            ],
        }
    }
}

/// Where a caller may read: the perimeters of its reading grants (each with its subtree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadScope {
    /// Nominative or pseudonymized reading.
    pub readable: Vec<i64>,
    /// Nominative reading.
    pub nominative: Vec<i64>,
}

/// One search.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirSearch {
    pub resource: FhirType,
    /// The filtering parameters (result parameters removed).
    pub params: Vec<SearchParam>,
    pub count: i64,
    pub offset: i64,
    /// `_sort`, in order (ties are always broken by id).
    pub sort: Vec<FhirSort>,
    /// Facets to compute over every match (not only the page).
    pub facets: Vec<Facet>,
}

/// What a search can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Id,
    Family,
    Given,
    BirthDate,
    Gender,
    DeathDate,
    /// The resource's own date (an encounter's start).
    Date,
    /// An encounter's end.
    End,
    Class,
    Code,
}

impl SortField {
    /// `_sort`'s name for a type (`family`, `-date`, …).
    pub fn parse(t: FhirType, name: &str) -> Option<Self> {
        Some(match (t, name) {
            (_, "_id" | "id") => Self::Id,
            (FhirType::Patient, "family" | "name") => Self::Family,
            (FhirType::Patient, "given") => Self::Given,
            (FhirType::Patient, "birthdate" | "age-month" | "age-day") => Self::BirthDate,
            (FhirType::Patient, "gender") => Self::Gender,
            (FhirType::Patient, "death-date" | "deceased") => Self::DeathDate,
            (FhirType::Patient, _) => return None,
            (FhirType::Encounter, "date" | "period-start" | "start-date") => Self::Date,
            (FhirType::Encounter, "period-end" | "end-date") => Self::End,
            (FhirType::Encounter, "class") => Self::Class,
            (FhirType::Encounter, _) => return None,
            (FhirType::DocumentReference, "type") => Self::Code,
            (FhirType::DocumentReference, "code") => return None,
            (
                _,
                "date"
                | "recorded-date"
                | "onset-date"
                | "effective-date"
                | "authored-on"
                | "performed-date"
                | "validity-period-start",
            ) => Self::Date,
            (_, "code") => Self::Code,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FhirSort {
    pub field: SortField,
    pub descending: bool,
}

/// A dashboard facet (AP-HP's FHIR extensions), counted over a search's matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facet {
    /// `facet=<field>`: matches per value of a field (`gender`, `deceased`, `class`, …).
    Field(String),
    /// `pivot-facet=<a>_<b>`: matches per pair of values.
    Pivot(String, String),
    /// `unique-facet=<field>`: how many distinct values (e.g. `subject`: distinct patients).
    Unique(String),
}

/// A computed facet: counts per value (pivots: per value pair, `b` nested under `a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacetCounts {
    pub facet: Facet,
    /// `(values, count)`: one value for a field facet, two for a pivot, none for a unique count.
    pub counts: Vec<(Vec<String>, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatientRecord {
    pub id: i64,
    pub ipp: String,
    pub gender: String,
    pub birth_date: NaiveDate,
    pub death_date: Option<NaiveDate>,
    pub deceased: bool,
    pub family_name: String,
    pub given_name: String,
    pub perimeter_id: i64,
    /// The caller reads this patient nominatively.
    pub nominative: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EncounterRecord {
    pub id: i64,
    pub patient_id: i64,
    pub class: String,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub episode_id: i64,
    pub perimeter_id: i64,
}

/// A condition, observation, medication request or procedure.
#[derive(Debug, Clone, PartialEq)]
pub struct FactRecord {
    pub id: i64,
    pub resource: FhirType,
    pub patient_id: i64,
    pub encounter_id: i64,
    pub code: String,
    pub at: DateTime<Utc>,
    pub value: Option<f64>,
    pub unit: Option<String>,
}

/// A clinical note.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRecord {
    pub id: i64,
    pub patient_id: i64,
    pub encounter_id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub title: String,
    pub text: String,
    /// The caller reads this patient nominatively (pseudonymized readers get no text).
    pub nominative: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FhirRecord {
    Patient(PatientRecord),
    Encounter(EncounterRecord),
    Fact(FactRecord),
    Document(DocumentRecord),
}

/// A page of matches and how many there are in all.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirPage {
    pub total: i64,
    pub records: Vec<FhirRecord>,
    pub facets: Vec<FacetCounts>,
}

#[derive(Debug, Error)]
pub enum FhirSearchError {
    /// A parameter, value or modifier this server does not answer.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Read(#[from] ReadError),
}

#[async_trait]
pub trait ClinicalReader: Send + Sync {
    /// Matches within the scope; `count` 0 gives the total only.
    async fn search(
        &self,
        search: &FhirSearch,
        scope: &ReadScope,
    ) -> Result<FhirPage, FhirSearchError>;
    /// One resource within the scope.
    async fn read(
        &self,
        resource: FhirType,
        id: i64,
        scope: &ReadScope,
    ) -> Result<Option<FhirRecord>, ReadError>;
    /// The patients of a created cohort (by `group_id`) within the scope; `None`: no such list.
    async fn list_members(
        &self,
        group_id: i64,
        scope: &ReadScope,
    ) -> Result<Option<Vec<i64>>, ReadError>;
}
